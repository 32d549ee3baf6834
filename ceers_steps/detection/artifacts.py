"""Which detections are not astronomical sources: cuts for real NIRCam cal files.

Real cal files carry hot pixels, cosmic-ray residuals, snowballs, saturated
stars with diffraction spikes, masked defects and a reference-pixel border.
Source Extractor finds all of them. The cuts here decide, per detection, from
the pixels and the DQ array:

- ``border``: the centroid lies within ``border_margin`` pixels of the image
  edge or of the reference-pixel border (DQ ``REFERENCE_PIXEL``);
- ``masked``: more than ``max_masked_fraction`` of the pixels inside the
  centroid window (radius twice the window sigma, at least 2 pixels) are masked
  (DO_NOT_USE, NaN, ERR <= 0): the windowed centroid would be biased;
- ``flagged``: more than ``max_flagged_fraction`` of those pixels carry a DQ
  flag of ``flag_dq`` (JUMP_DET, SATURATED by default): cosmic-ray and
  snowball residuals the jump step flagged but left in the data;
- ``sharp``: the peak falls off to its neighbours, along one of the four axes
  through it, faster than ``sharpness_limit`` times the fall-off of the PSF of
  the filter (`sharpness`): cosmic rays and hot pixels are sharper than any
  source seen through the telescope;
- ``saturation``: within ``saturation_radius`` core radii of a saturated star
  (a connected set of SATURATED pixels), or within ``spike_length`` pixels of
  it and elongated (a/b > ``spike_elongation``) along the direction to it:
  saturated cores, their rings and diffraction-spike debris.

All functions take plain arrays and return arrays or dicts: no logging, no I/O.
"""

import numpy as np

__all__ = [
    "NIRCAM_PSF_FWHM",
    "dq_bits",
    "window_fractions",
    "psf_neighbour_ratio",
    "saturated_stars",
    "sharpness",
    "spike_debris",
]

#: Approximate FWHM (arcsec) of the NIRCam PSF per filter (JWST User Documentation,
#: "NIRCam Point Spread Functions"); used to tell cosmic rays from sources.
NIRCAM_PSF_FWHM = {
    "F070W": 0.023, "F090W": 0.030, "F115W": 0.037, "F140M": 0.046, "F150W": 0.049,
    "F150W2": 0.045, "F162M": 0.053, "F164N": 0.054, "F182M": 0.060, "F187N": 0.061,
    "F200W": 0.064, "F210M": 0.068, "F212N": 0.069, "F250M": 0.082, "F277W": 0.088,
    "F300M": 0.097, "F322W2": 0.096, "F323N": 0.106, "F335M": 0.109, "F356W": 0.114,
    "F360M": 0.118, "F405N": 0.132, "F410M": 0.133, "F430M": 0.139, "F444W": 0.140,
    "F460M": 0.151, "F466N": 0.152, "F470N": 0.155, "F480M": 0.157,
}


def dq_bits(spec):
    """
    DQ bit mask from a comma-separated list of JWST flag names (or an integer).

    Names are those of `stdatamodels.jwst.datamodels.dqflags.pixel`, e.g.
    ``"JUMP_DET,SATURATED"``; ``""`` or ``"none"`` is 0.
    """
    if isinstance(spec, (int, np.integer)):
        return int(spec)
    text = str(spec).strip()
    if text.lower() in ("", "none", "0"):
        return 0
    if text.isdigit():
        return int(text)
    from ..core.compat import dqflags

    value = 0
    for name in text.replace("+", ",").split(","):
        name = name.strip().upper()
        if name not in dqflags.pixel:
            raise ValueError(f"unknown DQ flag name {name!r} in {spec!r}")
        value |= dqflags.pixel[name]
    return value


def psf_neighbour_ratio(fwhm):
    """
    The smallest ratio of a pixel next to the peak to the peak, for a PSF of ``fwhm`` pixels.

    A pixel-integrated Gaussian centred on a pixel: ``P(1) / P(0)`` along one axis.
    Off-centre sources have a larger ratio on one side, so this is a lower bound.
    """
    from scipy.special import erf

    s = np.sqrt(2.0) * fwhm / 2.3548
    p0 = erf(0.5 / s)
    p1 = 0.5 * (erf(1.5 / s) - erf(0.5 / s))
    return float(p1 / p0)


def sharpness(sub, xpeak, ypeak, fwhm):
    """
    How fast each object's peak pixel falls off to its neighbours, relative to the PSF.

    For each of the four axes through the peak pixel (horizontal, vertical and the two
    diagonals) the mean of the two neighbours over the peak is divided by what a PSF
    of ``fwhm`` centred on the pixel gives (`psf_neighbour_ratio`, squared on the
    diagonals); the smallest of the four is returned. Sources seen through the
    telescope give >= 1 (up to noise); a cosmic ray or hot pixel, sharp across at
    least one axis (single pixels, straight or stair-step tracks), gives ~0.

    Parameters
    ----------
    sub : ndarray
        Background-subtracted image (masked pixels 0).
    xpeak, ypeak : ndarray of int
        0-based peak pixel of each object.
    fwhm : float
        PSF FWHM, pixels.

    Returns
    -------
    ratio : ndarray
        NaN where the peak is on the image edge or not positive.
    """
    ny, nx = sub.shape
    x = np.asarray(xpeak, dtype=int)
    y = np.asarray(ypeak, dtype=int)
    out = np.full(x.size, np.nan)
    ok = (x > 0) & (x < nx - 1) & (y > 0) & (y < ny - 1)
    xo, yo = x[ok], y[ok]
    peak = sub[yo, xo].astype(float)
    side = psf_neighbour_ratio(fwhm)
    axes = (((0, -1), (0, 1), side), ((-1, 0), (1, 0), side),
            ((-1, -1), (1, 1), side**2), ((-1, 1), (1, -1), side**2))
    ratios = []
    for (dy1, dx1), (dy2, dx2), expected in axes:
        mean = 0.5 * (sub[yo + dy1, xo + dx1] + sub[yo + dy2, xo + dx2])
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios.append(mean / peak / expected)
    ratio = np.min(ratios, axis=0)
    ratio[peak <= 0] = np.nan
    out[ok] = ratio
    return out


def window_fractions(x, y, radius, mask, dq=None, bits=0):
    """
    Per source, the fractions of masked and of DQ-flagged pixels inside a circle.

    Pixels count when their centre lies within ``radius`` of (x, y). Only the
    pixels around each source are read, never the whole image.

    Parameters
    ----------
    x, y, radius : ndarray
        0-based centres and radii, pixels.
    mask : ndarray of bool
        Masked pixels.
    dq : ndarray, optional
        DQ array; a pixel is flagged when ``dq & bits`` is non-zero.
    bits : int
        DQ bits that flag a pixel.

    Returns
    -------
    masked, flagged : ndarray
    """
    ny, nx = mask.shape
    n = np.size(x)
    masked, flagged = np.zeros(n), np.zeros(n)
    use_dq = dq is not None and bits
    for i, (xi, yi, ri) in enumerate(zip(np.asarray(x, float), np.asarray(y, float),
                                         np.asarray(radius, float), strict=True)):
        x0, x1 = max(int(np.ceil(xi - ri)), 0), min(int(np.floor(xi + ri)) + 1, nx)
        y0, y1 = max(int(np.ceil(yi - ri)), 0), min(int(np.floor(yi + ri)) + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        inside = (xx - xi) ** 2 + (yy - yi) ** 2 <= ri**2
        area = inside.sum()
        if area == 0:
            continue
        masked[i] = mask[y0:y1, x0:x1][inside].sum() / area
        if use_dq:
            flagged[i] = ((dq[y0:y1, x0:x1] & bits) != 0)[inside].sum() / area
    return masked, flagged


def saturated_stars(ys, xs):
    """
    Saturated stars: connected sets (8-connected) of SATURATED pixels.

    Saturated pixels are few, so they are grouped as a graph of neighbouring
    pixel coordinates rather than by labelling the whole image.

    Parameters
    ----------
    ys, xs : ndarray of int
        0-based coordinates of the SATURATED pixels.

    Returns
    -------
    stars : ndarray, shape (n, 3)
        0-based centre x, y and equivalent core radius ``sqrt(npix / pi)`` (pixels).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if np.size(xs) == 0:
        return np.zeros((0, 3))
    pairs = cKDTree(np.column_stack([xs, ys])).query_pairs(1.5, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                       shape=(xs.size, xs.size))
    n, lab = connected_components(graph, directed=False)
    npix = np.bincount(lab, minlength=n).astype(float)
    cx = np.bincount(lab, weights=xs, minlength=n) / npix
    cy = np.bincount(lab, weights=ys, minlength=n) / npix
    return np.column_stack([cx, cy, np.sqrt(npix / np.pi)])


def spike_debris(x, y, a, b, theta, stars, core_factor, spike_length, elongation,
                 max_angle=20.0):
    """
    Detections that belong to a saturated star: its core and ring, or its spikes.

    Parameters
    ----------
    x, y, a, b, theta : ndarray
        Centroids (pixels), isophotal axes (pixels) and major-axis angle (rad).
    stars : ndarray, shape (n, 3)
        From `saturated_stars`.
    core_factor : float
        Detections within ``core_factor * core radius + 3`` pixels of a star are debris.
    spike_length : float
        Detections within this many pixels that are elongated along the direction
        to the star are spike debris.
    elongation : float
        Minimum a/b of spike debris.
    max_angle : float
        Largest angle (deg) between the major axis and the direction to the star.

    Returns
    -------
    debris : ndarray of bool
    """
    debris = np.zeros(np.size(x), bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        elongated = np.asarray(a) > elongation * np.asarray(b)
    for sx, sy, radius in stars:
        dx, dy = np.asarray(x) - sx, np.asarray(y) - sy
        dist = np.hypot(dx, dy)
        debris |= dist < core_factor * radius + 3.0
        radial = np.arctan2(dy, dx)
        diff = np.abs((np.asarray(theta) - radial + np.pi / 2) % np.pi - np.pi / 2)
        debris |= (dist < spike_length) & elongated & (np.rad2deg(diff) < max_angle)
    return debris
