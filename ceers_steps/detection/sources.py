"""Source detection and windowed centroids with SEP, following the CEERS recipe.

CEERS ran Source Extractor on the SCI extension of each calibrated image with a
flat RMS (the median of the ERR array), the 3x3 ``default.conv`` filter,
``BACK_SIZE`` 128, ``BACK_FILTERSIZE`` 4, cleaning on, and took the windowed
centroids ``XWIN_IMAGE``/``YWIN_IMAGE`` minus one and ``FLUX_AUTO``. This module
does the same with SEP, which uses Source Extractor's algorithms as a library.

All pixel coordinates here are 0-based: the centre of the first pixel is
``(0, 0)``, as in numpy, SEP, gwcs and jwst's tweakreg catalogs.
"""

import math
import re

import numpy as np
import sep
from astropy.table import Table

from ..core.logs import get_logger
from .artifacts import dq_bits, saturated_stars, sharpness, spike_debris, window_fractions

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

log = get_logger(__name__)

#: Source Extractor's ``default.conv``: a 3x3 pyramid, the CEERS detection filter.
DEFAULT_KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])

# DQ bit 0 is DO_NOT_USE in the JWST DQ definitions.
_DO_NOT_USE = 1

#: PSF FWHM (pixels) assumed by the sharpness cut when neither the parameters nor
#: the image's filter give one: NIRCam SW near F115W, so no real source is cut.
DEFAULT_PSF_FWHM = 1.2

#: The rejection cuts, in the order they are applied; ``catalog.meta["rejected"]``
#: counts the sources each removed.
REJECTION_CUTS = ("degenerate", "centroid", "border", "masked", "flagged", "sharp", "saturation",
                  "peak", "brightest")

# SEP's work buffers: start at the larger of _PIXSTACK_START and a quarter of the
# image's pixels, grow on overflow (crowded or deep frames).
_PIXSTACK_START = 300_000
_PIXSTACK_DIVISOR = 4
_SUBOBJECT_START = 4096
_GROW_TRIES = 8


class DetectionError(RuntimeError):
    """Detection could not be done on an image (the message says why)."""

# SEP flags (sep.h): OBJ_MERGED 1, OBJ_TRUNC 2, OBJ_DOVERFLOW 4, OBJ_SINGU 8,
# APER_TRUNC 16, APER_HASMASKED 32, APER_ALLMASKED 64, APER_NONPOSITIVE 128.
# Windowed positions that did not converge are flagged here in bit 8 (256); the
# artifact cuts below add their own bits (a source keeps them only if it survives
# with flag_* limits loosened).
FLAG_WINPOS_FAILED = 256
FLAG_MASKED = 512
FLAG_DQ_FLAGGED = 1024
FLAG_SATURATION = 2048
FLAG_SHARP = 4096

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
    border_margin : float
        Reject centroids within this many pixels of the image edge or of the
        reference-pixel border (DQ ``REFERENCE_PIXEL``).
    max_masked_fraction : float
        Reject sources with more than this fraction of masked pixels (DO_NOT_USE,
        NaN, ERR <= 0) inside their centroid window; 1 keeps all.
    max_flagged_fraction : float
        Reject sources with more than this fraction of ``flag_dq`` pixels inside
        their centroid window (cosmic-ray and snowball residuals); 1 keeps all.
    flag_dq : str
        DQ flags counted by ``max_flagged_fraction`` (JWST names, comma-separated).
    sharpness_limit : float
        Reject sources whose peak falls off to its neighbours, along any axis,
        faster than this fraction of the PSF's fall-off (cosmic rays, hot
        pixels); 0 keeps all.
    psf_fwhm : float or None
        PSF FWHM in pixels for the sharpness cut; None: ``DEFAULT_PSF_FWHM``
        (`ceers_steps.detection.catalogs.build_catalog` sets it from the image's filter).
    saturation_radius : float
        Reject sources within this many core radii (+3 pixels) of a saturated
        star (connected DQ ``SATURATED`` pixels); 0 disables the saturation cuts.
    spike_length : float
        Reject sources within this many pixels of a saturated star that are
        elongated along the direction to it (diffraction-spike debris).
    spike_elongation : float
        Minimum a/b of spike debris.
    peak_max : float or None
        Drop sources whose peak pixel (data units) is at least this (jwst's
        TweakRegStep ``peakmax``); None keeps all.
    brightest : int or None
        Keep only this many sources, the brightest by AUTO flux (jwst's
        ``brightest``); None keeps all.
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
        border_margin=3.0,
        max_masked_fraction=0.05,
        max_flagged_fraction=0.25,
        flag_dq="JUMP_DET,SATURATED",
        sharpness_limit=0.5,
        psf_fwhm=None,
        saturation_radius=4.0,
        spike_length=300.0,
        spike_elongation=2.0,
        peak_max=None,
        brightest=None,
    ):
        if rms not in ("flat", "map"):
            raise ValueError(f"rms must be 'flat' or 'map', not {rms!r}")
        for name, value in (("detect_thresh", detect_thresh), ("deblend_cont", deblend_cont),
                            ("clean_param", clean_param), ("border_margin", border_margin),
                            ("max_masked_fraction", max_masked_fraction),
                            ("max_flagged_fraction", max_flagged_fraction),
                            ("sharpness_limit", sharpness_limit), ("psf_fwhm", psf_fwhm),
                            ("saturation_radius", saturation_radius),
                            ("spike_length", spike_length), ("spike_elongation", spike_elongation),
                            ("peakmax", peak_max)):
            # NaN passes every comparison below and would silently change the catalogs.
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value}")
        if detect_thresh <= 0:
            raise ValueError(f"detect_thresh must be positive, not {detect_thresh}")
        for name, value in (("max_masked_fraction", max_masked_fraction),
                            ("max_flagged_fraction", max_flagged_fraction)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        for name, value in (("detect_minarea", detect_minarea), ("back_size", back_size),
                            ("back_filtersize", back_filtersize),
                            ("deblend_nthresh", deblend_nthresh)):
            if value is None or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value}")
        if not 0 <= deblend_cont <= 1:
            raise ValueError(f"deblend_cont must be between 0 and 1, not {deblend_cont}")
        if brightest is not None and brightest < 1:
            raise ValueError(f"brightest must be a positive integer or None, not {brightest}")
        if psf_fwhm is not None and psf_fwhm <= 0:
            raise ValueError(f"psf_fwhm must be positive (pixels), not {psf_fwhm}")
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
        self.border_margin = float(border_margin)
        self.max_masked_fraction = float(max_masked_fraction)
        self.max_flagged_fraction = float(max_flagged_fraction)
        self.flag_dq = str(flag_dq)
        self.sharpness_limit = float(sharpness_limit)
        self.psf_fwhm = None if psf_fwhm is None else float(psf_fwhm)
        self.saturation_radius = float(saturation_radius)
        self.spike_length = float(spike_length)
        self.spike_elongation = float(spike_elongation)
        self.peak_max = None if peak_max is None else float(peak_max)
        self.brightest = None if brightest is None else int(brightest)
        self._kernel_array = detection_kernel(self.kernel)
        self._flag_bits = dq_bits(self.flag_dq)

    def with_psf_fwhm(self, fwhm):
        """A copy with ``psf_fwhm`` set (when it is not set already)."""
        if self.psf_fwhm is not None or fwhm is None:
            return self
        return DetectionParameters(**{**self.as_dict(), "psf_fwhm": fwhm})

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
             "flux_radius", "peak", "sharpness", "masked_frac", "flagged_frac", "flags")
    dtypes = ("i4", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "f8", "i4")
    return Table(names=names, dtype=dtypes)


def _extract(sub, noise, mask, params):
    """
    ``sep.extract`` that grows SEP's pixel stack and sub-object limit on overflow.

    Crowded or deep frames overflow the defaults; each overflow multiplies the
    limit by 8, up to ``_GROW_TRIES`` times in all, before giving up with `DetectionError`.
    """
    kernel = params._kernel_array
    # SExtractor convolves ("conv"); SEP's "matched" filter differs with a noise map.
    extract_kwargs = {"filter_type": "conv"} if kernel is not None else {}
    pixstack = max(_PIXSTACK_START, sub.size // _PIXSTACK_DIVISOR)
    sublimit = _SUBOBJECT_START
    for _ in range(_GROW_TRIES + 1):
        sep.set_extract_pixstack(pixstack)
        sep.set_sub_object_limit(sublimit)
        try:
            return sep.extract(
                sub, params.detect_thresh, err=noise, mask=mask, minarea=params.detect_minarea,
                filter_kernel=kernel, deblend_nthresh=params.deblend_nthresh,
                deblend_cont=params.deblend_cont, clean=params.clean,
                clean_param=params.clean_param, **extract_kwargs)
        except Exception as exc:  # SEP raises plain Exception subclasses with its message
            message = str(exc)
            if "pixel buffer full" in message:
                pixstack *= 8
            elif "deblending overflow" in message or "sub-object" in message:
                sublimit *= 8
            else:
                raise DetectionError(f"SEP extraction failed: {message}") from exc
            last = message
    raise DetectionError(f"SEP extraction failed after growing its buffers "
                         f"(pixel stack {pixstack // 8}, sub-objects {sublimit}): {last}")


def _per_source(func, arrays, n_out, **kwargs):
    """
    Call a vectorised SEP measurement; if one source's parameters make it raise,
    measure source by source and return NaN for the sources that fail.

    Returns
    -------
    outputs : list of ndarray
        ``n_out`` arrays of one value per source.
    failed : ndarray of bool
    """
    n = len(arrays[0])
    try:
        out = func(*arrays, **kwargs)
        return [np.asarray(o, dtype=float) for o in out], np.zeros(n, bool)
    except Exception:  # noqa: BLE001 - SEP errors are plain Exceptions; isolate per source
        pass
    outputs = [np.full(n, np.nan) for _ in range(n_out)]
    failed = np.zeros(n, bool)
    for i in range(n):
        try:
            res = func(*(np.atleast_1d(a[i]) for a in arrays), **kwargs)
        except Exception:  # noqa: BLE001
            failed[i] = True
            continue
        for o, r in zip(outputs, res, strict=True):
            o[i] = float(np.asarray(r).ravel()[0])
    return outputs, failed


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
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {data.shape}")
    for name, arr in (("ERR", err), ("DQ", dq)):
        if arr is not None and np.shape(arr) != data.shape:
            raise ValueError(f"{name} array shape {np.shape(arr)} differs from SCI {data.shape}")
    mask = bad_pixel_mask(data, err, dq)
    catalog = _empty_catalog()
    rejected = dict.fromkeys(REJECTION_CUTS, 0)
    catalog.meta.update(n_detected=0, rejected=rejected, n_rejected=0)
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
    if not np.isfinite(rms) or rms <= 0 or not np.any(sub):  # masked pixels are 0 in sub
        catalog.meta["warning"] = "image has no signal or no positive RMS"
        return catalog

    objects = _extract(sub, noise, mask, params)
    catalog.meta["n_detected"] = len(objects)
    if len(objects) == 0:
        return catalog

    x, y = objects["x"], objects["y"]
    theta = np.where(np.isfinite(objects["theta"]), objects["theta"], 0.0)
    # Degenerate shapes (single-pixel peaks, singular moments) break elliptical
    # apertures: give them a round 1-pixel shape, with a >= b > 0 as SEP requires.
    a0 = np.where(np.isfinite(objects["a"]) & (objects["a"] > 0), objects["a"], 1.0)
    b0 = np.where(np.isfinite(objects["b"]) & (objects["b"] > 0), objects["b"], 1.0)
    a, b = np.maximum(a0, b0), np.minimum(a0, b0)
    theta = np.clip(theta, -np.pi / 2, np.pi / 2)
    flags = objects["flag"].astype(np.int32)

    # FLUX_AUTO as Source Extractor's PHOT_AUTOPARAMS 2.5, 3.5: an ellipse of 2.5 Kron
    # radii, at least 3.5 (both in units of a and b).
    (kronrad, kflag), bad_k = _per_source(
        lambda *v: sep.kron_radius(sub, *v, 6.0, mask=mask), (x, y, a, b, theta), 2)
    kronrad = np.where(np.isfinite(kronrad) & (kronrad > 0), kronrad, 0.0)
    (flux, flux_err, aflag), bad_a = _per_source(
        lambda *v: sep.sum_ellipse(sub, *v, err=noise, mask=mask, subpix=1),
        (x, y, a, b, theta, np.maximum(2.5 * kronrad, 3.5)), 3)
    degenerate = bad_k | bad_a | ~np.isfinite(flux)
    flags |= np.nan_to_num(kflag).astype(np.int32) | np.nan_to_num(aflag).astype(np.int32)

    # FLUX_RADIUS normalised by FLUX_AUTO, then XWIN/YWIN with Source Extractor's
    # window size: sigma = 2 / 2.35 * half-light radius.
    norm = np.where(flux > 0, flux, np.nan)
    good_norm = np.isfinite(norm) & ~degenerate
    flux_radius = np.full(len(x), np.nan)
    if good_norm.any():
        (r, rflag), _ = _per_source(
            lambda *v: sep.flux_radius(sub, v[0], v[1], v[2], 0.5, normflux=v[3], mask=mask,
                                       subpix=5),
            (x[good_norm], y[good_norm], 6.0 * a[good_norm], norm[good_norm]), 2)
        flux_radius[good_norm] = r
        flags[good_norm] |= np.nan_to_num(rflag).astype(np.int32)
    sig = 2.0 / 2.35 * flux_radius
    usable = np.isfinite(sig) & (sig > 0)
    xwin = np.full(len(x), np.nan)
    ywin = np.full(len(x), np.nan)
    if usable.any():
        (xw, yw, wflag), _ = _per_source(lambda *v: sep.winpos(sub, *v, mask=mask),
                                         (x[usable], y[usable], sig[usable]), 3)
        xwin[usable], ywin[usable] = xw, yw
        wflag = np.nan_to_num(wflag, nan=1).astype(np.int32)
        # Masked pixels in the window are judged by the masked-fraction cut below;
        # any other bit means the windowed position did not converge.
        flags[usable] |= (wflag & sep.APER_HASMASKED) | np.where(
            wflag & ~sep.APER_HASMASKED, FLAG_WINPOS_FAILED, 0).astype(np.int32)
    flags[~usable] |= FLAG_WINPOS_FAILED

    ny, nx = sub.shape
    remaining = ~degenerate
    rejected["degenerate"] = int(degenerate.sum())

    def cut(name, bad, bit=0):
        nonlocal remaining
        bad = np.asarray(bad, bool)
        if bit:
            flags[bad] |= bit
        rejected[name] = int((bad & remaining).sum())
        remaining = remaining & ~bad

    cut("centroid", ~(np.isfinite(xwin) & np.isfinite(ywin)
                      & (flags & FLAG_WINPOS_FAILED == 0)
                      & (xwin >= -0.5) & (xwin < nx - 0.5) & (ywin >= -0.5) & (ywin < ny - 0.5)))
    xc, yc = np.nan_to_num(xwin), np.nan_to_num(ywin)
    bx0, bx1, by0, by1 = _usable_box(dq, sub.shape)
    m = params.border_margin
    cut("border", (xc < bx0 + m) | (xc > bx1 - m) | (yc < by0 + m) | (yc > by1 - m))

    # The centroid window: twice the window sigma, at least 2 pixels.
    radius = np.maximum(2.0, 2.0 * np.nan_to_num(sig, nan=1.0))
    masked_frac, flagged_frac = window_fractions(
        xc, yc, radius, mask, None if dq is None else np.asarray(dq), params._flag_bits)
    cut("masked", masked_frac > params.max_masked_fraction, FLAG_MASKED)
    cut("flagged", flagged_frac > params.max_flagged_fraction, FLAG_DQ_FLAGGED)

    fwhm = params.psf_fwhm or DEFAULT_PSF_FWHM
    sharp = sharpness(sub, objects["xpeak"], objects["ypeak"], fwhm)
    if params.sharpness_limit > 0:
        cut("sharp", np.nan_to_num(sharp, nan=1.0) < params.sharpness_limit, FLAG_SHARP)

    if dq is not None and params.saturation_radius > 0:
        from ..core.compat import dqflags

        # Saturated cores are DO_NOT_USE (masked): look for SATURATED among masked pixels only.
        my, mx = np.nonzero(mask)
        sat = (np.asarray(dq)[my, mx] & dqflags.pixel["SATURATED"]) != 0
        stars = saturated_stars(my[sat], mx[sat])
        if len(stars):
            debris = spike_debris(xc, yc, a, b, theta, stars, params.saturation_radius,
                                  params.spike_length, params.spike_elongation)
            cut("saturation", debris, FLAG_SATURATION)
        catalog.meta["n_saturated_stars"] = len(stars)

    if params.peak_max is not None:
        peak = np.asarray(objects["peak"], dtype=float)
        cut("peak", remaining & (peak >= params.peak_max))
    if params.brightest is not None and remaining.sum() > params.brightest:
        # jwst's 'brightest': the N largest fluxes survive, the others are not detections to use.
        order = np.argsort(np.where(remaining, -flux, np.inf), kind="stable")
        faint = np.zeros_like(remaining)
        faint[order[params.brightest:]] = True
        cut("brightest", remaining & faint)
    keep = remaining
    catalog = Table(
        {
            "id": np.arange(1, keep.sum() + 1, dtype=np.int32),
            "xcentroid": xwin[keep],
            "ycentroid": ywin[keep],
            "flux": flux[keep],
            "flux_err": flux_err[keep],
            "a": a[keep],
            "b": b[keep],
            "theta": theta[keep],
            "flux_radius": flux_radius[keep],
            "peak": np.asarray(objects["peak"], dtype=float)[keep],
            "sharpness": sharp[keep],
            "masked_frac": masked_frac[keep],
            "flagged_frac": flagged_frac[keep],
            "flags": flags[keep],
        },
        meta=catalog.meta,
    )
    catalog.meta["n_rejected"] = int(sum(rejected.values()))
    catalog.meta["psf_fwhm"] = float(fwhm)
    return catalog
