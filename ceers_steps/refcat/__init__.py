"""Absolute reference catalogs: read, cut, merge, move to the epoch of the images."""
