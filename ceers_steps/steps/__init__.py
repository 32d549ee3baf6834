"""The stpipe Step and Pipeline classes (thin wrappers over the stages)."""
