"""Realistic synthetic NIRCam visits with a known WCS error, for tests, benchmarks and the demo.

A visit is a set of dithers x detectors. Each image has a *true* WCS, sources
rendered at their true positions (a Gaussian PSF convolved with the galaxy
size, plus a fixed per-source "intrinsic" offset from the catalog position, as
galaxies' centroids differ between bands), noise, ERR and DQ, and an *assigned*
WCS that carries a known error: a visit-wide shift and rotation, one shift per
dither and optionally one shift per detector, all defined in a common tangent
plane at the visit centre. Alignment is scored by comparing the aligned WCS
with the true one on the sky (`ceers_steps.core.wcs_utils.sky_difference_mas`).

Two sources of truth:

* built in (no files needed): a NIRCam-like gwcs per detector with the real
  detector placement in V2/V3 (taken from the CEERS models) and a mild
  distortion, and a random reference catalog with galaxy-like counts;
* real CEERS data (`ceers_data_dir`): the real tweaked WCS models of visit
  jw01345001001 as truth and the real HST F160W catalog as sources and
  reference catalog.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import coordinates as coord
from astropy import units as u
from astropy.modeling import models
from astropy.table import Table
from gwcs.geometry import CartesianToSpherical, SphericalToCartesian
from scipy.special import erf

from ..core.fileio import write_association
from ..core.wcs_utils import pixel_axes, tangent_plane, world_to_pixel_exact

__all__ = [
    "DETECTOR_GEOMETRY",
    "ArtifactRecord",
    "SyntheticImage",
    "add_nircam_artifacts",
    "SyntheticVisit",
    "ceers_data_dir",
    "ceers_data_missing_reason",
    "make_crowded_frame",
    "make_visit",
    "nircam_like_wcs",
    "oracle_floor",
    "tangent_plane",
    "write_visit",
]

#: V2/V3 reference point (arcsec), V3 Y-angle (deg) and pixel scale (arcsec/pixel)
#: of each NIRCam detector, read off the real CEERS WCS models.
DETECTOR_GEOMETRY = {
    "nrca1": (120.5219, -527.6813, -0.57874, 0.03113),
    "nrca2": (119.6687, -459.9683, -0.21515, 0.03073),
    "nrca3": (51.9059, -528.1267, 0.26908, 0.03128),
    "nrca4": (52.2950, -460.0998, 0.07724, 0.03087),
    "nrcb1": (-122.6368, -457.7717, 0.28424, 0.03070),
    "nrcb2": (-122.8733, -525.4863, 0.81936, 0.03110),
    "nrcb3": (-54.8295, -457.7527, -0.48867, 0.03083),
    "nrcb4": (-54.5861, -525.6762, -0.36942, 0.03124),
    "nrcalong": (85.8776, -493.5869, -0.07436, 0.06276),
    "nrcblong": (-89.4830, -491.4937, -0.00022, 0.06284),
}
SW_DETECTORS = ("nrca1", "nrca2", "nrca3", "nrca4", "nrcb1", "nrcb2", "nrcb3", "nrcb4")
LW_DETECTORS = ("nrcalong", "nrcblong")

# The NIRCam field centre in V2/V3 (between the modules), arcsec.
_V2_0, _V3_0 = 0.0, -492.0
# CEERS visit jw01345001001 pointing (EGS), used by the built-in visits.
_RA_0, _DEC_0, _PA_V3 = 214.98, 52.95, 130.7
# Three-point dither offsets in the ideal frame, arcsec (CEERS used a 3-point pattern).
_DITHERS = ((0.0, 0.0), (2.3, 4.9), (-2.9, 9.7))
_CEERS_ENV = "CEERS_DATA_DIR"


def ceers_data_dir():
    """
    The folder of real CEERS data, or None when it is absent.

    ``$CEERS_DATA_DIR`` when set (and then only it: pointing it at an empty folder
    makes a machine with the data behave as a clean clone with nothing beside it),
    otherwise ``../shared/ceers`` relative to the project root (the folder holding
    ``ceers_steps``) or the working directory.
    """
    env = os.environ.get(_CEERS_ENV)
    if env:
        candidates = [Path(env).expanduser()]
    else:
        root = Path(__file__).resolve().parents[2]
        candidates = [root.parent / "shared" / "ceers", Path.cwd().parent / "shared" / "ceers"]
    for path in candidates:
        if (path / "tweakreg_wcs").is_dir():
            return path
    return None


def ceers_data_missing_reason():
    """Why `ceers_data_dir` found nothing: the places it looked, for a skip or an error."""
    env = os.environ.get(_CEERS_ENV)
    if env:
        return f"real CEERS data not found: ${_CEERS_ENV}={env} has no tweakreg_wcs/ folder"
    return f"real CEERS data not found: set ${_CEERS_ENV} or provide ../shared/ceers"


def _attitude(ra, dec, pa_v3, v2_0=_V2_0, v3_0=_V3_0):
    """V2V3 (arcsec) -> sky (deg) for a telescope pointing, as jwst's ``v23tosky``."""
    angles = [v2_0 / 3600.0, -v3_0 / 3600.0, pa_v3, dec, -ra]
    rot = models.RotationSequence3D(angles, axes_order="zyxyz")
    return (
        (models.Scale(1 / 3600.0) & models.Scale(1 / 3600.0))
        | SphericalToCartesian(wrap_lon_at=180)
        | rot
        | CartesianToSpherical(wrap_lon_at=360)
    )


def _position_angle(ra1, dec1, ra2, dec2):
    c1 = coord.SkyCoord(ra1 * u.deg, dec1 * u.deg)
    c2 = coord.SkyCoord(ra2 * u.deg, dec2 * u.deg)
    return float(c1.position_angle(c2).to_value(u.deg))


def nircam_like_wcs(detector, ra=_RA_0, dec=_DEC_0, pa_v3=_PA_V3, shape=(2048, 2048),
                    dither=(0.0, 0.0)):
    """
    A NIRCam-like gwcs ``detector -> v2v3 -> world`` and its ``wcsinfo``.

    Parameters
    ----------
    detector : str
        NIRCam detector name, e.g. ``"nrca1"`` or ``"nrcblong"``.
    ra, dec : float
        Pointing of the NIRCam field centre, deg.
    pa_v3 : float
        Position angle of V3 at the field centre, deg.
    shape : tuple
        Image shape (ny, nx), pixels.
    dither : tuple
        Offset of the pointing in V2/V3, arcsec.

    Returns
    -------
    wcs : `gwcs.WCS`
    wcsinfo : dict
        ``v2_ref``, ``v3_ref`` (arcsec), ``v3yangle``, ``vparity``, ``roll_ref``,
        ``ra_ref``, ``dec_ref`` (deg), as in a JWST model's ``meta.wcsinfo``.
    """
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs_wcs

    v2ref, v3ref, v3yangle, scale = DETECTOR_GEOMETRY[detector]
    ny, nx = shape
    crpix = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    # Mild quadratic/cubic distortion (~1-2 pixels at the corners), in arcsec.
    k = scale / 1024.0
    dist_x = models.Polynomial2D(3, c1_0=scale, c2_0=2e-3 * k, c1_1=1e-3 * k, c0_2=-1e-3 * k,
                                 c3_0=1e-6 * k / 1024, c1_2=1e-6 * k / 1024)
    dist_y = models.Polynomial2D(3, c0_1=scale, c0_2=2e-3 * k, c1_1=-1.5e-3 * k, c2_0=1e-3 * k,
                                 c0_3=-1e-6 * k / 1024, c2_1=1e-6 * k / 1024)
    theta = np.deg2rad(v3yangle)
    vparity = -1
    # SIAF ideal -> V2V3: V2 = V2ref + p*xi*cos(a) + eta*sin(a), V3 = V3ref - p*xi*sin(a) + eta*cos(a)
    matrix = [[vparity * np.cos(theta), np.sin(theta)], [-vparity * np.sin(theta), np.cos(theta)]]
    idl2v23 = models.AffineTransformation2D(matrix=matrix, translation=[v2ref + dither[0],
                                                                        v3ref + dither[1]])
    distortion = models.Mapping((0, 1, 0, 1)) | (dist_x & dist_y)
    distortion.inverse = _fit_inverse(distortion, shape)
    det2v23 = (models.Shift(-crpix[0]) & models.Shift(-crpix[1])) | distortion | idl2v23
    v23tosky = _attitude(ra, dec, pa_v3)
    detector_frame = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    v2v3_frame = cf.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"),
                            unit=(u.arcsec, u.arcsec))
    world = cf.CelestialFrame(name="world", reference_frame=coord.ICRS(), unit=(u.deg, u.deg),
                              axes_names=("lon", "lat"))
    wcs = gwcs_wcs.WCS([(detector_frame, det2v23), (v2v3_frame, v23tosky), (world, None)])
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))

    # The dither moves the pointing, i.e. the detector's reference point in V2V3 stays but
    # the sky it sees moves: equivalently, shift the V2V3 of every pixel (done above).
    ra_ref, dec_ref = v23tosky(v2ref + dither[0], v3ref + dither[1])
    ra_up, dec_up = v23tosky(v2ref + dither[0], v3ref + dither[1] + 10.0)
    wcsinfo = {
        "v2_ref": v2ref + dither[0],
        "v3_ref": v3ref + dither[1],
        "v3yangle": v3yangle,
        "vparity": vparity,
        "roll_ref": _position_angle(ra_ref, dec_ref, ra_up, dec_up),
        "ra_ref": float(ra_ref),
        "dec_ref": float(dec_ref),
    }
    return wcs, wcsinfo


def _fit_inverse(distortion, shape, degree=4):
    """Fit polynomials for ideal (arcsec) -> centred pixels, as JWST distortion files carry."""
    from astropy.modeling import fitting

    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(-nx / 2 - 8, nx / 2 + 8, 40),
                         np.linspace(-ny / 2 - 8, ny / 2 + 8, 40))
    xi, eta = distortion(gx, gy)
    fitter = fitting.LinearLSQFitter()
    inv_x = fitter(models.Polynomial2D(degree), xi, eta, gx)
    inv_y = fitter(models.Polynomial2D(degree), xi, eta, gy)
    return models.Mapping((0, 1, 0, 1)) | (inv_x & inv_y)


def rotation_matrix(angle_deg, scale=1.0):
    """2x2 matrix of a rotation by ``angle_deg`` (counter-clockwise) and a scale."""
    t = np.deg2rad(angle_deg)
    return scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def apply_correction(wcs, wcsinfo, matrix, shift, plane):
    """Return ``wcs`` with a linear correction defined in the tangent plane ``plane``."""
    from ..fitting.correctors import StackedJWSTWCSCorrector

    corr = StackedJWSTWCSCorrector(wcs, wcsinfo)
    corr.set_correction(matrix=matrix, shift=shift, ref_tpwcs=plane)
    return corr.wcs


@dataclass
class SyntheticImage:
    """One synthetic image: its model (assigned, erroneous WCS) and its true WCS."""

    model: object
    true_wcs: object
    detector: str
    dither: int
    error_shift: tuple = (0.0, 0.0)
    #: 0-based true pixel positions (x, y) and total fluxes of the rendered sources.
    true_sources: object = None
    #: What `add_nircam_artifacts` added (None for a clean frame).
    artifacts: object = None


@dataclass
class SyntheticVisit:
    """A synthetic visit: images, the reference catalog and the injected errors."""

    images: list
    refcat: Table
    center: tuple
    truth: dict = field(default_factory=dict)


def _random_refcat(ra, dec, radius_arcsec, rng, density=0.08):
    """Galaxy-like reference catalog: uniform positions, counts rising to faint magnitudes."""
    area = np.pi * radius_arcsec**2
    n = rng.poisson(area * density)
    r = radius_arcsec * np.sqrt(rng.uniform(size=n))
    phi = rng.uniform(0, 2 * np.pi, size=n)
    dra = r * np.cos(phi) / 3600.0 / np.cos(np.deg2rad(dec))
    ddec = r * np.sin(phi) / 3600.0
    # Cumulative counts ~ 10**(0.3 m) between 18 and 27 AB.
    u01 = rng.uniform(size=n)
    lo, hi = 10 ** (0.3 * 18), 10 ** (0.3 * 27)
    mag = np.log10(lo + u01 * (hi - lo)) / 0.3
    rh = np.clip(rng.lognormal(np.log(4.5), 0.35, size=n), 2.0, 15.0)
    return Table({"RA": ra + dra, "DEC": dec + ddec, "MAG": mag, "rh": rh})


def _load_refcat(data_dir):
    return Table.read(Path(data_dir) / "CEERS_EGS_HST_v1.9_cat_radecmag.ecsv")


def _real_truth(data_dir, visit, group, detector, dither):
    import asdf

    path = Path(data_dir) / "tweakreg_wcs" / f"{visit}_{group}_{dither:05d}_{detector}_tweakreg.asdf"
    with asdf.open(path, lazy_load=False) as af:
        return af["wcs"], dict(af["wcsinfo"])


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


def make_visit(
    detectors=SW_DETECTORS,
    n_dithers=3,
    shape=(2048, 2048),
    visit_shift=(0.45, -0.25),
    visit_rotation=0.02,
    dither_error=0.020,
    detector_error=0.0,
    galaxy_scatter=0.010,
    noise=0.1,
    mag_limit=26.5,
    zeropoint=27.0,
    seed=1,
    use_real=None,
    filter_name=None,
    visit_id="jw01345001001",
    group="02201",
    artifacts=False,
    center=None,
    dither_shift=None,
    detector_offsets_pixel=None,
    detector_rotation=0.0,
    galaxy_offsets="source",
    intrinsic_offsets=None,
    offset_correlation=1.0,
):
    """
    Build a synthetic visit with a known WCS error.

    Parameters
    ----------
    detectors : sequence of str
        NIRCam detectors (SW: 0.031"/pix, LW: 0.063"/pix).
    n_dithers : int
        Number of dithers (at most 3 with real truth).
    shape : tuple
        Image shape, pixels.
    visit_shift : tuple
        Visit-wide WCS error, arcsec, in the visit tangent plane (x west, y north).
    visit_rotation : float
        Visit-wide rotation error, deg.
    dither_error : float
        RMS of the per-dither shift error per axis, arcsec.
    detector_error : float
        RMS of the per-detector placement error per axis, arcsec.
    galaxy_scatter : float
        RMS per axis of the intrinsic offset of each source from its catalog position, arcsec.
    noise : float
        Pixel noise sigma (image units, MJy/sr-like). The default gives ~30-60
        CEERS-recipe detections per SW detector and ~140 per LW detector.
    mag_limit : float
        Faintest catalog magnitude rendered.
    zeropoint : float
        Magnitude of a source of total flux 1 (image units times pixels).
    seed : int
        Random seed.
    use_real : bool or None
        Use the real CEERS WCS models and HST catalog; None = when available.
    filter_name : str, optional
        FILTER keyword; F200W for SW, F444W for LW by default.
    artifacts : bool or dict
        Add the nuisances of real cal files (`add_nircam_artifacts`: reference-pixel
        border, hot and warm pixels, cosmic-ray residuals, snowballs, 1/f striping,
        saturated stars with spikes, NaN patches); a dict gives its keyword arguments.
    center : tuple, optional
        (RA, Dec) of the tangent plane in which the errors are injected, deg; by
        default the mean of the image centres. Give another visit's ``center`` (and
        its ``visit_shift``, ``visit_rotation``, ``dither_shift``) to make images of
        the same exposures in another channel (NIRCam's SW and LW).
    dither_shift : array (n_dithers, 2), optional
        The per-dither errors, arcsec (drawn with ``dither_error`` by default).
    detector_offsets_pixel : dict, optional
        Detector -> placement error (2,), arcsec along the detector's pixel axes: an
        instrument's error, the same in every visit whatever its roll (turned onto
        the sky through each detector's true WCS). Replaces ``detector_error``.
    detector_rotation : float or dict
        RMS of each detector's own rotation error about its centre, arcsec (NIRCam's
        modules turning against each other; CEERS' per-detector fits of 2022 differ by
        26" median, up to 148", between modules), or detector -> its rotation. Zero by default.
    galaxy_offsets : {"source", "detection"}
        How the intrinsic offsets (``galaxy_scatter``) are drawn: ``"source"``, one per
        galaxy, the same in every dither and detector (the sky: a galaxy's centroid
        differs from its HST position by its morphology and colour), or ``"detection"``,
        drawn anew for every detection (the assumption of a per-detection error model).
    intrinsic_offsets : ndarray (n_ref, 2), optional
        Per-source offsets of another channel of the same exposures (its
        ``truth["intrinsic_offsets"]``, arcsec; same ``center`` and ``seed`` give the same
        reference catalog): a galaxy's offset is largely the same in every filter.
    offset_correlation : float
        With ``intrinsic_offsets``: this channel's offsets are ``rho * given +
        sqrt(1 - rho**2) * own`` (``rho`` = this; 1: the same offsets in both filters).

    Returns
    -------
    visit : `SyntheticVisit`
    """
    from ..core.compat import ImageModel

    rng = np.random.default_rng(seed)
    data_dir = ceers_data_dir() if use_real in (None, True) else None
    if use_real and data_dir is None:
        raise FileNotFoundError(ceers_data_missing_reason())
    real = data_dir is not None
    lw = all(d in LW_DETECTORS for d in detectors)
    filter_name = filter_name or ("F444W" if lw else "F200W")

    truths = {}
    for det in detectors:
        for d in range(n_dithers):
            if real:
                truths[det, d] = _real_truth(data_dir, visit_id, group, det, d + 1)
            else:
                truths[det, d] = nircam_like_wcs(det, shape=shape, dither=_DITHERS[d % 3])

    # Visit centre: mean of the image centres.
    cx, cy = (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0
    centers = np.array([w(cx, cy, with_bounding_box=False) for w, _ in truths.values()])
    ra0, dec0 = float(np.mean(centers[:, 0])), float(np.mean(centers[:, 1]))
    if center is not None:
        ra0, dec0 = (float(c) for c in center)
    plane = tangent_plane(ra0, dec0)

    if real:
        refcat = _load_refcat(data_dir)
        sep = _sep_deg(refcat["RA"], refcat["DEC"], ra0, dec0)
        refcat = refcat[sep < 0.12]
    else:
        refcat = _random_refcat(ra0, dec0, 420.0, rng)

    # Intrinsic (band-to-band) offsets, fixed per source: the same in every dither.
    n_src = len(refcat)
    off = rng.normal(0.0, galaxy_scatter, size=(n_src, 2))
    if galaxy_offsets not in ("source", "detection"):
        raise ValueError(f"galaxy_offsets must be 'source' or 'detection', not {galaxy_offsets!r}")
    if intrinsic_offsets is not None:
        rho = float(offset_correlation)
        off = rho * np.asarray(intrinsic_offsets, float) + np.sqrt(max(1.0 - rho**2, 0.0)) * off
    cosd = np.cos(np.deg2rad(np.asarray(refcat["DEC"])))
    src_ra = np.asarray(refcat["RA"]) + off[:, 0] / 3600.0 / cosd
    src_dec = np.asarray(refcat["DEC"]) + off[:, 1] / 3600.0
    bright = np.asarray(refcat["MAG"]) < mag_limit

    drawn = rng.normal(0.0, dither_error, size=(n_dithers, 2))
    dither_shift = drawn if dither_shift is None else np.asarray(dither_shift, float)
    detector_shift = {det: rng.normal(0.0, detector_error, size=2) for det in detectors}
    if detector_offsets_pixel is not None:
        detector_shift = {det: pixel_axes(truths[det, 0][0], plane, cx, cy)
                          @ np.asarray(detector_offsets_pixel.get(det, (0.0, 0.0)), float)
                          for det in detectors}
    matrix = rotation_matrix(visit_rotation)
    # Drawn only when asked: the other errors of a seed stay what they were.
    if isinstance(detector_rotation, dict):
        det_rotation = {det: float(detector_rotation.get(det, 0.0)) for det in detectors}
    elif detector_rotation:
        det_rotation = {det: float(rng.normal(0.0, detector_rotation)) for det in detectors}
    else:
        det_rotation = {det: 0.0 for det in detectors}
    # Each detector's centre in the plane: the mean of its images' centres (computed above).
    centre_xy = np.column_stack(plane.world_to_tanp(centers[:, 0], centers[:, 1]))
    det_centre = {det: np.mean([xy for (k, _), xy in zip(truths, centre_xy, strict=True)
                                if k == det], axis=0) for det in detectors}

    images = []
    for (det, d), (true_wcs, wcsinfo) in truths.items():
        scale = DETECTOR_GEOMETRY[det][3]
        ra_c, dec_c = true_wcs(cx, cy, with_bounding_box=False)
        near = bright & (_sep_deg(src_ra, src_dec, ra_c, dec_c) < 1.6 * scale * max(shape) / 3600.0 / 2)
        ra_s, dec_s = src_ra[near], src_dec[near]
        if galaxy_offsets == "detection":
            # Each detection its own offset about the catalog position, not the galaxy's.
            own_off = rng.normal(0.0, galaxy_scatter, size=(int(near.sum()), 2))
            ra_s = np.asarray(refcat["RA"])[near] + own_off[:, 0] / 3600.0 / cosd[near]
            dec_s = np.asarray(refcat["DEC"])[near] + own_off[:, 1] / 3600.0
        x, y = world_to_pixel_exact(true_wcs, ra_s, dec_s)
        inside = (x > -20) & (x < shape[1] + 20) & (y > -20) & (y < shape[0] + 20)
        mags = np.asarray(refcat["MAG"])[near][inside]
        rh = np.asarray(refcat["rh"])[near][inside]
        # PSF (FWHM ~ 0.06" SW / 0.13" LW) convolved with a compact version of the HST size.
        psf_sigma = (0.13 if det in LW_DETECTORS else 0.06) / 2.355
        size = 0.25 * rh * 0.06 / 2.355
        sigma = np.hypot(psf_sigma, size) / scale
        flux = 10 ** (-0.4 * (mags - zeropoint))
        sci = render_sources(shape, x[inside], y[inside], flux, sigma)
        sci += rng.normal(0.0, noise, size=shape).astype(np.float32) + np.float32(0.05)
        err = np.full(shape, noise, dtype=np.float32)
        dq = np.zeros(shape, dtype=np.uint32)
        # A few bad columns flagged DO_NOT_USE, as real detectors have.
        bad = rng.integers(0, shape[1], size=3)
        dq[:, bad] = 1
        sci[:, bad] = np.nan
        record = None
        if artifacts:
            kwargs = artifacts if isinstance(artifacts, dict) else {}
            record = add_nircam_artifacts(sci, err, dq, rng, noise, detector=det, **kwargs)

        shift = dither_shift[d] + detector_shift[det]
        # The detector's own rotation R about its centre c: R (M x + S - c) + c.
        own = rotation_matrix(det_rotation[det] / 3600.0)
        total = np.asarray(visit_shift, float) + shift
        total = own @ total + (np.eye(2) - own) @ det_centre[det]
        assigned = apply_correction(true_wcs, wcsinfo, own @ matrix, list(total), plane)

        # The read-noise variance, by which resample and outlier detection weight ("ivm").
        model = ImageModel(data=sci, err=err, dq=dq, var_rnoise=err.astype(np.float32) ** 2)
        _fill_meta(model, det, d, filter_name, visit_id, group, wcsinfo, assigned)
        images.append(SyntheticImage(model=model, true_wcs=true_wcs, detector=det, dither=d,
                                     error_shift=tuple(np.asarray(visit_shift) + shift),
                                     true_sources=np.column_stack([x[inside], y[inside], flux]),
                                     artifacts=record))

    truth = {
        "visit_shift": tuple(visit_shift),
        "visit_rotation": visit_rotation,
        "dither_shift": dither_shift,
        "detector_shift": detector_shift,
        "detector_rotation": det_rotation,
        "intrinsic_offsets": off,
        "galaxy_offsets": galaxy_offsets,
        "real": real,
    }
    return SyntheticVisit(images=images, refcat=refcat, center=(ra0, dec0), truth=truth)


# --- Detector nuisances of real NIRCam cal files -------------------------------------------

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
    dnu, hot, warm = _dq("DO_NOT_USE"), _dq("HOT"), _dq("WARM")
    jump, sat, ref = _dq("JUMP_DET"), _dq("SATURATED"), _dq("REFERENCE_PIXEL")
    lw = detector in LW_DETECTORS
    psf_sigma = (0.13 if lw else 0.06) / 2.355 / DETECTOR_GEOMETRY[detector][3]

    # 1/f striping: each row of each amplifier gets an offset.
    if one_over_f > 0:
        n_amp = max(1, nx // AMPLIFIER_WIDTH)
        common = rng.normal(0.0, 0.8 * one_over_f * noise, size=ny)
        for a in range(n_amp):
            x0, x1 = a * nx // n_amp, (a + 1) * nx // n_amp
            rows = common + rng.normal(0.0, 0.6 * one_over_f * noise, size=ny)
            sci[:, x0:x1] += rows[:, None].astype(np.float32)

    # Saturated stars with spikes.
    for _ in range(n_saturated):
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
        dq[ya:yb, xa:xb][core] |= sat | dnu
        rec.saturated_stars.append((float(x0), float(y0), float(flux)))

    # Hot and warm pixels.
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

    # Cosmic-ray residuals: single pixels, pairs and short tracks.
    def _track(length):
        x0, y0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        ang = rng.uniform(0, np.pi)
        t = np.arange(length)
        return (np.clip(np.round(x0 + t * np.cos(ang)), 0, nx - 1).astype(int),
                np.clip(np.round(y0 + t * np.sin(ang)), 0, ny - 1).astype(int))

    for _ in range(n_cosmic_rays):
        length = int(rng.choice([1, 1, 1, 2, 2, 3, 4, 5, 6, 8]))
        tx, ty = _track(length)
        sci[ty, tx] += np.float32(noise * 10 ** rng.uniform(np.log10(5), 2))
    rec.cosmic_rays = n_cosmic_rays
    for _ in range(n_jump_residuals):
        tx, ty = _track(int(rng.integers(1, 6)))
        sci[ty, tx] += np.float32(noise * rng.uniform(3, 20))
        dq[ty, tx] |= jump
    rec.jump_flagged_residuals = n_jump_residuals

    # Snowballs: flagged halo with a residual, and a faint unflagged ring outside it.
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

    # NaN patches of masked defects.
    for _ in range(n_nan_patches):
        w, h = rng.integers(5, 40, 2)
        x0, y0 = rng.integers(0, nx - w), rng.integers(0, ny - h)
        sci[y0:y0 + h, x0:x0 + w] = np.nan
        dq[y0:y0 + h, x0:x0 + w] |= dnu
    rec.nan_patches = n_nan_patches

    if reference_border:
        b = REFERENCE_BORDER
        border = np.zeros(sci.shape, bool)
        border[:b, :] = border[-b:, :] = True
        border[:, :b] = border[:, -b:] = True
        sci[border] = 0.0
        err[border] = 0.0
        dq[border] |= ref | dnu
    return rec


def _sep_deg(ra, dec, ra0, dec0):
    ra, dec = np.deg2rad(np.asarray(ra)), np.deg2rad(np.asarray(dec))
    ra0, dec0 = np.deg2rad(ra0), np.deg2rad(dec0)
    c = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
    return np.rad2deg(np.arccos(np.clip(c, -1, 1)))


def _fill_meta(model, det, dither, filter_name, visit_id, group, wcsinfo, wcs):
    program, obs, visit = visit_id[2:7], visit_id[7:10], visit_id[10:13]
    name = f"{visit_id}_{group}_{dither + 1:05d}_{det}_cal.fits"
    m = model.meta
    m.filename = name
    m.telescope = "JWST"
    m.instrument.name = "NIRCAM"
    m.instrument.detector = det.upper().replace("LONG", "LONG")
    m.instrument.channel = "LONG" if det.endswith("long") else "SHORT"
    m.instrument.module = det[3].upper()
    m.instrument.filter = filter_name
    m.instrument.pupil = "CLEAR"
    m.exposure.type = "NRC_IMAGE"
    # A CEERS-like MEDIUM8 exposure: 9 groups of 8 frames (+2 dropped), one integration.
    frame_time, nframes, groupgap, ngroups = 10.73677, 8, 2, 9
    group_time = (nframes + groupgap) * frame_time
    m.exposure.readpatt = "MEDIUM8"
    m.exposure.nints, m.exposure.ngroups = 1, ngroups
    m.exposure.nframes, m.exposure.groupgap = nframes, groupgap
    m.exposure.frame_time, m.exposure.group_time = frame_time, group_time
    m.exposure.integration_time = m.exposure.exposure_time = m.exposure.duration = \
        ngroups * group_time
    m.exposure.effective_exposure_time = m.exposure.measurement_time = (ngroups - 1) * group_time
    m.exposure.start_time = 59800.0 + dither * 0.01
    m.exposure.mid_time = 59800.0 + dither * 0.01 + 0.002
    m.exposure.end_time = 59800.0 + dither * 0.01 + 0.004
    scale = DETECTOR_GEOMETRY[det][3]
    m.photometry.pixelarea_arcsecsq = scale**2
    m.photometry.pixelarea_steradians = scale**2 * (np.pi / 180.0 / 3600.0) ** 2
    m.observation.date = "2022-06-21"
    m.observation.time = "12:00:00.000"
    m.observation.program_number = program
    m.observation.observation_number = obs
    m.observation.visit_number = visit
    m.observation.visit_group = group[:2]
    m.observation.sequence_id = group[2]
    m.observation.activity_id = group[3:]
    m.observation.exposure_number = f"{dither + 1:05d}"
    m.subarray.name = "FULL"
    m.bunit_data = "MJy/sr"
    m.bunit_err = "MJy/sr"
    for key in ("v2_ref", "v3_ref", "v3yangle", "vparity", "roll_ref", "ra_ref", "dec_ref"):
        if key in wcsinfo:
            setattr(m.wcsinfo, key, wcsinfo[key])
    m.wcs = wcs
    m.cal_step.assign_wcs = "COMPLETE"
    m.cal_step.flat_field = "COMPLETE"
    m.cal_step.photom = "COMPLETE"


def write_visit(visit, directory, asn_name="asn.json", refcat_name="refcat.ecsv"):
    """
    Write a synthetic visit as ``*_cal.fits`` files, a level-3 association and an ECSV refcat.

    Returns
    -------
    asn_path, refcat_path, paths : Path, Path, list of Path
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in visit.images:
        path = directory / image.model.meta.filename
        image.model.save(path)
        paths.append(path)
    asn_path = write_association(directory / asn_name, "synthetic_visit", [p.name for p in paths],
                                 asn_pool="synthetic")
    refcat_path = directory / refcat_name
    visit.refcat.write(refcat_path, overwrite=True)
    return asn_path, refcat_path, paths


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


def oracle_floor(visit, fitgeometry="rshift", detector_terms=True):
    """
    The best any alignment to the reference catalog can do on this draw (mas).

    The joint model is fitted to detections placed through the *true* WCS, whose
    ideal correction is the identity: what it finds instead is the noise of the
    galaxies' intrinsic offsets. The images' catalogs are read from
    ``meta.tweakreg_catalog``. Returns (median per-image RMS, worst point).
    """
    from ..core.wcs_utils import pixel_grid, tangent_plane
    from ..detection.catalogs import read_catalog
    from ..fitting.jointfit import JointParameters, joint_fit
    from ..io.grouping import image_key

    plane = tangent_plane(*visit.center)
    positions, keys = [], []
    for image in visit.images:
        cat = read_catalog(image.model.meta.tweakreg_catalog)
        ra, dec = image.true_wcs(cat["x"], cat["y"], with_bounding_box=False)
        positions.append(np.column_stack(plane.world_to_tanp(ra, dec)))
        keys.append(image_key(image.model))
    ref = np.column_stack(plane.world_to_tanp(np.asarray(visit.refcat["RA"]),
                                              np.asarray(visit.refcat["DEC"])))
    fit = joint_fit(positions, [k.exposure for k in keys], [k.detector for k in keys], ref,
                    JointParameters(fitgeometry=fitgeometry, separation=0.5, tolerance=0.4,
                                    detector_terms=detector_terms))
    per, worst = [], 0.0
    for i, image in enumerate(visit.images):
        x, y = pixel_grid(image.model.data.shape)
        p = np.column_stack(plane.world_to_tanp(*image.true_wcs(x, y)))
        d = 1e3 * np.hypot(*(p @ fit.matrix.T + fit.image_shift[i] - p).T)
        per.append(float(np.sqrt(np.mean(d**2))))
        worst = max(worst, float(d.max()))
    return float(np.median(per)), worst
