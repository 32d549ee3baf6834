"""The parameters of the relative and absolute fits (jwst names, CEERS defaults), checked."""

import math
from dataclasses import dataclass

__all__ = ["ABS_GROUPS", "MIN_POINTS", "AbsoluteParameters", "RelativeParameters"]


ABS_GROUPS = ("joint", "detector", "visit")


#: Fewest matches each fit geometry can be solved from.
MIN_POINTS = {"shift": 1, "rshift": 2, "rscale": 2, "general": 3}


def _check(prefix, fitgeometry, minobj, searchrad, separation, tolerance, nclip, sigma):
    """Refuse parameters no fit can use, naming the step parameter."""
    if fitgeometry not in MIN_POINTS:
        raise ValueError(f"{prefix}fitgeometry must be one of {tuple(MIN_POINTS)}, "
                         f"not {fitgeometry!r}")
    need = max(2, MIN_POINTS[fitgeometry])
    checks = [
        ("minobj", minobj, minobj is not None and minobj >= need,
         f"at least {need} for fitgeometry {fitgeometry!r}"),
        ("searchrad", searchrad, searchrad is not None and searchrad > 0, "positive (arcsec)"),
        ("separation", separation, separation is not None and separation >= 0, ">= 0 (arcsec)"),
        ("tolerance", tolerance, tolerance is not None and tolerance > 0, "positive (arcsec)"),
        ("nclip", nclip, nclip is not None and nclip >= 0, ">= 0"),
        ("sigma", sigma, sigma is not None and sigma > 0, "positive"),
    ]
    for name, value, ok, rule in checks:
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{prefix}{name} must be {rule}, not {value}")


@dataclass
class RelativeParameters:
    """Relative alignment (jwst names, CEERS defaults)."""

    fitgeometry: str = "shift"
    use2dhist: bool = False
    enforce_user_order: bool = True
    expand_refcat: bool = False
    minobj: int = 20
    searchrad: float = 1.0
    separation: float = 0.1
    tolerance: float = 0.02
    xoffset: float = 0.0
    yoffset: float = 0.0
    nclip: int = 1
    sigma: float = 0.6

    def __post_init__(self):
        _check("", self.fitgeometry, self.minobj, self.searchrad, self.separation,
               self.tolerance, self.nclip, self.sigma)


@dataclass
class AbsoluteParameters:
    """Absolute alignment to the reference catalog (jwst ``abs_*`` names, CEERS defaults)."""

    minobj: int = 20
    searchrad: float = 1.0
    use2dhist: bool = True
    separation: float = 0.2
    tolerance: float = 0.1
    fitgeometry: str = "rshift"
    nclip: int = 1
    sigma: float = 0.7
    group: str = "joint"
    significance: float = 3.0
    margin: float = 5.0
    image_minobj: int = 3
    #: Geometry of long-wavelength images fitted jointly with short-wavelength ones
    #: (``joint_channels``); empty: ``fitgeometry``.
    fitgeometry_lw: str = ""
    #: Joint fit: test each detector's own rotation (and scale) about its centre.
    detector_rotations: bool = True

    def __post_init__(self):
        _check("abs_", self.fitgeometry, self.minobj, self.searchrad, self.separation,
               self.tolerance, self.nclip, self.sigma)
        if self.fitgeometry_lw and self.fitgeometry_lw not in MIN_POINTS:
            raise ValueError(f"abs_fitgeometry_lw must be one of {tuple(MIN_POINTS)} or empty, "
                             f"not {self.fitgeometry_lw!r}")
        if self.group not in ABS_GROUPS:
            raise ValueError(f"abs_group must be one of {ABS_GROUPS}, not {self.group!r}")
        if self.significance is None or not self.significance >= 0 or \
                not math.isfinite(self.significance):
            raise ValueError(f"abs_significance must be >= 0, not {self.significance}")
        if self.image_minobj is None or self.image_minobj < 1:
            raise ValueError(f"abs_image_minobj must be at least 1, not {self.image_minobj}")
