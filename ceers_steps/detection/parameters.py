"""Detection settings: the CEERS Source Extractor parameters and the detection filters.

`DetectionParameters` holds what `~ceers_steps.detection.sources.detect_sources` reads;
`detection_kernel` turns a Source Extractor filter name into its array.
"""

import math
import re

import numpy as np

from .artifacts import dq_bits

__all__ = ["DEFAULT_KERNEL", "DEFAULT_PSF_FWHM", "DetectionParameters", "detection_kernel"]

#: Source Extractor's ``default.conv``: a 3x3 pyramid, the CEERS detection filter.
DEFAULT_KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])

#: PSF FWHM (pixels) assumed by the sharpness cut when neither the parameters nor
#: the image's filter give one: NIRCam SW near F115W, so no real source is cut.
DEFAULT_PSF_FWHM = 1.2

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

