"""Joint alignment of a visit: one least-squares fit of every match with the visit's error structure.

The WCS errors of a NIRCam visit have structure: a pointing error common to
every image (shift and roll), one offset per dither (the same for all
detectors of that exposure) and one placement offset per detector (the same
in every dither). Fitting each detector alone (CEERS) rests on ~30 sources and
is noisy; fitting the visit as one rigid body (jwst) cannot remove detector
offsets. This fit has exactly those terms:

    sky = A p + T + t_dither + u_detector

in a tangent plane at the visit centre (arcsec; x west, y north), where ``p``
is a detection's position through the current WCS. ``A`` is a rotation
(``rshift``), rotation and scale (``rscale``), a full 2x2 matrix (``general``)
or the identity (``shift``); ``t`` is zero for the first dither. Where the data
show it, each detector also turns (and, with a scale in the geometry, scales)
about its own centre ``c``: ``+ E_detector (A p - c)``, with its offset ``u``
(NIRCam's modules turning against each other; CEERS' per-detector fits of 2022
differ in rotation between the modules of a visit by 26 arcsec median, up to 148:
`benchmarks/bench_ceers_turns.py`).

Its observations are all the matches of the visit, as DES' WCSFit and Rubin's
gbdes use them: every source has an unknown true position, observed by each of
its detections (centroid noise, ~0.2-3 mas) and by its reference source when it
has one (the galaxy's intrinsic offset against the reference catalog, ~10 mas,
plus the catalog's error). Detections of one source in overlapping images tie
the dither terms (and the detector terms where detectors' dithers overlap) at
the centroid noise; the reference fixes the absolute frame, each galaxy's
intrinsic offset counted once, not once per detection. The source positions are
eliminated exactly (each source's observations centred on their weighted mean),
so the least-squares problem has only the visit terms as unknowns, and its
covariance gives each image's uncertainty. Without a reference catalog the same
fit is a relative one: the dither terms alone, the first dither fixed.

Channels (``channel_ids``): NIRCam's short- and long-wavelength images of one
exposure are taken at the same time, so they share the common shift, the
pointing roll (one rotation) and the dither terms; each channel keeps its own
scale (``rscale``) or full linear term (``general``) as its geometry asks, its
own detector offsets, centroid scatter and reference scatter. A source's
detections are linked within a channel only (its centroid moves with the band);
each channel's source is tied to the reference on its own.

Detector offsets known from elsewhere (``detector_offsets``, e.g. measured over
all visits of a survey by `combine_detector_offsets`) are applied as fixed terms,
and their uncertainty is added to each image's.

The fit's parts, each in its own module of `ceers_steps.fitting`: the visit model and its
design matrix (`visit_model`), matching detections and reference sources into sources
(`source_matching`), the weighted least-squares step with its scatters and clipping
(`least_squares`), the detector terms' significance and offsets shared by visits
(`detector_terms`), the result with its covariance (`joint_result`) and the hold-out
validation (`holdout`). This module runs them: prepare the inputs, start the model, match
and fit until the matches and the terms settle, and the final step whose covariance is the
result's.
"""

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..core.logs import get_logger
from .detector_terms import _detector_terms_significant, combine_detector_offsets, offsets_significant
from .holdout import HOLDOUT_FOLDS as HOLDOUT_FOLDS
from .joint_result import JointFitResult, _result
from .least_squares import _clipped_solve, _reference_dof, _residuals, _Scatters, _solve
from .source_matching import (
    _components_by_channel,
    _dither_offsets,
    _isolated,
    _n_matched,
    offset_from_2dhist,
)
from .visit_model import FITGEOMETRIES, _centre_gauge, _Layout, _Model

__all__ = ["JointFitResult", "JointParameters", "combine_detector_offsets", "joint_fit",
           "offset_from_2dhist", "offsets_significant"]

log = get_logger(__name__)


@dataclass
class JointParameters:
    """
    Parameters of the joint fit (the ``abs_*`` parameters of the step).

    Parameters
    ----------
    fitgeometry : {"shift", "rshift", "rscale", "general"}
        Common linear terms.
    searchrad : float
        Search radius for the initial offset, arcsec.
    use2dhist : bool
        Find the initial offset from a 2-D histogram of all offsets.
    separation : float
        Sources closer than this to another source of the same catalog are
        not used (confusion), arcsec.
    tolerance : float
        Initial matching radius around the histogram offset, arcsec.
    nclip : int
        Clipping iterations per solve.
    sigma : float
        Clipping limit on each observation's 2-D residual normalised by its
        expected spread (the measured scatter of its kind, centroid or
        reference). Deliberately not the tweakwcs RMSE cut: CEERS' 0.6-0.7 x RMSE
        discards real matches and shrinks the scatter that the matching
        tolerance and the detector-term test rely on.
    minobj : int
        Minimum number of matched detections for the visit.
    significance : float
        Detector offsets are fitted when their joint chi-square (2 (n_det - 1)
        dof, about their mean) exceeds that of a ``significance``-sigma Gaussian
        event.
    detector_terms : bool or "all"
        Fit per-detector offsets when significant (True), never (False), or
        always ("all").
    detector_rotations : bool
        Fit each detector's own rotation (and scale, when ``fitgeometry`` has one)
        about its centre when they are jointly significant (``significance``, all
        detectors or none, summing to zero: the common terms keep their meaning).
        Modules A and B of NIRCam can turn against each other: CEERS' per-detector
        fits (2022 calibration) differ by 26 arcsec median, up to 148, in rotation between the
        modules of a visit and by up to 2.3e-4 in scale between the LW detectors.
        One channel only: fits of several channels leave them out.
    max_iter : int
        Maximum match-and-fit iterations.
    """

    fitgeometry: str = "rshift"
    searchrad: float = 1.0
    use2dhist: bool = True
    separation: float = 0.2
    tolerance: float = 0.1
    nclip: int = 3
    sigma: float = 3.0
    minobj: int = 20
    significance: float = 3.0
    detector_terms: bool = True
    detector_rotations: bool = True
    max_iter: int = 10

    def __post_init__(self):
        if self.fitgeometry not in FITGEOMETRIES:
            raise ValueError(f"fitgeometry must be one of {FITGEOMETRIES}, not {self.fitgeometry!r}")


class _FitFailed(Exception):
    """A fit that cannot go on: its message is the result's status."""


@dataclass
class _Visit:
    """
    The fit's inputs, prepared: every usable detection (``p``, arcsec, known detector
    offsets added) with its image, dither, detector and channel index; the usable reference
    sources with their catalog (``groups``) and variance (``ref_var``); the names of the
    dithers, detectors and channels, and each image's indices into them.
    """

    absolute: bool
    p: np.ndarray
    img: np.ndarray
    dith: np.ndarray
    det: np.ndarray
    chan: np.ndarray
    ref_xy: np.ndarray
    tree: object
    groups: np.ndarray
    ref_var: np.ndarray
    names: tuple
    of_image: tuple
    geoms: tuple
    fixed: np.ndarray

    @property
    def data(self):
        """What each solve takes: ``p, dith, det, chan, ref_xy``."""
        return self.p, self.dith, self.det, self.chan, self.ref_xy

    @property
    def n_img(self):
        return len(self.of_image[0])

    @property
    def n_dith(self):
        return len(self.names[0])

    @property
    def n_det(self):
        return len(self.names[1])

    @property
    def n_chan(self):
        return len(self.names[2])

    @property
    def n_groups(self):
        return int(self.groups.max()) + 1 if len(self.groups) else 1


def joint_fit(positions, dither_ids, detector_ids, ref_xy=None, params=None, ref_err=None,
              ref_group=None, channel_ids=None, channel_fitgeometry=None, detector_offsets=None,
              detector_offset_cov=None):
    """
    Fit the visit model to every match: image to image, and image to reference.

    Each source seen in the visit has an unknown true position. Its detections
    (one per image) observe it through the visit model with the centroid scatter
    ``sigma_centroid``; its reference source, when it has one, observes it with
    the reference scatter (the galaxy's intrinsic offset against the reference
    catalog plus the catalog's error). The source positions are eliminated
    exactly, so detections of one source in overlapping dithers tie the dither
    (and, where detectors overlap, the detector) terms at the centroid noise,
    while a galaxy's intrinsic offset counts once, not once per detection. Both
    scatters are measured from the residuals at every iteration; matching is
    repeated with tolerances that tighten to 5x them; residuals beyond
    ``sigma`` (robust) are clipped.

    Parameters
    ----------
    positions : list of ndarray (n_i, 2)
        Per image, detection positions in the visit tangent plane through the
        image's current WCS, arcsec.
    dither_ids, detector_ids : list of hashable
        Per image, its dither (exposure) and detector. Images of different
        channels taken in one exposure share its dither id.
    ref_xy : ndarray (m, 2) or None
        Reference catalog positions in the same plane, arcsec. None: a relative
        fit, the dither shifts only, the first dither fixed.
    params : JointParameters, optional
    ref_err : ndarray (m,), optional
        Position error of each reference source at the images' epoch, arcsec per
        axis, added in quadrature to the measured intrinsic scatter.
    ref_group : ndarray (m,) of int, optional
        The catalog each reference source comes from: the intrinsic scatter is then
        measured per catalog (an older, noisier catalog weighs less), wherever a
        catalog has at least 10 matches.
    channel_ids : list of hashable, optional
        Per image, its channel (e.g. its filter: SW and LW images of the same
        exposures fitted together). Default: one channel.
    channel_fitgeometry : dict, optional
        Channel -> its geometry (``params.fitgeometry`` for channels not listed).
        The rotation is shared by every channel that fits one.
    detector_offsets : dict, optional
        Detector -> a known offset (2,), arcsec in the plane, applied as a fixed
        term (its own offset is then fitted only if still significant).
    detector_offset_cov : dict, optional
        Detector -> covariance (2, 2) of that known offset, arcsec^2: added to the
        uncertainty of the detector's images.

    Returns
    -------
    result : `JointFitResult`
        Never raises for a failed fit: ``result.status`` says why.
    """
    params = params or JointParameters()
    params = params or JointParameters()
    try:
        visit = _prepare(positions, dither_ids, detector_ids, ref_xy, params, ref_err, ref_group,
                         channel_ids, channel_fitgeometry, detector_offsets)
        model = _start_model(visit, params)
        scatters = _Scatters(visit.chan, visit.groups, visit.ref_var, visit.n_chan,
                             visit.n_groups, params.tolerance)
        obs, fitted, rotated = _match_and_fit(model, visit, scatters, params)
    except _FitFailed as failed:
        return JointFitResult(status=str(failed))
    return _final_fit(model, visit, scatters, obs, fitted, rotated, detector_offset_cov)


def _prepare(positions, dither_ids, detector_ids, ref_xy, params, ref_err, ref_group, channel_ids,
             channel_fitgeometry, detector_offsets):
    """The fit's inputs as a `_Visit`; `_FitFailed` when too few of them are usable."""
    n_img = len(positions)
    dith_names = list(dict.fromkeys(dither_ids))
    det_names = list(dict.fromkeys(detector_ids))
    channel_ids = list(channel_ids) if channel_ids is not None else [None] * n_img
    chan_names = list(dict.fromkeys(channel_ids))
    geoms = tuple((channel_fitgeometry or {}).get(c, params.fitgeometry) for c in chan_names)
    for g in geoms:
        if g not in FITGEOMETRIES:
            raise ValueError(f"fitgeometry must be one of {FITGEOMETRIES}, not {g!r}")
    absolute = ref_xy is not None
    ref_xy, groups, ref_var, tree = _reference_sources(ref_xy, params, ref_err, ref_group)
    dith_of_img = np.array([dith_names.index(d) for d in dither_ids], int)
    det_of_img = np.array([det_names.index(k) for k in detector_ids], int)
    chan_of_img = np.array([chan_names.index(c) for c in channel_ids], int)
    fixed = np.zeros((len(det_names), 2))
    for name, value in (detector_offsets or {}).items():
        if name in det_names:
            fixed[det_names.index(name)] = np.asarray(value, float)
    p, img = _detections(positions, params.separation, fixed, det_of_img)
    if len(p) < params.minobj:
        raise _FitFailed(f"FAILED: only {len(p)} usable detections (minobj {params.minobj})")
    return _Visit(absolute, p, img, dith_of_img[img], det_of_img[img], chan_of_img[img], ref_xy,
                  tree, groups, ref_var, (dith_names, det_names, chan_names),
                  (dith_of_img, det_of_img, chan_of_img), geoms, fixed)


def _reference_sources(ref_xy, params, ref_err, ref_group):
    """
    The usable (isolated) reference sources, their catalog, their variance and their tree;
    `_FitFailed` when fewer than ``params.minobj`` (None and empty arrays: a relative fit).
    """
    if ref_xy is None:
        return None, np.zeros(0, int), np.zeros(0), None
    ref_xy = np.asarray(ref_xy, float).reshape(-1, 2)
    isolated = _isolated(ref_xy, params.separation)
    ref_xy = ref_xy[isolated]
    groups = (np.zeros(len(isolated), int) if ref_group is None
              else np.asarray(ref_group, int))[isolated]
    ref_var = (np.nan_to_num(np.asarray(ref_err, float)[isolated]) ** 2
               if ref_err is not None else np.zeros(len(groups)))
    if len(ref_xy) < params.minobj:
        confused = int(len(isolated) - isolated.sum())
        why = (f"; {confused} of {len(isolated)} were dropped by the confusion rule (another "
               f"reference source within abs_separation {params.separation:g})"
               if confused else "")
        raise _FitFailed(f"FAILED: only {len(ref_xy)} usable reference sources "
                         f"(abs_minobj {params.minobj}){why}")
    return ref_xy, groups, ref_var, cKDTree(ref_xy)


def _detections(positions, separation, fixed, det_of_img):
    """Every image's finite, isolated detections (known detector offsets added) and their image."""
    p_list, img_list = [], []
    for i, xy in enumerate(positions):
        xy = np.asarray(xy, float).reshape(-1, 2)
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        xy = xy[_isolated(xy, separation)]
        p_list.append(xy + fixed[det_of_img[i]])
        img_list.append(np.full(len(xy), i))
    p = np.concatenate(p_list) if p_list else np.zeros((0, 2))
    img = np.concatenate(img_list).astype(int) if img_list else np.zeros(0, int)
    return p, img


def _start_model(visit, params):
    """
    The model's first guess: no terms but the common shift from the 2-D histogram of
    offsets to the reference (a relative fit: each dither's against the first's), and
    each detector's centre (the mean of its detections).
    """
    p, dith, det = visit.p, visit.dith, visit.det
    model = _Model(visit.n_dith, visit.n_det, visit.n_chan)
    for k in range(visit.n_det):
        if np.any(det == k):
            model.det_centre[k] = p[det == k].mean(axis=0)
    if visit.absolute and params.use2dhist:
        offset, npeak = offset_from_2dhist(p, visit.ref_xy, params.searchrad)
        log.debug("2-D histogram offset %.4f, %.4f arcsec (%d in peak)", *offset, npeak)
        model.shift = offset
    elif not visit.absolute:
        model.dither = _dither_offsets(p, dith, visit.n_dith, params.searchrad)
    return model


def _match(model, visit, params, tol_ref, tol_link):
    """The sources at the current model within the tolerances; `_FitFailed` when too few."""
    pred = model.apply(visit.p, visit.dith, visit.det, visit.chan)
    obs = _components_by_channel(pred, visit.img, visit.chan, visit.n_chan, visit.n_img,
                                 visit.ref_xy, tol_ref, tol_link, visit.tree)
    n_obs = _n_matched(obs) if visit.absolute else len(obs.det)
    if n_obs < params.minobj:
        what = ("detections matched to the reference" if visit.absolute
                else "detections matched between images")
        raise _FitFailed(f"FAILED: not enough {what} ({n_obs}, minobj "
                         f"{params.minobj}) within {max(tol_ref, tol_link):.3g} "
                         "arcsec")
    return obs


def _match_and_fit(model, visit, scatters, params):
    """
    Match, solve with clipping and decide the detector terms, until the matches and the
    terms no longer change (at most ``params.max_iter`` times); ``model`` and ``scatters``
    are updated. Returns the final observations, the detectors with offsets and those turned.
    """
    absolute, n_det = visit.absolute, visit.n_det
    tol_ref = params.tolerance if absolute else 0.0
    # The first absolute pass matches to the reference only: the dithers are then within a
    # few mas of each other, and linking detections of different images is safe.
    tol_link = 0.0 if absolute else params.tolerance
    fitted = tuple(range(n_det)) if (absolute and params.detector_terms == "all"
                                     and n_det > 1) else ()
    rotated = ()
    prev, obs = None, None
    for iteration in range(params.max_iter):
        obs = _match(model, visit, params, tol_ref, tol_link)
        gauge = fitted if len(fitted) == n_det else ()
        _centre_gauge(model, gauge)
        layout = _Layout(visit.geoms, absolute, visit.n_dith, fitted, gauge, rotated,
                         model.det_centre)
        obs = _clipped_solve(model, layout, obs, visit.data, scatters, params, iteration, absolute)
        fitted, rotated = _detector_terms(model, obs, visit, scatters, params, fitted, rotated)
        # Tighten the matching radii towards 5x the scatter of each kind of observation.
        sig_int2, sig_cen2 = scatters.sig_int2, scatters.sig_cen2
        s_ref = np.sqrt(float(np.max(sig_int2)) + float(np.max(sig_cen2)))
        tol_ref = float(min(params.tolerance, max(5.0 * s_ref, 0.01))) if absolute else 0.0
        tol_link = float(min(params.tolerance,
                             max(5.0 * np.sqrt(2 * float(np.max(sig_cen2))), 0.002)))
        state = (obs.det.tobytes(), obs.ref.tobytes(), fitted, rotated, iteration > 0)
        if state == prev:
            break
        prev = state
    return obs, fitted, rotated


def _detector_terms(model, obs, visit, scatters, params, fitted, rotated):
    """The detectors with offsets and those turned, after a solve: tested where asked."""
    absolute, n_det = visit.absolute, visit.n_det
    test_terms = absolute and params.detector_terms is True and n_det > 1
    # A detector turned about an unknown point is turned about its centre and moved: its
    # rotation comes with its offset, so both need detector terms.
    test_rotations = (absolute and params.detector_rotations and params.detector_terms
                      and n_det > 1 and visit.n_chan == 1)
    if test_rotations:
        rotated = (tuple(range(n_det)) if _detector_terms_significant(
            "rotations", model, obs, *visit.data, scatters.weights(obs), visit.geoms,
            visit.n_dith, params.significance) else ())
    if test_terms:
        # All detectors or none: a per-detector choice leaves offsets just below the
        # threshold unmodelled, errors of up to ~3.5 sigma the covariance cannot know
        # (measured: such images fall within 2 sigma 28% of the time instead of 95%),
        # and an offset fitted where there is none costs less than one omitted.
        fitted = (tuple(range(n_det)) if rotated or _detector_terms_significant(
            "offsets", model, obs, *visit.data, scatters.weights(obs), visit.geoms,
            visit.n_dith, params.significance, rotated) else ())
    return fitted, rotated


def _final_fit(model, visit, scatters, obs, fitted, rotated, detector_offset_cov):
    """The final step at the solution: its covariance is that of the result."""
    absolute = visit.absolute
    gauge = fitted if len(fitted) == visit.n_det else ()
    _centre_gauge(model, gauge)
    layout = _Layout(visit.geoms, absolute, visit.n_dith, fitted, gauge, rotated,
                     model.det_centre)
    w_det, w_ref = scatters.weights(obs)
    cov, _, lev_ref, robust = _solve(model, layout, obs, *visit.data, w_det, w_ref, robust=True)
    r_det, h_det, r_ref, h_ref = _residuals(model, obs, *visit.data, w_det, w_ref)
    # The reference scatter is measured from the visit's own sources: from few of them it is
    # itself uncertain (chi-square with ~n_ref - (terms they fix) degrees of freedom), and an
    # error normalised by it follows Student's law, not Gauss'. The covariance is widened
    # so that its 2-D 95% ellipse keeps 95%: the ratio of the F(2, dof) and F(2, inf) 95%
    # points (1.11 for 15 sources, 1.01 for 150).
    dof, factor = (_reference_dof(h_ref, lev_ref) if absolute and len(obs.ref)
                   else (float("inf"), 1.0))
    cov = cov * factor**2
    det_names = visit.names[1]
    fixed_cov = {det_names.index(k): np.asarray(v, float) for k, v in
                 (detector_offset_cov or {}).items() if k in det_names}
    p, dith, det, chan, ref_xy = visit.data
    result = _result(model, layout, cov, obs, p, visit.img, dith, det, chan, ref_xy, r_det, h_det,
                     visit.names, visit.of_image, fitted, scatters.sig_cen2, scatters.sig_int2,
                     absolute, visit.fixed, fixed_cov)
    _log_result(result, absolute, visit.fixed, fixed_cov)
    result.dof_reference, result.small_sample_factor = dof, factor
    result._cov_robust = robust
    result._state = {"obs": obs, "model": model.copy(), "layout": layout, "p": p, "dith": dith,
                     "det": det, "chan": chan, "ref_xy": ref_xy, "img": visit.img, "w_det": w_det,
                     "w_ref": w_ref, "absolute": absolute}
    return result


def _log_result(result, absolute, fixed, fixed_cov):
    """The fit's one log line: its matches, scatters, terms."""
    if absolute:
        log.info("Joint fit: %d reference matches, %d linked detections, RMSE %.2f mas, "
                 "rotation %.5f deg, scale %s, shift (%.2f, %.2f) mas, centroid scatter "
                 "%s mas, reference scatter %s mas, detector terms: %s%s%s", result.nmatch,
                 result.n_linked, 1e3 * result.rmse, result.rotation,
                 "/".join(f"{v:.7f}" for v in result.channel_scale.values()),
                 *(1e3 * result.shift),
                 "/".join(f"{1e3 * v:.2f}" for v in result.channel_sigma_centroid.values()),
                 "/".join(f"{1e3 * v:.1f}" for vs in result.channel_sigma_reference.values()
                          for v in vs),
                 ", ".join(k for k, v in result.detector_significant.items() if v) or "none",
                 "; detector rotations (arcsec): " + ", ".join(
                     f"{k} {3600 * v:+.1f}" for k, v in result.detector_rotation.items())
                 if result.detector_rotated else "",
                 f" (fixed offsets for {len(fixed_cov) or int(np.any(fixed, axis=1).sum())} "
                 "detectors)" if np.any(fixed) else "")
    else:
        log.info("Joint relative fit: %d linked detections, centroid scatter %s mas",
                 result.n_linked,
                 "/".join(f"{1e3 * v:.2f}" for v in result.channel_sigma_centroid.values()))
    return result
