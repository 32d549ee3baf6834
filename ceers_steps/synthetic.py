"""Realistic synthetic NIRCam visits with a known WCS error, for tests, benchmarks and the demo.

A visit is a set of dithers x detectors. Each image has a *true* WCS, sources
rendered at their true positions (a Gaussian PSF convolved with the galaxy
size, plus a fixed per-source "intrinsic" offset from the catalog position, as
galaxies' centroids differ between bands), noise, ERR and DQ, and an *assigned*
WCS that carries a known error: a visit-wide shift and rotation, one shift per
dither and optionally one shift per detector, all defined in a common tangent
plane at the visit centre. Alignment is scored by comparing the aligned WCS
with the true one on the sky (`ceers_steps.wcs_utils.sky_difference_mas`).

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

from .fileio import write_association
from .wcs_utils import tangent_plane, world_to_pixel_exact

__all__ = [
    "DETECTOR_GEOMETRY",
    "SyntheticImage",
    "SyntheticVisit",
    "ceers_data_dir",
    "make_visit",
    "nircam_like_wcs",
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

    ``$CEERS_DATA_DIR`` when set, otherwise ``../shared/ceers`` relative to the
    project root (the folder holding ``ceers_steps``) or the working directory.
    """
    env = os.environ.get(_CEERS_ENV)
    candidates = [Path(env)] if env else []
    root = Path(__file__).resolve().parent.parent
    candidates += [root.parent / "shared" / "ceers", Path.cwd().parent / "shared" / "ceers"]
    for path in candidates:
        if (path / "tweakreg_wcs").is_dir():
            return path
    return None


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
    from .correctors import StackedJWSTWCSCorrector

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

    Returns
    -------
    visit : `SyntheticVisit`
    """
    from stdatamodels.jwst.datamodels import ImageModel

    rng = np.random.default_rng(seed)
    data_dir = ceers_data_dir() if use_real in (None, True) else None
    if use_real and data_dir is None:
        raise FileNotFoundError(
            f"real CEERS data not found: set ${_CEERS_ENV} or provide ../shared/ceers"
        )
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
    cosd = np.cos(np.deg2rad(np.asarray(refcat["DEC"])))
    src_ra = np.asarray(refcat["RA"]) + off[:, 0] / 3600.0 / cosd
    src_dec = np.asarray(refcat["DEC"]) + off[:, 1] / 3600.0
    bright = np.asarray(refcat["MAG"]) < mag_limit

    dither_shift = rng.normal(0.0, dither_error, size=(n_dithers, 2))
    detector_shift = {det: rng.normal(0.0, detector_error, size=2) for det in detectors}
    matrix = rotation_matrix(visit_rotation)

    images = []
    for (det, d), (true_wcs, wcsinfo) in truths.items():
        scale = DETECTOR_GEOMETRY[det][3]
        ra_c, dec_c = true_wcs(cx, cy, with_bounding_box=False)
        near = bright & (_sep_deg(src_ra, src_dec, ra_c, dec_c) < 1.6 * scale * max(shape) / 3600.0 / 2)
        x, y = world_to_pixel_exact(true_wcs, src_ra[near], src_dec[near])
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

        shift = dither_shift[d] + detector_shift[det]
        assigned = apply_correction(true_wcs, wcsinfo, matrix, list(visit_shift + shift), plane)

        model = ImageModel(data=sci, err=err, dq=dq)
        _fill_meta(model, det, d, filter_name, visit_id, group, wcsinfo, assigned)
        images.append(SyntheticImage(model=model, true_wcs=true_wcs, detector=det, dither=d,
                                     error_shift=tuple(np.asarray(visit_shift) + shift)))

    truth = {
        "visit_shift": tuple(visit_shift),
        "visit_rotation": visit_rotation,
        "dither_shift": dither_shift,
        "detector_shift": detector_shift,
        "real": real,
    }
    return SyntheticVisit(images=images, refcat=refcat, center=(ra0, dec0), truth=truth)


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
    m.exposure.start_time = 59800.0 + dither * 0.01
    m.exposure.mid_time = 59800.0 + dither * 0.01 + 0.002
    m.exposure.end_time = 59800.0 + dither * 0.01 + 0.004
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
