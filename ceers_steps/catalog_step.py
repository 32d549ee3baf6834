"""``ceers_steps.catalog_step.CatalogStep``, the path older parameter files name."""

from .steps.catalog_step import CatalogStep

__all__ = ["CatalogStep"]
