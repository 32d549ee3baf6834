"""
Stage 3, fit: every unit aligned (relative, absolute, each image judged), its
results table made, and every image given its status.

The algorithms are `ceers_steps.fitting.visit.align_visit` and the joint fit's
shared detector offsets (`ceers_steps.fitting.jointfit.combine_detector_offsets`);
independent group fits run on the step's workers (``pars._run_tasks``).
"""

from dataclasses import dataclass

import numpy as np

from ..core.logs import get_logger
from ..fitting.images import result_row
from ..fitting.visit import align_visit
from ..io.results import format_summary, results_table, summary_line
from ..refcat import refcat_label
from .plan import joint_possible

__all__ = ["Fitted", "fit", "fit_distortions", "statuses"]

log = get_logger(__name__)


@dataclass
class Fitted:
    """What the fit of a run gives: rows, tables, statuses and what each fit used."""

    #: Every result row (the unusable images' first), in the order of the results table.
    rows: list
    #: Visit and filter -> its results table.
    tables: dict
    #: Image name -> (``meta.cal_step.tweakreg``, WCS name or None).
    statuses: dict
    #: Visit and filter -> the reference catalog its fit used (at its epoch).
    used_refcats: dict
    #: Visit and filter -> ``{"terms": ...}`` of its joint fit, or empty.
    visit_info: dict
    #: The detectors' residual distortion (``fit_distortion``), or None.
    distortion: object = None


def fit(pars, the_plan, units, by_visit, run):
    """
    Align every unit of the plan; FAILED images keep their input WCS exactly.

    Parameters
    ----------
    pars : CeersTweakRegStep
    the_plan : Plan
        After detection.
    units, by_visit
        From `ceers_steps.stages.plan.plan_units`.
    run : RunSettings

    Returns
    -------
    Fitted
    """
    rows = list(the_plan.failed_rows)
    failed_row = {row["image"]: row for row in the_plan.failed_rows}
    used_refcats = {vf: unit.refcat for unit in units if unit.refcat is not None
                    for vf in unit.visit_filters}
    # The user's WCSs, which FAILED images keep (a fitted distortion is inserted before the
    # visits are aligned, and their fits take that WCS as their start; a distortion_file's
    # residual is in the WCS since the plan, the user's is then input_wcs).
    inputs = {id(im): im.input_wcs if im.input_wcs is not None else im.model.meta.wcs
              for im in the_plan.images if im.model is not None}
    distortion = (fit_distortions(pars, units, run) if getattr(pars, "fit_distortion", False)
                  else None)
    shared = (shared_offsets([u.images for u in units], [u.refcat for u in units], run.abs_)
              if pars.shared_detector_terms and joint_possible(pars, run.refcat) else None)
    tables, visit_info = {}, {}
    for unit in units:
        unit_rows, info = _fit_unit(pars, unit, the_plan, run, shared)
        rows += unit_rows
        filter_of = {im.name: im.key.visit_filter for im in unit.images}
        for visit_filter in unit.visit_filters:
            visit_rows = [r for r in unit_rows
                          if filter_of.get(r["image"], visit_filter) == visit_filter]
            terms = info.get("terms")
            if info.get("channel_terms"):
                terms = info["channel_terms"].get(by_visit[visit_filter][0].key.filter
                                                  if by_visit[visit_filter] else None)
            visit_info[visit_filter] = {"terms": terms} if terms else {}
            tables[visit_filter] = visit_table(
                pars, visit_filter, the_plan.images, failed_row, visit_rows,
                used_refcats.get(visit_filter), terms, unit.visit_filters, shared)
    image_statuses = statuses(pars, the_plan.images, rows, run.refcat is not None)
    for im in the_plan.images:
        # FAILED keeps the input WCS exactly (a fit may have touched it on its way, e.g.
        # older tweakwcs re-applies an identity correction to a relative reference).
        wcs0 = inputs.get(id(im), im.original_wcs)
        if (image_statuses[im.name][0] == "FAILED" and im.model is not None
                and wcs0 is not None and im.model.meta.wcs is not wcs0):
            im.set_wcs(wcs0)
            im.original_wcs = wcs0
    return Fitted(rows=rows, tables=tables, statuses=image_statuses, used_refcats=used_refcats,
                  visit_info=visit_info, distortion=distortion)


def _fit_unit(pars, unit, the_plan, run, shared):
    """One unit's rows and fit information (``terms``, ``channel_terms``)."""
    info = {}
    if not unit.images:
        return [], info
    if the_plan.not_run:
        return [result_row("relative", im.key.visit_filter, im.name,
                           f"FAILED: {the_plan.not_run}", pars.fitgeometry)
                for im in unit.images], info
    log.info("Aligning %s: %d images", " + ".join(unit.visit_filters), len(unit.images))
    rows = align_visit(unit.images, unit.refcat, run.rel, run.abs_,
                       group_by=the_plan.relative_runs, runner=pars._run_tasks, info=info,
                       shared=shared)
    return rows, info


def visit_table(pars, visit_filter, images, failed_row, visit_rows, ref_used, terms, unit,
                shared):
    """The results table of one visit and filter, with what its fit used in its metadata."""
    failed_here = [failed_row[im.name] for im in images
                   if im.status.get("unusable") and im.key.visit_filter == visit_filter]
    meta = {"visit_filter": visit_filter, "abs_refcat": pars.abs_refcat,
            "abs_group": pars.abs_group}
    if ref_used is not None:
        meta.update(abs_refcat_catalogs=ref_used.meta.get("catalogs"),
                    abs_refcat_epoch=ref_used.meta.get("epoch"),
                    abs_refcat_sources=len(ref_used))
    if terms:
        meta["fit_terms"] = terms
    if len(unit) > 1:
        meta["fitted_with"] = [vf for vf in unit if vf != visit_filter]
    if shared:
        # In each detector's pixel axes (x, y), mas: the same in every visit.
        meta["shared_detector_offsets"] = {
            det: {"x": 1e3 * float(u[0]), "y": 1e3 * float(u[1]),
                  "err_x": 1e3 * float(np.sqrt(c[0, 0])), "err_y": 1e3 * float(np.sqrt(c[1, 1]))}
            for det, (u, c) in shared.items()}
    table = results_table(failed_here + visit_rows, meta=meta)
    log.info("Results for %s: %s", visit_filter, summary_line(table))
    log.debug("Results for %s:\n%s", visit_filter, format_summary(table))
    return table


def shared_offsets(unit_images, unit_refs, abs_):
    """
    Detector offsets measured once from every visit of the run (`shared_detector_terms`):
    each visit's joint fit with an offset per detector, combined
    (`ceers_steps.fitting.jointfit.combine_detector_offsets`). None (each visit fits its own,
    as without the option) with fewer than two visits measured, or when the combined
    offsets are not significant (``abs_significance``).
    """
    from ..fitting.absolute import detector_offset_estimate
    from ..fitting.jointfit import combine_detector_offsets, offsets_significant

    estimates = []
    for group, ref in zip(unit_images, unit_refs, strict=True):
        if not group or ref is None:
            continue
        try:
            estimate = detector_offset_estimate(group, ref, abs_)
        except Exception as exc:  # noqa: BLE001 - one visit's failure leaves it out only
            names = " + ".join(dict.fromkeys(im.key.visit_filter for im in group))
            log.warning("shared_detector_terms: %s: detector offsets not measured (%s: %s); "
                        "the other visits still share theirs", names, type(exc).__name__, exc)
            continue
        if estimate is not None:
            estimates.append(estimate)
    if len(estimates) < 2:
        log.warning("shared_detector_terms: %d visit(s) measured their detector offsets, "
                    "2 are needed: each visit fits its own", len(estimates))
        return None
    shared = combine_detector_offsets(estimates)
    if not offsets_significant(estimates, abs_.significance):
        log.info("Detector offsets from %d visits are not significant (abs_significance "
                 "%.3g): each visit tests its own", len(estimates), abs_.significance)
        return None
    log.info("Detector offsets shared by %d visits (each detector's pixel axes x, y, mas): %s",
             len(estimates), ", ".join(
                 f"{det} {1e3 * u[0]:+.2f}±{1e3 * np.sqrt(c[0, 0]):.2f} "
                 f"{1e3 * u[1]:+.2f}±{1e3 * np.sqrt(c[1, 1]):.2f}"
                 for det, (u, c) in shared.items()))
    return shared


def fit_distortions(pars, units, run):
    """
    Each detector's residual distortion from every unit of the run (``fit_distortion``),
    inserted in every image's WCS before the units are aligned; None when it cannot be
    fitted (the run goes on without it, and says why).
    """
    from ..fitting.distortion import fit_distortion

    if not joint_possible(pars, run.refcat):
        log.warning("fit_distortion needs abs_group = joint and an abs_refcat: not fitted")
        return None
    result = fit_distortion([u.images for u in units], [u.refcat for u in units], run.abs_,
                            provenance={"abs_refcat": str(pars.abs_refcat)})
    if not result.success:
        log.warning("fit_distortion: %s; the images are aligned without one", result.status)
        return result
    for det, d in result.distortions.items():
        ex, ey = d.rms_error_mas()
        rx, ry = d.rms_mas()
        if d.is_zero:
            log.info("Residual distortion of %s: none kept (%s; %d reference sources)", det,
                     d.meta.get("reason"), d.meta["n_sources"])
        else:
            log.info("Residual distortion of %s (degree <= %d, %d reference sources, %d visits): "
                     "rms x %.2f +- %.2f mas, y %.2f +- %.2f mas", det, d.meta["max_degree"],
                     d.meta["n_sources"], d.meta["n_visits"], rx, ex, ry, ey)
    return result


def statuses(pars, images, rows, absolute):
    """
    Image name -> (``meta.cal_step.tweakreg``, WCS name or None).

    jwst 3.x's meaning: COMPLETE when the step did its work on the image, FAILED
    when it could not. An image is COMPLETE when one of its own fits succeeded
    (``FIT-LVL3-<refcat>`` after an absolute fit, ``FIT-REL`` after a relative
    one); the reference image of a successful relative run is COMPLETE with its
    WCS untouched (WCS name None), as in jwst. Everything else (unreadable, no
    usable catalog, a fit that failed, an image that failed its judgement, a run
    with nothing to align) is FAILED and keeps its input WCS.
    """
    stages = {}
    group_success = set()
    for row in rows:
        stages.setdefault(row["image"], {})[row["stage"]] = row["status"]
        if row["stage"] == "relative" and row["status"] == "SUCCESS":
            group_success.add(row["group"])
    reference_groups = {row["image"]: row["group"] for row in rows
                        if row["status"].startswith("REFERENCE")}
    names = "+".join(refcat_label(pars.abs_refcat))
    out = {}
    for im in images:
        if im.status.get("unusable") or im.status.get("rejected") or im.status.get("not_run"):
            out[im.name] = ("FAILED", None)
            continue
        st = stages.get(im.name, {})
        if st.get("absolute") == "SUCCESS":
            out[im.name] = ("COMPLETE", f"FIT-LVL3-{names}")
        elif st.get("relative") == "SUCCESS":
            out[im.name] = ("COMPLETE", "FIT-REL")
        elif not absolute and reference_groups.get(im.name) in group_success:
            out[im.name] = ("COMPLETE", None)
        else:
            out[im.name] = ("FAILED", None)
    return out
