"""Planning a survey's run: each group's parameters, the options every run takes, units, ``--resume``.

A group's parameters come from its ``<visit>_<filter>.asdf`` parameter file (or a CEERS
cfg file); the ``ceers-align`` options (`SurveyOptions`) are applied on top. Groups that
share exposures or detector terms form one unit (`fit_units`).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..io.results import results_paths

__all__ = ["SurveyOptions", "default_parameter_dirs", "existing_outputs", "fit_units",
           "group_complete", "group_inputs", "group_parameters", "load_parameters"]

def default_parameter_dirs():
    """Where ``ceers-align`` looks for ``<visit>_<filter>.asdf`` when no --params is given."""
    import os

    dirs = []
    if os.environ.get("CEERS_PARAMETER_FILES"):
        dirs.append(Path(os.environ["CEERS_PARAMETER_FILES"]))
    dirs.append(Path.cwd() / "parameter_files")
    dirs.append(Path(__file__).resolve().parents[1] / "parameter_files")  # the package's, installed too
    return dirs


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
    fit_distortion: bool = False
    distortion_file: str = ""


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
    """A group's input files: its images, the reference catalog and distortion files it reads."""
    from ..io.distortion_files import distortion_paths
    from ..refcat import named_catalog, refcat_paths

    spec = tweakreg.get("abs_refcat") or ""
    refcats = [] if not spec or named_catalog(spec) else list(refcat_paths(spec))
    try:
        distortions = distortion_paths(tweakreg.get("distortion_file") or "")
    except FileNotFoundError:
        distortions = []  # the run itself names what is missing
    return [*group.images, *refcats, *distortions]


def _noop(text, error=False):
    pass


def _planned_parameters(unit, options):
    """
    The parameters and inputs each group of a unit would run with now (for ``--resume``),
    or None when they cannot be worked out (the run itself then says why).
    """
    try:
        if len(unit) == 1 and not (options.joint_channels or options.shared_detector_terms
                                   or options.fit_distortion):
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


def _tweakreg_options(tweakreg, options, say):
    """The options every run takes (refcat, WCS models, report); a message when it cannot run."""
    from ..refcat import named_catalog, refcat_paths

    if options.abs_refcat:
        tweakreg["abs_refcat"] = options.abs_refcat
    if not tweakreg.get("abs_refcat"):
        say("ceers-align: no absolute reference catalog (--abs-refcat): relative alignment only",
            error=True)
    if options.distortion_file:
        from ..io.distortion_files import distortion_paths

        tweakreg["distortion_file"] = options.distortion_file
        try:
            distortion_paths(options.distortion_file)
        except FileNotFoundError as exc:
            say(f"ceers-align: {exc}; nothing written", error=True)
            return f"{exc}; nothing written"
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


def fit_units(groups, joint_channels=False, shared_detector_terms=False, fit_distortion=False):
    """
    The groups fitted together: every group with ``shared_detector_terms`` or
    ``fit_distortion`` (what they measure is shared by every visit); the groups
    of one visit that share exposures with ``joint_channels``; else each alone.

    Returns
    -------
    list of list of Group
    """
    if shared_detector_terms or fit_distortion:
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
    if options.fit_distortion:
        tweakreg["fit_distortion"] = True
    if tweakreg.get("save_report") is None:
        # The step runs here outside CeersAlignPipeline, whose presence turns the report on:
        # each group of the unit gets the report a group aligned alone gets.
        tweakreg["save_report"] = bool(options.report)
    return loaded, tweakreg
