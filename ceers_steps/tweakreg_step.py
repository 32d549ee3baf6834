"""``ceers_steps.tweakreg_step.CeersTweakRegStep``, the path older parameter files name."""

from .steps.tweakreg_step import CeersTweakRegStep

__all__ = ["CeersTweakRegStep"]
