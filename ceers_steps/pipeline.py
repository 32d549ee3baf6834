"""``ceers_steps.pipeline.CeersAlignPipeline``, the path older parameter files name."""

from .steps.pipeline import CeersAlignPipeline

__all__ = ["CeersAlignPipeline"]
