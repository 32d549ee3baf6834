"""Relative alignment: the images of a run to each other (tweakwcs, or the joint model)."""

import numpy as np

from ..core.logs import get_logger
from .frames import (
    _SQRT2,
    _n_aligned,
    _tweakwcs_api,
    _unaligned,
    algorithm_failure,
    confusion_problem,
    correction_in_frame,
    tweakwcs_frame,
)
from .images import _correction_size, _footprint, _plane_positions, result_row, visit_plane
from .jointfit import JointParameters, joint_fit
from .runner import _unpack

__all__ = ["relative_align", "relative_joint"]

log = get_logger(__name__)


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
    refused = _refused(images, params, group, group_ids)
    if refused:
        return refused
    group_ids = group_ids or [im.name for im in images]
    empty = [im.name for im in images if len(im.inside_catalog()) == 0]
    if empty:
        log.warning("%s: empty catalog(s): %s", group, ", ".join(empty))
    start = [im.model.meta.wcs for im in images]
    correctors, reason = _attempt(images, group_ids, params, params.use2dhist, params.tolerance,
                                  params.separation)
    used2dhist, refined = params.use2dhist, False
    if not params.use2dhist and _unaligned(correctors, reason):
        correctors, reason, used2dhist, refined = _histogram_fallback(
            images, group_ids, params, group, start, correctors, reason)
    if reason is not None:
        log.warning("%s: relative alignment failed: %s", group, reason)
        return [result_row("relative", group, im.name, f"FAILED: {reason}", params.fitgeometry)
                for im in images]
    if used2dhist:
        limit = 2 * (params.searchrad + params.tolerance)
    else:
        limit = 2 * (max(abs(params.xoffset), abs(params.yoffset)) + params.tolerance)
    return _relative_rows(images, correctors, start, params.fitgeometry, group, limit, refined)


def _refused(images, params, group, group_ids):
    """The rows of a run no fit can align (one image, one group, confusion), else None."""
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
    return None


def _attempt(images, group_ids, params, use2dhist, tolerance, separation):
    """One tweakwcs relative fit on fresh correctors: ``(correctors, failure reason or None)``."""
    align_wcs, XYXYMatch = _tweakwcs_api()
    correctors = [im.corrector(group_id=gid) for im, gid in zip(images, group_ids, strict=True)]
    match = XYXYMatch(searchrad=params.searchrad, separation=separation,
                      use2dhist=use2dhist, tolerance=tolerance,
                      xoffset=params.xoffset, yoffset=params.yoffset)
    try:
        align_wcs(correctors, refcat=None, enforce_user_order=params.enforce_user_order,
                  expand_refcat=params.expand_refcat, minobj=params.minobj, match=match,
                  fitgeom=params.fitgeometry, nclip=params.nclip, sigma=(params.sigma, "rmse"))
    except (ValueError, RuntimeError) as exc:
        reason = algorithm_failure(exc)
        if reason is None:
            raise
        return correctors, reason
    return correctors, None


def _histogram_fallback(images, group_ids, params, group, start, correctors, reason):
    """
    Matching within tolerance of the initial offset found too few pairs: the images are
    offset by more than the tolerance. A 2-D histogram of the pair offsets within
    searchrad finds the offset (jwst's default matching) to about a pixel; a fit with a
    tolerance that allows for that brings the images close, and the fit with the
    requested tolerance then starts from there. Kept only if it aligns more images.

    Returns ``(correctors, reason, used2dhist, refined)``; the images' WCSs are as at ``start``.
    """
    used2dhist, refined = params.use2dhist, False
    rough_tol = max(params.tolerance, FALLBACK_TOLERANCE)
    log.info("%s: matching within tolerance %.3g arcsec of the initial offset did not align "
             "every image; trying a 2-D histogram of offsets within searchrad %.3g arcsec",
             group, params.tolerance, params.searchrad)
    rough, rough_reason = _attempt(images, group_ids, params, True, rough_tol,
                                   max(params.separation, 2 * rough_tol))
    if _n_aligned(rough, rough_reason) > _n_aligned(correctors, reason):
        for im, corr in zip(images, rough, strict=True):
            if corr.meta.get("fit_info", {}).get("status") == "SUCCESS":
                im.set_wcs(corr.wcs)
        fine, fine_reason = _attempt(images, group_ids, params, False, params.tolerance,
                                     params.separation)
        if _n_aligned(fine, fine_reason) >= _n_aligned(rough, rough_reason):
            correctors, reason, used2dhist, refined = fine, fine_reason, True, True
        else:
            correctors, reason, used2dhist = rough, rough_reason, True
        for im, wcs in zip(images, start, strict=True):
            im.set_wcs(wcs)
    return correctors, reason, used2dhist, refined


def _relative_rows(images, correctors, start, geom, group, limit, refined):
    """Each image's row of a fit that ran; a correction beyond ``limit`` (arcsec) is refused."""
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


def _uncertainty(fit, index, im, plane):
    """The fit's 1-sigma uncertainty (mas) of an image's aligned position, centre and worst corner."""
    ra, dec = _footprint(im.model.meta.wcs)
    corners = np.column_stack(plane.world_to_tanp(ra, dec))
    sigma = 1e3 * fit.position_sigma(index, np.vstack([corners.mean(axis=0), corners]))
    return {"err_center": float(sigma[0]), "err_corner": float(np.max(sigma[1:]))}


def _relative_group_task(portable, params, name, group_ids):
    images = _unpack(portable)
    rows = relative_align(images, params, name, group_ids)
    return rows, [(im.model.meta.wcs, im.status, im.fit_info) for im in images]
