"""Aligning one group, or a unit of groups fitted together, as one isolated task.

A group runs `CeersAlignPipeline` (`align_group`); a unit runs each group's catalogs and
one `CeersTweakRegStep` over all their images (`align_unit`). Either writes its
associations, results, report and, last, its manifest; whatever goes wrong in one task
is that task's outcome (`GroupOutcome`), never the survey's.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io.results import results_paths
from .plan import (
    _lead,
    _tweakreg_options,
    _unit_parameters,
    default_parameter_dirs,
    group_inputs,
    group_parameters,
    load_parameters,
)

__all__ = ["GroupOutcome", "align_group", "align_unit", "image_statuses"]

log = logging.getLogger("ceers_steps.survey.survey")  # the name log lines had before the split


@dataclass
class GroupOutcome:
    """
    What happened to one group.

    ``status``: COMPLETE (every image aligned), FAILED (some or all images not aligned,
    or the group did not run; ``message`` says why) or SKIPPED (``--resume``: complete
    outputs of the same inputs and parameters found). ``n_complete``, ``n_failed``:
    images per status (None when the group did not run). ``source``: the parameter
    file used. ``lines``: what the run said, as ``(text, is_error)``.
    """

    visit: str
    filter: str
    status: str
    message: str = ""
    n_images: int = 0
    results: str | None = None
    report: str | None = None
    seconds: float = 0.0
    lines: list = field(default_factory=list)
    n_complete: int | None = None
    n_failed: int | None = None
    source: str = ""
    failed_images: dict = field(default_factory=dict)

    @property
    def name(self):
        return f"{self.visit}_{self.filter}"


def _write_detector_associations(selected, visit, filter_name, out_dir):
    """One level-3 association per detector, ``<visit>_<filter>_<detector>_asn.json``."""
    import os

    from ..core.fileio import inside_folder, write_association
    from ..io.grouping import name_part

    paths = []
    for detector, images in sorted(selected.items()):
        name = "_".join(name_part(v, k, "association") for v, k in
                        ((visit, "visit"), (filter_name, "filter"), (detector, "detector")))
        paths.append(write_association(
            inside_folder(out_dir / f"{name}_asn.json", out_dir), name,
            [os.path.relpath(p.resolve(), out_dir.resolve()) for p in images],
            asn_id=name, asn_rule="ceers_align", asn_pool="ceers-align", program=visit[2:7]))
    return paths


def _remove_if_alone(asn_paths, created_dir):
    """
    After a failed run: remove the associations written for it when nothing else was
    written beside them, and the output folder if this run created it and it is empty.
    """
    from ..io.runstate import LOCK_NAME

    if created_dir is None:
        return
    lock = created_dir / LOCK_NAME
    # (The command's lock and log are removed with the folder as the command ends.)
    others = [p for p in created_dir.rglob("*")
              if p.is_file() and p not in set(asn_paths) and p != lock and p.suffix != ".log"]
    if others:
        return
    for path in asn_paths:
        path.unlink(missing_ok=True)
    for folder in sorted((p for p in created_dir.rglob("*") if p.is_dir()), reverse=True):
        folder.rmdir()
    if not any(created_dir.iterdir()):  # else the lock's holder removes it as it lets it go
        created_dir.rmdir()


def image_statuses(group, table):
    """
    Image file name -> its status in a results table (COMPLETE or ``FAILED: <reason>``),
    for every image of ``group``: its absolute row, else its relative row; an image
    without a row is FAILED.
    """
    from ..report.html import final_rows

    final = final_rows(table) if table is not None else {}
    out = {}
    for path in group.images:
        row = final.get(path.name)
        out[path.name] = (str(row["status"]) if row is not None
                          else "FAILED: no result for this image")
    return out


def _judge_outcome(outcome, statuses):
    """
    A group that ran: COMPLETE when every image was aligned, else FAILED saying how many
    were not (a group where no image was aligned is FAILED like one that could not run).
    """
    failed = {name: s for name, s in statuses.items() if s != "COMPLETE"}
    outcome.n_complete = len(statuses) - len(failed)
    outcome.n_failed = len(failed)
    outcome.failed_images = failed
    if not statuses:
        outcome.status, outcome.message = "FAILED", "no images"
    elif not outcome.n_complete:
        outcome.status = "FAILED"
        outcome.message = f"no image aligned ({len(failed)} FAILED)"
    elif failed:
        outcome.status = "FAILED"
        outcome.message = f"{len(failed)} of {len(statuses)} images not aligned"
    else:
        outcome.status, outcome.message = "COMPLETE", ""
    return outcome


def _say_failures(outcome, say):
    """Every image not aligned, with its reason, on the console (stderr)."""
    for name, status in outcome.failed_images.items():
        say(f"ceers-align: {outcome.name}: {name}: {status}", error=True)


def align_group(group, out_dir, steps, source, options, say, out_dir_created=None):
    """
    Align one group with `CeersAlignPipeline` (the body of ``ceers-align VISIT FILTER``).

    Parameters
    ----------
    group : Group
    out_dir : Path
    steps : dict
        Step parameters (`load_parameters`); changed here as the options ask.
    source : str
        Where the parameters came from (for the message).
    options : SurveyOptions
    say : callable
        ``say(text, error=False)`` for the console.
    out_dir_created : bool, optional
        Whether this run created ``out_dir`` (default: whether it is absent now); a
        run that fails before writing anything removes a folder it created.

    Returns
    -------
    GroupOutcome
    """
    from ..core.logs import AllImagesFailedError
    from ..io.results import format_summary
    from ..steps.pipeline import CeersAlignPipeline

    start = time.perf_counter()
    visit, filter_name = group.visit, group.filter

    def outcome(status, message=""):
        return GroupOutcome(visit, filter_name, status, message, len(group.images),
                            seconds=time.perf_counter() - start, source=source)

    say(f"ceers-align: {visit} {filter_name}: {len(group.images)} images on "
        f"{len(group.selected)} detectors; parameters: {source}")
    steps.setdefault("tweakreg", {})
    message = _tweakreg_options(steps["tweakreg"], options, say)
    if message:
        return outcome("FAILED", message)
    from ..io.runstate import remove_manifest

    parameters = group_parameters(steps, options)
    inputs = group_inputs(group, steps["tweakreg"])
    out_dir = Path(out_dir)
    created = not out_dir.exists() if out_dir_created is None else out_dir_created
    try:
        pipe = CeersAlignPipeline(steps=steps, output_dir=str(out_dir),
                                  save_results=options.save_results, in_memory=False,
                                  n_jobs=options.n_jobs, scheduler=options.scheduler)
        pipe.check_parameters()  # before the associations are written
    except (ValueError, TypeError) as exc:
        say(f"ceers-align: {exc}", error=True)
        _remove_if_alone([], out_dir if created and out_dir.is_dir() else None)
        return outcome("FAILED", str(exc))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_manifest(out_dir, group.name)
    asn_paths = _write_detector_associations(group.selected, visit, filter_name, out_dir)
    for path in asn_paths:  # in the log, not on the console: the console names what to look at
        log.info("association %s", path)
    try:
        pipe.run([str(p) for p in group.images])
    except (FileNotFoundError, ValueError, TypeError, OSError, AllImagesFailedError) as exc:
        say(f"ceers-align: {exc}", error=True)
        _remove_if_alone(asn_paths, out_dir if created else None)
        return outcome("FAILED", str(exc))
    if pipe.results is not None:
        say(format_summary(pipe.results))
    results, text = results_paths(out_dir, group.name)
    say(f"ceers-align: results in {results} and {text}")
    done = _judge_outcome(outcome("COMPLETE"), image_statuses(group, pipe.results))
    _say_failures(done, say)
    done.results = str(results)
    report = getattr(pipe.tweakreg, "report_paths", {}).get(group.name)
    if report is not None:
        done.report = str(report)
        say(f"ceers-align: report {report} (open it in a browser)")
    _write_group_manifest(out_dir, group, done, inputs, parameters)
    return done


def _write_group_manifest(out_dir, group, outcome, inputs, parameters):
    """The group's manifest, last: what ``--resume`` judges it by."""
    from ..io.runstate import write_manifest

    write_manifest(out_dir, group.name, outcome.status, inputs, parameters,
                   images=len(group.images), complete=outcome.n_complete,
                   failed=outcome.n_failed, parameter_file=outcome.source)


def align_unit(groups, out_dir, options, say):
    """
    Align groups fitted together (`fit_units`): each group's catalogs with its own
    detection parameters, then one `CeersTweakRegStep` over all their images.

    The fit parameters are those of the first short-wavelength group's parameter file;
    with ``joint_channels`` the long-wavelength group's ``abs_fitgeometry`` becomes
    ``abs_fitgeometry_lw``. Outputs (catalogs, associations, WCS models, results and
    report per visit and filter) are those of `align_group`.

    Returns
    -------
    list of GroupOutcome
        One per group, in order.
    """
    from ..core.engine import worker_pool
    from ..core.logs import AllImagesFailedError
    from ..io.inputs import load_inputs
    from ..io.results import format_summary
    from ..steps.catalog_step import CatalogStep
    from ..steps.tweakreg_step import CeersTweakRegStep

    start = time.perf_counter()
    n = sum(len(g.images) for g in groups)

    sources = [""] * len(groups)

    def outcomes(status, message=""):
        return [GroupOutcome(g.visit, g.filter, status, message, len(g.images),
                             seconds=time.perf_counter() - start, source=src)
                for g, src in zip(groups, sources, strict=True)]

    loaded, tweakreg = _unit_parameters(groups, options)
    sources[:] = [source for _, source in loaded]
    lead = _lead(groups)
    what = [f"{g.name} ({len(g.images)} images; parameters: {source})"
            for g, (_, source) in zip(groups, loaded, strict=True)]
    say(f"ceers-align: fitted together: {', '.join(what)}; fit parameters of {groups[lead].name}")
    message = _tweakreg_options(tweakreg, options, say)
    if message:
        return outcomes("FAILED", message)
    from ..io.runstate import remove_manifest

    out_dir = Path(out_dir)
    engine = {"n_jobs": options.n_jobs, "scheduler": options.scheduler}
    try:
        # Every step's parameters checked before anything is written.
        catalog_steps = [CatalogStep(**{**steps.get("catalog", {}), **engine},
                                     output_dir=str(out_dir)) for steps, _ in loaded]
        step = CeersTweakRegStep(**{**tweakreg, **engine}, output_dir=str(out_dir))
        for checked in (*catalog_steps, step):
            checked.check_parameters()
    except (ValueError, TypeError) as exc:
        say(f"ceers-align: {exc}", error=True)
        return outcomes("FAILED", str(exc))
    out_dir.mkdir(parents=True, exist_ok=True)
    for g in groups:
        remove_manifest(out_dir, g.name)
    for g in groups:
        for path in _write_detector_associations(g.selected, g.visit, g.filter, out_dir):
            log.info("association %s", path)
    try:
        with worker_pool(options.n_jobs, options.scheduler or None, n_tasks=n):
            catalogs = []
            for g, catalog in zip(groups, catalog_steps, strict=True):
                catalogs += catalog.make_catalogs(load_inputs([str(p) for p in g.images]))
            inputs = load_inputs([str(p) for g in groups for p in g.images])
            step.remember_inputs(inputs)
            step.align(inputs, catalogs=catalogs, save=options.save_results, stream=True,
                       copy_inputs=False)
    except (FileNotFoundError, ValueError, TypeError, OSError, AllImagesFailedError) as exc:
        say(f"ceers-align: {exc}", error=True)
        return outcomes("FAILED", str(exc))
    if step.results is not None:
        say(format_summary(step.results))
    done = outcomes("COMPLETE")
    for g, result in zip(groups, done, strict=True):
        _judge_outcome(result, image_statuses(g, step.results))
        _say_failures(result, say)
        results, text = results_paths(out_dir, g.name)
        say(f"ceers-align: {g.name}: results in {results} and {text}")
        result.results = str(results)
        report = getattr(step, "report_paths", {}).get(g.name)
        if report is not None:
            result.report = str(report)
            say(f"ceers-align: report {report} (open it in a browser)")
    for g, result, (steps, _) in zip(groups, done, loaded, strict=True):
        parameters = group_parameters({"catalog": steps.get("catalog", {}), "tweakreg": tweakreg},
                                      options, [o.name for o in groups if o is not g])
        _write_group_manifest(out_dir, g, result, group_inputs(g, tweakreg), parameters)
    return done


def _unit_task(unit, out_dir, options):
    """Groups fitted together, isolated like `_group_task`; a list of outcomes."""
    if len(unit) == 1 and not (options.joint_channels or options.shared_detector_terms
                               or options.fit_distortion):
        return [_group_task(unit[0], out_dir, options)]
    lines = []

    def say(text, error=False):
        lines.append((text, error))

    start = time.perf_counter()
    try:
        results = align_unit(unit, out_dir, options, say)
    except Exception as exc:  # noqa: BLE001 - one unit must never stop the others
        text = " ".join(str(exc).split()) or type(exc).__name__
        results = [GroupOutcome(g.visit, g.filter, "FAILED", f"{type(exc).__name__}: {text}",
                                len(g.images), seconds=time.perf_counter() - start)
                   for g in unit]
        lines.append((f"ceers-align: {' + '.join(g.name for g in unit)}: FAILED: "
                      f"{results[0].message}", True))
    results[0].lines = lines
    return results


def _group_task(group, out_dir, options):
    """One group of a survey, isolated: whatever goes wrong is its outcome, never the survey's."""
    lines = []

    def say(text, error=False):
        lines.append((text, error))

    start = time.perf_counter()
    try:
        steps, source = load_parameters(options.params, group.visit, group.filter,
                                        options.params_dirs or default_parameter_dirs())
        result = align_group(group, out_dir, steps, source, options, say)
    except Exception as exc:  # noqa: BLE001 - one group must never stop the others
        text = " ".join(str(exc).split()) or type(exc).__name__
        result = GroupOutcome(group.visit, group.filter, "FAILED", f"{type(exc).__name__}: {text}",
                              len(group.images), seconds=time.perf_counter() - start)
        lines.append((f"ceers-align: {group.name}: FAILED: {result.message}", True))
    result.lines = lines
    return result
