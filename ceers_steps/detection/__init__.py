"""Source detection (SEP, the CEERS recipe), artifact cuts, and image catalogs."""
