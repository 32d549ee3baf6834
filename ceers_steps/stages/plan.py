"""
Stage 1, plan: the inputs become units of work.

`settings` checks the parameters and reads the reference catalog; `plan` opens
every input (or, when streaming, its header), decides its catalog (given, read or
to be detected) and its relative run; after detection `plan_units` groups the
images into the units fitted together (a visit and filter, or with
``joint_channels`` the filters of one visit that share exposures), each with its
reference catalog at the visit's epoch.

``pars`` is the step (`ceers_steps.steps.tweakreg_step.CeersTweakRegStep`) or any
object with its parameters and hooks; these functions only read it.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core.logs import get_logger
from ..detection.catalogs import read_catalog
from ..fitting.images import AlignImage, footprint_centre, result_row
from ..io.grouping import image_key, read_primary_header
from ..io.inputs import open_image
from .jwstpars import choose_catalogs, ignored_settings, parse_catfile
from .parameters import (
    absolute_parameters,
    check_sip_parameters,
    normalise_lists,
    relative_parameters,
)
from .tasks import describe_error, header_task, key_from_file

__all__ = ["Plan", "RunSettings", "Unit", "plan", "plan_units", "settings"]

log = get_logger(__name__)


@dataclass
class RunSettings:
    """What the whole run is done with, decided before anything is read or written."""

    #: `ceers_steps.fitting.parameters.RelativeParameters`, `AbsoluteParameters`.
    rel: object
    abs_: object
    #: The reference catalog (read, cut, merged; not yet at an epoch), a jwst catalog
    #: name fetched per unit, or None (relative alignment only).
    refcat: object
    #: Images on disk go through workers one at a time.
    stream: bool
    #: In-memory models are aligned as copies.
    copy_inputs: bool
    #: ``catfile``: image name -> catalog, or None.
    catfile_map: dict = None
    #: ``distortion_file``: detector -> DetectorDistortion inserted into the input WCSs.
    distortions: dict = None


@dataclass
class Plan:
    """
    Every input as an `AlignImage` (unusable ones marked, with their FAILED rows),
    its catalog source and what is left to detect.
    """

    images: list
    #: Per image: the catalog file read or written, or None.
    catalog_paths: list
    #: Indices of the images whose catalog is to be detected.
    to_detect: list
    #: The FAILED rows of unusable images (unreadable, bad header, no catalog).
    failed_rows: list
    #: Catalog files the run reads or its inputs name: saved catalogs never replace them.
    named_catalogs: list
    #: tweakwcs relative runs: ``detector``, ``exposure`` or ``all``.
    relative_runs: str
    #: Why nothing is aligned (jwst: one exposure without a reference catalog), or None.
    not_run: str = None


@dataclass
class Unit:
    """Visits and filters fitted together, their usable images and reference catalog."""

    visit_filters: list
    images: list
    refcat: object = None


@dataclass
class _Opened:
    """An input opened: its model (or header), key, ``meta.tweakreg_catalog``, error."""

    model: object
    key: object
    meta_catalog: object = None
    error: str = None


def settings(pars, inputs, stream=None, save=False, copy_inputs=None):
    """
    Every parameter checked, the reference catalog read: the `RunSettings`.

    ``stream`` defaults to ``save`` when every input is a file; ``copy_inputs`` to
    "not inside a pipeline" (pipelines that run on their own models align them in place).
    """
    normalise_lists(pars)
    rel, abs_ = relative_parameters(pars), absolute_parameters(pars)
    check_sip_parameters(pars)
    on_disk = all(image.path is not None for image in inputs.images)
    stream = on_disk and (save if stream is None else stream)
    refcat = None
    if pars.abs_refcat and pars.abs_refcat.strip():
        refcat = getattr(pars, "preloaded_refcat", None)
        refcat = pars.read_refcat() if refcat is None else refcat
        for cat in getattr(refcat, "meta", {}).get("catalogs", []):
            log.info("Absolute reference catalog %s: %d sources read, %d after cuts",
                     cat["file"], cat["n_read"], cat["n_after_cuts"])
    catfile_map = (parse_catfile(pars.catfile) if pars.use_custom_catalogs and pars.catfile
                   and pars.catfile.strip() else None)
    ignored = ignored_settings(pars)
    if ignored:
        log.info("jwst star-finder settings accepted and not used (detection is SEP with the "
                 "CEERS recipe): %s", ", ".join(ignored))
    if copy_inputs is None:
        copy_inputs = pars.parent is None
    return RunSettings(rel=rel, abs_=abs_, refcat=refcat, stream=stream,
                       copy_inputs=copy_inputs, catfile_map=catfile_map,
                       distortions=read_distortions(pars))


def read_distortions(pars):
    """
    The residual distortions of ``distortion_file`` (detector -> DetectorDistortion; empty
    without one), each file named in the log.
    """
    from ..io.distortion_files import read_distortion_files

    distortions = read_distortion_files(getattr(pars, "distortion_file", "") or "")
    for det, dist in sorted(distortions.items()):
        log.info("Residual distortion of %s from %s: %.2f x %.2f mas rms", det.upper(),
                 dist.meta.get("file"), *dist.rms_mas())
    return distortions


def plan(pars, inputs, run, catalogs=None):
    """
    Open the inputs and decide each image's catalog: the `Plan`.

    Parameters
    ----------
    pars : CeersTweakRegStep
    inputs : InputSet
    run : RunSettings
    catalogs : list of CatalogResult, optional
        From `CatalogStep.make_catalogs`, one per image; otherwise catalogs come
        from ``catfile``, the association or ``meta.tweakreg_catalog``.
    """
    opened = open_inputs(pars, inputs, run.stream, catalogs, run.copy_inputs)
    names = [(o.model.meta.filename if o.model is not None else None) or image.name
             for image, o in zip(inputs.images, opened, strict=True)]
    sources = None
    if catalogs is None:
        sources = choose_catalogs(
            [(name, image.member, o.meta_catalog, image.path)
             for name, image, o in zip(names, inputs.images, opened, strict=True)],
            pars.use_custom_catalogs, run.catfile_map, inputs.asn_dir, log=log)
    opened, relative_runs = group_keys(pars, opened, inputs)
    images, catalog_paths, to_detect, failed_rows = [], [], [], []
    for i, o in enumerate(opened):
        catalog, source, error = _catalog_of(i, names[i], o, catalogs, sources)
        input_wcs = None
        if error is None and run.distortions:
            input_wcs, error = insert_distortion_of(names[i], o, run.distortions)
        if error is not None:
            log.error("%s: FAILED: %s; its WCS is left unchanged", names[i], error)
            failed_rows.append(result_row("relative", f"{o.key.visit_filter}_{o.key.detector}",
                                          names[i], f"FAILED: {error}", pars.fitgeometry))
            images.append(AlignImage(name=names[i], model=o.model, catalog=None, key=o.key,
                                     status={"unusable": True}))
            catalog_paths.append(None)
            continue
        if catalog is None:
            to_detect.append(i)
        else:
            log.info("%s: %d sources from %s", names[i], len(catalog), source)
        images.append(AlignImage(name=names[i], model=o.model, catalog=catalog, key=o.key,
                                 input_wcs=input_wcs))
        catalog_paths.append(str(source) if source else None)
    not_run = nothing_to_do(pars, images, run.refcat)
    if not_run:
        for im in images:
            if not im.status.get("unusable"):
                im.status["not_run"] = not_run
        to_detect = []
    named = [p for p in catalog_paths if p] + [
        o.meta_catalog for o in opened if o.meta_catalog and str(o.meta_catalog).strip()] + [
        str(Path(inputs.asn_dir or ".") / image.member["tweakreg_catalog"])
        for image in inputs.images if image.member.get("tweakreg_catalog")]
    return Plan(images=images, catalog_paths=catalog_paths, to_detect=to_detect,
                failed_rows=failed_rows, named_catalogs=named, relative_runs=relative_runs,
                not_run=not_run)


def insert_distortion_of(name, opened, distortions):
    """
    Insert its detector's residual distortion into an opened image's WCS (its model or
    `ImageHeader`), before the fit.

    Returns
    -------
    input_wcs : gwcs.WCS or None
        The WCS it had (what it keeps if it is not aligned), or None when unchanged.
    error : str or None
        Why the image cannot be used: its WCS already carries a residual distortion.
    """
    from ..core.distortion import subarray_origin
    from ..io.distortion_files import distorted_wcs
    from ..io.inputs import trusted_assignment

    model = opened.model
    try:
        wcs, status = distorted_wcs(model.meta.wcs, opened.key.detector, distortions,
                                    subarray_origin(model), name)
    except ValueError as exc:
        return None, str(exc).removeprefix(f"{name}: ")
    if status != "applied":
        log.warning("%s: %s: no residual distortion inserted", name, status)
        return None, None
    before = model.meta.wcs
    with trusted_assignment(model):
        model.meta.wcs = wcs
    log.info("%s: residual distortion of %s inserted (%s)", name, opened.key.detector.upper(),
             distortions[opened.key.detector].meta.get("file"))
    return before, None


def _catalog_of(i, name, opened, catalogs, sources):
    """An image's catalog and its source, or the error that makes the image unusable."""
    error = opened.error
    if error is None and opened.key.problem:
        error = opened.key.problem  # a header value that cannot name its outputs
    if error is None and catalogs is not None and catalogs[i].error:
        error = catalogs[i].error
    if error is not None:
        return None, None, error
    try:
        if catalogs is not None:
            return catalogs[i].xy, catalogs[i].catalog_path, None
        source = sources[i]
        if source:
            log.info("%s: using user-provided input catalog %s", name, source)
        return (read_catalog(source) if source else None), source, None
    except (FileNotFoundError, ValueError) as exc:
        return None, None, str(exc)


def open_inputs(pars, inputs, stream, catalogs, copy_inputs):
    """
    Per image an `_Opened`: the model (or, when streaming, its `ImageHeader`), its
    `ImageKey`, its ``meta.tweakreg_catalog`` and an error. A file that cannot be
    opened gives ``(None, key from its FITS header or name, None, reason)``; the run
    goes on.
    """
    if stream:
        if catalogs is not None:
            return [_Opened(res.header, res.key, None,
                            res.error if res.header is None else None) for res in catalogs]
        return [_Opened(*res) for res in pars._run_tasks(
            header_task, [(image.path,) for image in inputs.images], "Reading headers",
            names=[im.name for im in inputs.images])]
    out = []
    for image in inputs.images:
        try:
            model = open_image(image, copy=copy_inputs)
        except Exception as exc:  # noqa: BLE001 - one unreadable input fails only itself
            if image.path is None:
                raise
            out.append(_Opened(None, key_from_file(image.path), None,
                               f"cannot be read: {describe_error(exc)}"))
            continue
        header = read_primary_header(image.path) if image.path is not None else None
        out.append(_Opened(model, image_key(model, image.name, header=header),
                           getattr(model.meta, "tweakreg_catalog", None), None))
    return out


def group_keys(pars, opened, inputs):
    """
    Decide the relative runs (``group_by``; ``auto`` resolved) and, for jwst's
    whole-input runs over several visits or filters, give every image one run key.

    Returns the inputs with their keys, and the relative runs.
    """
    keys = [o.key for o in opened]
    good = [k for k in keys if not k.problem]
    if len(good) < len(keys) and len({k.visit_filter for k in good}) == 1:
        # An image with an invalid header value fails; its row goes to the run's table.
        visit, filt = good[0].visit, good[0].filter
        opened = [o if not o.key.problem else replace(o, key=replace(o.key, visit=visit,
                                                                      filter=filt))
                  for o in opened]
    mode = pars.group_by
    if mode == "auto":
        known = all(k.visit != "unknown" and k.detector != "unknown" for k in good)
        mode = "detector" if known else "input"
        if not known:
            log.info("Not every image names its visit and detector: aligning the whole input "
                     "together, each exposure as one group (jwst's TweakRegStep)")
    relative_runs = "exposure" if mode == "input" else mode
    if mode != "input" or len({k.visit_filter for k in good}) <= 1:
        return opened, relative_runs
    product = ((inputs.asn or {}).get("products") or [{}])[0].get("name") or "input"
    # The association's product name becomes a file-name part: letters, digits, _-+ only.
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_+") else "_"
                   for c in str(product))[:40] or "input"
    return [replace(o, key=replace(o.key, visit=name, filter="all")) for o in opened], \
        relative_runs


def nothing_to_do(pars, images, refcat):
    """jwst's rule: without a reference catalog, one exposure cannot be aligned."""
    if refcat is not None or pars.save_catalogs:
        return None
    usable = [im for im in images if not im.status.get("unusable")]
    if len({im.key.exposure for im in usable}) >= 2:
        return None
    log.warning("At least two exposures are required for image alignment.")
    log.warning("Nothing to do. Skipping 'TweakRegStep'...")
    return "At least two exposures are required for image alignment"


def joint_possible(pars, refcat):
    """Whether visits can be fitted jointly: ``abs_group = joint`` with a reference catalog."""
    return refcat is not None and pars.abs_group == "joint"


def plan_units(pars, the_plan, refcat):
    """
    The units of the fit, in order: visits and filters fitted together, their usable
    images, and the reference catalog at their epoch (None without one, or when the
    run has nothing to do).

    Returns
    -------
    units : list of Unit
    by_visit : dict
        Visit and filter -> its usable images.
    """
    by_visit = {}
    for im in the_plan.images:
        group = by_visit.setdefault(im.key.visit_filter, [])
        if not im.status.get("unusable"):
            group.append(im)
    units = []
    for visit_filters in fit_units(pars, by_visit, refcat, the_plan.not_run):
        group = [im for vf in visit_filters for im in by_visit[vf]]
        ref_used = None
        if group and not the_plan.not_run and refcat is not None:
            ref_used = refcat_at_epoch(pars, refcat, group, " + ".join(visit_filters))
        units.append(Unit(visit_filters=visit_filters, images=group, refcat=ref_used))
    return units, by_visit


def fit_units(pars, by_visit, refcat, not_run):
    """
    The visits and filters fitted together: each alone, or with ``joint_channels``
    the filters of one visit that share exposures (NIRCam's SW and LW images of one
    exposure, taken at the same time).
    """
    for flag in ("joint_channels", "shared_detector_terms"):
        if getattr(pars, flag) and not joint_possible(pars, refcat):
            log.warning("%s needs abs_group = joint and an abs_refcat: each visit and "
                        "filter is fitted alone", flag)
    names = list(by_visit)
    if not (pars.joint_channels and joint_possible(pars, refcat)) or not_run:
        return [[vf] for vf in names]
    root = {vf: vf for vf in names}

    def find(vf):
        while root[vf] != vf:
            vf = root[vf]
        return vf

    exposures = {vf: {im.key.exposure for im in by_visit[vf]} for vf in names}
    visit = {vf: by_visit[vf][0].key.visit if by_visit[vf] else None for vf in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if visit[a] is not None and visit[a] == visit[b] and exposures[a] & exposures[b]:
                root[find(b)] = find(a)
    units = {}
    for vf in names:
        units.setdefault(find(vf), []).append(vf)
    for unit in units.values():
        if len(unit) > 1:
            log.info("Fitting %s together: they share %d exposures (joint_channels)",
                     " + ".join(unit), len(set.intersection(*(exposures[vf] for vf in unit))))
    return list(units.values())


def refcat_at_epoch(pars, refcat, group, visit_filter):
    """The reference catalog propagated to the mean epoch of a visit's images."""
    from astropy.time import Time

    from ..refcat import at_epoch, collapse_near_duplicates, image_epoch

    epochs = [image_epoch(im.model) for im in group]
    known = [e for e in epochs if e is not None]
    if isinstance(refcat, str):
        return fetch_named(pars, refcat, group, visit_filter, known)
    has_pm = bool(np.any(np.isfinite(refcat["PMRA"])))
    if has_pm and not known:
        log.warning("%s: the images carry no observation time: reference positions are "
                    "used at their catalog epoch, without proper motions", visit_filter)
    epoch = Time(np.mean([e.mjd for e in known]), format="mjd", scale="utc") if known else None
    used = at_epoch(refcat, epoch if has_pm else None, pm_missing=pars.abs_pm_missing,
                    pm_dispersion=pars.abs_pm_dispersion)
    used, _ = collapse_near_duplicates(used, pars.abs_separation,
                                       f"{visit_filter}: reference catalog")
    if len(used.meta.get("catalogs", [])) > 1:
        log.info("%s: reference sources used per catalog (after merging): %s", visit_filter,
                 ", ".join(f"{Path(c['file']).name} {c['n_used']}"
                           for c in used.meta["catalogs"]))
    if has_pm and epoch is not None:
        spread = max(abs(e.mjd - epoch.mjd) for e in known) / 365.25
        pm_max = float(np.nanmax(np.hypot(refcat["PMRA"], refcat["PMDEC"])))
        log.info("%s: reference positions moved to epoch %.4f (largest motion %.1f mas); "
                 "within the visit they differ from each exposure's by at most %.3f mas",
                 visit_filter, epoch.jyear, used.meta["max_motion_mas"], pm_max * spread)
    return used


def fetch_named(pars, name, group, visit_filter, epochs):
    """A jwst named catalog around a visit's footprint, at the visit's mean epoch."""
    from ..refcat import at_epoch, fetch_named_catalog

    ra, dec, radius = footprint_centre(group)
    radius += pars.abs_searchrad / 3600.0
    epoch = float(np.mean([e.decimalyear for e in epochs])) if epochs else None
    log.info("%s: fetching %s within %.1f arcmin of RA %.6f, Dec %.6f (epoch %s)",
             visit_filter, name, radius * 60, ra, dec,
             f"{epoch:.3f}" if epoch else "of the catalog")
    table = fetch_named_catalog(name, ra, dec, radius, epoch=epoch, cuts=pars.abs_cuts,
                                mag_min=pars.abs_mag_min, mag_max=pars.abs_mag_max)
    return at_epoch(table, None)
