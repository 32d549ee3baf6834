"""``ceers_steps.apply_wcs_step.ApplyWcsStep``, the path older parameter files name."""

from .steps.apply_wcs_step import ApplyWcsStep

__all__ = ["ApplyWcsStep"]
