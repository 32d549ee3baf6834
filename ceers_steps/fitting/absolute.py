"""
Absolute alignment to a reference catalog: the joint visit fit with every image
judged (``abs_group = joint``), or tweakwcs fits per detector group or per visit.
"""

import numpy as np
from astropy.table import Table

from ..core.logs import get_logger
from .frames import _SQRT2, _tweakwcs_api, algorithm_failure, confusion_problem, tweakwcs_frame
from .images import (
    _correction_size,
    _detector_axes,
    _footprint_centre,
    _plane_positions,
    _refcat_near,
    is_long_wavelength,
    result_row,
    visit_plane,
)
from .jointfit import HOLDOUT_FOLDS, JointParameters, joint_fit
from .judge import judge_images, screen_images
from .parameters import ABS_GROUPS
from .relative import _uncertainty
from .runner import _run_groups, _unpack

__all__ = ["absolute_align", "detector_offset_estimate"]

log = get_logger(__name__)


#: Scatter of matches about the reference beyond the reference's own errors (galaxy
#: centroids between bands and instruments), mas: weights of the tweakwcs fits.
NOMINAL_SCATTER_MAS = 10.0


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
    plane, ref_xy, ref_err, ref_group, positions, jp, channels, geometry = _joint_setup(
        images, refcat, params)
    fixed, fixed_cov = _fixed_offsets(images, shared, plane) if shared else (None, None)
    det_group = {im.key.detector: f"{im.key.visit_filter}_{im.key.detector}" for im in images}
    geom_of = {im.name: geometry[im.key.filter] for im in images}
    fit, rejected = _judged_fit(images, positions, ref_xy, jp, params, ref_err=ref_err,
                                ref_group=ref_group, channels=channels, geometry=geometry,
                                fixed=fixed, fixed_cov=fixed_cov)
    if fit is None or not fit.success or len(rejected) == len(images):
        return _joint_failed(images, fit, rejected, det_group, geom_of, visit_name)
    for i, reason in rejected.items():
        log.warning("%s: %s: not aligned: %s; its WCS is left unchanged", visit_name,
                    images[i].name, reason)
        images[i].status["rejected"] = reason
    kept = [i for i in range(len(images)) if i not in rejected]
    index = {i: k for k, i in enumerate(kept)}

    limit = 2 * (params.searchrad + params.tolerance)
    new_wcs, rel_frame, abs_frame = _joint_corrections(images, kept, index, fit, plane, geom_of)
    errors = _joint_errors(images, kept, index, fit, plane, visit_name)
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
    return rows + _joint_absolute_rows(images, fit, rejected, status, abs_frame, errors,
                                       det_group, geom_of)


def _fixed_offsets(images, shared, plane):
    """Shared detector offsets (each detector's pixel axes) turned into the visit plane."""
    fixed, fixed_cov = {}, {}
    for im in images:
        det = im.key.detector
        if det in shared and det not in fixed:
            axes = _detector_axes(im, plane)
            fixed[det] = axes @ shared[det][0]
            fixed_cov[det] = axes @ shared[det][1] @ axes.T
    return fixed, fixed_cov


def _joint_failed(images, fit, rejected, det_group, geom_of, visit_name):
    """The rows of a joint fit that failed (or left no image): every WCS left unchanged."""
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


def _joint_corrections(images, kept, index, fit, plane, geom_of):
    """
    Each kept image's corrected corrector and correction size (arcsec), and the fit in
    tweakwcs' frame: per image its dither term, per detector its common + detector terms.
    """
    from .correctors import StackedJWSTWCSCorrector

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
    return new_wcs, rel_frame, abs_frame


def _joint_errors(images, kept, index, fit, plane, visit_name):
    """Each kept image's uncertainty (mas) and hold-out estimate, logged."""
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
    return errors


def _joint_absolute_rows(images, fit, rejected, status, abs_frame, errors, det_group, geom_of):
    """The absolute rows of a joint fit: per detector, its terms in tweakwcs' frame."""
    rows = []
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


def _absolute_group_task(portable, params, name, refcat):
    images = _unpack(portable)
    rows = _absolute_tweakwcs(images, refcat, params, name)
    return rows, [(im.model.meta.wcs, im.status, im.fit_info) for im in images]
