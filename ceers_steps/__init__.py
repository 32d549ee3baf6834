"""ceers-steps: JWST pipeline plugin steps that align NIRCam images the CEERS way.

The step classes are imported lazily, so that ``stpipe list`` and the entry
point stay fast and importing :mod:`ceers_steps` does not pull in ``jwst``.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:  # the version is pyproject.toml's, read from the installed package's metadata
    __version__ = version("ceers-steps")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "CatalogStep": "ceers_steps.steps.catalog_step",
    "CeersTweakRegStep": "ceers_steps.steps.tweakreg_step",
    "ApplyWcsStep": "ceers_steps.steps.apply_wcs_step",
    "CeersAlignPipeline": "ceers_steps.steps.pipeline",
    "CeersImage3Pipeline": "ceers_steps.steps.stage3",
    "AllImagesFailedError": "ceers_steps.steps.base",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ceers_steps' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
