"""Realistic synthetic NIRCam visits with a known WCS error, for tests, benchmarks and the demo.

A visit is a set of dithers x detectors. Each image has a *true* WCS, sources
rendered at their true positions (a Gaussian PSF convolved with the galaxy
size, plus a fixed per-source "intrinsic" offset from the catalog position, as
galaxies' centroids differ between bands), noise, ERR and DQ, and an *assigned*
WCS that carries a known error: a visit-wide shift and rotation, one shift per
dither and optionally one shift per detector, all defined in a common tangent
plane at the visit centre. Optionally each detector also has a residual distortion (a
smooth field of a few mas, the same in every visit and dither) that the assigned WCS
lacks: the truth is then the true WCS with it inserted
(`ceers_steps.core.distortion.insert_distortion`). Alignment is scored by comparing the aligned WCS
with the true one on the sky (`ceers_steps.core.wcs_utils.sky_difference_mas`).

Two sources of truth:

* built in (no files needed): a NIRCam-like gwcs per detector with the real
  detector placement in V2/V3 (taken from the CEERS models) and a mild
  distortion, and a random reference catalog with galaxy-like counts;
* real CEERS data (`ceers_data_dir`): the real tweaked WCS models of visit
  jw01345001001 as truth and the real HST F160W catalog as sources and
  reference catalog.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..core.distortion import DetectorDistortion, insert_distortion
from ..core.fileio import write_association
from ..core.wcs_utils import pixel_axes, tangent_plane, world_to_pixel_exact
from .artifacts import ArtifactRecord, add_nircam_artifacts
from .frames import make_crowded_frame, noisy_frame
from .frames import render_sources as render_sources
from .scene import _DITHERS as _DITHERS
from .scene import (
    DETECTOR_GEOMETRY,
    LW_DETECTORS,
    SW_DETECTORS,
    _sep_deg,
    apply_correction,
    ceers_data_dir,
    ceers_data_missing_reason,
    nircam_like_wcs,
    reference_sources,
    rotation_matrix,
    true_wcs,
)
from .scene import _random_refcat as _random_refcat

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


@dataclass
class SyntheticImage:
    """
    One synthetic image: its model (assigned, erroneous WCS) and its true WCS (with the
    injected residual distortion inserted, when there is one).
    """

    model: object
    true_wcs: object
    detector: str
    dither: int
    error_shift: tuple = (0.0, 0.0)
    #: 0-based pixel positions (x, y) where the sources are rendered (their pixels through
    #: ``true_wcs``) and their total fluxes.
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


@dataclass
class _Sky:
    """The reference catalog and where its sources truly are (intrinsic offsets applied)."""

    refcat: Table
    src_ra: np.ndarray
    src_dec: np.ndarray
    cosd: np.ndarray
    bright: np.ndarray
    offsets: np.ndarray


def _sky(refcat, rng, mag_limit, galaxy_scatter, galaxy_offsets, intrinsic_offsets,
         offset_correlation):
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
    return _Sky(refcat=refcat, src_ra=src_ra, src_dec=src_dec, cosd=cosd, bright=bright,
                offsets=off)


@dataclass
class _Errors:
    """The injected WCS errors: per dither, per detector (shift and own rotation)."""

    dither_shift: np.ndarray
    detector_shift: dict
    det_rotation: dict
    det_centre: dict


def _errors(rng, truths, detectors, n_dithers, plane, centers, cx, cy, dither_error,
            dither_shift, detector_error, detector_offsets_pixel, detector_rotation):
    drawn = rng.normal(0.0, dither_error, size=(n_dithers, 2))
    dither_shift = drawn if dither_shift is None else np.asarray(dither_shift, float)
    detector_shift = {det: rng.normal(0.0, detector_error, size=2) for det in detectors}
    if detector_offsets_pixel is not None:
        detector_shift = {det: pixel_axes(truths[det, 0][0], plane, cx, cy)
                          @ np.asarray(detector_offsets_pixel.get(det, (0.0, 0.0)), float)
                          for det in detectors}
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
    return _Errors(dither_shift=dither_shift, detector_shift=detector_shift,
                   det_rotation=det_rotation, det_centre=det_centre)


def _sources_on(sky, true, det, shape, rng, galaxy_offsets, galaxy_scatter, zeropoint,
                distortion=None):
    """
    0-based pixel positions, total fluxes and Gaussian sigmas of the sources on one image:
    their pixels through ``true``, moved by the residual ``distortion`` when given.
    """
    cx, cy = (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0
    refcat = sky.refcat
    scale = DETECTOR_GEOMETRY[det][3]
    ra_c, dec_c = true(cx, cy, with_bounding_box=False)
    near = sky.bright & (_sep_deg(sky.src_ra, sky.src_dec, ra_c, dec_c)
                         < 1.6 * scale * max(shape) / 3600.0 / 2)
    ra_s, dec_s = sky.src_ra[near], sky.src_dec[near]
    if galaxy_offsets == "detection":
        # Each detection its own offset about the catalog position, not the galaxy's.
        own_off = rng.normal(0.0, galaxy_scatter, size=(int(near.sum()), 2))
        ra_s = np.asarray(refcat["RA"])[near] + own_off[:, 0] / 3600.0 / sky.cosd[near]
        dec_s = np.asarray(refcat["DEC"])[near] + own_off[:, 1] / 3600.0
    x, y = world_to_pixel_exact(true, ra_s, dec_s)
    inside = (x > -20) & (x < shape[1] + 20) & (y > -20) & (y < shape[0] + 20)
    x, y = x[inside], y[inside]
    if distortion is not None:
        x, y = _distorted_pixels(distortion, x, y)
    mags = np.asarray(refcat["MAG"])[near][inside]
    rh = np.asarray(refcat["rh"])[near][inside]
    # PSF (FWHM ~ 0.06" SW / 0.13" LW) convolved with a compact version of the HST size.
    psf_sigma = (0.13 if det in LW_DETECTORS else 0.06) / 2.355
    size = 0.25 * rh * 0.06 / 2.355
    sigma = np.hypot(psf_sigma, size) / scale
    flux = 10 ** (-0.4 * (mags - zeropoint))
    return x, y, flux, sigma


def _distorted_pixels(distortion, xt, yt, iterations=3):
    """
    The pixels ``x`` that the residual distortion takes to the true-WCS pixels ``xt``:
    ``x + D(x) = xt``, by fixed-point steps (D's gradient is ~1e-4 per pixel, each step
    gains ~4 decades).
    """
    x, y = xt.copy(), yt.copy()
    for _ in range(iterations):
        dx, dy = distortion.offset(x, y)
        x, y = xt - dx, yt - dy
    return x, y


def _check_distortion(distortion, detectors):
    """detector -> DetectorDistortion for this visit's detectors (those with one)."""
    if distortion is None:
        return {}
    if not isinstance(distortion, dict):
        raise TypeError("distortion must be a dict detector -> DetectorDistortion, "
                        f"not {type(distortion).__name__}")
    out = {}
    for det, dist in distortion.items():
        if not isinstance(dist, DetectorDistortion):
            raise TypeError(f"distortion[{det!r}] must be a DetectorDistortion, "
                            f"not {type(dist).__name__}")
        if det in detectors and not dist.is_zero:
            out[det] = dist
    return out


def _assigned_wcs(true, wcsinfo, plane, matrix, visit_shift, shift, rotation_arcsec, centre):
    """The true WCS with the visit's error, the dither's and detector's shift, the detector's turn."""
    # The detector's own rotation R about its centre c: R (M x + S - c) + c.
    own = rotation_matrix(rotation_arcsec / 3600.0)
    total = np.asarray(visit_shift, float) + shift
    total = own @ total + (np.eye(2) - own) @ centre
    return apply_correction(true, wcsinfo, own @ matrix, list(total), plane)


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
    distortion=None,
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
    distortion : dict, optional
        Detector -> `~ceers_steps.core.distortion.DetectorDistortion` (`random_distortion`):
        a residual distortion, the same in every dither (give the same dict to every visit
        of a survey), that the assigned WCS lacks. A source whose pixel through the
        distortion-free WCS is ``x_t`` is rendered at ``x`` with ``x + D(x) = x_t``; the
        image's ``true_wcs`` is that WCS with ``D`` inserted, so every score against it
        counts the residual. Detectors not in it have none. Draws no random numbers: a
        seed gives the same visit otherwise.

    Returns
    -------
    visit : `SyntheticVisit`
    """
    from ..core.compat import ImageModel

    distortion = _check_distortion(distortion, detectors)
    rng = np.random.default_rng(seed)
    data_dir = ceers_data_dir() if use_real in (None, True) else None
    if use_real and data_dir is None:
        raise FileNotFoundError(ceers_data_missing_reason())
    real = data_dir is not None
    lw = all(d in LW_DETECTORS for d in detectors)
    filter_name = filter_name or ("F444W" if lw else "F200W")
    truths = true_wcs(detectors, n_dithers, shape, data_dir, visit_id, group)

    # Visit centre: mean of the image centres.
    cx, cy = (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0
    centers = np.array([w(cx, cy, with_bounding_box=False) for w, _ in truths.values()])
    ra0, dec0 = float(np.mean(centers[:, 0])), float(np.mean(centers[:, 1]))
    if center is not None:
        ra0, dec0 = (float(c) for c in center)
    plane = tangent_plane(ra0, dec0)
    refcat = reference_sources(data_dir, ra0, dec0, rng)
    sky = _sky(refcat, rng, mag_limit, galaxy_scatter, galaxy_offsets, intrinsic_offsets,
               offset_correlation)
    errors = _errors(rng, truths, detectors, n_dithers, plane, centers, cx, cy, dither_error,
                     dither_shift, detector_error, detector_offsets_pixel, detector_rotation)
    matrix = rotation_matrix(visit_rotation)

    images = []
    for (det, d), (true, wcsinfo) in truths.items():
        x, y, flux, sigma = _sources_on(sky, true, det, shape, rng, galaxy_offsets,
                                        galaxy_scatter, zeropoint, distortion.get(det))
        sci, err, dq = noisy_frame(shape, x, y, flux, sigma, noise, rng)
        record = None
        if artifacts:
            kwargs = artifacts if isinstance(artifacts, dict) else {}
            record = add_nircam_artifacts(sci, err, dq, rng, noise, detector=det, **kwargs)
        shift = errors.dither_shift[d] + errors.detector_shift[det]
        assigned = _assigned_wcs(true, wcsinfo, plane, matrix, visit_shift, shift,
                                 errors.det_rotation[det], errors.det_centre[det])
        # The read-noise variance, by which resample and outlier detection weight ("ivm").
        model = ImageModel(data=sci, err=err, dq=dq, var_rnoise=err.astype(np.float32) ** 2)
        _fill_meta(model, det, d, filter_name, visit_id, group, wcsinfo, assigned)
        if det in distortion:
            # Full frames and the corner of one alike: the image's first pixel is the frame's.
            true = insert_distortion(true, distortion[det])
        images.append(SyntheticImage(model=model, true_wcs=true, detector=det, dither=d,
                                     error_shift=tuple(np.asarray(visit_shift) + shift),
                                     true_sources=np.column_stack([x, y, flux]),
                                     artifacts=record))

    truth = {
        "visit_shift": tuple(visit_shift),
        "visit_rotation": visit_rotation,
        "dither_shift": errors.dither_shift,
        "detector_shift": errors.detector_shift,
        "detector_rotation": errors.det_rotation,
        "intrinsic_offsets": sky.offsets,
        "galaxy_offsets": galaxy_offsets,
        "distortion": distortion,
        "real": real,
    }
    return SyntheticVisit(images=images, refcat=refcat, center=(ra0, dec0), truth=truth)


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


def oracle_floor(visit, fitgeometry="rshift", detector_terms=True):
    """
    The best any alignment to the reference catalog can do on this draw (mas).

    The joint model is fitted to detections placed through the *true* WCS, whose
    ideal correction is the identity: what it finds instead is the noise of the
    galaxies' intrinsic offsets. With an injected residual distortion the true WCS
    carries it, so this is the floor of an alignment that knows the residual exactly.
    The images' catalogs are read from ``meta.tweakreg_catalog``. Returns (median per-image RMS, worst point).
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
