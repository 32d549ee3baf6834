"""Console commands (ceers-align, ceers-apply-wcs, ceers-convert-cfg, ceers-demo) and their console."""
