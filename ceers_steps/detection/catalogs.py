"""Image catalogs: build, write, read.

Image catalogs are ECSV tables with 0-based pixel columns ``xcentroid`` and
``ycentroid`` (the names jwst's TweakRegStep reads), ``id`` and ``flux``;
reading also accepts ``x``/``y`` and ``x_centroid``/``y_centroid``.
Reference catalogs are read by `ceers_steps.refcat`.
"""

from pathlib import Path

import numpy as np
from astropy.table import Table

from .. import __version__
from ..core.fileio import write_ecsv
from .sources import DetectionParameters, detect_sources

__all__ = [
    "build_catalog",
    "catalog_path_for",
    "catalog_xy",
    "image_psf_fwhm",
    "read_catalog",
    "write_catalog",
]

_XY_NAMES = (("x", "y"), ("xcentroid", "ycentroid"), ("x_centroid", "y_centroid"))


def catalog_path_for(filename, output_dir, suffix="cat", fmt="ecsv"):
    """``<output_dir>/<stem>_<suffix>.<fmt>`` for an image file name (jwst's naming)."""
    stem = Path(filename).name
    for ext in (".fits", ".fits.gz", ".asdf"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    from ..core.fileio import inside_folder

    return inside_folder(Path(output_dir) / f"{stem}_{suffix}.{fmt}", output_dir)


def image_psf_fwhm(model):
    """
    The PSF FWHM of an image in pixels, from its filter and the WCS pixel scale.

    The filter is the one that defines the bandpass: the pupil-wheel filter when there
    is one (F444W+F470N: F470N), else FILTER. Uses `ceers_steps.detection.artifacts.NIRCAM_PSF_FWHM`;
    None when the filter is not a NIRCam filter or the image has no usable WCS.
    """
    from .artifacts import NIRCAM_PSF_FWHM

    instrument = getattr(model.meta, "instrument", None)
    name = str(getattr(instrument, "filter", "") or "").strip().upper()
    pupil = str(getattr(instrument, "pupil", "") or "").strip().upper()
    fwhm = NIRCAM_PSF_FWHM.get(pupil, NIRCAM_PSF_FWHM.get(name))
    wcs = getattr(model.meta, "wcs", None)
    if fwhm is None or wcs is None:
        return None
    ny, nx = np.shape(model.data)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra, dec = wcs(np.array([cx, cx + 1.0, cx]), np.array([cy, cy, cy + 1.0]),
                  with_bounding_box=False)
    cosd = np.cos(np.deg2rad(dec[0]))
    step = np.hypot((np.asarray(ra[1:]) - ra[0]) * cosd, np.asarray(dec[1:]) - dec[0]) * 3600.0
    scale = float(np.mean(step))
    if not np.isfinite(scale) or scale <= 0:
        return None
    return fwhm / scale


def build_catalog(model, params=None):
    """
    Detect sources on a calibrated image and return its catalog.

    Parameters
    ----------
    model : `~stdatamodels.jwst.datamodels.ImageModel`
        Calibrated image with SCI, ERR, DQ and a WCS.
    params : `~ceers_steps.detection.sources.DetectionParameters`, optional
        CEERS defaults when omitted.

    Returns
    -------
    catalog : `~astropy.table.Table`
        Columns of `~ceers_steps.detection.sources.detect_sources` plus ``ra``, ``dec``
        (deg, from the image WCS). ``meta`` names the image and the parameters.
        The sharpness cut uses the PSF of the image's filter unless
        ``params.psf_fwhm`` is set.
    """
    params = (params or DetectionParameters()).with_psf_fwhm(image_psf_fwhm(model))
    catalog = detect_sources(model.data, model.err, model.dq, params)
    if len(catalog):
        ra, dec = model.meta.wcs(catalog["xcentroid"], catalog["ycentroid"],
                                 with_bounding_box=False)
        catalog["ra"] = np.asarray(ra, dtype=float)
        catalog["dec"] = np.asarray(dec, dtype=float)
    else:
        catalog["ra"] = np.zeros(0)
        catalog["dec"] = np.zeros(0)
    catalog["ra"].unit = catalog["dec"].unit = "deg"
    catalog.meta.update(
        {
            "image": model.meta.filename,
            "pixel_origin": 0,
            "centroid": "windowed (SEP winpos, Source Extractor XWIN/YWIN convention)",
            "flux": "AUTO (Kron k=2.5, minimum radius 3.5)",
            "detection_parameters": params.as_dict(),
            "unit": getattr(model.meta, "bunit_data", None) or "image units",
            "software": f"ceers_steps {__version__}",
        }
    )
    return catalog


def write_catalog(catalog, path):
    """Write a catalog as ECSV (or FITS, for a ``.fits`` name), completely or not at all."""
    if str(path).lower().endswith(".fits"):
        from ..core.fileio import atomic_output

        with atomic_output(path) as tmp:
            table = catalog.copy()
            # FITS headers hold no nested metadata: keep the scalar entries.
            table.meta = {k: v for k, v in catalog.meta.items()
                          if isinstance(v, (str, int, float, bool))}
            table.write(tmp, format="fits", overwrite=True)
        return Path(path)
    return write_ecsv(catalog, path)


def read_catalog(path):
    """
    Read an image catalog and return it with 0-based ``x``/``y`` columns.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file cannot be read as a table, or has no pixel columns.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"catalog file not found: {path}")
    try:
        table = Table.read(path, format="ascii.ecsv") if path.suffix == ".ecsv" else Table.read(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a catalog table: {exc}") from exc
    return catalog_xy(table, where=str(path))


def catalog_xy(table, where="catalog"):
    """
    A catalog table as 0-based ``x``, ``y`` (+ ``weight``, ``flux`` when present).

    Position columns ``x``/``y``, ``xcentroid``/``ycentroid`` or
    ``x_centroid``/``y_centroid`` (any case), as jwst accepts; ``where`` names
    the catalog in the error when it has none.
    """
    names = {n.lower(): n for n in table.colnames}
    for xname, yname in _XY_NAMES:
        if xname in names and yname in names:
            out = Table({"x": np.asarray(table[names[xname]], dtype=float),
                         "y": np.asarray(table[names[yname]], dtype=float)})
            if "weight" in names:
                out["weight"] = np.asarray(table[names["weight"]], dtype=float)
            if "flux" in names:
                out["flux"] = np.asarray(table[names["flux"]], dtype=float)
            out.meta.update(table.meta)
            return out
    raise ValueError(
        f"{where}: no pixel position columns (expected x/y, xcentroid/ycentroid or "
        f"x_centroid/y_centroid; found {', '.join(table.colnames) or 'none'})"
    )
