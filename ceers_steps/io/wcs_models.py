"""Save and read tweaked WCS models in the CEERS ASDF layout.

A model file holds the tree ``filename`` (the image it belongs to),
``wcsinfo`` (a dict of FITS-like keywords, including the SIP approximation)
and ``wcs`` (the `gwcs.WCS`), exactly as CEERS' ``save_wcs`` wrote them, so
CEERS' own ``updatewcs.py`` and plain ``asdf.open(f)['wcs']`` read them.
Files written here add ``status`` (the image's ``meta.cal_step.tweakreg``:
COMPLETE, or FAILED for an image the fit did not align), ``reason`` (why not)
and ``exposure`` (the exposure base name), so that applying a model can refuse
one that aligned nothing or belongs to another exposure. CEERS' own files have
none of these and count as COMPLETE.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from ..core.fileio import atomic_output
from ..core.logs import get_logger
from .inputs import trusted_assignment

log = get_logger(__name__)

__all__ = [
    "apply_wcs_model",
    "detector_from_name",
    "exposure_base",
    "load_wcs_for_image",
    "MAX_WCS_OFFSET",
    "SavedWcs",
    "read_wcs_model",
    "read_wcs_model_file",
    "save_wcs_model",
    "wcs_dir_path",
    "wcs_model_path",
    "wcs_offset_arcsec",
]

_BASE_RE = re.compile(r"^(jw\d{11}_\d{5}_\d{5}_[a-z]+\d*(?:long)?)", re.IGNORECASE)


def exposure_base(filename):
    """
    The exposure name up to and including the detector.

    ``jw01345001001_02201_00001_nrca1_cal.fits`` -> ``jw01345001001_02201_00001_nrca1``.
    Other names lose their extension and a known pipeline suffix, as stpipe names
    outputs (``img_cal.fits`` -> ``img``), and nothing else: ``img_0.fits`` and
    ``img_1.fits`` stay two names.
    """
    from jwst.lib.suffix import remove_suffix

    name = Path(filename).name
    match = _BASE_RE.match(name)
    if match:
        return match.group(1)
    stem = name.split(".")[0]
    return remove_suffix(stem)[0] or stem


def wcs_dir_path(wcs_dir, output_dir):
    """
    Where the WCS models are: ``wcs_dir`` itself when absolute, else inside ``output_dir``.

    The one meaning of every step's ``wcs_dir`` (written by ``ceers_tweak``, read by
    ``apply_wcs``); console commands resolve their ``--wcs-dir`` from the working
    directory, as every path on a command line, before passing it on.
    """
    path = Path(wcs_dir).expanduser()
    return path if path.is_absolute() else Path(output_dir) / path


def wcs_model_path(wcs_dir, filename):
    """``<wcs_dir>/<exposure base>_tweakreg.asdf`` for an image file name."""
    from ..core.fileio import inside_folder

    return inside_folder(Path(wcs_dir) / f"{exposure_base(filename)}_tweakreg.asdf", wcs_dir)


def _wcsinfo_dict(wcsinfo):
    if hasattr(wcsinfo, "instance"):
        wcsinfo = wcsinfo.instance
    return {k: v for k, v in dict(wcsinfo).items() if v is not None}


def save_wcs_model(path, filename, wcsinfo, wcs, status="COMPLETE", reason=None):
    """
    Write a WCS model file (written completely or not at all).

    Parameters
    ----------
    path : str or Path
        Output ``.asdf`` path.
    filename : str
        The image the WCS belongs to (stored as ``filename``, and its exposure
        base name as ``exposure``).
    wcsinfo : dict or stdatamodels node
        ``meta.wcsinfo`` of the image.
    wcs : `gwcs.WCS`
    status : {"COMPLETE", "FAILED"}
        The image's alignment status; a FAILED model is the unchanged input WCS.
    reason : str, optional
        Why the image was not aligned.
    """
    import asdf

    from .. import __version__

    tree = {"filename": str(filename), "wcsinfo": _wcsinfo_dict(wcsinfo), "wcs": wcs,
            "status": str(status), "exposure": exposure_base(filename),
            "software": f"ceers_steps {__version__}"}
    if reason:
        tree["reason"] = str(reason)
    with atomic_output(path) as tmp:
        asdf.AsdfFile(tree).write_to(tmp)
    return Path(path)


@dataclass
class SavedWcs:
    """What a WCS model file holds (``status`` COMPLETE when the file does not say)."""

    path: Path
    filename: str | None
    wcsinfo: dict
    wcs: object
    status: str = "COMPLETE"
    reason: str | None = None
    exposure: str | None = None


def read_wcs_model(path):
    """
    Read a WCS model file.

    Returns
    -------
    filename : str or None
    wcsinfo : dict
    wcs : `gwcs.WCS`
    """
    saved = read_wcs_model_file(path)
    return saved.filename, saved.wcsinfo, saved.wcs


def read_wcs_model_file(path):
    """
    Read a WCS model file with its record (status, reason, exposure).

    Returns
    -------
    SavedWcs

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a readable ASDF file or has no ``wcs``.
    """
    import asdf
    import gwcs

    from ..core.compat import open_asdf_in_memory

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"WCS model not found: {path}")
    try:
        # Schema validation on read costs ~0.2 s a file and is redundant here: the
        # converters still build (or fail to build) the gwcs, whose type is checked below.
        with asdf.config_context() as config:
            config.validate_on_read = False
            with open_asdf_in_memory(path) as af:
                tree = af.tree
                wcs = tree.get("wcs")
                wcsinfo = dict(tree.get("wcsinfo") or {})
                filename = tree.get("filename")
                record = {k: tree.get(k) for k in ("status", "reason", "exposure")}
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as an ASDF WCS model: {exc}") from exc
    if not isinstance(wcs, gwcs.WCS):
        raise ValueError(f"{path}: no 'wcs' (gwcs.WCS) in the ASDF tree")
    for key, value in (("filename", filename), ("exposure", record["exposure"]),
                       ("status", record["status"])):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{path}: {key!r} in the ASDF tree must be a string (the image's "
                             f"file name), not {value!r}")
    exposure = record["exposure"] or (exposure_base(filename) if filename else None)
    return SavedWcs(path=path, filename=filename, wcsinfo=wcsinfo, wcs=wcs,
                    status=str(record["status"] or "COMPLETE"), reason=record["reason"],
                    exposure=exposure)


def detector_from_name(filename):
    """The detector in a JWST file name (``nrca1``, ``nrcblong``...), or None."""
    match = _BASE_RE.match(Path(filename).name)
    return match.group(1).rsplit("_", 1)[1].lower() if match else None


#: Default of ``max_offset`` (arcsec): how far a saved WCS model may put an image from the
#: image's own WCS. CEERS' 690 real tweaks moved their images by at most 0.40 arcsec
#: (median 0.07); a model of another detector of the same exposure would move its image by
#: 68-176 arcsec, one of another dither by 0.9-2.0 (benchmarks/bench_wcs_model_offsets.py).
#: 2 arcsec is 5x the largest real tweak and refuses any other detector's model; another
#: dither's model is refused by its exposure record, not by this distance.
MAX_WCS_OFFSET = 2.0


def wcs_offset_arcsec(wcs1, wcs2, shape, n=5):
    """
    The largest distance (arcsec) between the sky positions two WCSs give to an
    ``n`` x ``n`` grid of pixels spanning an image of ``shape``; NaN when either
    gives no position.
    """
    import numpy as np

    from ..core.wcs_utils import angular_separation_mas

    ny, nx = shape
    x, y = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    try:
        ra1, dec1 = wcs1(x, y, with_bounding_box=False)
        ra2, dec2 = wcs2(x, y, with_bounding_box=False)
    except Exception:  # noqa: BLE001 - a WCS that cannot be evaluated is not comparable
        return float("nan")
    d = angular_separation_mas(ra1, dec1, ra2, dec2) / 1000.0
    return float(np.max(d)) if np.all(np.isfinite(d)) else float("nan")


def load_wcs_for_image(model, wcs_dir, image_name=None, force=False, max_offset=MAX_WCS_OFFSET):
    """
    Find, read and check the saved WCS model of an image.

    Looks for ``<wcs_dir>/<exposure base>_tweakreg.asdf`` and checks that the
    file has a ``wcs``, that it records a COMPLETE fit, that it was made for
    this exposure (detector and exposure name), that its bounding box
    covers the image and no more, and that it puts the image within
    ``max_offset`` arcsec of the image's own WCS (labels can be wrong: a model
    of NRCB4 relabelled NRCA1 would move the image by ~175 arcsec).

    Parameters
    ----------
    model : ImageModel
    wcs_dir : str or Path
    image_name : str, optional
        Name used for the image in messages (default ``meta.filename``).
    force : bool
        Apply the model even when it records an unaligned fit, another
        exposure, a bounding box that does not match the image or an offset
        beyond ``max_offset`` (experts).
    max_offset : float or None
        Largest distance, arcsec, between the model's and the image's own
        sky positions over a 5 x 5 grid of the image (`MAX_WCS_OFFSET`);
        None skips the check. An image without a WCS of its own is not checked.

    Returns
    -------
    path : Path
    wcsinfo : dict
    wcs : `gwcs.WCS`

    Raises
    ------
    FileNotFoundError, ValueError
        With a message naming the image and the model file.
    """
    name = image_name or model.meta.filename
    path = wcs_model_path(wcs_dir, name)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no saved WCS model (looked for {path})")
    try:
        saved = read_wcs_model_file(path)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    image_det = (getattr(model.meta.instrument, "detector", None) or "").lower()
    image_det = image_det or detector_from_name(name)
    # The file's own record of its image (CEERS trees carry 'filename') is the stronger witness.
    for source in (saved.filename, path.name):
        file_det = detector_from_name(source) if source else None
        if image_det and file_det and image_det != file_det:
            raise ValueError(f"{name}: detector {image_det.upper()} does not match the WCS model "
                             f"{path} (made for detector {file_det.upper()}: {source})")
    hint = " (force=True / --force applies it anyway)"
    problems = []
    if saved.status != "COMPLETE":
        problems.append(f"the WCS model {path} records a {saved.status} fit"
                        + (f" ({saved.reason})" if saved.reason else "")
                        + ": the image was not aligned")
    if saved.exposure and saved.exposure.lower() != exposure_base(name).lower():
        problems.append(f"the WCS model {path} was made for exposure {saved.exposure} "
                        f"({saved.filename}), not {exposure_base(name)}")
    from ..core.wcs_utils import bbox_limits

    limits = bbox_limits(saved.wcs)
    if limits is not None and model.data is not None and model.data.ndim == 2:
        (x0, x1), (y0, y1) = limits
        ny, nx = model.data.shape
        # The image spans -0.5 .. n - 0.5; a box within half a pixel of that covers it.
        eps = 1e-6
        if x0 < -0.5 - eps or y0 < -0.5 - eps or x1 > nx - 0.5 + eps or y1 > ny - 0.5 + eps:
            problems.append(f"the WCS model {path} has bounding box x {x0:g}..{x1:g}, "
                            f"y {y0:g}..{y1:g}, which does not fit the image ({nx} x {ny})")
        elif x0 > 0 or y0 > 0 or x1 < nx - 1 or y1 < ny - 1:
            problems.append(f"the WCS model {path} has bounding box x {x0:g}..{x1:g}, "
                            f"y {y0:g}..{y1:g}, which does not cover the image ({nx} x {ny}): "
                            "pixels outside it would have no sky position")
    own = getattr(model.meta, "wcs", None)
    if (max_offset is not None and own is not None and model.data is not None
            and model.data.ndim == 2):
        offset = wcs_offset_arcsec(own, saved.wcs, model.data.shape)
        if not offset <= max_offset:  # NaN too: a model that cannot be checked is not applied
            moved = (f"{offset:.1f} arcsec from" if offset == offset
                     else "where it cannot be compared with")
            problems.append(f"the WCS model {path} puts the image {moved} its own WCS (more "
                            f"than max_offset = {max_offset:g} arcsec): a model of another "
                            "image?")
    if problems and not force:
        raise ValueError(f"{name}: " + "; ".join(problems) + hint)
    if problems:
        log.warning("%s: applied anyway (force): %s", name, "; ".join(problems))
    return path, saved.wcsinfo, saved.wcs


def apply_wcs_model(model, wcsinfo, wcs):
    """Put a saved WCS on a model: ``meta.wcs``, ``meta.wcsinfo``, tweakreg COMPLETE."""
    with trusted_assignment(model):
        model.meta.wcs = wcs
        for key, value in wcsinfo.items():
            setattr(model.meta.wcsinfo, key, value)
    model.meta.cal_step.tweakreg = "COMPLETE"
    return model
