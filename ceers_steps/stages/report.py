"""
Stage 5, report: the HTML alignment report and DS9 regions of every visit and
filter (`ceers_steps.report.html`, `ceers_steps.report.diagnostics`).

A report that cannot be made is logged and the run goes on: it describes the
alignment, it is not part of it.
"""

import time

from ..core.logs import get_logger
from .write import not_aligned_reason

__all__ = ["report_enabled", "write_reports"]

log = get_logger(__name__)


def report_enabled(pars):
    """
    ``save_report``; None means on inside a pipeline that says it writes one
    (``writes_alignment_report``: `CeersAlignPipeline`, so ``ceers_align``,
    ``ceers-align``, ``calwebb_image3_ceers``), off otherwise: alone, or swapped
    into jwst's own pipelines, the step writes what jwst's TweakRegStep writes.
    """
    on = getattr(pars, "save_report", None)
    if on is None:
        return bool(getattr(pars.parent, "writes_alignment_report", False))
    return bool(on)


def write_reports(pars, images, fitted):
    """
    Write the report of every visit and filter of ``fitted`` (`ceers_steps.stages.fit.Fitted`).

    Returns
    -------
    dict
        Visit and filter -> the report written (empty when reports are off).
    """
    paths = {}
    if not report_enabled(pars):
        return paths
    failures = {im.name: not_aligned_reason(fitted.rows, im.name) for im in images}
    parameters = pars.get_pars() if hasattr(pars, "get_pars") else {}
    distortion = _distortion_section(pars, fitted)
    for visit_filter, table in fitted.tables.items():
        path = _visit_report(pars, visit_filter, table, images, fitted, failures, parameters,
                             distortion)
        if path is not None:
            paths[visit_filter] = path
    return paths


def _distortion_section(pars, fitted):
    """
    The run's residual-distortion section (``fit_distortion``), made once for every visit
    report; empty without one, or when it cannot be made (logged).
    """
    if getattr(fitted, "distortion", None) is None:
        return ""
    from ..report.distortion import distortion_section

    start = time.perf_counter()
    try:
        section = distortion_section(fitted.distortion,
                                     paths=getattr(pars, "distortion_paths", None) or {},
                                     base=pars.output_dir_path(), scope="run")
    except Exception as exc:  # noqa: BLE001 - the report must never fail the alignment
        log.warning("residual-distortion section of the reports not made: %s: %s",
                    type(exc).__name__, exc)
        return ""
    log.info("Residual-distortion section of the reports: %.2f s", time.perf_counter() - start)
    return section


def _visit_report(pars, visit_filter, table, images, fitted, failures, parameters,
                  distortion=""):
    from ..report.diagnostics import grade_images, visit_residuals
    from ..report.html import final_rows, regions_dir, report_path, write_regions, write_report

    start = time.perf_counter()
    out_dir = pars.output_dir_path()
    group = [im for im in images if im.key.visit_filter == visit_filter]
    refcat = fitted.used_refcats.get(visit_filter)
    tolerance = pars.abs_tolerance if refcat is not None else pars.tolerance
    searchrad = pars.abs_searchrad if refcat is not None else pars.searchrad
    try:
        residuals = visit_residuals(group, fitted.statuses, refcat, tolerance)
        final = final_rows(table)
        grades = grade_images(residuals, {n: float(r["err_corner"]) for n, r in final.items()},
                              searchrad=searchrad, failures=failures,
                              holdout={n: (r["holdout_err"], r["holdout_sigma"],
                                           r["err_center"], r["holdout_n"])
                                       for n, r in final.items()
                                       if int(r["holdout_n"]) > 0})
        regions = write_regions(regions_dir(out_dir, visit_filter), residuals)
        path = write_report(report_path(out_dir, visit_filter), table, residuals, grades,
                            terms=fitted.visit_info.get(visit_filter, {}).get("terms"),
                            parameters=parameters, regions=regions,
                            refcat=pars.abs_refcat if refcat is not None else None,
                            distortion=distortion)
    except Exception as exc:  # noqa: BLE001 - the report must never fail the alignment
        log.warning("%s: alignment report not written: %s: %s", visit_filter,
                    type(exc).__name__, exc)
        return None
    counts = {g: sum(x.grade == g for x in grades) for g in ("good", "check", "poor")}
    log.info("%s: alignment report %s (%s; %.2f s)", visit_filter, path,
             ", ".join(f"{n} {g}" for g, n in counts.items()), time.perf_counter() - start)
    # One warning line per visit: the images graded down, grouped by grade and
    # reason (a visit-wide reason, too few reference sources, names its images once).
    same = {}
    for g in grades:
        if g.grade != "good":
            same.setdefault((g.grade, g.reason), []).append(g.name)
    if same:
        log.warning("%s: %s", visit_filter, "; ".join(
            f"{', '.join(names)} graded {grade}: {reason}"
            for (grade, reason), names in same.items()))
    return path

