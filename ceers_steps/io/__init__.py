"""Inputs and outputs: resolving inputs, identifying images, WCS model files, results tables, run state."""
