"""
The step's parameters as the stages use them: the fits' parameter dataclasses,
the SIP options, ``abs_refcat``/``abs_cuts`` as one string, every value checked.

Plain functions of ``pars`` (the step, or any object with its parameter names);
`CeersTweakRegStep`'s methods of the same names call them.
"""

from ..fitting.parameters import AbsoluteParameters, RelativeParameters

__all__ = [
    "absolute_parameters",
    "check_sip_parameters",
    "normalise_lists",
    "relative_parameters",
    "sip_options",
]


def relative_parameters(pars):
    """The `RelativeParameters` of a step's relative-fit parameters (checked)."""
    return RelativeParameters(
        fitgeometry=pars.fitgeometry, use2dhist=pars.use2dhist,
        enforce_user_order=pars.enforce_user_order, expand_refcat=pars.expand_refcat,
        minobj=pars.minobj, searchrad=pars.searchrad, separation=pars.separation,
        tolerance=pars.tolerance, xoffset=pars.xoffset, yoffset=pars.yoffset,
        nclip=pars.nclip, sigma=pars.sigma)


def absolute_parameters(pars):
    """The `AbsoluteParameters` of a step's ``abs_*`` parameters (checked)."""
    return AbsoluteParameters(
        minobj=pars.abs_minobj, searchrad=pars.abs_searchrad, use2dhist=pars.abs_use2dhist,
        separation=pars.abs_separation, tolerance=pars.abs_tolerance,
        fitgeometry=pars.abs_fitgeometry, nclip=pars.abs_nclip, sigma=pars.abs_sigma,
        group=pars.abs_group, significance=pars.abs_significance,
        image_minobj=pars.abs_image_minobj, fitgeometry_lw=pars.abs_fitgeometry_lw,
        detector_rotations=pars.abs_detector_rotations)


def normalise_lists(pars):
    """
    ``abs_refcat`` and ``abs_cuts`` as one string: on a command line or in a
    parameter file configobj turns ``a.ecsv,b.ecsv`` into a list.
    """
    for name, sep in (("abs_refcat", ", "), ("abs_cuts", "; ")):
        value = getattr(pars, name)
        if isinstance(value, (list, tuple)):
            setattr(pars, name, sep.join(str(v).strip() for v in value))
        elif value is None:
            setattr(pars, name, "")
        elif not isinstance(value, str):
            raise TypeError(f"{name} must be a string, not {value!r}")


def check_sip_parameters(pars):
    """The ``sip_*`` parameters checked, naming the one that is wrong."""
    for name in ("sip_max_pix_error", "sip_max_inv_pix_error"):
        value = getattr(pars, name)
        if value is None or not value > 0:
            raise ValueError(f"{name} must be positive (pixels), not {value}")
    if pars.sip_npoints is None or pars.sip_npoints < 3:
        raise ValueError(f"sip_npoints must be at least 3, not {pars.sip_npoints}")
    for name in ("sip_degree", "sip_inv_degree"):
        value = getattr(pars, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be between 1 and 6 or None, not {value}")


def sip_options(pars):
    """The SIP approximation's options for `finish_aligned_model`, or None (``sip_approx`` off)."""
    if not pars.sip_approx:
        return None
    return {"max_pix_error": pars.sip_max_pix_error, "degree": pars.sip_degree,
            "max_inv_pix_error": pars.sip_max_inv_pix_error,
            "inv_degree": pars.sip_inv_degree, "npoints": pars.sip_npoints}
