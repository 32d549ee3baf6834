"""The sky and the instrument of synthetic visits: NIRCam detector geometry, true WCS, reference sources.

Built in: a NIRCam-like gwcs per detector (real V2/V3 placement, mild distortion) and a
random galaxy-like reference catalog; or, with the real CEERS data (`ceers_data_dir`),
the tweaked WCS models of visit jw01345001001 and the HST F160W catalog.
"""

import os
from pathlib import Path

import numpy as np
from astropy import coordinates as coord
from astropy import units as u
from astropy.modeling import models
from astropy.table import Table
from gwcs.geometry import CartesianToSpherical, SphericalToCartesian

__all__ = ["DETECTOR_GEOMETRY", "LW_DETECTORS", "SW_DETECTORS", "apply_correction", "ceers_data_dir",
           "ceers_data_missing_reason", "nircam_like_wcs", "rotation_matrix", "true_wcs",
           "reference_sources"]

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



def _sep_deg(ra, dec, ra0, dec0):
    ra, dec = np.deg2rad(np.asarray(ra)), np.deg2rad(np.asarray(dec))
    ra0, dec0 = np.deg2rad(ra0), np.deg2rad(dec0)
    c = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
    return np.rad2deg(np.arccos(np.clip(c, -1, 1)))


def true_wcs(detectors, n_dithers, shape, data_dir, visit_id, group):
    """(detector, dither) -> (true gwcs, wcsinfo): the real CEERS models with ``data_dir``."""
    truths = {}
    for det in detectors:
        for d in range(n_dithers):
            if data_dir is not None:
                truths[det, d] = _real_truth(data_dir, visit_id, group, det, d + 1)
            else:
                truths[det, d] = nircam_like_wcs(det, shape=shape, dither=_DITHERS[d % 3])
    return truths


def reference_sources(data_dir, ra0, dec0, rng):
    """The reference catalog about (ra0, dec0): the real HST one with ``data_dir``, else drawn."""
    if data_dir is not None:
        refcat = _load_refcat(data_dir)
        sep = _sep_deg(refcat["RA"], refcat["DEC"], ra0, dec0)
        return refcat[sep < 0.12]
    return _random_refcat(ra0, dec0, 420.0, rng)
