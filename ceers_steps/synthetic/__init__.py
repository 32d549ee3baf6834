"""Realistic synthetic NIRCam visits with a known WCS error, for tests, benchmarks and the demo."""

from .artifacts import ArtifactRecord, add_nircam_artifacts
from .distortion import random_distortion
from .frames import make_crowded_frame
from .scene import DETECTOR_GEOMETRY, ceers_data_dir, ceers_data_missing_reason, nircam_like_wcs
from .visits import SyntheticImage, SyntheticVisit, make_visit, oracle_floor, tangent_plane, write_visit

__all__ = [
    "ArtifactRecord",
    "DETECTOR_GEOMETRY",
    "SyntheticImage",
    "SyntheticVisit",
    "add_nircam_artifacts",
    "ceers_data_dir",
    "ceers_data_missing_reason",
    "make_crowded_frame",
    "make_visit",
    "nircam_like_wcs",
    "oracle_floor",
    "random_distortion",
    "tangent_plane",
    "write_visit",
]
