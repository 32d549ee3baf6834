"""Residual diagnostics, grades, and the HTML alignment report."""
