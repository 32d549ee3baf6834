"""The image SEP detects on: bad-pixel mask, SEP background, and the noise (flat RMS or map).

CEERS detected with a flat RMS, the median of the ERR array (`flat_rms`).
"""

from dataclasses import dataclass

import numpy as np
import sep

__all__ = ["Background", "bad_pixel_mask", "flat_rms", "subtract_background"]

# DQ bit 0 is DO_NOT_USE in the JWST DQ definitions.
_DO_NOT_USE = 1


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



@dataclass
class Background:
    """The background-subtracted image and the noise SEP detects and measures with."""

    #: SCI minus the SEP background, masked pixels set to 0 (float32, C order).
    sub: np.ndarray
    #: The noise: a flat RMS (float) or the ERR map (masked pixels infinite).
    noise: object
    #: The flat RMS reported in the catalog (``meta["rms"]``).
    rms: float
    #: SEP's global background level.
    level: float


def subtract_background(data, err, mask, params):
    """
    Subtract SEP's background (``params.back_size``, ``params.back_filtersize``) and pick the noise.

    Returns
    -------
    background : `Background`
        With ``params.rms == "flat"`` and ERR given, the noise is the flat RMS; with
        ERR and another ``rms``, the ERR map; without ERR, SEP's global RMS.
    """
    sci = _native(np.where(mask, 0.0, data))
    bkg = sep.Background(sci, mask=mask, bw=params.back_size, bh=params.back_size,
                         fw=params.back_filtersize, fh=params.back_filtersize)
    sub = sci - bkg.back()
    sub[mask] = 0.0
    if err is not None and params.rms == "flat":
        rms = flat_rms(np.asarray(err), mask)
        noise = rms
    elif err is not None:
        noise = _native(np.where(mask, np.inf, err))
        rms = flat_rms(np.asarray(err), mask)
    else:
        rms = float(bkg.globalrms)
        noise = rms
    return Background(sub=sub, noise=noise, rms=rms, level=float(bkg.globalback))
