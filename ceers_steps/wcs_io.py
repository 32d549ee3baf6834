"""Save and read tweaked WCS models in the CEERS ASDF layout.

A model file holds the tree ``filename`` (the image it belongs to),
``wcsinfo`` (a dict of FITS-like keywords, including the SIP approximation)
and ``wcs`` (the `gwcs.WCS`), exactly as CEERS' ``save_wcs`` wrote them, so
CEERS' own ``updatewcs.py`` and plain ``asdf.open(f)['wcs']`` read them.
"""

import re
from pathlib import Path

from .fileio import atomic_output

__all__ = [
    "apply_wcs_model",
    "detector_from_name",
    "exposure_base",
    "load_wcs_for_image",
    "read_wcs_model",
    "save_wcs_model",
    "wcs_dir_path",
    "wcs_model_path",
]

_BASE_RE = re.compile(r"^(jw\d{11}_\d{5}_\d{5}_[a-z]+\d*(?:long)?)", re.IGNORECASE)


def exposure_base(filename):
    """
    The exposure name up to and including the detector.

    ``jw01345001001_02201_00001_nrca1_cal.fits`` -> ``jw01345001001_02201_00001_nrca1``.
    Names that do not follow the JWST pattern lose their last ``_suffix`` and extension.
    """
    name = Path(filename).name
    match = _BASE_RE.match(name)
    if match:
        return match.group(1)
    stem = name.split(".")[0]
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


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
    return Path(wcs_dir) / f"{exposure_base(filename)}_tweakreg.asdf"


def _wcsinfo_dict(wcsinfo):
    if hasattr(wcsinfo, "instance"):
        wcsinfo = wcsinfo.instance
    return {k: v for k, v in dict(wcsinfo).items() if v is not None}


def save_wcs_model(path, filename, wcsinfo, wcs):
    """
    Write a WCS model file (written completely or not at all).

    Parameters
    ----------
    path : str or Path
        Output ``.asdf`` path.
    filename : str
        The image the WCS belongs to (stored as ``filename``).
    wcsinfo : dict or stdatamodels node
        ``meta.wcsinfo`` of the image.
    wcs : `gwcs.WCS`
    """
    import asdf

    tree = {"filename": str(filename), "wcsinfo": _wcsinfo_dict(wcsinfo), "wcs": wcs}
    with atomic_output(path) as tmp:
        asdf.AsdfFile(tree).write_to(tmp)
    return Path(path)


def read_wcs_model(path):
    """
    Read a WCS model file.

    Returns
    -------
    filename : str or None
    wcsinfo : dict
    wcs : `gwcs.WCS`

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not a readable ASDF file or has no ``wcs``.
    """
    import asdf
    import gwcs

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"WCS model not found: {path}")
    try:
        # Schema validation on read costs ~0.2 s a file and is redundant here: the
        # converters still build (or fail to build) the gwcs, whose type is checked below.
        with asdf.config_context() as config:
            config.validate_on_read = False
            with asdf.open(path, lazy_load=False, memmap=False) as af:
                tree = af.tree
                wcs = tree.get("wcs")
                wcsinfo = dict(tree.get("wcsinfo") or {})
                filename = tree.get("filename")
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as an ASDF WCS model: {exc}") from exc
    if not isinstance(wcs, gwcs.WCS):
        raise ValueError(f"{path}: no 'wcs' (gwcs.WCS) in the ASDF tree")
    return filename, wcsinfo, wcs


def detector_from_name(filename):
    """The detector in a JWST file name (``nrca1``, ``nrcblong``...), or None."""
    match = _BASE_RE.match(Path(filename).name)
    return match.group(1).rsplit("_", 1)[1].lower() if match else None


def load_wcs_for_image(model, wcs_dir, image_name=None):
    """
    Find, read and check the saved WCS model of an image.

    Looks for ``<wcs_dir>/<exposure base>_tweakreg.asdf`` and checks that the
    file has a ``wcs``, that its detector matches the image's, and that its
    bounding box fits the image.

    Parameters
    ----------
    model : ImageModel
    wcs_dir : str or Path
    image_name : str, optional
        Name used for the image in messages (default ``meta.filename``).

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
        tree_filename, wcsinfo, wcs = read_wcs_model(path)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    image_det = (getattr(model.meta.instrument, "detector", None) or "").lower()
    image_det = image_det or detector_from_name(name)
    # The file's own record of its image (CEERS trees carry 'filename') is the stronger witness.
    for source in (tree_filename, path.name):
        file_det = detector_from_name(source) if source else None
        if image_det and file_det and image_det != file_det:
            raise ValueError(f"{name}: detector {image_det.upper()} does not match the WCS model "
                             f"{path} (made for detector {file_det.upper()}: {source})")
    bbox = wcs.bounding_box
    if bbox is not None and model.data is not None and model.data.ndim == 2:
        (x0, x1), (y0, y1) = (tuple(i) for i in bbox.bounding_box(order="F"))
        ny, nx = model.data.shape
        if x0 < -0.5 - 1e-6 or y0 < -0.5 - 1e-6 or x1 > nx - 0.5 + 1e-6 or y1 > ny - 0.5 + 1e-6:
            raise ValueError(f"{name}: the WCS model {path} has bounding box x {x0:g}..{x1:g}, "
                             f"y {y0:g}..{y1:g}, which does not fit the image ({nx} x {ny})")
    return path, wcsinfo, wcs


def apply_wcs_model(model, wcsinfo, wcs):
    """Put a saved WCS on a model: ``meta.wcs``, ``meta.wcsinfo``, tweakreg COMPLETE."""
    from .inputs import trusted_assignment

    with trusted_assignment(model):
        model.meta.wcs = wcs
        for key, value in wcsinfo.items():
            setattr(model.meta.wcsinfo, key, value)
    model.meta.cal_step.tweakreg = "COMPLETE"
    return model
