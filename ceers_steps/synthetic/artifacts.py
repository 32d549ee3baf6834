"""The nuisances of real NIRCam cal files, added to synthetic frames.

Reference-pixel border, hot and warm pixels, cosmic-ray residuals, snowballs, 1/f
striping, saturated stars with diffraction spikes, NaN patches; DQ as in real files.
"""

from dataclasses import dataclass, field

import numpy as np

from .scene import DETECTOR_GEOMETRY, LW_DETECTORS

__all__ = ["AMPLIFIER_WIDTH", "REFERENCE_BORDER", "ArtifactRecord", "add_nircam_artifacts"]

#: Amplifier width of NIRCam detectors (four 512-column outputs per 2048-column detector), pixels.
AMPLIFIER_WIDTH = 512
#: Width of the reference-pixel border of full-frame NIRCam images, pixels.
REFERENCE_BORDER = 4


def _dq(*names):
    from ..core.compat import dqflags

    value = 0
    for name in names:
        value |= dqflags.pixel[name]
    return value


@dataclass
class ArtifactRecord:
    """What `add_nircam_artifacts` put into one image (0-based pixel positions)."""

    saturated_stars: list = field(default_factory=list)  # (x, y, flux)
    cosmic_rays: int = 0
    jump_flagged_residuals: int = 0
    snowballs: int = 0
    hot_pixels: int = 0
    unflagged_hot_pixels: int = 0
    nan_patches: int = 0


def _spike_image(shape, x0, y0, amplitude, angle, width, length, rng_slice):
    """One diffraction spike: a ray from (x0, y0) whose brightness falls as r**-1.5."""
    (ya, yb), (xa, xb) = rng_slice
    yy, xx = np.mgrid[ya:yb, xa:xb]
    dx, dy = xx - x0, yy - y0
    c, s = np.cos(angle), np.sin(angle)
    along = dx * c + dy * s
    across = -dx * s + dy * c
    r0 = 2.0
    profile = amplitude * np.exp(-0.5 * (across / width) ** 2) * (r0 / (np.abs(along) + r0)) ** 1.5
    profile[(along < 0) | (along > length)] = 0.0
    return profile



def _one_over_f(sci, rng, noise, one_over_f):
    """1/f striping: each row of each amplifier gets an offset."""
    ny, nx = sci.shape
    n_amp = max(1, nx // AMPLIFIER_WIDTH)
    common = rng.normal(0.0, 0.8 * one_over_f * noise, size=ny)
    for a in range(n_amp):
        x0, x1 = a * nx // n_amp, (a + 1) * nx // n_amp
        rows = common + rng.normal(0.0, 0.6 * one_over_f * noise, size=ny)
        sci[:, x0:x1] += rows[:, None].astype(np.float32)


def _saturated_star(sci, dq, rng, noise, psf_sigma, rec):
    """A saturated star with spikes: core NaN and SATURATED | DO_NOT_USE."""
    ny, nx = sci.shape
    x0, y0 = rng.uniform(0.1 * nx, 0.9 * nx), rng.uniform(0.1 * ny, 0.9 * ny)
    flux = noise * 10 ** rng.uniform(5.0, 6.0)
    sigma = np.hypot(psf_sigma, 0.3)
    half = int(min(250, max(nx, ny) // 4))
    ya, yb = max(0, int(y0) - half), min(ny, int(y0) + half)
    xa, xb = max(0, int(x0) - half), min(nx, int(x0) + half)
    yy, xx = np.mgrid[ya:yb, xa:xb]
    r2 = (xx - x0) ** 2 + (yy - y0) ** 2
    star = flux / (2 * np.pi * sigma**2) * np.exp(-0.5 * r2 / sigma**2)
    # Wings: a Moffat-like halo with 5% of the flux.
    star += 0.05 * flux / (np.pi * (4 * sigma) ** 2) * (1 + r2 / (4 * sigma) ** 2) ** -2.5
    peak_spike = 2e-3 * flux
    base = rng.uniform(0, np.pi / 3)
    for k in range(6):
        star += _spike_image(sci.shape, x0, y0, peak_spike, base + k * np.pi / 3, psf_sigma,
                             half, ((ya, yb), (xa, xb)))
    for k in (0, 1):
        star += _spike_image(sci.shape, x0, y0, 0.3 * peak_spike, base + np.pi / 6 + k * np.pi,
                             psf_sigma, half, ((ya, yb), (xa, xb)))
    sci[ya:yb, xa:xb] += star.astype(np.float32)
    saturation = 3e3 * noise
    core = sci[ya:yb, xa:xb] > saturation
    sci[ya:yb, xa:xb][core] = np.nan
    dq[ya:yb, xa:xb][core] |= _dq("SATURATED") | _dq("DO_NOT_USE")
    rec.saturated_stars.append((float(x0), float(y0), float(flux)))


def _hot_and_warm(sci, dq, rng, noise, hot_fraction, warm_fraction, rec):
    """Hot pixels (some 2x2 clusters; 90% flagged HOT | DO_NOT_USE and NaN) and warm pixels."""
    ny, nx = sci.shape
    dnu, hot, warm = _dq("DO_NOT_USE"), _dq("HOT"), _dq("WARM")
    n_hot = int(hot_fraction * nx * ny)
    hx, hy = rng.integers(0, nx, n_hot), rng.integers(0, ny, n_hot)
    cluster = rng.uniform(size=n_hot) < 0.05
    hx = np.concatenate([hx, np.minimum(hx[cluster] + 1, nx - 1), hx[cluster],
                         np.minimum(hx[cluster] + 1, nx - 1)])
    hy = np.concatenate([hy, hy[cluster], np.minimum(hy[cluster] + 1, ny - 1),
                         np.minimum(hy[cluster] + 1, ny - 1)])
    flagged = rng.uniform(size=hx.size) < 0.9
    dq[hy[flagged], hx[flagged]] |= hot | dnu
    sci[hy[flagged], hx[flagged]] = np.nan
    sci[hy[~flagged], hx[~flagged]] += (noise * 10 ** rng.uniform(np.log10(20), np.log10(500),
                                                                  (~flagged).sum())).astype(np.float32)
    rec.hot_pixels, rec.unflagged_hot_pixels = int(hx.size), int((~flagged).sum())
    n_warm = int(warm_fraction * nx * ny)
    wx, wy = rng.integers(0, nx, n_warm), rng.integers(0, ny, n_warm)
    dq[wy, wx] |= warm
    sci[wy, wx] += (noise * rng.uniform(2, 10, n_warm)).astype(np.float32)


def _track(rng, shape, length):
    """Pixels of a straight cosmic-ray track of ``length`` pixels at a random place and angle."""
    ny, nx = shape
    x0, y0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
    ang = rng.uniform(0, np.pi)
    t = np.arange(length)
    return (np.clip(np.round(x0 + t * np.cos(ang)), 0, nx - 1).astype(int),
            np.clip(np.round(y0 + t * np.sin(ang)), 0, ny - 1).astype(int))


def _cosmic_rays(sci, dq, rng, noise, n_cosmic_rays, n_jump_residuals, rec):
    """Cosmic-ray residuals: single pixels, pairs and short tracks; some flagged JUMP_DET."""
    for _ in range(n_cosmic_rays):
        length = int(rng.choice([1, 1, 1, 2, 2, 3, 4, 5, 6, 8]))
        tx, ty = _track(rng, sci.shape, length)
        sci[ty, tx] += np.float32(noise * 10 ** rng.uniform(np.log10(5), 2))
    rec.cosmic_rays = n_cosmic_rays
    jump = _dq("JUMP_DET")
    for _ in range(n_jump_residuals):
        tx, ty = _track(rng, sci.shape, int(rng.integers(1, 6)))
        sci[ty, tx] += np.float32(noise * rng.uniform(3, 20))
        dq[ty, tx] |= jump
    rec.jump_flagged_residuals = n_jump_residuals


def _snowballs(sci, dq, rng, noise, n_snowballs, rec):
    """Snowballs: flagged halo with a residual, and a faint unflagged ring outside it."""
    ny, nx = sci.shape
    jump = _dq("JUMP_DET")
    for _ in range(n_snowballs):
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        radius = rng.uniform(6, 16)
        r0 = int(np.ceil(2 * radius)) + 1
        ya, yb = max(0, int(y0) - r0), min(ny, int(y0) + r0)
        xa, xb = max(0, int(x0) - r0), min(nx, int(x0) + r0)
        yy, xx = np.mgrid[ya:yb, xa:xb]
        r = np.hypot(xx - x0, yy - y0)
        inner = r < radius
        ring = (r >= radius) & (r < 1.5 * radius)
        sci[ya:yb, xa:xb][inner] += np.float32(noise * rng.uniform(2, 6))
        dq[ya:yb, xa:xb][inner] |= jump
        sci[ya:yb, xa:xb][ring] += np.float32(noise * rng.uniform(0.5, 1.5))
    rec.snowballs = n_snowballs


def _nan_patches(sci, dq, rng, n_nan_patches, rec):
    """NaN patches of masked defects (DO_NOT_USE)."""
    ny, nx = sci.shape
    dnu = _dq("DO_NOT_USE")
    for _ in range(n_nan_patches):
        w, h = rng.integers(5, 40, 2)
        x0, y0 = rng.integers(0, nx - w), rng.integers(0, ny - h)
        sci[y0:y0 + h, x0:x0 + w] = np.nan
        dq[y0:y0 + h, x0:x0 + w] |= dnu
    rec.nan_patches = n_nan_patches


def _reference_border(sci, err, dq):
    b = REFERENCE_BORDER
    border = np.zeros(sci.shape, bool)
    border[:b, :] = border[-b:, :] = True
    border[:, :b] = border[:, -b:] = True
    sci[border] = 0.0
    err[border] = 0.0
    dq[border] |= _dq("REFERENCE_PIXEL") | _dq("DO_NOT_USE")


def add_nircam_artifacts(sci, err, dq, rng, noise, detector="nrca1", n_saturated=3,
                         hot_fraction=2e-3, warm_fraction=5e-3, n_cosmic_rays=300,
                         n_jump_residuals=150, n_snowballs=8, n_nan_patches=3,
                         one_over_f=0.5, reference_border=True):
    """
    Add the nuisances of real NIRCam cal files to a rendered image, in place.

    DQ values are the JWST pixel flags of `stdatamodels.jwst.datamodels.dqflags`.

    - reference-pixel border (``REFERENCE_BORDER`` pixels): REFERENCE_PIXEL | DO_NOT_USE,
      SCI 0, ERR 0, as in real cal files;
    - hot pixels (``hot_fraction`` of all pixels, some as 2x2 clusters): 90% flagged
      HOT | DO_NOT_USE (NaN), 10% unflagged at 20-500 sigma; warm pixels flagged WARM
      only at 2-10 sigma;
    - cosmic-ray residuals the jump step missed (unflagged): single pixels, pairs and
      tracks of 3-8 pixels at 5-100 sigma; others flagged JUMP_DET only at 3-20 sigma;
    - snowballs: a JUMP_DET halo (radius 6-16 pixels) with a residual at 2-6 sigma, and
      a fainter unflagged outer ring (at most 1.5 sigma);
    - 1/f noise: row stripes, one offset per row and amplifier (a common part and a part
      of each 512-column amplifier), ``one_over_f`` sigma RMS;
    - saturated stars: a PSF core with wings, six diffraction spikes plus two fainter
      strut spikes, cores above the saturation level NaN and SATURATED | DO_NOT_USE;
    - NaN patches (DO_NOT_USE), as left by masked defects.

    Parameters
    ----------
    sci, err : ndarray (float32)
        Science and error arrays, modified in place (image units).
    dq : ndarray (uint32)
        DQ array, modified in place.
    rng : numpy.random.Generator
    noise : float
        Pixel noise sigma (image units): artifact amplitudes are given in units of it.
    detector : str
        NIRCam detector (spike width and pixel scale).
    n_saturated, n_cosmic_rays, n_jump_residuals, n_snowballs, n_nan_patches : int
        Numbers per 2048 x 2048 frame; smaller frames get a Poisson draw of their
        share of the area.

    Returns
    -------
    ArtifactRecord
    """
    ny, nx = sci.shape
    rec = ArtifactRecord()
    area = nx * ny / 2048.0**2
    # Full frames get the numbers given; smaller ones a Poisson draw of their share.
    n_saturated, n_cosmic_rays, n_jump_residuals, n_snowballs, n_nan_patches = (
        int(round(n * area)) if area >= 1 else int(rng.poisson(n * area))
        for n in (n_saturated, n_cosmic_rays, n_jump_residuals, n_snowballs, n_nan_patches))
    lw = detector in LW_DETECTORS
    psf_sigma = (0.13 if lw else 0.06) / 2.355 / DETECTOR_GEOMETRY[detector][3]
    if one_over_f > 0:
        _one_over_f(sci, rng, noise, one_over_f)
    for _ in range(n_saturated):
        _saturated_star(sci, dq, rng, noise, psf_sigma, rec)
    _hot_and_warm(sci, dq, rng, noise, hot_fraction, warm_fraction, rec)
    _cosmic_rays(sci, dq, rng, noise, n_cosmic_rays, n_jump_residuals, rec)
    _snowballs(sci, dq, rng, noise, n_snowballs, rec)
    _nan_patches(sci, dq, rng, n_nan_patches, rec)
    if reference_border:
        _reference_border(sci, err, dq)
    return rec
