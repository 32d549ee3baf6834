"""Save and read tweaked WCS models in the CEERS ASDF layout.

A model file holds the tree ``filename`` (the image it belongs to),
``wcsinfo`` (a dict of FITS-like keywords, including the SIP approximation)
and ``wcs`` (the `gwcs.WCS`), exactly as CEERS' ``save_wcs`` wrote them, so
CEERS' own ``updatewcs.py`` and plain ``asdf.open(f)['wcs']`` read them.
"""

import re
from pathlib import Path

from .fileio import atomic_output

__all__ = ["exposure_base", "read_wcs_model", "save_wcs_model", "wcs_model_path"]

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
