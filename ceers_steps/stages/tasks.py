"""Per-image work units for `ceers_steps.core.engine.run_tasks`: plain functions, picklable arguments.

A task opens one image, does its work, writes its output completely or not at
all, releases the image and returns a small result. Workers therefore hold one
image at a time, and the calling process holds no pixels of images on disk:
only what alignment needs (`ImageHeader`: file name, gwcs, WCS reference
point, identity, catalog).
"""

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from ..core import compat  # noqa: F401 - on astropy < 5.3, lets WCS models pickle back from workers
from ..detection.catalogs import build_catalog, write_catalog
from ..fitting.images import ImageHeader
from ..io.grouping import image_key, read_primary_header

__all__ = [
    "CatalogResult",
    "WcsPlan",
    "apply_wcs_plan",
    "apply_wcs_task",
    "ImageHeader",
    "describe_error",
    "detect_task",
    "finish_aligned_model",
    "header_task",
    "image_arrays",
    "key_from_file",
    "plan_apply_wcs",
    "write_aligned_task",
]


@dataclass
class CatalogResult:
    """
    What `detect_task` returns for one image.

    ``error`` is None on success; otherwise it says why the image has no catalog
    (unreadable file, failed detection), ``catalog_path`` and ``xy`` are None, and
    ``header`` is None when the file could not even be opened.
    """

    name: str
    catalog_path: Path | None
    n_sources: int
    rms: float
    n_rejected: int
    warning: str | None
    header: ImageHeader | None
    key: object
    xy: object  # Table with 0-based x, y
    error: str | None = None
    rejected: dict | None = None
    unit: str = "image units"

    @classmethod
    def failed(cls, name, error, header=None, key=None):
        return cls(name=name, catalog_path=None, n_sources=0, rms=float("nan"), n_rejected=0,
                   warning=None, header=header, key=key, xy=None, error=error)


def describe_error(exc):
    """``<ExceptionType>: message``, for status strings and logs."""
    return f"{type(exc).__name__}: {exc}"


def image_arrays(model):
    """A picklable stand-in of an in-memory model for detection: pixels, WCS and name."""
    import numpy as np

    # Plain arrays: older stacks hand out ASDF array subclasses that do not pickle.
    return SimpleNamespace(data=np.asarray(model.data), err=np.asarray(model.err),
                           dq=np.asarray(model.dq),
                           meta=SimpleNamespace(wcs=model.meta.wcs, filename=model.meta.filename,
                                                wcsinfo=model.meta.wcsinfo.instance,
                                                bunit_data=model.meta.bunit_data,
                                                instrument=SimpleNamespace(
                                                    filter=model.meta.instrument.filter,
                                                    pupil=model.meta.instrument.pupil)))


def detect_task(source, params, catalog_path, name=None):
    """
    Detect sources on one image and write its catalog; never raise for one image's problem.

    Parameters
    ----------
    source : Path or SimpleNamespace
        A cal file (opened here and closed after) or `image_arrays` of a model.
    params : DetectionParameters
    catalog_path : Path or None
        Where the catalog goes (ECSV, or FITS for a ``.fits`` name); None: not written.
    name : str, optional
        The image's name for messages.

    Returns
    -------
    CatalogResult
        With ``error`` set when the file cannot be read or detection fails; the
        other images of a run are not affected.
    """
    from astropy.table import Table

    from ..io.inputs import InputImage, open_image

    name = name or (Path(source).name if isinstance(source, (str, Path)) else
                    source.meta.filename)
    if isinstance(source, (str, Path)):
        try:
            model = open_image(InputImage(path=Path(source)))
        except Exception as exc:  # noqa: BLE001 - one unreadable file fails only itself
            return CatalogResult.failed(name, f"cannot be read: {describe_error(exc)}",
                                        key=key_from_file(source))
        close = model.close
    else:
        model, close = source, (lambda: None)
    try:
        if isinstance(source, (str, Path)):
            header = ImageHeader.from_model(model)
            key = image_key(model, Path(source).name, header=read_primary_header(source))
        else:
            wi = source.meta.wcsinfo
            header = ImageHeader(source.meta.filename, source.meta.wcs,
                                 {k: wi.get(k) for k in ("v2_ref", "v3_ref", "roll_ref")})
            key = None
        try:
            catalog = build_catalog(model, params)
            if catalog_path is not None:
                write_catalog(catalog, catalog_path)
        except Exception as exc:  # noqa: BLE001 - a failed detection fails only this image
            return CatalogResult.failed(name, f"detection failed: {describe_error(exc)}",
                                        header=header, key=key)
    finally:
        close()
    xy = Table({"x": catalog["xcentroid"], "y": catalog["ycentroid"]})
    return CatalogResult(
        name=name, catalog_path=None if catalog_path is None else Path(catalog_path).resolve(),
        n_sources=len(catalog), rms=float(catalog.meta.get("rms", float("nan"))),
        n_rejected=int(catalog.meta.get("n_rejected", 0)), warning=catalog.meta.get("warning"),
        header=header, key=key, xy=xy, rejected=dict(catalog.meta.get("rejected", {})),
        unit=str(catalog.meta.get("unit", "image units")))


def key_from_file(path):
    """
    The `ImageKey` of a file that cannot be opened as a data model, from its
    primary FITS header if that can be read, else from its name.
    """
    return image_key(None, Path(path).name, header=read_primary_header(path) or {})


def write_aligned_task(path, out_path, wcs, wcs_name, status, sip, wcs_model_path=None,
                       catalog_path=None, reason=None):
    """
    Open a cal file, give it its aligned WCS, and save it as ``out_path``.

    Parameters
    ----------
    path : Path
        The input cal file (only read).
    out_path : Path or None
        The aligned image, written completely or not at all (None: not written).
    wcs : gwcs.WCS
        The aligned WCS (unused when ``status`` is FAILED).
    wcs_name : str or None
        ``FIT-LVL3-<refcat>`` or ``FIT-REL``; None for an image the fit left
        unchanged (the reference of a relative fit): nothing but the status is set.
    status : {"COMPLETE", "FAILED"}
        ``meta.cal_step.tweakreg``; FAILED images keep their WCS.
    sip : dict or None
        ``update_fits_wcsinfo`` keyword arguments, None to leave ``meta.wcsinfo``.
    wcs_model_path : Path, optional
        Also save the WCS as a CEERS-layout ASDF file here.
    catalog_path : str, optional
        Recorded as ``meta.tweakreg_catalog``.
    reason : str, optional
        Why the image was not aligned (recorded in the WCS model of a FAILED image).

    Returns
    -------
    str or None
        The output path.
    """
    from ..core.fileio import atomic_output
    from ..io.inputs import InputImage, open_image
    from ..io.wcs_models import save_wcs_model

    # Detection opened (and validated) this file earlier in the run.
    model = open_image(InputImage(path=Path(path)), validated=True)
    try:
        finish_aligned_model(model, wcs, wcs_name, status, sip)
        if catalog_path:
            from ..core.fileio import fits_safe_path

            # Relative to the written image when the absolute path cannot be a FITS value.
            where = [Path(out_path).parent] if out_path is not None else []
            safe = fits_safe_path(catalog_path, where + [Path.cwd()])
            if safe is not None:
                model.meta.tweakreg_catalog = safe
        if out_path is not None:
            with atomic_output(out_path) as tmp:
                model.save(str(tmp))
        if wcs_model_path is not None:
            save_wcs_model(wcs_model_path, model.meta.filename, model.meta.wcsinfo, model.meta.wcs,
                           status=status, reason=reason)
    finally:
        model.close()
    return None if out_path is None else str(out_path)


def finish_aligned_model(model, wcs, wcs_name, status, sip, log=None):
    """
    Set an aligned WCS on a model: name it, refresh S_REGION and the SIP approximation.

    A status other than COMPLETE, or no ``wcs_name`` (the reference image of a
    relative fit, whose WCS the fit did not change), only records the status.
    """
    from jwst.assign_wcs.util import update_fits_wcsinfo, update_s_region_imaging

    from ..io.inputs import trusted_assignment

    if status != "COMPLETE" or wcs_name is None:
        # Not aligned (FAILED), or the unchanged reference of a relative fit: status only.
        model.meta.cal_step.tweakreg = status
        return model
    with trusted_assignment(model):
        if wcs is not None:
            model.meta.wcs = wcs
        model.meta.wcs.name = wcs_name
        update_s_region_imaging(model)
        if sip is not None:
            try:
                update_fits_wcsinfo(model, crpix=None, **sip)
            except (ValueError, RuntimeError) as exc:
                if log is not None:
                    log.warning("%s: SIP approximation not updated: %s", model.meta.filename, exc)
    model.meta.cal_step.tweakreg = "COMPLETE"
    return model


def header_task(path):
    """
    Open a cal file and return its `ImageHeader`, `ImageKey`, ``meta.tweakreg_catalog``
    and an error (None); for a file that cannot be opened: None, its key from
    `key_from_file`, None and the reason.
    """
    from ..io.inputs import InputImage, open_image

    try:
        model = open_image(InputImage(path=Path(path)))
    except Exception as exc:  # noqa: BLE001 - one unreadable file fails only itself
        return None, key_from_file(path), None, f"cannot be read: {describe_error(exc)}"
    try:
        return (ImageHeader.from_model(model),
                image_key(model, Path(path).name, header=read_primary_header(path)),
                getattr(model.meta, "tweakreg_catalog", None), None)
    finally:
        model.close()


@dataclass
class WcsPlan:
    """
    What `plan_apply_wcs` decided for one image.

    ``found`` is the saved WCS model to apply (path, wcsinfo, wcs) or None; ``wcs`` the WCS
    with the residual distortion to set after it (None: none inserted); ``distortion`` the
    distortion's status (``"applied"``, ``"no file for <detector>"``, or None when no
    distortion was asked for or the image is passed through); ``skipped`` whether the image
    is passed through without a saved model; ``warnings`` what to log; ``source`` the
    distortion file inserted.
    """

    found: tuple | None
    wcs: object = None
    distortion: str | None = None
    skipped: bool = False
    warnings: list = None
    source: str | None = None


def plan_apply_wcs(model, name, wcs_dir, force, skip_missing, max_offset, distortions=None):
    """
    Check one image's saved WCS model and residual distortion before anything is applied.

    Parameters
    ----------
    model : ImageModel
        Not changed.
    name : str
        The image's name in messages.
    wcs_dir, force, max_offset
        As `ceers_steps.io.wcs_models.load_wcs_for_image`.
    skip_missing : bool
        Pass an image through unchanged, with a warning, instead of raising for its problem.
    distortions : dict, optional
        Detector -> DetectorDistortion, inserted after the saved model (into the image's own
        WCS when it has no usable model and ``skip_missing`` passes it).

    Returns
    -------
    WcsPlan

    Raises
    ------
    FileNotFoundError, ValueError
        Without ``skip_missing``: naming the image and the problem (no usable model; a WCS
        that already carries a residual distortion).
    """
    from ..core.distortion import subarray_origin
    from ..io.distortion_files import distorted_wcs, image_detector
    from ..io.wcs_models import load_wcs_for_image

    problem = None
    try:
        found = load_wcs_for_image(model, wcs_dir, name, force=force, max_offset=max_offset)
    except (FileNotFoundError, ValueError) as exc:
        if not skip_missing:
            raise
        found, problem = None, str(exc)
    wcs, status, source = None, None, None
    if distortions:
        base = found[2] if found is not None else getattr(model.meta, "wcs", None)
        try:
            if base is not None:
                det = image_detector(model)
                wcs, status = distorted_wcs(base, det, distortions, subarray_origin(model),
                                            name)
                source = distortions[det].meta.get("file") if status == "applied" else None
        except ValueError as exc:
            if not skip_missing:
                raise
            return WcsPlan(None, skipped=True, warnings=[
                "; ".join([p for p in (problem, str(exc)) if p])
                + "; image passed through unchanged"])
    warnings = []
    if problem:
        kept = ("keeps its own WCS, with the residual distortion" if status == "applied"
                else "passed through unchanged")
        warnings.append(f"{problem}; image {kept}")
    if status is not None and status != "applied":
        warnings.append(f"{name}: {status}: no residual distortion inserted")
        wcs = None
    return WcsPlan(found, wcs=wcs, distortion=status, skipped=found is None, warnings=warnings,
                   source=source)


def apply_wcs_plan(model, plan):
    """Apply a `WcsPlan` to its image: the saved model, then the WCS with the distortion."""
    from ..io.inputs import trusted_assignment
    from ..io.wcs_models import apply_wcs_model

    if plan.found is not None:
        _, wcsinfo, wcs = plan.found
        apply_wcs_model(model, wcsinfo, wcs)
    elif plan.skipped:
        model.meta.cal_step.tweakreg = model.meta.cal_step.tweakreg or "SKIPPED"
    if plan.wcs is not None:
        with trusted_assignment(model):
            model.meta.wcs = plan.wcs
    return model


def apply_wcs_task(path, wcs_dir, force, skip_missing, out_dir, suffix, tmp_dir,
                   max_offset=None, distortions=None):
    """
    Apply one image's saved WCS model (and residual distortion) and write the result into
    ``tmp_dir``.

    The caller publishes every written file only when every image succeeded
    (`ceers_steps.steps.apply_wcs_step.ApplyWcsStep`), so one bad image still stops a
    run before any output appears. Never raises for this image's problem.

    Returns
    -------
    dict
        ``name``, ``output`` (the final path), ``written`` (the file in ``tmp_dir``),
        ``applied`` (the WCS model used, or None when passed through), ``distortion`` and
        ``source`` (`WcsPlan`'s), ``warnings`` (list); or, for a problem, ``name``, ``error``
        (message) and ``kind`` (exception type name).
    """
    from ..core.fileio import inside_folder
    from ..io.inputs import InputImage, open_image
    from ..io.wcs_models import exposure_base

    name = Path(path).name
    try:
        model = open_image(InputImage(path=Path(path)), require_wcs=False)
    except (OSError, TypeError, ValueError) as exc:
        return {"name": name, "error": str(exc), "kind": type(exc).__name__}
    try:
        filename = model.meta.filename or name
        try:
            plan = plan_apply_wcs(model, filename, wcs_dir, force, skip_missing, max_offset,
                                  distortions)
        except (FileNotFoundError, ValueError) as exc:
            return {"name": name, "error": str(exc), "kind": type(exc).__name__}
        apply_wcs_plan(model, plan)
        try:
            output = inside_folder(Path(out_dir) / f"{exposure_base(filename)}_{suffix}.fits",
                                   out_dir)
        except ValueError as exc:
            return {"name": name, "error": f"{name}: {exc}", "kind": "ValueError"}
        # In a folder of its own: stdatamodels records the name it saves under.
        written = Path(tmp_dir) / name / output.name
        written.parent.mkdir()
        model.save(str(written))
    finally:
        model.close()
    return {"name": name, "output": str(output), "written": str(written),
            "applied": None if plan.found is None else str(plan.found[0]),
            "distortion": plan.distortion, "source": plan.source, "warnings": plan.warnings}
