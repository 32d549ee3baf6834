"""Source detection and windowed centroids with SEP, following the CEERS recipe.

CEERS ran Source Extractor on the SCI extension of each calibrated image with a
flat RMS (the median of the ERR array), the 3x3 ``default.conv`` filter,
``BACK_SIZE`` 128, ``BACK_FILTERSIZE`` 4, cleaning on, and took the windowed
centroids ``XWIN_IMAGE``/``YWIN_IMAGE`` minus one and ``FLUX_AUTO``. This module
does the same with SEP, which uses Source Extractor's algorithms as a library.

All pixel coordinates here are 0-based: the centre of the first pixel is
``(0, 0)``, as in numpy, SEP, gwcs and jwst's tweakreg catalogs.
"""

import re

import numpy as np
import sep
from astropy.table import Table

from ._stpipe import get_logger

__all__ = [
    "DEFAULT_KERNEL",
    "DetectionParameters",
    "detect_sources",
    "detection_kernel",
    "flat_rms",
]

log = get_logger(__name__)

#: Source Extractor's ``default.conv``: a 3x3 pyramid, the CEERS detection filter.
DEFAULT_KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])

# DQ bit 0 is DO_NOT_USE in the JWST DQ definitions.
_DO_NOT_USE = 1

# SEP flags (sep.h): OBJ_MERGED 1, OBJ_TRUNC 2, OBJ_DOVERFLOW 4, OBJ_SINGU 8,
# APER_TRUNC 16, APER_HASMASKED 32, APER_ALLMASKED 64, APER_NONPOSITIVE 128.
# Windowed positions that did not converge are flagged here in bit 8 (256).
FLAG_WINPOS_FAILED = 256

_GAUSS_RE = re.compile(r"^gauss_(\d+(?:\.\d+)?)_(\d+)x\2$")
_TOPHAT_RE = re.compile(r"^tophat_(\d+(?:\.\d+)?)_(\d+)x\2$")


def detection_kernel(name):
    """
    Return a detection filter by its Source Extractor name.

    Parameters
    ----------
    name : str
        ``"default"`` (Source Extractor's 3x3 ``default.conv``, the CEERS
        choice), ``"none"`` (no filtering), ``"gauss_<fwhm>_<n>x<n>"`` (a
        Gaussian of that FWHM in pixels sampled on an n x n grid, as Source
        Extractor's ``gauss_2.0_5x5.conv``), or ``"tophat_<diameter>_<n>x<n>"``.

    Returns
    -------
    kernel : ndarray or None
        The filter, or None for no filtering.
    """
    key = name.strip().lower()
    if key in ("default", "default.conv", "ceers"):
        return DEFAULT_KERNEL.copy()
    if key in ("none", ""):
        return None
    key = key.removesuffix(".conv")
    match = _GAUSS_RE.match(key)
    if match:
        fwhm, size = float(match.group(1)), int(match.group(2))
        sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        r = np.arange(size) - (size - 1) / 2.0
        xx, yy = np.meshgrid(r, r)
        return np.exp(-(xx**2 + yy**2) / (2.0 * sigma**2))
    match = _TOPHAT_RE.match(key)
    if match:
        diameter, size = float(match.group(1)), int(match.group(2))
        r = np.arange(size) - (size - 1) / 2.0
        xx, yy = np.meshgrid(r, r)
        return (np.hypot(xx, yy) <= diameter / 2.0).astype(float)
    raise ValueError(
        f"Unknown detection kernel {name!r}: use 'default', 'none', "
        "'gauss_<fwhm>_<n>x<n>' or 'tophat_<diameter>_<n>x<n>'"
    )


class DetectionParameters:
    """
    Parameters of the CEERS detection recipe, with the CEERS values as defaults.

    Parameters
    ----------
    detect_thresh : float
        Detection (and analysis) threshold in units of the RMS.
    detect_minarea : int
        Minimum number of connected pixels above threshold, in pixels.
    back_size : int
        Background mesh size, in pixels.
    back_filtersize : int
        Background median filter size, in meshes.
    kernel : str
        Detection filter name, see `detection_kernel`.
    rms : {"flat", "map"}
        ``"flat"``: one RMS for the whole image, the median of the positive ERR
        values (CEERS); ``"map"``: the ERR array pixel by pixel.
    deblend_nthresh : int
        Number of deblending thresholds (the CEERS cfg key ``deblend``).
    deblend_cont : float
        Minimum contrast ratio for deblending.
    clean : bool
        Clean spurious detections near bright sources.
    clean_param : float
        Cleaning efficiency.
    """

    def __init__(
        self,
        detect_thresh=4.0,
        detect_minarea=16,
        back_size=128,
        back_filtersize=4,
        kernel="default",
        rms="flat",
        deblend_nthresh=4,
        deblend_cont=0.005,
        clean=True,
        clean_param=1.0,
    ):
        if rms not in ("flat", "map"):
            raise ValueError(f"rms must be 'flat' or 'map', not {rms!r}")
        if detect_thresh <= 0:
            raise ValueError(f"detect_thresh must be positive, not {detect_thresh}")
        self.detect_thresh = float(detect_thresh)
        self.detect_minarea = int(detect_minarea)
        self.back_size = int(back_size)
        self.back_filtersize = int(back_filtersize)
        self.kernel = str(kernel)
        self.rms = rms
        self.deblend_nthresh = int(deblend_nthresh)
        self.deblend_cont = float(deblend_cont)
        self.clean = bool(clean)
        self.clean_param = float(clean_param)
        self._kernel_array = detection_kernel(self.kernel)

    def as_dict(self):
        """Parameters as a plain dict (for catalog metadata)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def _native(array, dtype=np.float32):
    # SEP needs C-contiguous arrays in native byte order; FITS data are big-endian.
    return np.ascontiguousarray(array, dtype=dtype)


def flat_rms(err, mask=None):
    """
    The CEERS flat RMS: median of the positive, finite ERR values.

    Parameters
    ----------
    err : ndarray
        ERR array (same units as SCI).
    mask : ndarray of bool, optional
        Pixels to ignore (True = ignored).

    Returns
    -------
    rms : float
        The median, or NaN when no pixel is usable.
    """
    good = np.isfinite(err) & (err > 0)
    if mask is not None:
        good &= ~mask
    if not good.any():
        return np.nan
    return float(np.median(err[good]))


def bad_pixel_mask(data, err=None, dq=None):
    """Pixels that must not be used: DO_NOT_USE in DQ, non-finite SCI, zero or bad ERR."""
    mask = ~np.isfinite(data)
    if err is not None:
        mask |= ~np.isfinite(err) | (err <= 0)
    if dq is not None:
        mask |= (np.asarray(dq) & _DO_NOT_USE).astype(bool)
    return mask


def _empty_catalog():
    names = ("id", "xcentroid", "ycentroid", "flux", "flux_err", "a", "b", "theta",
             "flux_radius", "flags")
    dtypes = ("i4", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "i4")
    return Table(names=names, dtype=dtypes)


def detect_sources(data, err=None, dq=None, params=None):
    """
    Detect sources and measure windowed centroids and AUTO fluxes.

    Parameters
    ----------
    data : ndarray
        2-D science array (e.g. MJy/sr).
    err : ndarray, optional
        Error array in the units of ``data``. Required for ``rms="flat"`` and
        ``rms="map"``; without it the SEP background RMS is used.
    dq : ndarray, optional
        Data-quality array; DO_NOT_USE pixels are masked.
    params : DetectionParameters, optional
        Detection settings; CEERS defaults when omitted.

    Returns
    -------
    catalog : `~astropy.table.Table`
        One row per source: ``id`` (1-based running number), ``xcentroid`` and
        ``ycentroid`` (windowed centroids, 0-based pixels), ``flux`` and
        ``flux_err`` (AUTO, in data units summed over pixels), ``a``, ``b``
        (pixels), ``theta`` (rad), ``flux_radius`` (half-light radius, pixels)
        and ``flags``. ``catalog.meta`` holds ``rms``, ``background`` and
        ``n_rejected`` (sources dropped for failed or off-image centroids).
    """
    params = params or DetectionParameters()
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {data.shape}")
    mask = bad_pixel_mask(data, err, dq)
    catalog = _empty_catalog()
    catalog.meta["n_rejected"] = 0
    if mask.all():
        catalog.meta["warning"] = "no usable pixels (all NaN, zero-ERR or DO_NOT_USE)"
        return catalog

    sci = _native(np.where(mask, 0.0, data))
    bkg = sep.Background(sci, mask=mask, bw=params.back_size, bh=params.back_size,
                         fw=params.back_filtersize, fh=params.back_filtersize)
    sub = sci - bkg.back()
    sub[mask] = 0.0
    catalog.meta["background"] = float(bkg.globalback)

    if err is not None and params.rms == "flat":
        rms = flat_rms(np.asarray(err), mask)
        noise = rms
    elif err is not None:
        noise = _native(np.where(mask, np.inf, err))
        rms = flat_rms(np.asarray(err), mask)
    else:
        rms = float(bkg.globalrms)
        noise = rms
    catalog.meta["rms"] = rms
    if not np.isfinite(rms) or rms <= 0 or not np.any(sub[~mask] != 0):
        catalog.meta["warning"] = "image has no signal or no positive RMS"
        return catalog

    kernel = params._kernel_array
    # SExtractor convolves ("conv"); SEP's "matched" filter differs with a noise map.
    extract_kwargs = {"filter_type": "conv"} if kernel is not None else {}
    sep.set_extract_pixstack(max(300000, sub.size // 4))
    sep.set_sub_object_limit(4096)
    objects = sep.extract(
        sub,
        params.detect_thresh,
        err=noise,
        mask=mask,
        minarea=params.detect_minarea,
        filter_kernel=kernel,
        deblend_nthresh=params.deblend_nthresh,
        deblend_cont=params.deblend_cont,
        clean=params.clean,
        clean_param=params.clean_param,
        **extract_kwargs,
    )
    if len(objects) == 0:
        return catalog

    x, y = objects["x"], objects["y"]
    a, b, theta = objects["a"], objects["b"], objects["theta"]
    flags = objects["flag"].astype(np.int32)
    # Degenerate shapes (single-pixel peaks) break elliptical apertures.
    a = np.where(np.isfinite(a) & (a > 0), a, 1.0)
    b = np.where(np.isfinite(b) & (b > 0), b, 1.0)
    theta = np.where(np.isfinite(theta), theta, 0.0)

    # FLUX_AUTO as Source Extractor's PHOT_AUTOPARAMS 2.5, 3.5: an ellipse of 2.5 Kron
    # radii, at least 3.5 (both in units of a and b).
    kronrad, kflag = sep.kron_radius(sub, x, y, a, b, theta, 6.0, mask=mask)
    kronrad = np.where(np.isfinite(kronrad) & (kronrad > 0), kronrad, 0.0)
    flux, flux_err, aflag = sep.sum_ellipse(sub, x, y, a, b, theta,
                                            np.maximum(2.5 * kronrad, 3.5),
                                            err=noise, mask=mask, subpix=1)
    flags |= kflag.astype(np.int32) | aflag.astype(np.int32)

    # FLUX_RADIUS normalised by FLUX_AUTO, then XWIN/YWIN with Source Extractor's
    # window size: sigma = 2 / 2.35 * half-light radius.
    norm = np.where(flux > 0, flux, np.nan)
    good_norm = np.isfinite(norm)
    flux_radius = np.full(len(x), np.nan)
    if good_norm.any():
        r, rflag = sep.flux_radius(sub, x[good_norm], y[good_norm], 6.0 * a[good_norm], 0.5,
                                   normflux=norm[good_norm], mask=mask, subpix=5)
        flux_radius[good_norm] = r
        flags[good_norm] |= rflag.astype(np.int32)
    sig = 2.0 / 2.35 * flux_radius
    usable = np.isfinite(sig) & (sig > 0)
    xwin = np.full(len(x), np.nan)
    ywin = np.full(len(x), np.nan)
    if usable.any():
        xw, yw, wflag = sep.winpos(sub, x[usable], y[usable], sig[usable], mask=mask)
        xwin[usable], ywin[usable] = xw, yw
        flags[usable] |= np.where(wflag != 0, FLAG_WINPOS_FAILED, 0).astype(np.int32)
    flags[~usable] |= FLAG_WINPOS_FAILED

    ny, nx = sub.shape
    keep = (
        np.isfinite(xwin) & np.isfinite(ywin)
        & (flags & FLAG_WINPOS_FAILED == 0)
        & (xwin >= -0.5) & (xwin < nx - 0.5) & (ywin >= -0.5) & (ywin < ny - 0.5)
    )
    n_rejected = int((~keep).sum())
    catalog = Table(
        {
            "id": np.arange(1, keep.sum() + 1, dtype=np.int32),
            "xcentroid": xwin[keep],
            "ycentroid": ywin[keep],
            "flux": np.asarray(flux, dtype=float)[keep],
            "flux_err": np.asarray(flux_err, dtype=float)[keep],
            "a": a[keep],
            "b": b[keep],
            "theta": theta[keep],
            "flux_radius": flux_radius[keep],
            "flags": flags[keep],
        },
        meta=catalog.meta,
    )
    catalog.meta["n_rejected"] = n_rejected
    if n_rejected:
        log.info("Dropped %d of %d sources with failed or off-image windowed centroids",
                 n_rejected, len(x))
    return catalog
