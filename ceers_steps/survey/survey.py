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
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Group", "GroupOutcome", "SurveyOptions", "align_group", "align_unit",
           "default_parameter_dirs", "discover_groups", "fit_units", "group_complete",
           "existing_outputs", "group_inputs", "group_parameters", "image_statuses",
           "load_parameters", "run_survey", "select_images", "survey_summary"]

from ..io.results import results_paths

log = logging.getLogger("ceers_steps.survey.survey")

VISIT_ID = re.compile(r"jw\d{11}")


def default_parameter_dirs():
    """Where ``ceers-align`` looks for ``<visit>_<filter>.asdf`` when no --params is given."""
    import os

    dirs = []
    if os.environ.get("CEERS_PARAMETER_FILES"):
        dirs.append(Path(os.environ["CEERS_PARAMETER_FILES"]))
    dirs.append(Path.cwd() / "parameter_files")
    dirs.append(Path(__file__).resolve().parents[1] / "parameter_files")  # the package's, installed too
    return dirs


def select_images(input_dir, visit, filter_name, suffix="cal"):
    """
    The ``<visit>_*_<suffix>.fits`` images in ``input_dir`` whose filter is ``filter_name``.

    The filter is the one that defines the bandpass (`ceers_steps.io.grouping.bandpass_filter`:
    PUPIL when it holds a filter, as F470N behind F444W, else FILTER), read from the FITS
    header itself. A file whose header cannot be read, or whose FILTER, PUPIL, DETECTOR or
    visit keys are not valid values (they name output files), is reported on stderr as
    FAILED with the reason and left out; so is a copy of a file selected before it
    (`_copy_of`: the same exposure keys, exposure start, time and pointing, or pixels).

    Returns
    -------
    selected : dict
        Detector -> sorted list of paths.
    other_filters : set of str
        Filters of that visit's images that were not selected (for messages).
    """
    from astropy.io import fits

    from ..io.grouping import image_key

    selected, others, seen = {}, set(), {}
    for path in sorted(Path(input_dir).glob(f"{visit}_*_{suffix}.fits")):
        try:
            header = fits.getheader(path, 0)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the run
            print(f"ceers-align: {path}: FAILED: cannot read its FITS header ({exc}); "
                  "left out", file=sys.stderr)
            continue
        key = image_key(None, path.name, header=header)
        if key.problem:
            print(f"ceers-align: {path}: FAILED: {_after_name(key.problem, path)}; left out",
                  file=sys.stderr)
            continue
        if key.filter != filter_name:
            others.add(key.filter if key.filter != "unknown" else "<no FILTER>")
            continue
        copy = _copy_of(seen, path, header, visit, key.filter, key.detector)
        if copy:
            print(f"ceers-align: {path}: left out: {copy}", file=sys.stderr)
            continue
        selected.setdefault(key.detector, []).append(path)
    return selected, others


def _after_name(problem, path):
    """A problem message without the file name it starts with (the caller names the path)."""
    return "; ".join(p.removeprefix(f"{path.name}: ") for p in problem.split("; "))


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


def load_parameters(params, visit, filter_name, params_dirs):
    """
    The pipeline's step parameters, and where they came from.

    Returns
    -------
    steps : dict
        ``{"catalog": {...}, "tweakreg": {...}}``
    source : str
    """
    from .cfgconvert import read_cfg

    if params is None:
        for d in params_dirs:
            candidate = d / f"{visit}_{filter_name}.asdf"
            if candidate.is_file():
                params = candidate
                break
        else:
            return {}, "defaults (no parameter file found for this visit and filter)"
    params = Path(params)
    if not params.is_file():
        raise FileNotFoundError(f"parameter file not found: {params}")
    if params.suffix.lower() == ".cfg":
        sections = {s.visit: s for s in read_cfg(params)}
        if visit not in sections:
            raise ValueError(f"{params}: no section [{visit}] (sections: "
                             f"{', '.join(sorted(sections))})")
        section = sections[visit]
        return {k: dict(v) for k, v in section.steps.items()}, f"{params} [{visit}]"
    return _read_parameter_file(params), str(params)


def _read_parameter_file(path):
    """Step parameters of a ceers_align ASDF parameter file, checked by stpipe itself."""
    from stpipe import Step

    from ..steps.pipeline import CeersAlignPipeline

    # Validation only: the run itself creates (and logs) the pipeline once.
    logging.disable(logging.INFO)
    try:
        pipe = Step.from_config_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable stpipe parameter file: {exc}") from None
    finally:
        logging.disable(logging.NOTSET)
    if not isinstance(pipe, CeersAlignPipeline):
        raise ValueError(f"{path}: a parameter file for {type(pipe).__name__}, "
                         "not for ceers_align (CeersAlignPipeline)")
    import asdf

    with asdf.open(path) as af:
        return {step["name"]: dict(step.get("parameters", {})) for step in af.tree.get("steps", [])}




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




# --- copies ------------------------------------------------------------------------------------

def _exposure_fingerprints(path, header, visit, filt, detector):
    """
    What identifies the exposure and detector a file holds, each with its name for messages:
    its header keys (VISITGRP, SEQ_ID, ACT_ID, EXPOSURE); its exposure start, exposure time
    and pointing (EXPSTART, EFFEXPTM, the SCI header's RA_REF and DEC_REF); its pixels (a
    digest of every 32nd-or-so row of SCI, read through a memory map: ~0.5 MB a file).

    A copy whose header keys were removed still has the same start, time and pointing, or the
    same pixels. Frames without varying finite pixels (blank, all NaN) have no pixel print.
    """
    import hashlib

    import numpy as np
    from astropy.io import fits

    def value(key):
        try:
            return str(header.get(key, "")).strip()
        except Exception:  # noqa: BLE001 - an unparsable card identifies nothing
            return ""

    prints = []
    exposure = tuple(value(k) for k in ("VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE"))
    if any(exposure):
        prints.append((("keys", visit, filt, detector, exposure), "the same exposure and detector"))
    try:
        with fits.open(path, memmap=True) as hdul:
            sci = hdul["SCI"]
            timing = [header.get("EXPSTART"), header.get("EFFEXPTM"), sci.header.get("RA_REF"),
                      sci.header.get("DEC_REF")]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                   for v in timing):
                prints.append((("timing", visit, filt, *(round(float(v), 7) for v in timing)),
                               "the same exposure start, exposure time and pointing (EXPSTART, "
                               "EFFEXPTM, RA_REF, DEC_REF)"))
            data = sci.data
            if data is not None and data.ndim == 2:
                sample = np.ascontiguousarray(data[:: max(1, data.shape[0] // 64)], dtype=">f4")
                finite = sample[np.isfinite(sample)]
                if finite.size and finite.min() != finite.max():
                    digest = hashlib.sha256(sample.tobytes()).hexdigest()
                    prints.append((("pixels", visit, filt, data.shape, digest),
                                   "the same pixels (SCI)"))
            del data
    except Exception:  # noqa: BLE001 - a file whose pixels cannot be read fails in the fit
        pass
    return prints


def _copy_of(seen, path, header, visit, filt, detector):
    """
    Why ``path`` is a copy of a file seen before (its exposure, timing or pixels), naming
    that file; None when it is not. ``seen`` collects the fingerprints of kept files.

    A copy of a cal file under another name would enter its visit's fit twice: every source
    linked to itself at zero residual, the centroid scatter (and so the reported
    uncertainties) underestimated, the true error larger.
    """
    prints = _exposure_fingerprints(path, header, visit, filt, detector)
    for fingerprint, what in prints:
        first = seen.get(fingerprint)
        if first is not None and first != path:
            return (f"{what} as {first.name} (a copy?), which is used: no source may "
                    "count twice")
    for fingerprint, _ in prints:
        seen[fingerprint] = path
    return None


# --- groups -----------------------------------------------------------------------------------

@dataclass
class Group:
    """One visit in one filter: its images by detector."""

    visit: str
    filter: str
    selected: dict  # detector -> sorted list of Path

    @property
    def name(self):
        return f"{self.visit}_{self.filter}"

    @property
    def images(self):
        return [p for det in sorted(self.selected) for p in self.selected[det]]


def _visit_of(key, path):
    """The `image_key` visit (header, else file name), else the file name's first field."""
    visit = key.visit if key.visit != "unknown" else path.name.split("_")[0].lower()
    return visit if VISIT_ID.fullmatch(visit) else None


def discover_groups(input_dir, suffix="cal"):
    """
    Every visit and filter among the ``*_<suffix>.fits`` of ``input_dir``, by header.

    The visit is PROGRAM, OBSERVTN and VISIT (``jw01345001001``; the file name's
    first field when they are missing), the filter the one that defines the bandpass
    (PUPIL when it holds a filter, else FILTER), the detector DETECTOR. These values
    name output files: an image with an invalid one (`ceers_steps.io.grouping.name_part`)
    is left out as FAILED with the reason.

    Returns
    -------
    groups : list of Group
        Sorted by visit and filter.
    problems : list of (Path, str)
        Files left out and why (unreadable header, invalid header values, no visit id, no
        FILTER, a copy of a file found before it: `_copy_of`).
    """
    from astropy.io import fits

    from ..io.grouping import image_key

    found, problems = {}, []
    # Of a file and its copy (`_copy_of`), the first in this order is kept: files named
    # as the archive names them (jw...) first, then by name.
    seen = {}
    paths = sorted(Path(input_dir).glob(f"*_{suffix}.fits"),
                   key=lambda p: (not p.name.startswith("jw"), p.name))
    for path in paths:
        try:
            header = fits.getheader(path, 0)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the survey
            problems.append((path, f"cannot read its FITS header ({exc})"))
            continue
        key = image_key(None, path.name, header=header)
        if key.problem:
            # Header values name output files: an invalid one fails the image, not the survey.
            problems.append((path, f"FAILED: {_after_name(key.problem, path)}"))
            continue
        visit, filt, detector = _visit_of(key, path), key.filter, key.detector
        if visit is None or filt == "unknown":
            problems.append((path, "no visit id (PROGRAM/OBSERVTN/VISIT) or no FILTER in its header"))
            continue
        copy = _copy_of(seen, path, header, visit, filt, detector)
        if copy:
            problems.append((path, copy))
            continue
        found.setdefault((visit, filt), {}).setdefault(detector, []).append(path)
    groups = [Group(v, f, {d: sorted(p) for d, p in sel.items()})
              for (v, f), sel in sorted(found.items())]
    return groups, problems


@dataclass
class SurveyOptions:
    """What every group is run with (the ``ceers-align`` options)."""

    params: str | None = None
    params_dirs: list = field(default_factory=list)
    abs_refcat: str | None = None
    save_results: bool = False
    report: bool = True
    n_jobs: int | None = None
    scheduler: str = ""
    joint_channels: bool = False
    shared_detector_terms: bool = False


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


def existing_outputs(group, out_dir, save_results=False):
    """
    The files of ``group`` that an earlier run left in ``out_dir`` and this run would
    write again (associations, catalogs, results, report, regions, manifest, WCS
    models, aligned images with ``save_results``); never its inputs.
    """
    from ..io.runstate import manifest_path
    from ..io.wcs_models import exposure_base
    from ..report.html import regions_dir, report_path

    out_dir = Path(out_dir)
    inputs = {p.resolve() for p in group.images}
    candidates = [*results_paths(out_dir, group.name), report_path(out_dir, group.name),
                  regions_dir(out_dir, group.name), manifest_path(out_dir, group.name),
                  out_dir / f"{group.name}_abs_refcat.ecsv",
                  *(out_dir / f"{group.name}_{det}_asn.json" for det in sorted(group.selected))]
    for path in group.images:
        base = exposure_base(path.name)
        candidates += [out_dir / path.name.replace(".fits", "_cat.ecsv"),
                       out_dir / "tweakreg_wcs" / f"{base}_tweakreg.asdf"]
        if save_results:
            candidates.append(out_dir / f"{base}_tweakreg.fits")
    return [p for p in candidates if p.exists() and p.resolve() not in inputs]


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


def group_complete(out_dir, group, parameters=None, inputs=None):
    """
    Whether ``group`` has complete outputs in ``out_dir`` (``--resume`` leaves it alone):
    its manifest (`ceers_steps.io.runstate`, written last) says COMPLETE for the same input
    files (path, size, modification time) and, when given, the same ``parameters``; and
    its results table is readable with a row for every one of its images. A run killed
    half-way has no manifest (it removes an earlier one before it starts), so partial
    files never count.

    Parameters
    ----------
    out_dir : Path
    group : Group
    parameters : dict, optional
        The parameters this run would use (`group_parameters`); None: not compared.
    inputs : list of Path, optional
        Every input of the group (images and reference catalogs); default its images
        and the reference catalogs its parameters name.
    """
    from ..io.results import read_results_table
    from ..io.runstate import manifest_matches, read_manifest

    if parameters is None:
        record = read_manifest(out_dir, group.name)
        parameters = (record or {}).get("parameters") or {}
    if inputs is None:
        inputs = group_inputs(group, (parameters.get("steps") or {}).get("tweakreg") or {})
    ok, _ = manifest_matches(out_dir, group.name, inputs, parameters)
    if not ok:
        return False
    table = read_results_table(results_paths(out_dir, group.name)[0])
    if table is None:
        return False
    listed = {str(name) for name in table["image"]}
    return all(p.name in listed for p in group.images)


def group_parameters(steps, options, fitted_with=()):
    """
    What decides a group's result, for its manifest: its step parameters (after the
    options are applied), the images it saves, and the groups it is fitted with.
    """
    from ..io.runstate import parameters_record

    # A copy as plain values: what the run is given, whatever the run does to its dicts.
    return parameters_record({"steps": steps, "save_results": bool(options.save_results),
                              "fitted_with": sorted(fitted_with)})


def group_inputs(group, tweakreg):
    """A group's input files: its images and the reference catalog files it reads."""
    from ..refcat.refcats import named_catalog, refcat_paths

    spec = tweakreg.get("abs_refcat") or ""
    refcats = [] if not spec or named_catalog(spec) else list(refcat_paths(spec))
    return [*group.images, *refcats]


def _noop(text, error=False):
    pass


def _planned_parameters(unit, options):
    """
    The parameters and inputs each group of a unit would run with now (for ``--resume``),
    or None when they cannot be worked out (the run itself then says why).
    """
    try:
        if len(unit) == 1 and not (options.joint_channels or options.shared_detector_terms):
            group = unit[0]
            steps, _ = load_parameters(options.params, group.visit, group.filter,
                                       options.params_dirs or default_parameter_dirs())
            steps.setdefault("tweakreg", {})
            if _tweakreg_options(steps["tweakreg"], options, _noop):
                return None
            return [(group_parameters(steps, options), group_inputs(group, steps["tweakreg"]))]
        loaded, tweakreg = _unit_parameters(unit, options)
        if _tweakreg_options(tweakreg, options, _noop):
            return None
        return [(group_parameters({"catalog": steps.get("catalog", {}), "tweakreg": tweakreg},
                                  options, [o.name for o in unit if o is not g]),
                 group_inputs(g, tweakreg))
                for g, (steps, _) in zip(unit, loaded, strict=True)]
    except Exception:  # noqa: BLE001 - not resumable: the run redoes it and says what is wrong
        return None


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


def _tweakreg_options(tweakreg, options, say):
    """The options every run takes (refcat, WCS models, report); a message when it cannot run."""
    from ..refcat.refcats import named_catalog, refcat_paths

    if options.abs_refcat:
        tweakreg["abs_refcat"] = options.abs_refcat
    if not tweakreg.get("abs_refcat"):
        say("ceers-align: no absolute reference catalog (--abs-refcat): relative alignment only",
            error=True)
    tweakreg["save_wcs"] = True
    if not options.report:
        tweakreg["save_report"] = False
    spec = tweakreg.get("abs_refcat") or ""
    for refcat in [] if named_catalog(spec) else refcat_paths(spec):
        if not refcat.is_file():
            message = f"reference catalog not found: {refcat}; nothing written"
            say(f"ceers-align: {message}", error=True)
            return message
    return None


def _is_lw_group(group):
    from ..fitting.images import is_long_wavelength

    return all(is_long_wavelength(det) for det in group.selected)


def _exposures(group):
    """Exposure names (``jw<visit>_<group>_<exposure>``) of a group's files."""
    return {"_".join(p.name.split("_")[:3]) for p in group.images}


def fit_units(groups, joint_channels=False, shared_detector_terms=False):
    """
    The groups fitted together: every group with ``shared_detector_terms``; the groups
    of one visit that share exposures with ``joint_channels``; else each alone.

    Returns
    -------
    list of list of Group
    """
    if shared_detector_terms:
        return [list(groups)] if groups else []
    if not joint_channels:
        return [[g] for g in groups]
    units = []
    for g in groups:
        for unit in units:
            if any(o.visit == g.visit and _exposures(o) & _exposures(g) for o in unit):
                unit.append(g)
                break
        else:
            units.append([g])
    return units


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


def _lead(groups):
    """The group whose fit parameters a unit uses: its first short-wavelength group."""
    return next((k for k, g in enumerate(groups) if not _is_lw_group(g)), 0)


def _unit_parameters(groups, options):
    """
    Each group's (steps, source) and the unit's tweakreg parameters (before the
    options every run takes, `_tweakreg_options`).
    """
    loaded = [load_parameters(options.params, g.visit, g.filter,
                              options.params_dirs or default_parameter_dirs()) for g in groups]
    tweakreg = dict(loaded[_lead(groups)][0].get("tweakreg", {}))
    if options.joint_channels:
        tweakreg["joint_channels"] = True
        lw = [k for k, g in enumerate(groups) if _is_lw_group(g)]
        lw_geometry = loaded[lw[0]][0].get("tweakreg", {}).get("abs_fitgeometry") if lw else None
        if lw_geometry:
            tweakreg["abs_fitgeometry_lw"] = lw_geometry
    if options.shared_detector_terms:
        tweakreg["shared_detector_terms"] = True
    if tweakreg.get("save_report") is None:
        # The step runs here outside CeersAlignPipeline, whose presence turns the report on:
        # each group of the unit gets the report a group aligned alone gets.
        tweakreg["save_report"] = bool(options.report)
    return loaded, tweakreg


def _unit_task(unit, out_dir, options):
    """Groups fitted together, isolated like `_group_task`; a list of outcomes."""
    if len(unit) == 1 and not (options.joint_channels or options.shared_detector_terms):
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
    from ..core.engine import effective_jobs, run_tasks

    out_dir = Path(out_dir)
    todo, outcomes = [], {}
    from ..io.runstate import read_manifest

    for unit in fit_units(groups, options.joint_channels, options.shared_detector_terms):
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
    summary = survey_summary(ordered, groups, out_dir, crossfilter)
    from ..report.html import write_survey_index

    index = write_survey_index(out_dir / "survey_index.html", ordered, summary, crossfilter)
    return ordered, out_dir / "survey_summary.ecsv", index


def _column(row, name, missing, kind):
    """``row[name]`` as ``kind``, or ``missing`` without a row or that column (older files)."""
    if row is None or name not in row.colnames:
        return missing
    return kind(row[name])


def survey_summary(outcomes, groups, out_dir, crossfilter=None):
    """
    ``survey_summary.ecsv``: one row per image of the survey, from each group's results
    table (its absolute row, else its relative row): visit, filter, detector, image,
    status (COMPLETE = aligned, else FAILED with the reason), nmatch, rmse (mas),
    err_center, err_corner (mas), holdout_err (mas) and holdout_n (the hold-out estimate
    of the error and the reference sources behind it; NaN and 0 where not computed), the
    group's outcome and its report; with ``crossfilter`` (`ceers_steps.report.crossfilter`),
    the image's worst cross-filter offset on its detector, ``xfilter_offset``,
    ``xfilter_err`` (mas) and the other filter ``xfilter_with`` (NaN and "" without one).

    Returns
    -------
    Table (also written)
    """
    from astropy.table import Table

    from ..core.fileio import write_ecsv
    from ..io.results import read_results_table
    from ..report.html import final_rows

    rows = []
    for result, group in zip(outcomes, groups, strict=True):
        table = read_results_table(result.results) if result.results else None
        final = final_rows(table) if table is not None else {}
        for det in sorted(group.selected):
            for path in group.selected[det]:
                row = final.get(path.name)
                status = str(row["status"]) if row is not None else f"FAILED: {result.message}"
                rows.append({
                    "visit": group.visit, "filter": group.filter, "detector": det,
                    "image": path.name, "status": status,
                    "nmatch": int(row["nmatch"]) if row is not None else 0,
                    "rmse": 1e3 * float(row["rmse"]) if row is not None else float("nan"),
                    "err_center": float(row["err_center"]) if row is not None else float("nan"),
                    "err_corner": float(row["err_corner"]) if row is not None else float("nan"),
                    "holdout_err": _column(row, "holdout_err", float("nan"), float),
                    "holdout_n": _column(row, "holdout_n", 0, int),
                    "group_status": result.status,
                    "report": Path(result.report).name if result.report else ""})
    names = ("visit", "filter", "detector", "image", "status", "nmatch", "rmse", "err_center",
             "err_corner", "holdout_err", "holdout_n", "group_status", "report")
    table = Table(rows=[[r[n] for n in names] for r in rows], names=names,
                  dtype=(str, str, str, str, str, "i4", "f8", "f8", "f8", "f8", "i4", str, str))
    for name in ("rmse", "err_center", "err_corner", "holdout_err"):
        table[name].unit = "mas"
    if crossfilter is not None:
        from ..report.crossfilter import add_worst_offsets

        add_worst_offsets(table, crossfilter)
    table.meta["groups"] = len(groups)
    write_ecsv(table, Path(out_dir) / "survey_summary.ecsv")
    return table
