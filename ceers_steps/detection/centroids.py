"""Source shapes, AUTO fluxes, half-light radii and windowed centroids with SEP, as Source Extractor.

CEERS aligned on ``XWIN_IMAGE``/``YWIN_IMAGE`` and weighted by ``FLUX_AUTO``; `measure`
computes both for SEP's objects, source by source when one source makes SEP fail.
"""

from dataclasses import dataclass

import numpy as np
import sep

__all__ = ["FLAG_WINPOS_FAILED", "Measurements", "measure"]

#: Flag bit: the windowed position did not converge (or could not be computed).
FLAG_WINPOS_FAILED = 256


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


@dataclass
class Measurements:
    """Per-source measurements of SEP's objects (0-based pixels, data units)."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    flags: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    #: Sources whose Kron radius or AUTO flux could not be measured.
    degenerate: np.ndarray
    flux_radius: np.ndarray
    #: The window sigma: 2 / 2.35 * half-light radius.
    sig: np.ndarray
    xwin: np.ndarray
    ywin: np.ndarray


def _shapes(objects):
    x, y = objects["x"], objects["y"]
    theta = np.where(np.isfinite(objects["theta"]), objects["theta"], 0.0)
    # Degenerate shapes (single-pixel peaks, singular moments) break elliptical
    # apertures: give them a round 1-pixel shape, with a >= b > 0 as SEP requires.
    a0 = np.where(np.isfinite(objects["a"]) & (objects["a"] > 0), objects["a"], 1.0)
    b0 = np.where(np.isfinite(objects["b"]) & (objects["b"] > 0), objects["b"], 1.0)
    a, b = np.maximum(a0, b0), np.minimum(a0, b0)
    theta = np.clip(theta, -np.pi / 2, np.pi / 2)
    return x, y, a, b, theta


def _auto_flux(sub, mask, noise, x, y, a, b, theta, flags):
    """FLUX_AUTO; ``flags`` gains SEP's Kron and aperture flags (in place)."""
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
    return flux, flux_err, degenerate


def _flux_radius(sub, mask, x, y, a, flux, degenerate, flags):
    """FLUX_RADIUS normalised by FLUX_AUTO (NaN where not measured)."""
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
    return flux_radius


def _windowed(sub, mask, x, y, sig, flags):
    """XWIN/YWIN; sources without a usable window are flagged `FLAG_WINPOS_FAILED`."""
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
    return xwin, ywin


def measure(sub, mask, noise, objects):
    """
    Shapes, AUTO fluxes, half-light radii and windowed centroids of SEP's ``objects``.

    Parameters
    ----------
    sub : ndarray
        Background-subtracted image (float32, masked pixels 0).
    mask : ndarray of bool
        Pixels not to use.
    noise : float or ndarray
        Flat RMS or ERR map.
    objects : structured ndarray
        ``sep.extract``'s output.

    Returns
    -------
    measurements : `Measurements`
    """
    x, y, a, b, theta = _shapes(objects)
    flags = objects["flag"].astype(np.int32)
    flux, flux_err, degenerate = _auto_flux(sub, mask, noise, x, y, a, b, theta, flags)
    # FLUX_RADIUS normalised by FLUX_AUTO, then XWIN/YWIN with Source Extractor's
    # window size: sigma = 2 / 2.35 * half-light radius.
    flux_radius = _flux_radius(sub, mask, x, y, a, flux, degenerate, flags)
    sig = 2.0 / 2.35 * flux_radius
    xwin, ywin = _windowed(sub, mask, x, y, sig, flags)
    return Measurements(x=x, y=y, a=a, b=b, theta=theta, flags=flags, flux=flux,
                        flux_err=flux_err, degenerate=degenerate, flux_radius=flux_radius,
                        sig=sig, xwin=xwin, ywin=ywin)
