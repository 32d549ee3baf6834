"""``ceers_steps.stage3.CeersImage3Pipeline``, the path older parameter files name."""

from .steps.stage3 import CeersImage3Pipeline

__all__ = ["CeersImage3Pipeline"]
