"""
tweakwcs as the fits use it: its API, its failures as statuses, and corrections
expressed in its frame (the tangent plane of an image's ``JWSTWCSCorrector``).
"""

import math

import numpy as np

from ..core.wcs_utils import bbox_limits, pixel_grid

__all__ = ["algorithm_failure", "confusion_problem", "correction_in_frame", "tweakwcs_frame"]


_SQRT2 = math.sqrt(2.0)


def _tweakwcs_api():
    """tweakwcs' ``align_wcs`` and ``XYXYMatch`` where the running jwst's step finds them."""
    from ..core.compat import tweakwcs_api

    return tweakwcs_api()


def correction_in_frame(im, wcs0, wcs1, fitgeom):
    """
    The correction ``wcs0`` -> ``wcs1`` as a tweakwcs fit of this image reports it: in
    the image's own tangent plane (see `_frame_fit`).

    Returns
    -------
    dict
        ``xshift``, ``yshift`` (arcsec), ``rotation`` (deg), ``scale``.
    """
    return _frame_fit(im, wcs0, lambda gx, gy, ra, dec: wcs1(gx, gy, with_bounding_box=False),
                      fitgeom)


def tweakwcs_frame(im, plane, matrix, shift, fitgeom, frame=None):
    """
    A correction of the visit plane expressed as tweakwcs expresses its fits.

    tweakwcs fits (and CEERS' results files report) a correction in the tangent
    plane of the fit's first image (``JWSTWCSCorrector``: V2/V3 axes, arcsec,
    rotation about its reference point). The joint fit works in a north-up plane
    of the visit; the same correction, mapped through the sky into the image's
    frame on a grid over the image, is fitted there with tweakwcs' own
    ``iter_linear_fit`` (``fitgeom``).

    Returns
    -------
    dict
        ``xshift``, ``yshift`` (arcsec), ``rotation`` (deg), ``scale``.
    """
    def moved(gx, gy, ra, dec):
        p = np.column_stack(plane.world_to_tanp(ra, dec)) @ np.asarray(matrix).T + shift
        return plane.tanp_to_world(p[:, 0], p[:, 1])

    wcs = im.original_wcs if im.original_wcs is not None else im.model.meta.wcs
    return _frame_fit(im, wcs, moved, fitgeom, frame=frame)


def _frame_fit(im, wcs0, moved, fitgeom, frame=None):
    """
    A correction in tweakwcs' frame for ``im``: the tangent plane of its
    ``JWSTWCSCorrector`` on ``wcs0`` (V2/V3 axes, arcsec). Sky positions of a grid
    over the image before (through ``wcs0``) and after (``moved(x, y, ra, dec)``)
    are projected there and fitted with tweakwcs' own ``iter_linear_fit``
    (``fitgeom``, no clipping; its log lines muted: a conversion, not a fit).
    ``frame``: that corrector when the caller has it (building one costs ~0.05 s).
    """
    import logging

    from tweakwcs.linearfit import iter_linear_fit

    from .correctors import StackedJWSTWCSCorrector

    if frame is None:
        frame = StackedJWSTWCSCorrector(wcs=wcs0, wcsinfo=im.wcsinfo())
    (x0, x1), (y0, y1) = bbox_limits(wcs0) or ((-0.5, 2047.5), (-0.5, 2047.5))
    gx, gy = pixel_grid((round(y1 - y0), round(x1 - x0)), n=5)
    gx, gy = gx + x0 + 0.5, gy + y0 + 0.5
    ra, dec = wcs0(gx, gy, with_bounding_box=False)
    u = np.column_stack(frame.world_to_tanp(ra, dec))
    x = np.column_stack(frame.world_to_tanp(*moved(gx, gy, ra, dec)))
    logger = logging.getLogger("tweakwcs.linearfit")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        fit = iter_linear_fit(x, u, fitgeom=fitgeom, nclip=0, center=None)
    finally:
        logger.setLevel(level)
    return _frame_values(fit, fitgeom)


def _frame_values(fit, fitgeom):
    rot = fit["proper_rot"] if fitgeom in ("rshift", "rscale") else fit["<rot>"]
    return {"xshift": float(fit["shift"][0]), "yshift": float(fit["shift"][1]),
            "rotation": float(rot) if fitgeom != "shift" else 0.0,
            "scale": float(fit["<scale>"]) if fitgeom in ("rscale", "general") else 1.0}


#: Messages of tweakwcs' data-dependent failures (a status, not a crash).
_ALGORITHM_FAILURES = (
    "Too few input images",
    "Number of output coordinates exceeded allocation",
    "Reference catalog must contain at least one",
    "Image catalog must contain at least one source",
    "Not enough valid data",
    "Singular matrix",
    "At least one point is required",
    "At least two points are required",
    "At least three points are required",
)


def algorithm_failure(exc):
    """
    Why a tweakwcs fit failed, when ``exc`` is one of tweakwcs' data-dependent
    failures (too few catalogs or matches, confusion, degenerate points); None
    for anything else, which callers re-raise (as jwst does): a bug is not a status.
    """
    from tweakwcs.imalign import NotEnoughCatalogs
    from tweakwcs.linearfit import NotEnoughPointsError, SingularMatrixError

    if isinstance(exc, (NotEnoughCatalogs, NotEnoughPointsError, SingularMatrixError)):
        return _explain(exc)
    msg = str(exc.args[0]) if exc.args else str(exc)
    if isinstance(exc, (ValueError, RuntimeError)) and msg.startswith(_ALGORITHM_FAILURES):
        return _explain(exc)
    return None


def confusion_problem(prefix, separation, tolerance):
    """
    jwst's confusion rule, as a failure reason (or None).

    A separation smaller than the tolerance lets one source match several: the fit
    fails, as jwst's does. Up to sqrt(2) x tolerance jwst 3.x fails too; we warn
    instead, because CEERS' own parameters (``abs_separation`` 0.5, ``abs_tolerance``
    0.4) sit there and aligned DR0.5, and a jwst user who sets only ``tolerance``
    0.1 (jwst's multichip test) meets our default ``separation`` 0.1.
    """
    if separation < tolerance:
        return (f"Parameter '{prefix}separation' ({separation:g}) must not be smaller than "
                f"'{prefix}tolerance' ({tolerance:g}), to avoid source confusion")
    return None


def _n_aligned(correctors, reason):
    if reason is not None:
        return 0
    return sum(c.meta.get("fit_info", {}).get("status") == "SUCCESS" for c in correctors)


def _unaligned(correctors, reason):
    """Whether a relative fit left an image neither aligned nor the reference."""
    if reason is not None:
        return True
    return any(c.meta.get("fit_info", {}).get("status") not in ("SUCCESS", "REFERENCE")
               for c in correctors)


def _explain(exc):
    msg = str(exc.args[0]) if exc.args else str(exc)
    if msg.startswith("Number of output coordinates exceeded allocation"):
        return ("matching confusion: several sources within tolerance of one reference source "
                "(decrease tolerance or increase separation)")
    return msg
