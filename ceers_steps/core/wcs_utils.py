"""Small WCS helpers: an exact inverse, sky differences between two WCSs.

gwcs' built-in inverse of a NIRCam WCS is an approximate polynomial, good to
~0.04 pixel; here it is only the starting point of a few Newton steps on the
forward transform, which make ``world_to_pixel`` exact to ~1e-8 pixel.
"""

import numpy as np

__all__ = [
    "alignment_accuracy",
    "angular_separation_mas",
    "bbox_limits",
    "pixel_axes",
    "pixel_grid",
    "sky_difference_mas",
    "tangent_plane",
    "world_to_pixel_exact",
]

_DEG2MAS = 3600.0e3


def world_to_pixel_exact(wcs, ra, dec, *, niter=12, tol=1e-9, start=None):
    """
    Invert a gwcs to 0-based pixel coordinates, refined with Newton steps.

    Parameters
    ----------
    wcs : `gwcs.WCS`
        Forward transform pixel -> (ra, dec) in deg.
    ra, dec : array-like
        Sky coordinates, deg.
    niter : int
        Maximum Newton iterations.
    tol : float
        Stop when every correction is below this, pixels.
    start : tuple of array, optional
        Initial pixel guess; defaults to the WCS' own (approximate) inverse.

    Returns
    -------
    x, y : ndarray
        Pixel coordinates (NaN where the inverse failed).
    """
    ra = np.atleast_1d(np.asarray(ra, dtype=float))
    dec = np.atleast_1d(np.asarray(dec, dtype=float))
    if start is None:
        try:
            x, y = wcs.invert(ra, dec, with_bounding_box=False)
        except Exception:  # noqa: BLE001 - no usable inverse: start at the image centre
            x, y = _center_guess(wcs, ra.size)
        x, y = np.asarray(x, float), np.asarray(y, float)
        bad = ~(np.isfinite(x) & np.isfinite(y))
        if bad.any():
            x[bad], y[bad] = (c[: bad.sum()] for c in _center_guess(wcs, bad.sum()))
    else:
        x, y = start
    x = np.array(x, dtype=float)
    y = np.array(y, dtype=float)
    h = 0.5  # finite-difference step, pixels: the WCS is smooth on this scale
    cosd = np.cos(np.deg2rad(dec))
    for _ in range(niter):
        r0, d0 = wcs(x, y, with_bounding_box=False)
        rx, dx = wcs(x + h, y, with_bounding_box=False)
        ry, dy = wcs(x, y + h, with_bounding_box=False)
        # Work in a local tangent plane (arcsec-free, degrees scaled by cos dec).
        f1 = _wrap(r0 - ra) * cosd
        f2 = d0 - dec
        j11 = _wrap(rx - r0) * cosd / h
        j12 = _wrap(ry - r0) * cosd / h
        j21 = (dx - d0) / h
        j22 = (dy - d0) / h
        det = j11 * j22 - j12 * j21
        ddx = (j22 * f1 - j12 * f2) / det
        ddy = (-j21 * f1 + j11 * f2) / det
        x -= ddx
        y -= ddy
        step = np.nanmax(np.hypot(ddx, ddy)) if x.size else 0.0
        if not np.isfinite(step) or step < tol:
            break
    return x, y


def bbox_limits(wcs):
    """``((x0, x1), (y0, y1))`` of a gwcs bounding box (0-based pixels), or None."""
    bbox = wcs.bounding_box
    if bbox is None:
        return None
    (x0, x1), (y0, y1) = (tuple(i) for i in bbox.bounding_box(order="F"))
    return (float(x0), float(x1)), (float(y0), float(y1))


def _center_guess(wcs, n):
    limits = bbox_limits(wcs)
    if limits is not None:
        (x0, x1), (y0, y1) = limits
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    else:
        cx = cy = 1023.5
    return np.full(n, cx), np.full(n, cy)


def _wrap(dra):
    return (np.asarray(dra) + 180.0) % 360.0 - 180.0


def angular_separation_mas(ra1, dec1, ra2, dec2):
    """Angular separation in milliarcseconds (haversine; exact for small angles)."""
    ra1, dec1, ra2, dec2 = (np.deg2rad(np.asarray(a, dtype=float)) for a in (ra1, dec1, ra2, dec2))
    s = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.rad2deg(2 * np.arcsin(np.sqrt(s))) * _DEG2MAS


def pixel_grid(shape, n=16):
    """An ``n x n`` grid of 0-based pixel positions spanning an image of ``shape`` (ny, nx)."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    return gx.ravel(), gy.ravel()


def sky_difference_mas(wcs_a, wcs_b, shape, n=16):
    """
    On-sky distance between two WCSs of one image, on an ``n x n`` pixel grid.

    Parameters
    ----------
    wcs_a, wcs_b : `gwcs.WCS`
        The two pixel -> sky transforms (e.g. aligned and true).
    shape : tuple
        Image shape (ny, nx).
    n : int
        Grid points per axis.

    Returns
    -------
    dist : ndarray
        Distance at each grid point, mas.
    """
    x, y = pixel_grid(shape, n)
    ra_a, dec_a = wcs_a(x, y, with_bounding_box=False)
    ra_b, dec_b = wcs_b(x, y, with_bounding_box=False)
    return angular_separation_mas(ra_a, dec_a, ra_b, dec_b)


def tangent_plane(ra, dec):
    """
    A tweakwcs corrector for the tangent plane at (ra, dec), in arcsec.

    Axes as on a north-up, east-left image: x grows to the west, y to the
    north. Corrections defined in this plane can be applied to every image of a
    visit with ``corrector.set_correction(matrix, shift, ref_tpwcs=plane)``.
    """
    from astropy.wcs import WCS
    from tweakwcs.correctors import FITSWCSCorrector

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cdelt = [-1.0 / 3600.0, 1.0 / 3600.0]
    w.wcs.set()
    w.pixel_shape = (2, 2)
    w.pixel_bounds = [(-1.0, 1.0), (-1.0, 1.0)]
    return FITSWCSCorrector(w)


def alignment_accuracy(models, true_wcss, n=16):
    """
    Score aligned images against their true WCS.

    Parameters
    ----------
    models : sequence of ImageModel
        Aligned images (``meta.wcs``, ``data.shape``).
    true_wcss : sequence of `gwcs.WCS`
        The true WCS of each image, in the same order.
    n : int
        Grid points per axis.

    Returns
    -------
    median_rms, worst : float
        Median over images of the per-image RMS sky difference, and the largest
        difference at any grid point, both in mas.
    """
    per, worst = [], 0.0
    for model, true_wcs in zip(models, true_wcss, strict=True):
        d = sky_difference_mas(model.meta.wcs, true_wcs, model.data.shape, n)
        per.append(float(np.sqrt(np.mean(d**2))))
        worst = max(worst, float(d.max()))
    return float(np.median(per)), worst


def pixel_axes(wcs, plane, x, y):
    """
    The orthogonal 2x2 matrix taking an offset along a detector's pixel axes (x, y) at
    pixel ``(x, y)`` to the tangent ``plane`` (tweakwcs corrector, arcsec): the
    detector's roll and parity on the sky, without its scale or distortion.
    """
    ra, dec = wcs(np.array([x, x + 1.0, x]), np.array([y, y, y + 1.0]), with_bounding_box=False)
    px, py = plane.world_to_tanp(ra, dec)
    jac = np.array([[px[1] - px[0], px[2] - px[0]], [py[1] - py[0], py[2] - py[0]]])
    u, _, vt = np.linalg.svd(jac)  # the polar decomposition's rotation (or reflection) part
    return u @ vt
