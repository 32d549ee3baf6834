"""Source detection and windowed centroids with SEP, following the CEERS recipe.

CEERS ran Source Extractor on the SCI extension of each calibrated image with a
flat RMS (the median of the ERR array), the 3x3 ``default.conv`` filter,
``BACK_SIZE`` 128, ``BACK_FILTERSIZE`` 4, cleaning on, and took the windowed
centroids ``XWIN_IMAGE``/``YWIN_IMAGE`` minus one and ``FLUX_AUTO``. This module
does the same with SEP, which uses Source Extractor's algorithms as a library.

All pixel coordinates here are 0-based: the centre of the first pixel is
``(0, 0)``, as in numpy, SEP, gwcs and jwst's tweakreg catalogs.
"""


import numpy as np
from astropy.table import Table

from ..core.logs import get_logger
from .artifacts import saturated_stars, sharpness, spike_debris, window_fractions
from .background import bad_pixel_mask, flat_rms, subtract_background
from .centroids import FLAG_WINPOS_FAILED, measure
from .centroids import _per_source as _per_source  # tests measure with it
from .parameters import DEFAULT_KERNEL, DEFAULT_PSF_FWHM, DetectionParameters, detection_kernel
from .sep_extract import DetectionError, extract

__all__ = [
    "DEFAULT_KERNEL",
    "DEFAULT_PSF_FWHM",
    "REJECTION_CUTS",
    "DetectionError",
    "DetectionParameters",
    "detect_sources",
    "detection_kernel",
    "flat_rms",
]

log = get_logger(__package__)  # "ceers_steps.detection", as before the split

#: The rejection cuts, in the order they are applied; ``catalog.meta["rejected"]``
#: counts the sources each removed.
REJECTION_CUTS = ("degenerate", "centroid", "border", "masked", "flagged", "sharp", "saturation",
                  "peak", "brightest")

# SEP flags (sep.h): OBJ_MERGED 1, OBJ_TRUNC 2, OBJ_DOVERFLOW 4, OBJ_SINGU 8,
# APER_TRUNC 16, APER_HASMASKED 32, APER_ALLMASKED 64, APER_NONPOSITIVE 128.
# Windowed positions that did not converge are flagged here in bit 8 (256); the
# artifact cuts below add their own bits (a source keeps them only if it survives
# with flag_* limits loosened).
FLAG_MASKED = 512
FLAG_DQ_FLAGGED = 1024
FLAG_SATURATION = 2048
FLAG_SHARP = 4096


def _empty_catalog():
    names = ("id", "xcentroid", "ycentroid", "flux", "flux_err", "a", "b", "theta",
             "flux_radius", "peak", "sharpness", "masked_frac", "flagged_frac", "flags")
    dtypes = ("i4", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "i4")
    return Table(names=names, dtype=dtypes)


def _usable_box(dq, shape):
    """
    (x0, x1, y0, y1): the region inside the reference-pixel border, 0-based inclusive.

    The border is read along the middle row and column (a border row or column is
    flagged REFERENCE_PIXEL along its whole length).
    """
    ny, nx = shape
    if dq is None:
        return 0, nx - 1, 0, ny - 1
    from ..core.compat import dqflags

    bit = dqflags.pixel["REFERENCE_PIXEL"]
    dq = np.asarray(dq)

    def span(line):
        good = np.nonzero((line & bit) == 0)[0]
        return (good[0], good[-1]) if good.size else (0, -1)

    x0, x1 = span(dq[ny // 2, :])
    y0, y1 = span(dq[:, nx // 2])
    return x0, x1, y0, y1


class _Cuts:
    """The rejection cuts applied in turn: counts per cut, sources remaining, flag bits."""

    def __init__(self, remaining, flags, rejected):
        self.remaining = remaining
        self.flags = flags
        self.rejected = rejected

    def __call__(self, name, bad, bit=0):
        bad = np.asarray(bad, bool)
        if bit:
            self.flags[bad] |= bit
        self.rejected[name] = int((bad & self.remaining).sum())
        self.remaining = self.remaining & ~bad


def _position_cuts(cut, m, dq, shape, params):
    """Centroid, border, masked and flagged cuts; returns the window's masked and flagged fractions."""
    ny, nx = shape
    xwin, ywin = m.xwin, m.ywin
    cut("centroid", ~(np.isfinite(xwin) & np.isfinite(ywin)
                      & (cut.flags & FLAG_WINPOS_FAILED == 0)
                      & (xwin >= -0.5) & (xwin < nx - 0.5) & (ywin >= -0.5) & (ywin < ny - 0.5)))
    xc, yc = np.nan_to_num(xwin), np.nan_to_num(ywin)
    bx0, bx1, by0, by1 = _usable_box(dq, shape)
    margin = params.border_margin
    cut("border", (xc < bx0 + margin) | (xc > bx1 - margin) | (yc < by0 + margin)
        | (yc > by1 - margin))
    return xc, yc


def _window_cuts(cut, m, xc, yc, mask, dq, params):
    # The centroid window: twice the window sigma, at least 2 pixels.
    radius = np.maximum(2.0, 2.0 * np.nan_to_num(m.sig, nan=1.0))
    masked_frac, flagged_frac = window_fractions(
        xc, yc, radius, mask, None if dq is None else np.asarray(dq), params._flag_bits)
    cut("masked", masked_frac > params.max_masked_fraction, FLAG_MASKED)
    cut("flagged", flagged_frac > params.max_flagged_fraction, FLAG_DQ_FLAGGED)
    return masked_frac, flagged_frac


def _saturation_cut(cut, m, xc, yc, mask, dq, params, meta):
    if dq is None or params.saturation_radius <= 0:
        return
    from ..core.compat import dqflags

    # Saturated cores are DO_NOT_USE (masked): look for SATURATED among masked pixels only.
    my, mx = np.nonzero(mask)
    sat = (np.asarray(dq)[my, mx] & dqflags.pixel["SATURATED"]) != 0
    stars = saturated_stars(my[sat], mx[sat])
    if len(stars):
        debris = spike_debris(xc, yc, m.a, m.b, m.theta, stars, params.saturation_radius,
                              params.spike_length, params.spike_elongation)
        cut("saturation", debris, FLAG_SATURATION)
    meta["n_saturated_stars"] = len(stars)


def _brightness_cuts(cut, m, objects, params):
    if params.peak_max is not None:
        peak = np.asarray(objects["peak"], dtype=float)
        cut("peak", cut.remaining & (peak >= params.peak_max))
    if params.brightest is not None and cut.remaining.sum() > params.brightest:
        # jwst's 'brightest': the N largest fluxes survive, the others are not detections to use.
        order = np.argsort(np.where(cut.remaining, -m.flux, np.inf), kind="stable")
        faint = np.zeros_like(cut.remaining)
        faint[order[params.brightest:]] = True
        cut("brightest", cut.remaining & faint)


def _check_shapes(data, err, dq):
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {data.shape}")
    for name, arr in (("ERR", err), ("DQ", dq)):
        if arr is not None and np.shape(arr) != data.shape:
            raise ValueError(f"{name} array shape {np.shape(arr)} differs from SCI {data.shape}")


def _measure_and_cut(objects, bkg, mask, dq, params, meta):
    """Measure SEP's objects, apply the cuts in `REJECTION_CUTS` order; the catalog of survivors."""
    sub = bkg.sub
    m = measure(sub, mask, bkg.noise, objects)
    rejected = meta["rejected"]
    rejected["degenerate"] = int(m.degenerate.sum())
    cut = _Cuts(~m.degenerate, m.flags, rejected)
    xc, yc = _position_cuts(cut, m, dq, sub.shape, params)
    masked_frac, flagged_frac = _window_cuts(cut, m, xc, yc, mask, dq, params)

    fwhm = params.psf_fwhm or DEFAULT_PSF_FWHM
    sharp = sharpness(sub, objects["xpeak"], objects["ypeak"], fwhm)
    if params.sharpness_limit > 0:
        cut("sharp", np.nan_to_num(sharp, nan=1.0) < params.sharpness_limit, FLAG_SHARP)
    _saturation_cut(cut, m, xc, yc, mask, dq, params, meta)
    _brightness_cuts(cut, m, objects, params)
    keep = cut.remaining
    catalog = Table(
        {
            "id": np.arange(1, keep.sum() + 1, dtype=np.int32),
            "xcentroid": m.xwin[keep],
            "ycentroid": m.ywin[keep],
            "flux": m.flux[keep],
            "flux_err": m.flux_err[keep],
            "a": m.a[keep],
            "b": m.b[keep],
            "theta": m.theta[keep],
            "flux_radius": m.flux_radius[keep],
            "peak": np.asarray(objects["peak"], dtype=float)[keep],
            "sharpness": sharp[keep],
            "masked_frac": masked_frac[keep],
            "flagged_frac": flagged_frac[keep],
            "flags": cut.flags[keep],
        },
        meta=meta,
    )
    catalog.meta["n_rejected"] = int(sum(rejected.values()))
    catalog.meta["psf_fwhm"] = float(fwhm)
    return catalog


def detect_sources(data, err=None, dq=None, params=None):
    """
    Detect sources, measure windowed centroids and AUTO fluxes, reject artifacts.

    Parameters
    ----------
    data : ndarray
        2-D science array (e.g. MJy/sr).
    err : ndarray, optional
        Error array in the units of ``data``. Required for ``rms="flat"`` and
        ``rms="map"``; without it the SEP background RMS is used.
    dq : ndarray, optional
        Data-quality array; DO_NOT_USE pixels are masked, and the artifact cuts
        read REFERENCE_PIXEL, SATURATED and ``params.flag_dq``.
    params : DetectionParameters, optional
        Detection settings; CEERS defaults when omitted.

    Returns
    -------
    catalog : `~astropy.table.Table`
        One row per source: ``id`` (1-based running number), ``xcentroid`` and
        ``ycentroid`` (windowed centroids, 0-based pixels), ``flux`` and
        ``flux_err`` (AUTO, in data units summed over pixels), ``a``, ``b``
        (pixels), ``theta`` (rad), ``flux_radius`` (half-light radius, pixels),
        ``peak`` (data units), ``sharpness`` (fall-off from the peak relative
        to the PSF's, see `ceers_steps.detection.artifacts.sharpness`),
        ``masked_frac`` and ``flagged_frac`` (of the centroid window) and
        ``flags``. ``catalog.meta`` holds ``rms``, ``background``,
        ``n_detected`` (SEP objects), ``rejected`` (sources removed by each cut
        of `REJECTION_CUTS`) and ``n_rejected`` (their sum).

    Raises
    ------
    DetectionError
        SEP cannot extract the image even with grown buffers.
    """
    params = params or DetectionParameters()
    data = np.asarray(data)
    _check_shapes(data, err, dq)
    mask = bad_pixel_mask(data, err, dq)
    catalog = _empty_catalog()
    rejected = dict.fromkeys(REJECTION_CUTS, 0)
    catalog.meta.update(n_detected=0, rejected=rejected, n_rejected=0)
    if mask.all():
        catalog.meta["warning"] = "no usable pixels (all NaN, zero-ERR or DO_NOT_USE)"
        return catalog

    bkg = subtract_background(data, err, mask, params)
    catalog.meta["background"] = bkg.level
    catalog.meta["rms"] = bkg.rms
    if not np.isfinite(bkg.rms) or bkg.rms <= 0 or not np.any(bkg.sub):  # masked pixels are 0
        catalog.meta["warning"] = "image has no signal or no positive RMS"
        return catalog

    objects = extract(bkg.sub, bkg.noise, mask, params)
    catalog.meta["n_detected"] = len(objects)
    if len(objects) == 0:
        return catalog
    return _measure_and_cut(objects, bkg, mask, dq, params, catalog.meta)
