"""Relative and absolute alignment of NIRCam images, built on tweakwcs.

Plain functions on `AlignImage` objects (an image model, its catalog and its
identity); the Step only reads parameters, calls `align_visit` and writes
outputs. Every fit produces one result row per image (a dict, see
`result_row`), taken from tweakwcs' ``fit_info`` or from the joint fit, never
from log text. Failures are per group: the group's WCS is left unchanged and
its rows say why.
"""

import math
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from ..core.logs import get_logger
from ..core.wcs_utils import bbox_limits, pixel_axes, pixel_grid
from ..io.grouping import group_images
from .jointfit import HOLDOUT_FOLDS, JointParameters, joint_fit
from .judge import judge_images, screen_images

__all__ = [
    "ABS_GROUPS",
    "AbsoluteParameters",
    "AlignImage",
    "RelativeParameters",
    "absolute_align",
    "align_visit",
    "detector_offset_estimate",
    "is_long_wavelength",
    "relative_align",
    "relative_joint",
    "result_row",
    "visit_plane",
]

log = get_logger(__name__)

ABS_GROUPS = ("joint", "detector", "visit")
#: Scatter of matches about the reference beyond the reference's own errors (galaxy
#: centroids between bands and instruments), mas: weights of the tweakwcs fits.
NOMINAL_SCATTER_MAS = 10.0
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
_SQRT2 = math.sqrt(2.0)


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


@dataclass
class AlignImage:
    """
    One image to align.

    Attributes
    ----------
    fit_info : dict
        Stage -> tweakwcs ``fit_info`` of the last fit (relative/absolute).
    name : str
        File name (for rows and messages).
    model : ImageModel or ImageHeader
        The model (or, for images on disk, its `ceers_steps.stages.tasks.ImageHeader`)
        whose ``meta.wcs`` is corrected in place on success.
    catalog : Table
        Sources with 0-based ``x``, ``y`` (and optional ``weight``).
    key : ImageKey
        Visit, filter, detector, exposure.
    """

    name: str
    model: object
    catalog: Table
    key: object
    status: dict = field(default_factory=dict)
    fit_info: dict = field(default_factory=dict)
    original_wcs: object = None

    def wcsinfo(self):
        wi = self.model.meta.wcsinfo
        return {"v2_ref": wi.v2_ref, "v3_ref": wi.v3_ref, "roll_ref": wi.roll_ref}

    def set_wcs(self, wcs):
        """Replace the model's WCS (a gwcs made by tweakwcs: no re-validation)."""
        from ..io.inputs import trusted_assignment

        with trusted_assignment(self.model):
            self.model.meta.wcs = wcs

    def inside_catalog(self):
        """The catalog rows with finite positions inside the WCS bounding box."""
        cat = self.catalog
        if len(cat):
            cat = cat[np.isfinite(cat["x"]) & np.isfinite(cat["y"])]
        limits = bbox_limits(self.model.meta.wcs)
        if limits is not None and len(cat):
            (x0, x1), (y0, y1) = limits
            inside = (cat["x"] > x0) & (cat["x"] < x1) & (cat["y"] > y0) & (cat["y"] < y1)
            cat = cat[inside]
        return cat

    def corrector(self, group_id):
        """A tweakwcs JWST corrector on the current WCS, carrying the in-bounds catalog."""
        # tweakwcs names catalogs (its log, its match calls) as jwst does: the file stem.
        from pathlib import Path

        from .correctors import StackedJWSTWCSCorrector

        catalog = self.inside_catalog()
        catalog.meta["name"] = Path(str(self.name)).stem.strip("_- ")
        return StackedJWSTWCSCorrector(wcs=self.model.meta.wcs, wcsinfo=self.wcsinfo(),
                                       meta={"catalog": catalog, "name": catalog.meta["name"],
                                             "group_id": group_id})


#: More catalog sources than one per this many pixels is no NIRCam catalog (deep fields
#: give one per ~1000-4000 pixels): matching will be confused.
DENSE_PIXELS_PER_SOURCE = 200.0


def catalog_problem(im):
    """
    What is wrong with an image's catalog for alignment, or None.

    Reported per image: a catalog whose sources are all non-finite or off the
    image (a wrong catalog, or 1-based positions of another image), or one far
    denser than any real NIRCam catalog.
    """
    n = len(im.catalog) if im.catalog is not None else 0
    if n == 0:
        return None
    inside = len(im.inside_catalog())
    if inside == 0:
        finite = int(np.sum(np.isfinite(im.catalog["x"]) & np.isfinite(im.catalog["y"])))
        return (f"none of the {n} sources of its catalog lies on the image "
                f"({n - finite} non-finite, {finite} outside it): the wrong catalog?")
    limits = bbox_limits(im.model.meta.wcs)
    if limits is not None:
        (x0, x1), (y0, y1) = limits
        area = max((x1 - x0) * (y1 - y0), 1.0)
        if inside > area / DENSE_PIXELS_PER_SOURCE:
            return (f"its catalog has {inside} sources on the image, one per "
                    f"{area / inside:.0f} pixels: far denser than a NIRCam catalog "
                    "(random rows?); matches may be confused")
    return None


def result_row(stage, group, image, status, fitgeometry, fit_info=None, **values):
    """
    One row of the results table.

    Columns: ``stage`` (relative/absolute), ``group``, ``image``, ``status``,
    ``nmatch`` (sources of the final solution, after clipping: CEERS' NMATCH),
    ``nmatch_all`` (matches before clipping), ``rmse`` and ``mae`` (arcsec),
    ``xshift`` and ``yshift`` (arcsec, in tweakwcs' frame: the tangent plane of
    the fit's first image, V2/V3 axes), ``rotation`` (deg), ``scale``,
    ``fitgeometry``, ``err_center`` and ``err_corner`` (mas, the joint fit's
    uncertainty of the aligned image; NaN where not computed), ``holdout_err``,
    ``holdout_sigma`` (mas) and ``holdout_n`` (the hold-out estimate of its error, that
    estimate's noise per axis and the sources behind it). Numbers come from
    tweakwcs' ``fit_info`` when given, else from ``values``; a failed fit has
    zeros in CEERS' columns (as CEERS wrote).
    """
    row = {"stage": stage, "group": group, "image": image, "status": status,
           "nmatch": 0, "nmatch_all": 0, "rmse": 0.0, "mae": 0.0, "xshift": 0.0, "yshift": 0.0,
           "rotation": 0.0, "scale": 1.0, "fitgeometry": fitgeometry, "err_center": np.nan,
           "err_corner": np.nan, "holdout_err": np.nan, "holdout_sigma": np.nan,
           "holdout_n": 0}
    if fit_info is not None and fit_info.get("status") == "SUCCESS":
        geom = fit_info.get("fitgeom", fitgeometry)
        rot = fit_info["proper_rot"] if geom in ("rshift", "rscale") else fit_info["<rot>"]
        nmatch_all = int(fit_info.get("nmatches", 0))
        # NMATCH as CEERS recorded it: the sources of the final solution, after clipping.
        fitmask = fit_info.get("fitmask")
        nmatch = int(np.sum(fitmask)) if fitmask is not None else nmatch_all
        row.update(nmatch=nmatch, nmatch_all=nmatch_all, rmse=float(fit_info["rmse"]),
                   mae=float(fit_info["mae"]), xshift=float(fit_info["shift"][0]),
                   yshift=float(fit_info["shift"][1]), rotation=float(rot),
                   scale=float(fit_info["<scale>"]), fitgeometry=geom)
    row.update(values)
    return row


def _footprint(wcs):
    ra, dec = wcs.footprint(axis_type="spatial").T
    return np.asarray(ra), np.asarray(dec)


def _correction_size(wcs0, wcs1):
    """Largest on-sky displacement (arcsec) of the image corners from ``wcs0`` to ``wcs1``."""
    from ..core.wcs_utils import angular_separation_mas

    ra0, dec0 = _footprint(wcs0)
    ra1, dec1 = _footprint(wcs1)
    return float(np.max(angular_separation_mas(ra0, dec0, ra1, dec1))) / 1e3


def relative_align(images, params, group, group_ids=None):
    """
    Align the images of one run to each other with tweakwcs (the first group is the reference).

    Parameters
    ----------
    images : list of AlignImage
    params : RelativeParameters
    group : str
        Name of the run (for rows and messages).
    group_ids : list of str, optional
        tweakwcs group of each image: images sharing one are fitted as one rigid
        body. Default: every image on its own.

    On success each aligned image's ``model.meta.wcs`` is replaced; on failure
    nothing changes. Returns one result row per image.
    """
    geom = params.fitgeometry
    if len(images) < 2:
        return [result_row("relative", group, im.name, "FAILED: At least two exposures are "
                           "required for image alignment (single image in group)", geom)
                for im in images]
    group_ids = group_ids or [im.name for im in images]
    if len(set(group_ids)) < 2:
        return [result_row("relative", group, im.name,
                           "FAILED: At least two exposures are required for image alignment",
                           geom) for im in images]
    confusion = confusion_problem("", params.separation, params.tolerance)
    if confusion:
        log.warning("%s: relative alignment failed: %s", group, confusion)
        return [result_row("relative", group, im.name, f"FAILED: {confusion}", geom)
                for im in images]
    if params.separation <= _SQRT2 * params.tolerance:
        log.warning("%s: separation %.3g <= sqrt(2) x tolerance %.3g: matches may be confused",
                    group, params.separation, params.tolerance)

    align_wcs, XYXYMatch = _tweakwcs_api()
    start = [im.model.meta.wcs for im in images]

    def attempt(use2dhist, tolerance, separation):
        correctors = [im.corrector(group_id=gid) for im, gid in zip(images, group_ids, strict=True)]
        match = XYXYMatch(searchrad=params.searchrad, separation=separation,
                          use2dhist=use2dhist, tolerance=tolerance,
                          xoffset=params.xoffset, yoffset=params.yoffset)
        try:
            align_wcs(correctors, refcat=None, enforce_user_order=params.enforce_user_order,
                      expand_refcat=params.expand_refcat, minobj=params.minobj, match=match,
                      fitgeom=geom, nclip=params.nclip, sigma=(params.sigma, "rmse"))
        except (ValueError, RuntimeError) as exc:
            reason = algorithm_failure(exc)
            if reason is None:
                raise
            return correctors, reason
        return correctors, None

    empty = [im.name for im in images if len(im.inside_catalog()) == 0]
    if empty:
        log.warning("%s: empty catalog(s): %s", group, ", ".join(empty))
    correctors, reason = attempt(params.use2dhist, params.tolerance, params.separation)
    used2dhist, refined = params.use2dhist, False
    if not params.use2dhist and _unaligned(correctors, reason):
        # Matching within tolerance of the initial offset found too few pairs: the images are
        # offset by more than the tolerance. A 2-D histogram of the pair offsets within
        # searchrad finds the offset (jwst's default matching) to about a pixel; a fit with a
        # tolerance that allows for that brings the images close, and the fit with the
        # requested tolerance then starts from there. Kept only if it aligns more images.
        rough_tol = max(params.tolerance, FALLBACK_TOLERANCE)
        log.info("%s: matching within tolerance %.3g arcsec of the initial offset did not align "
                 "every image; trying a 2-D histogram of offsets within searchrad %.3g arcsec",
                 group, params.tolerance, params.searchrad)
        rough, rough_reason = attempt(True, rough_tol, max(params.separation, 2 * rough_tol))
        if _n_aligned(rough, rough_reason) > _n_aligned(correctors, reason):
            for im, corr in zip(images, rough, strict=True):
                if corr.meta.get("fit_info", {}).get("status") == "SUCCESS":
                    im.set_wcs(corr.wcs)
            fine, fine_reason = attempt(False, params.tolerance, params.separation)
            if _n_aligned(fine, fine_reason) >= _n_aligned(rough, rough_reason):
                correctors, reason, used2dhist, refined = fine, fine_reason, True, True
            else:
                correctors, reason, used2dhist = rough, rough_reason, True
            for im, wcs in zip(images, start, strict=True):
                im.set_wcs(wcs)
    if reason is not None:
        log.warning("%s: relative alignment failed: %s", group, reason)
        return [result_row("relative", group, im.name, f"FAILED: {reason}", geom) for im in images]

    if used2dhist:
        limit = 2 * (params.searchrad + params.tolerance)
    else:
        limit = 2 * (max(abs(params.xoffset), abs(params.yoffset)) + params.tolerance)
    rows = []
    for im, corr, wcs0 in zip(images, correctors, start, strict=True):
        info = corr.meta.get("fit_info", {"status": "FAILED: unknown"})
        im.fit_info["relative"] = info
        status = info["status"]
        values = {}
        if status == "SUCCESS":
            size = _correction_size(wcs0, corr.wcs)
            if size > limit:
                status = f"FAILED: correction {size:.3g} arcsec exceeds {limit:.3g} arcsec"
                log.warning("%s: %s: %s; WCS left unchanged", group, im.name, status)
            else:
                if refined:
                    # Two fits made this WCS: report their sum, as one tweakwcs fit would.
                    values = correction_in_frame(im, wcs0, corr.wcs, geom)
                im.set_wcs(corr.wcs)
        rows.append(result_row("relative", group, im.name, status, geom,
                               fit_info=info if status == "SUCCESS" else None, **values))
    return rows


#: Tolerance (arcsec) of the fit after a 2-D histogram offset: the histogram has ~1 pixel
#: bins, so its offset is good to a fraction of a pixel (3 NIRCam SW pixels here).
FALLBACK_TOLERANCE = 0.1


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


def footprint_centre(images):
    """
    Centre of the images' footprints (mean unit vector of their corners) and the
    angular radius reaching the farthest corner, deg: ``(ra, dec, radius)``.
    """
    ra, dec = (np.concatenate(c) for c in zip(*(_footprint(im.model.meta.wcs) for im in images),
                                              strict=True))
    return sky_centre(ra, dec)


def sky_centre(ra, dec):
    """
    Centre of sky positions (mean unit vector) and the angular radius reaching the
    farthest of them, deg: ``(ra, dec, radius)``.
    """
    from ..core.wcs_utils import angular_separation_mas

    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    vec = np.array([np.cos(np.deg2rad(dec)) * np.cos(np.deg2rad(ra)),
                    np.cos(np.deg2rad(dec)) * np.sin(np.deg2rad(ra)), np.sin(np.deg2rad(dec))])
    x, y, z = vec.mean(axis=1)
    ra0 = float(np.rad2deg(np.arctan2(y, x)) % 360.0)
    dec0 = float(np.rad2deg(np.arctan2(z, np.hypot(x, y))))
    radius = float(np.max(angular_separation_mas(ra0, dec0, ra, dec))) / 3.6e6
    return ra0, dec0, radius


def visit_plane(images):
    """The tangent plane (tweakwcs corrector, arcsec) at the centre of the images' footprints."""
    from ..core.wcs_utils import tangent_plane

    ra0, dec0, _ = footprint_centre(images)
    return tangent_plane(ra0, dec0)


def _refcat_near(refcat, images, plane, margin):
    """Reference sources within the images' footprints plus ``margin`` arcsec, in plane coords."""
    xs, ys = [], []
    for im in images:
        ra, dec = _footprint(im.model.meta.wcs)
        x, y = plane.world_to_tanp(ra, dec)
        xs.append(x)
        ys.append(y)
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    rx, ry = plane.world_to_tanp(np.asarray(refcat["RA"]), np.asarray(refcat["DEC"]))
    keep = ((rx > xs.min() - margin) & (rx < xs.max() + margin)
            & (ry > ys.min() - margin) & (ry < ys.max() + margin))
    return keep, np.column_stack([rx[keep], ry[keep]])


def absolute_align(images, refcat, params, group_names, visit_name, runner=None, info=None,
                   shared=None):
    """
    Align images to an absolute reference catalog.

    Parameters
    ----------
    images : list of AlignImage
        All images of one visit and filter (after relative alignment).
    refcat : Table
        ``RA``, ``DEC`` in deg.
    params : AbsoluteParameters
        ``params.group`` chooses ``joint`` (default), ``detector`` (CEERS) or ``visit``.
    group_names : dict
        Per-detector group name -> list of indices into ``images`` (the groups of
        ``abs_group="detector"``).
    visit_name : str
        ``<visit>_<filter>``, names the visit-wide fit.
    runner : callable, optional
        ``runner(func, tasks, label=..., names=...)`` running independent group
        fits (`ceers_steps.core.engine.run_tasks` with the step's ``n_jobs``); serial if None.
    info : dict, optional
        Filled with ``terms`` (`ceers_steps.fitting.jointfit.JointFitResult.terms`) by a
        successful joint fit (and ``channel_terms``, per filter, for several filters).
    shared : dict, optional
        Detector offsets shared by the visits of a run (``joint`` only; see
        `_absolute_joint`).

    Returns
    -------
    rows : list of dict
    """
    if params.group not in ABS_GROUPS:
        raise ValueError(f"abs_group must be one of {ABS_GROUPS}, not {params.group!r}")
    confusion = confusion_problem("abs_", params.separation, params.tolerance)
    if confusion:
        log.warning("%s: absolute alignment failed: %s", visit_name, confusion)
        return [result_row("absolute", visit_name, im.name, f"FAILED: {confusion}",
                           params.fitgeometry) for im in images]
    if params.separation <= _SQRT2 * params.tolerance:
        log.warning("%s: abs_separation %.3g <= sqrt(2) x abs_tolerance %.3g: matches may be "
                    "confused", visit_name, params.separation, params.tolerance)
    if params.group == "joint":
        return _absolute_joint(images, refcat, params, visit_name, info=info, shared=shared)
    if params.group == "visit":
        groups = {visit_name: list(range(len(images)))}
    else:
        groups = group_names
    fits = []
    for name, idx in groups.items():
        # An image whose relative fit failed is not tied to its group: fit it on its own.
        tied = [i for i in idx if not images[i].status.get("relative_failed")]
        loose = [i for i in idx if images[i].status.get("relative_failed")]
        fits += ([(name, tied)] if tied else []) + [(f"{name}:{images[i].name}", [i])
                                                    for i in loose]
    rows = _run_groups(_absolute_group_task, images, [(n, idx, params) for n, idx in fits],
                       runner, "Absolute fits", extra=lambda idx: (refcat,))
    fitted = [i for i, im in enumerate(images)
              if any(r["image"] == im.name and r["stage"] == "absolute" and r["status"] == "SUCCESS"
                     for r in rows)]
    if fitted:
        plane = visit_plane(images)
        _, ref_xy = _refcat_near(refcat, images, plane, params.searchrad + params.margin)
        positions = [_plane_positions(images[i], plane) for i in fitted]
        verdicts = judge_images(positions, ref_xy, params.tolerance, params.image_minobj,
                                n_sources=[len(images[i].catalog) for i in fitted],
                                separation=params.separation)
        for i, verdict in zip(fitted, verdicts, strict=True):
            if not verdict.ok:
                _reject(images[i], verdict.reason, rows, visit_name)
    return rows


def _plane_positions(im, plane):
    """An image's in-bounds catalog through its current WCS, in ``plane`` (arcsec)."""
    cat = im.inside_catalog()
    if not len(cat):
        return np.zeros((0, 2))
    ra, dec = im.model.meta.wcs(np.asarray(cat["x"]), np.asarray(cat["y"]), with_bounding_box=False)
    x, y = plane.world_to_tanp(ra, dec)
    return np.column_stack([x, y])


def _reject(im, reason, rows, visit_name):
    """An image failed its judgement: its WCS back to the input's, its rows say why."""
    log.warning("%s: %s: not aligned: %s; its WCS is left unchanged", visit_name, im.name, reason)
    if im.original_wcs is not None and im.model.meta.wcs is not im.original_wcs:
        im.set_wcs(im.original_wcs)
    im.status["rejected"] = reason
    for row in rows:
        if row["image"] == im.name and row["status"] == "SUCCESS":
            row.update(status=f"FAILED: {reason}", nmatch=0, rmse=0.0, mae=0.0, xshift=0.0,
                       yshift=0.0, rotation=0.0, scale=1.0)


def _portable(images):
    """What a group fit needs of its images, picklable for worker processes."""
    from ..stages.tasks import ImageHeader

    return [(im.name, ImageHeader.from_model(im.model), im.catalog, im.key, dict(im.status))
            for im in images]


def _unpack(portable):
    return [AlignImage(name=name, model=header, catalog=catalog, key=key, status=status)
            for name, header, catalog, key, status in portable]


def _relative_group_task(portable, params, name, group_ids):
    images = _unpack(portable)
    rows = relative_align(images, params, name, group_ids)
    return rows, [(im.model.meta.wcs, im.status, im.fit_info) for im in images]


def _absolute_group_task(portable, params, name, refcat):
    images = _unpack(portable)
    rows = _absolute_tweakwcs(images, refcat, params, name)
    return rows, [(im.model.meta.wcs, im.status, im.fit_info) for im in images]


def _run_groups(task, images, groups, runner, label, extra=lambda idx: ()):
    """
    Run one independent group fit ``task(portable images, *extra(idx))`` per
    ``(name, indices, params)`` through ``runner`` (serially when None) and copy
    the fitted WCSs back onto ``images``.
    """
    from ..core.engine import run_tasks

    runner = runner or (lambda *a, **k: run_tasks(*a, n_jobs=1, **k))
    args = [(_portable([images[i] for i in idx]), params, name, *extra(idx))
            for name, idx, params in groups]
    results = runner(task, args, label=label, names=[name for name, _, _ in groups])
    rows = []
    for (_, idx, _), (group_rows, states) in zip(groups, results, strict=True):
        for i, (wcs, status, fit_info) in zip(idx, states, strict=True):
            if wcs is not images[i].model.meta.wcs:
                images[i].set_wcs(wcs)
            images[i].status.update(status)
            images[i].fit_info.update(fit_info)
        rows += group_rows
    return rows


def _absolute_tweakwcs(images, refcat, params, group):
    align_wcs, XYXYMatch = _tweakwcs_api()

    geom = params.fitgeometry
    plane = visit_plane(images)
    keep, _ = _refcat_near(refcat, images, plane, params.searchrad + params.margin)
    ref = refcat[keep]
    if len(ref) < params.minobj:
        status = (f"FAILED: {len(ref)} reference sources within the footprint "
                  f"(abs_minobj {params.minobj})")
        log.warning("%s: %s; WCS left unchanged", group, status)
        return [result_row("absolute", group, im.name, status, geom) for im in images]
    correctors = [im.corrector(group_id=group) for im in images]
    match = XYXYMatch(searchrad=params.searchrad, separation=params.separation,
                      use2dhist=params.use2dhist, tolerance=params.tolerance)
    tw_ref = Table({"RA": ref["RA"], "DEC": ref["DEC"]})
    if "ERR" in ref.colnames and np.any(np.asarray(ref["ERR"]) > 0):
        # tweakwcs weights: the nominal intrinsic scatter of galaxies against the
        # reference (these fits do not measure it) and each source's own error.
        tw_ref["weight"] = 1.0 / (NOMINAL_SCATTER_MAS**2 + np.asarray(ref["ERR"], float) ** 2)
    try:
        align_wcs(correctors, refcat=tw_ref,
                  enforce_user_order=True, expand_refcat=False, minobj=params.minobj,
                  match=match, fitgeom=geom, nclip=params.nclip, sigma=(params.sigma, "rmse"))
    except (ValueError, RuntimeError) as exc:
        reason = algorithm_failure(exc)
        if reason is None:
            raise
        log.warning("%s: absolute alignment failed: %s; WCS left unchanged", group, reason)
        return [result_row("absolute", group, im.name, f"FAILED: {reason}", geom) for im in images]
    limit = 2 * (params.searchrad + params.tolerance) if params.use2dhist else 2 * params.tolerance
    infos = [c.meta.get("fit_info", {"status": "FAILED: unknown"}) for c in correctors]
    status = infos[0]["status"]
    if status == "SUCCESS":
        size = max(_correction_size(c.original_wcs, c.wcs) for c in correctors)
        if size > limit:
            status = f"FAILED: correction {size:.3g} arcsec exceeds {limit:.3g} arcsec"
            log.warning("%s: %s; WCS left unchanged", group, status)
    rows = []
    for im, corr, info in zip(images, correctors, infos, strict=True):
        im.fit_info["absolute"] = info
        if status == "SUCCESS":
            im.set_wcs(corr.wcs)
        rows.append(result_row("absolute", group, im.name, status, geom,
                               fit_info=info if status == "SUCCESS" else None))
    return rows


def is_long_wavelength(detector):
    """Whether a NIRCam detector name is a long-wavelength one (``nrcalong``, ``nrcblong``)."""
    return str(detector).lower().endswith("long")


def _detector_axes(im, plane):
    """
    The orthogonal 2x2 matrix taking an offset along the image's pixel axes to the
    visit plane (the roll and parity of the detector on the sky), at its sources' centre.
    """
    cat = im.inside_catalog()
    cx, cy = (float(np.median(cat["x"])), float(np.median(cat["y"]))) if len(cat) else (0.0, 0.0)
    return pixel_axes(im.model.meta.wcs, plane, cx, cy)


def _joint_setup(images, refcat, params, detector_terms=True):
    """What a joint fit of ``images`` needs: plane, reference, positions, parameters, channels."""
    plane = visit_plane(images)
    near, ref_xy = _refcat_near(refcat, images, plane, params.searchrad + params.margin)
    ref_err = (np.asarray(refcat["ERR"], float)[near] / 1e3 if "ERR" in refcat.colnames
               else None)
    ref_group = (np.asarray(refcat["PRIORITY"], int)[near] if "PRIORITY" in refcat.colnames
                 else None)
    positions = [_plane_positions(im, plane) for im in images]
    jp = JointParameters(fitgeometry=params.fitgeometry, searchrad=params.searchrad,
                         use2dhist=params.use2dhist, separation=params.separation,
                         tolerance=params.tolerance, minobj=params.minobj,
                         significance=params.significance, detector_terms=detector_terms,
                         detector_rotations=params.detector_rotations)
    # Several filters in one fit: channels sharing the exposures' terms (joint_channels).
    filters = [im.key.filter for im in images]
    channels = filters if len(set(filters)) > 1 else None
    geometry = {im.key.filter: (params.fitgeometry_lw or params.fitgeometry)
                if is_long_wavelength(im.key.detector) else params.fitgeometry for im in images}
    return plane, ref_xy, ref_err, ref_group, positions, jp, channels, geometry


def detector_offset_estimate(images, refcat, params):
    """
    One visit's measurement of its detectors' offsets, for `combine_detector_offsets`.

    The joint fit with an offset for every detector; offsets and covariance are
    turned into each detector's pixel axes, where an instrument's placement error
    stays the same from visit to visit whatever the roll.

    Parameters
    ----------
    images : list of AlignImage
        One visit (one or several filters).
    refcat : Table
    params : AbsoluteParameters

    Returns
    -------
    (names, offsets (n, 2), covariance (2n, 2n)) in arcsec, or None when the fit failed.
    """
    plane, ref_xy, ref_err, ref_group, positions, jp, channels, geometry = _joint_setup(
        images, refcat, params, detector_terms="all")
    # The images the visit fit itself would keep: one without matches (an empty catalog)
    # leaves its detector's offset unconstrained.
    fit, rejected = _judged_fit(images, positions, ref_xy, jp, params, ref_err=ref_err,
                                ref_group=ref_group, channels=channels, geometry=geometry)
    if fit is None or not fit.success or not any(fit.detector_significant.values()):
        return None
    names = list(fit.detector_shift)
    offsets, cov = fit.detector_covariance()
    if not (np.all(np.isfinite(offsets)) and np.all(np.isfinite(cov))):
        return None
    first = {}
    for i, im in enumerate(images):
        if i not in rejected:
            first.setdefault(im.key.detector, im)
    turn = np.zeros((2 * len(names), 2 * len(names)))
    for j, name in enumerate(names):
        turn[2 * j:2 * j + 2, 2 * j:2 * j + 2] = _detector_axes(first[name], plane).T
    return names, (turn @ offsets.ravel()).reshape(-1, 2), turn @ cov @ turn.T


def _judged_fit(images, positions, ref_xy, jp, params, ref_err=None, ref_group=None,
                channels=None, geometry=None, fixed=None, fixed_cov=None):
    """
    The joint fit, then every image judged on its own matches; images that fail are
    left out and the visit refitted without them (at most three rounds).

    Returns
    -------
    fit : JointFitResult or None
        The last fit (of the images kept); None when images were still being rejected
        after three rounds (nothing is trusted) or none was left to fit.
    rejected : dict
        Image index -> the reason it was left out.
    """
    # Out before the first fit: images without a usable source (in a fit of several
    # channels, a channel with none would leave its own terms unconstrained), and images
    # whose catalog matches the reference nowhere (their chance matches would pull the
    # terms they share with good images, which the judgement would then fail too).
    screened = screen_images(positions, ref_xy, params.searchrad, params.image_minobj,
                             n_sources=[len(im.catalog) for im in images],
                             separation=params.separation)
    rejected = {i: v.reason for i, v in enumerate(screened) if not v.ok}
    fit = None
    for _ in range(3):
        kept = [i for i in range(len(images)) if i not in rejected]
        if not kept:
            break
        fit = joint_fit([positions[i] for i in kept], [images[i].key.exposure for i in kept],
                        [images[i].key.detector for i in kept], ref_xy, jp, ref_err=ref_err,
                        ref_group=ref_group,
                        channel_ids=[channels[i] for i in kept] if channels else None,
                        channel_fitgeometry=geometry, detector_offsets=fixed,
                        detector_offset_cov=fixed_cov)
        if not fit.success:
            break
        after = [positions[i] @ m.T + shift
                 for i, m, shift in zip(kept, fit.image_matrix, fit.image_shift, strict=True)]
        verdicts = judge_images(after, ref_xy, params.tolerance, params.image_minobj,
                                n_sources=[len(images[i].catalog) for i in kept],
                                offset_test=True, separation=params.separation)
        new = {i: v.reason for i, v in zip(kept, verdicts, strict=True) if not v.ok}
        if not new:
            break
        rejected.update(new)
    else:
        fit = None  # still rejecting after three rounds: nothing is trusted
    return fit, rejected


def _absolute_joint(images, refcat, params, visit_name, info=None, shared=None):
    """
    The joint visit fit, then every image judged on its own matches; images that
    fail are left out and the visit refitted without them (at most three rounds).

    ``shared``: detector -> (offset, covariance) in the detector's pixel axes
    (`combine_detector_offsets`), applied as fixed terms. Images of several filters
    (`joint_channels`) are fitted as channels sharing the exposures' terms.
    """
    from .correctors import StackedJWSTWCSCorrector

    plane, ref_xy, ref_err, ref_group, positions, jp, channels, geometry = _joint_setup(
        images, refcat, params)
    fixed, fixed_cov = None, None
    if shared:
        fixed, fixed_cov = {}, {}
        for im in images:
            det = im.key.detector
            if det in shared and det not in fixed:
                axes = _detector_axes(im, plane)
                fixed[det] = axes @ shared[det][0]
                fixed_cov[det] = axes @ shared[det][1] @ axes.T
    det_group = {im.key.detector: f"{im.key.visit_filter}_{im.key.detector}" for im in images}
    geom_of = {im.name: geometry[im.key.filter] for im in images}
    fit, rejected = _judged_fit(images, positions, ref_xy, jp, params, ref_err=ref_err,
                                ref_group=ref_group, channels=channels, geometry=geometry,
                                fixed=fixed, fixed_cov=fixed_cov)
    if fit is None or not fit.success or len(rejected) == len(images):
        status = ("FAILED: every image failed its judgement" if len(rejected) == len(images)
                  else "FAILED: images kept failing their judgement after three fits"
                  if fit is None else fit.status)
        log.warning("%s: joint absolute alignment failed: %s; WCS left unchanged",
                    visit_name, status)
        rows = []
        for stage, group, g in (("relative", lambda im: im.key.visit_filter, lambda im: "shift"),
                                ("absolute", lambda im: det_group[im.key.detector],
                                 lambda im: geom_of[im.name])):
            for i, im in enumerate(images):
                st = f"FAILED: {rejected[i]}" if i in rejected else status
                rows.append(result_row(stage, group(im), im.name, st, g(im)))
        for i in rejected:
            images[i].status["rejected"] = rejected[i]
        return rows
    for i, reason in rejected.items():
        log.warning("%s: %s: not aligned: %s; its WCS is left unchanged", visit_name,
                    images[i].name, reason)
        images[i].status["rejected"] = reason
    kept = [i for i in range(len(images)) if i not in rejected]
    index = {i: k for k, i in enumerate(kept)}

    limit = 2 * (params.searchrad + params.tolerance)
    new_wcs, rel_frame, abs_frame = {}, {}, {}
    first_kept = {}
    for i in kept:
        first_kept.setdefault(images[i].key.detector, i)
    for i in kept:
        im = images[i]
        det = im.key.detector
        corr = StackedJWSTWCSCorrector(wcs=im.model.meta.wcs, wcsinfo=im.wcsinfo())
        # The rows in tweakwcs' frame, measured on this corrector before it is corrected: an
        # image's dither term in its own frame (a relative shift), a detector's common +
        # detector terms in the frame of its first image (a tweakwcs group fit).
        rel_frame[i] = tweakwcs_frame(im, plane, np.eye(2), fit.dither_shift[im.key.exposure],
                                      "shift", frame=corr)
        matrix = fit.image_matrix[index[i]]
        if first_kept[det] == i and det in fit.detector_stats:
            # Common + detector terms (with the detector's own rotation about its centre):
            # the image's total minus its dither's.
            abs_frame[det] = tweakwcs_frame(im, plane, matrix,
                                            fit.image_shift[index[i]]
                                            - fit.dither_shift[im.key.exposure],
                                            geom_of[im.name], frame=corr)
        corr.set_correction(matrix=matrix, shift=fit.image_shift[index[i]], ref_tpwcs=plane)
        new_wcs[i] = (corr, _correction_size(corr.original_wcs, corr.wcs))
    errors = {i: _uncertainty(fit, index[i], images[i], plane) for i in kept}
    centres = np.array([_footprint_centre(images[i], plane) for i in kept])
    held = fit.holdout(centres)
    if held is not None:
        for i in kept:
            k = index[i]
            errors[i].update(holdout_err=1e3 * float(held["err"][k]),
                             holdout_n=int(held["n"][k]),
                             holdout_sigma=1e3 * float(held["sigma"][k]))
    log.info("%s: uncertainty of the aligned images (1-sigma, mas, centre / worst corner; "
             "widened x%.2f for a reference scatter from %.0f degrees of freedom): %s",
             visit_name, fit.small_sample_factor, fit.dof_reference,
             ", ".join(f"{images[i].name} {e['err_center']:.2f}/{e['err_corner']:.2f}"
                       for i, e in errors.items()))
    if held is not None:
        log.info("%s: hold-out by reference source (%d folds; mas: 1-sigma at the centre, "
                 "held-out mean residual +- its noise per axis, sources): %s", visit_name,
                 HOLDOUT_FOLDS, ", ".join(
                     f"{images[i].name} {e['holdout_err']:.2f}, "
                     f"{1e3 * float(np.hypot(*held['mean'][index[i]])):.1f} +- "
                     f"{e['holdout_sigma']:.1f} ({e['holdout_n']})" for i, e in errors.items()))
    size = max(s for _, s in new_wcs.values())
    status = "SUCCESS"
    if size > limit:
        status = f"FAILED: correction {size:.3g} arcsec exceeds {limit:.3g} arcsec"
        log.warning("%s: %s; WCS left unchanged", visit_name, status)
    elif info is not None:
        info["terms"] = fit.terms()
        if channels:
            info["channel_terms"] = {c: fit.terms(channel=c) for c in dict.fromkeys(
                channels[i] for i in kept)}
    rows = []
    for i, im in enumerate(images):
        if i in rejected:
            rows.append(result_row("relative", im.key.visit_filter, im.name,
                                   f"FAILED: {rejected[i]}", "shift"))
            continue
        if status == "SUCCESS":
            im.set_wcs(new_wcs[i][0].wcs)
        st = fit.image_stats[index[i]]
        rows.append(result_row("relative", im.key.visit_filter, im.name, status, "shift",
                               nmatch=st["nmatch"], nmatch_all=st["nmatch"], rmse=st["rmse"],
                               mae=st["mae"], xshift=rel_frame[i]["xshift"],
                               yshift=rel_frame[i]["yshift"], **errors[i]))
    for det, name in det_group.items():
        st = fit.detector_stats.get(det)
        frame = abs_frame.get(det)
        for i in (i for i, im in enumerate(images) if im.key.detector == det):
            im = images[i]
            if i in rejected or frame is None:
                reason = rejected.get(i, "every image of this detector failed its judgement")
                rows.append(result_row("absolute", name, im.name, f"FAILED: {reason}",
                                       geom_of[im.name]))
                continue
            rows.append(result_row("absolute", name, im.name, status, geom_of[im.name],
                                   nmatch=st["nmatch"], nmatch_all=st["nmatch"], rmse=st["rmse"],
                                   mae=st["mae"], detector_term=bool(fit.detector_significant[det]),
                                   **frame, **errors[i]))
    return rows


def _footprint_centre(im, plane):
    """The centre of an image's footprint through its current WCS, in ``plane`` (arcsec)."""
    ra, dec = _footprint(im.model.meta.wcs)
    return np.column_stack(plane.world_to_tanp(ra, dec)).mean(axis=0)


def _uncertainty(fit, index, im, plane):
    """The fit's 1-sigma uncertainty (mas) of an image's aligned position, centre and worst corner."""
    ra, dec = _footprint(im.model.meta.wcs)
    corners = np.column_stack(plane.world_to_tanp(ra, dec))
    sigma = 1e3 * fit.position_sigma(index, np.vstack([corners.mean(axis=0), corners]))
    return {"err_center": float(sigma[0]), "err_corner": float(np.max(sigma[1:]))}


def relative_joint(images, params, visit_name, runs, info=None):
    """
    Relative alignment with the joint model: one shift per dither, shared by the
    detectors of that exposure, from every source seen in two images.

    The first dither is the reference (its images are untouched, status
    ``REFERENCE``); each other dither's shift comes from all its detections
    linked to another image's detection of the same source (dithers of one
    detector, and neighbouring detectors where dithers overlap). Each dither's
    start value is a 2-D histogram of its offsets within ``searchrad`` against
    the first dither, so dither errors larger than ``tolerance`` are found.

    Parameters
    ----------
    images : list of AlignImage
        All images of one visit and filter.
    params : RelativeParameters
    visit_name : str
    runs : dict
        Run name (``<visit>_<filter>_<detector>``) -> image indices: names the rows.
    info : dict, optional
        Filled with ``terms`` (`ceers_steps.fitting.jointfit.JointFitResult.terms`) on success.

    Returns
    -------
    rows : list of dict
    """
    from .correctors import StackedJWSTWCSCorrector

    run_of = {i: name for name, idx in runs.items() for i in idx}
    dithers = list(dict.fromkeys(im.key.exposure for im in images))

    def failed(reason):
        return [result_row("relative", run_of[i], im.name, f"FAILED: {reason}", "shift")
                for i, im in enumerate(images)]

    if len(dithers) < 2:
        return failed("At least two exposures are required for image alignment")
    confusion = confusion_problem("", params.separation, params.tolerance)
    if confusion:
        log.warning("%s: relative alignment failed: %s", visit_name, confusion)
        return failed(confusion)
    plane = visit_plane(images)
    positions = [_plane_positions(im, plane) for im in images]
    jp = JointParameters(fitgeometry="shift", searchrad=params.searchrad,
                         separation=params.separation, tolerance=params.tolerance,
                         minobj=params.minobj, detector_terms=False)
    fit = joint_fit(positions, [im.key.exposure for im in images],
                    [im.key.detector for im in images], None, jp)
    if not fit.success:
        reason = fit.status.removeprefix("FAILED: ")
        log.warning("%s: relative alignment failed: %s", visit_name, reason)
        return failed(reason)
    if info is not None:
        info["terms"] = fit.terms()
    # A dither tied to the others by fewer than minobj detections is not aligned, nor an
    # image none of whose sources was seen in another image.
    linked = {d: fit.dither_stats[d]["nmatch"] for d in dithers}
    bad = {}
    for i, im in enumerate(images):
        d = im.key.exposure
        if d != dithers[0] and linked[d] < params.minobj:
            bad[i] = (f"only {linked[d]} detections of exposure {d} matched to other images "
                      f"(minobj {params.minobj})")
        elif fit.image_stats[i]["nmatch"] == 0:
            bad[i] = "none of its sources matched a source of another image"
    limit = 2 * (params.searchrad + params.tolerance)
    rows = []
    for i, im in enumerate(images):
        st = fit.image_stats[i]
        if i in bad:
            log.warning("%s: %s: not aligned: %s; its WCS is left unchanged", visit_name, im.name,
                        bad[i])
            rows.append(result_row("relative", run_of[i], im.name, f"FAILED: {bad[i]}", "shift"))
            continue
        values = dict(nmatch=st["nmatch"], nmatch_all=st["nmatch"], rmse=st["rmse"],
                      mae=st["mae"])
        if im.key.exposure == dithers[0]:
            rows.append(result_row("relative", run_of[i], im.name, "REFERENCE", "shift",
                                   **values))
            continue
        errors = _uncertainty(fit, i, im, plane)
        corr = StackedJWSTWCSCorrector(wcs=im.model.meta.wcs, wcsinfo=im.wcsinfo())
        frame = tweakwcs_frame(im, plane, np.eye(2), fit.image_shift[i], "shift", frame=corr)
        corr.set_correction(matrix=np.eye(2), shift=fit.image_shift[i], ref_tpwcs=plane)
        size = _correction_size(corr.original_wcs, corr.wcs)
        status = "SUCCESS"
        if size > limit:
            status = f"FAILED: correction {size:.3g} arcsec exceeds {limit:.3g} arcsec"
            log.warning("%s: %s: %s; WCS left unchanged", visit_name, im.name, status)
        else:
            im.set_wcs(corr.wcs)
        rows.append(result_row("relative", run_of[i], im.name, status, "shift",
                               xshift=frame["xshift"], yshift=frame["yshift"], **values,
                               **(errors if status == "SUCCESS" else {})))
    return rows


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


def align_visit(images, refcat=None, rel=None, abs_=None, group_by="detector", runner=None,
                info=None, shared=None):
    """
    Align all images of one visit and filter: relative per group, then absolute.

    With ``abs_.group == "joint"`` the absolute stage is one joint fit that also does
    the relative alignment; without a reference catalog, ``group_by="detector"`` and
    a ``shift`` relative geometry, the relative alignment is the joint model's
    (`relative_joint`); otherwise tweakwcs' relative fit per group.

    Parameters
    ----------
    images : list of AlignImage
    refcat : Table or None
        Absolute reference catalog (``RA``, ``DEC``); None skips the absolute stage.
    rel : RelativeParameters
    abs_ : AbsoluteParameters
    group_by : {"detector", "exposure", "all"}
        Relative alignment groups.
    runner : callable, optional
        Runs the independent group fits (relative runs, absolute per-detector fits)
        in parallel; see `absolute_align`. Results do not depend on it.
    info : dict, optional
        Filled with the joint fit's ``terms`` when one succeeded (the visit terms with
        their uncertainties, `ceers_steps.fitting.jointfit.JointFitResult.terms`).
    shared : dict, optional
        Detector -> (offset, covariance) in the detector's pixel axes, arcsec: offsets
        measured over several visits (`ceers_steps.fitting.jointfit.combine_detector_offsets`),
        fixed in the joint fit.

    With ``abs_group="joint"`` and a reference catalog, ``images`` may hold several
    filters of one visit (short and long wavelength of the same exposures): they are
    fitted together, sharing the common and dither terms.

    Returns
    -------
    rows : list of dict
        Result rows, relative first.
    """
    rel = rel or RelativeParameters()
    abs_ = abs_ or AbsoluteParameters()
    for im in images:
        im.original_wcs = im.model.meta.wcs
        problem = catalog_problem(im)
        if problem:
            log.warning("%s: %s", im.name, problem)
    keys = [im.key for im in images]
    runs, group_ids = group_images(keys, group_by)
    visit_name = images[0].key.visit_filter
    rows = []
    joint = abs_.group == "joint"
    if joint and refcat is None and group_by == "detector" and rel.fitgeometry == "shift":
        rows += relative_joint(images, rel, visit_name, runs, info=info)
    elif refcat is None or not joint:
        run_rows = _run_groups(_relative_group_task, images,
                               [(name, idx, rel) for name, idx in runs.items()], runner,
                               "Relative fits", extra=lambda idx: ([group_ids[i] for i in idx],))
        index = {im.name: i for i, im in enumerate(images)}
        for row in run_rows:
            images[index[row["image"]]].status["relative_failed"] = row["status"].startswith("FAILED")
        rows += run_rows
    if refcat is not None:
        detector_groups, _ = group_images(keys, "detector")
        rows += absolute_align(images, refcat, abs_, detector_groups, visit_name, runner=runner,
                               info=info, shared=shared)
    return rows
