"""Pixels of synthetic frames: Gaussian sources integrated over pixels, noise, bad columns."""

import numpy as np
from scipy.special import erf

__all__ = ["make_crowded_frame", "noisy_frame", "render_sources"]


def render_sources(shape, x, y, flux, sigma, rng=None, nsig=5.0):
    """
    Render circular Gaussian sources into an image.

    Parameters
    ----------
    shape : tuple
        (ny, nx).
    x, y : ndarray
        0-based pixel centres.
    flux : ndarray
        Total flux of each source (image units times pixels).
    sigma : ndarray
        Gaussian sigma of each source, pixels.

    Returns
    -------
    image : ndarray (float32)
    """
    ny, nx = shape
    image = np.zeros(shape, dtype=np.float64)
    for xi, yi, fi, si in zip(x, y, flux, sigma, strict=True):
        r = int(np.ceil(nsig * si)) + 1
        x0, x1 = max(int(xi) - r, 0), min(int(xi) + r + 1, nx)
        y0, y1 = max(int(yi) - r, 0), min(int(yi) + r + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        # Integrate the Gaussian over each pixel (difference of error functions) so that
        # centroids are unbiased even for sharp PSFs.
        s2 = np.sqrt(2.0) * si
        ex = np.arange(x0, x1 + 1) - 0.5 - xi
        ey = np.arange(y0, y1 + 1) - 0.5 - yi
        px = np.diff(0.5 * erf(ex / s2))
        py = np.diff(0.5 * erf(ey / s2))
        image[y0:y1, x0:x1] += fi * np.outer(py, px)
    return image.astype(np.float32)


def noisy_frame(shape, x, y, flux, sigma, noise, rng):
    """
    Sources rendered with white noise and a pedestal; ERR the noise; three bad columns.

    Returns
    -------
    sci, err : ndarray (float32)
    dq : ndarray (uint32)
        DO_NOT_USE on the bad columns (NaN in ``sci``).
    """
    sci = render_sources(shape, x, y, flux, sigma)
    sci += rng.normal(0.0, noise, size=shape).astype(np.float32) + np.float32(0.05)
    err = np.full(shape, noise, dtype=np.float32)
    dq = np.zeros(shape, dtype=np.uint32)
    # A few bad columns flagged DO_NOT_USE, as real detectors have.
    bad = rng.integers(0, shape[1], size=3)
    dq[:, bad] = 1
    sci[:, bad] = np.nan
    return sci, err, dq


def make_crowded_frame(n_sources=6000, shape=(2048, 2048), noise=0.01, seed=0, point_fraction=0.3):
    """
    A crowded, deep frame (a cluster core or a deep field) for SEP's buffer limits.

    Galaxy-like sources (Gaussian, sigma 0.9-4 pixels) and point sources with
    fluxes from 10 to 10^4 times the noise, uniformly placed, so that many blend.

    Returns
    -------
    sci, err : ndarray (float32)
    dq : ndarray (uint32)
    truth : ndarray, shape (n, 3)
        0-based x, y and total flux of each source.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    x = rng.uniform(5, nx - 5, n_sources)
    y = rng.uniform(5, ny - 5, n_sources)
    flux = noise * 10 ** rng.uniform(1.5, 4.5, n_sources)
    sigma = np.where(rng.uniform(size=n_sources) < point_fraction, 0.9,
                     rng.uniform(1.2, 4.0, n_sources))
    sci = render_sources(shape, x, y, flux, sigma)
    sci += rng.normal(0.0, noise, size=shape).astype(np.float32)
    err = np.full(shape, noise, dtype=np.float32)
    dq = np.zeros(shape, dtype=np.uint32)
    return sci, err, dq, np.column_stack([x, y, flux])
