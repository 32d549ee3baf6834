"""A survey's visits and filters: find them among the cal files, align each, summarise.

`ceers-align VISIT FILTER` aligns one group (a visit in one filter) and
`ceers-align --all` every group it finds in a folder, by the images' headers.
Each group runs as one task (`align_group`): its parameter file, one association
per detector, `CeersAlignPipeline` streaming its images, its results tables,
WCS models and report, all in the output folder, whose file names never collide
between groups (they carry the image or the visit and filter). Groups run in
parallel over local processes or a Dask scheduler (`ceers_steps.core.engine`); one
group that fails is recorded and the others go on. A group is COMPLETE when every
one of its images was aligned, FAILED otherwise (the message says how many were
not). Each group's manifest (`ceers_steps.io.runstate`), written last, records its
inputs, parameters and outcome: ``--resume`` leaves a group alone only when it was
COMPLETE with the same inputs and parameters. The survey ends with
``survey_summary.ecsv`` (one row per image), ``survey_crossfilter.ecsv`` (the filters of
each visit compared on the sky: `ceers_steps.report.crossfilter`) and ``survey_index.html``
(a link to every group's report).

Groups may be fitted together (`fit_units`): with ``joint_channels`` the filters of
one visit that share exposures (NIRCam's SW and LW images taken at the same time),
with ``shared_detector_terms`` every group of the run (detector offsets measured once
from all visits). Such a unit runs as one task (`align_unit`): each group's catalogs
with its own parameter file's detection settings, then one `CeersTweakRegStep` over
the unit with the fit parameters of its first short-wavelength group (the long-
wavelength group's ``abs_fitgeometry`` as ``abs_fitgeometry_lw``); outputs per group
as before. ``--resume`` redoes a unit unless all its groups are complete (`group_complete`).
"""

import logging
from pathlib import Path

from ..io.results import results_paths
from .align import GroupOutcome, _unit_task, align_group, align_unit, image_statuses
from .find import Group, discover_groups, select_images
from .plan import (
    SurveyOptions,
    _planned_parameters,
    default_parameter_dirs,
    existing_outputs,
    fit_units,
    group_complete,
    group_inputs,
    group_parameters,
    load_parameters,
)
from .summary import survey_summary

__all__ = ["Group", "GroupOutcome", "SurveyOptions", "align_group", "align_unit",
           "default_parameter_dirs", "discover_groups", "fit_units", "group_complete",
           "existing_outputs", "group_inputs", "group_parameters", "image_statuses",
           "load_parameters", "run_survey", "select_images", "survey_summary"]

log = logging.getLogger("ceers_steps.survey.survey")  # the name log lines had before the split


def run_survey(groups, out_dir, options, resume=False, n_jobs=None, scheduler=""):
    """
    Align every group, in parallel, and write the survey summary and index.

    Parameters
    ----------
    groups : list of Group
    out_dir : Path
    options : SurveyOptions
        For each group's pipeline (its ``n_jobs`` is 1 when groups run in parallel).
    resume : bool
        Leave alone the groups (fitted together: the units) whose manifest says COMPLETE
        for the same inputs and parameters as this run's (`group_complete`).
    n_jobs, scheduler
        Worker processes (or Dask scheduler) over the groups.

    Returns
    -------
    outcomes : list of GroupOutcome
    summary, index : Path
    """
    import time

    from ..core.engine import effective_jobs, run_tasks

    started = time.time()
    out_dir = Path(out_dir)
    todo, outcomes = [], {}
    from ..io.runstate import read_manifest

    for unit in fit_units(groups, options.joint_channels, options.shared_detector_terms,
                          options.fit_distortion):
        # A unit is fitted as a whole: redone unless every group of it is complete, for
        # the same inputs and the same parameters as now.
        planned = _planned_parameters(unit, options) if resume else None
        if planned and all(group_complete(out_dir, group, parameters, inputs)
                           for group, (parameters, inputs) in zip(unit, planned, strict=True)):
            for group in unit:
                record = read_manifest(out_dir, group.name) or {}
                outcomes[group.name] = GroupOutcome(
                    group.visit, group.filter, "SKIPPED",
                    "complete for the same inputs and parameters (--resume)",
                    len(group.images), results=str(results_paths(out_dir, group.name)[0]),
                    n_complete=record.get("complete"), n_failed=record.get("failed"),
                    source=record.get("parameter_file") or "")
                log.info("%s: complete for the same inputs and parameters: not redone "
                         "(--resume)", group.name)
        else:
            todo.append(unit)
    parallel = bool(scheduler) or effective_jobs(n_jobs, len(todo)) > 1
    inner = SurveyOptions(**{**options.__dict__, "n_jobs": 1 if parallel else options.n_jobs,
                             "scheduler": "" if parallel else options.scheduler})
    results = run_tasks(_unit_task, [(unit, out_dir, inner) for unit in todo], n_jobs=n_jobs,
                        scheduler=scheduler or None, label="Survey groups",
                        names=[" + ".join(g.name for g in unit) for unit in todo])
    for unit_results in results:
        for result in unit_results:
            outcomes[result.name] = result
    ordered = [outcomes[g.name] for g in groups]
    from ..report.html import report_path

    for result in ordered:
        path = report_path(out_dir, result.name)
        if result.status == "SKIPPED" and path.exists():
            result.report = str(path)
    from ..report.crossfilter import write_survey_crossfilter

    # The filters of each visit compared on the sky, from what the groups left on disk.
    crossfilter = write_survey_crossfilter(out_dir, [(g.visit, g.filter, det, p.name)
                                                     for g in groups for det in sorted(g.selected)
                                                     for p in g.selected[det]])
    distortions = (_run_distortions(out_dir, ordered, started) if options.fit_distortion
                   else None)
    summary = survey_summary(ordered, groups, out_dir, crossfilter, distortions)
    from ..report.html import write_survey_index

    section = ""
    if distortions:
        from ..report.distortion import distortion_section

        section = distortion_section(distortions=distortions, base=out_dir, scope="survey")
    index = write_survey_index(out_dir / "survey_index.html", ordered, summary, crossfilter,
                               distortion=section)
    return ordered, out_dir / "survey_summary.ecsv", index


def _run_distortions(out_dir, outcomes, started):
    """
    The run's residual distortion (``--fit-distortion``), read back from its files in
    ``<out_dir>/distortion`` (so ``--resume`` finds it too; the fit's maps before and after
    are in the visit reports only): detector -> DetectorDistortion, or None when there are
    none, or when they are older than this run although it fitted again (a fit that failed
    writes no file, and an earlier run's must not stand for it).
    """
    from ..io.distortion_files import read_distortion_files
    from ..stages.write import DISTORTION_DIR

    folder = Path(out_dir) / DISTORTION_DIR
    if not folder.is_dir():
        return None
    try:
        found = read_distortion_files(folder)
    except (OSError, ValueError) as exc:
        log.warning("residual distortion not in the survey index: %s", exc)
        return None
    refitted = any(o.status != "SKIPPED" for o in outcomes)
    stale = [d for d, v in found.items() if Path(v.meta["file"]).stat().st_mtime < started]
    if refitted and stale:
        log.warning("residual distortion not in the survey index: %s predate this run, whose "
                    "fit wrote none", ", ".join(Path(found[d].meta["file"]).name for d in stale))
        return None
    return found
