"""Residuals of an aligned visit, before and after, and a grade per image.

What a user looks at to trust an alignment: every matched source's residual
against its reference, through the input WCS and through the aligned one, and
per image a grade (good / check / poor) with the reason. Computed the same way
whatever fit made the alignment (joint, per detector, one rigid fit), from the
images' catalogs and WCSs, so the report compares like with like.

Matching here is the report's own, in the aligned frame: each detection's
nearest reference source within the matching tolerance, one detection per
reference source and image. With a reference catalog the references are its
sources; without one (relative alignment) they are the detections of the other
exposures' images. A match whose residual lies beyond ``CLIP`` robust standard
deviations of the visit's residuals is *rejected* (an outlier: a blend, a
galaxy with a large intrinsic offset, a spurious detection); the rest are
*matched*, and the statistics use those.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ..core.wcs_utils import bbox_limits

__all__ = ["CLIP", "GradeLimits", "ImageResiduals", "ImageGrade", "grade_images",
           "visit_residuals"]

#: Rejection radius for the report's matches, in robust standard deviations per axis
#: (2-D: 99.7% of a Gaussian lies within 3.44 sigma).
CLIP = 3.44


@dataclass
class ImageResiduals:
    """
    One image's sources and residuals.

    Attributes
    ----------
    name, detector, exposure : str
    status : str
        ``meta.cal_step.tweakreg`` the run gave it (COMPLETE / FAILED).
    x, y : ndarray
        0-based pixel positions of its catalog sources on the image.
    east, north : ndarray
        Positions through the aligned WCS, arcsec from the visit centre.
    ref : ndarray of int
        Index of each source's reference (-1: unmatched).
    before, after : ndarray (n, 2)
        Residual source - reference (east, north), mas, through the input and the
        aligned WCS (NaN where unmatched).
    mag : ndarray
        Reference magnitude of each match (``MAG``), else the source's
        instrumental magnitude (-2.5 log10 flux), else NaN.
    flag : ndarray of str
        ``matched``, ``rejected`` or ``unmatched``.
    correction : float
        Largest displacement of the image's corners by the alignment, arcsec.
    """

    name: str
    detector: str
    exposure: str
    status: str
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    east: np.ndarray = field(default_factory=lambda: np.zeros(0))
    north: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ref: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    before: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    after: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    mag: np.ndarray = field(default_factory=lambda: np.zeros(0))
    flag: np.ndarray = field(default_factory=lambda: np.zeros(0, "U9"))
    footprint_before: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    footprint_after: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    correction: float = 0.0

    @property
    def used(self):
        """Mask of the matched (not rejected) sources."""
        return self.flag == "matched"

    def rms(self, which="after"):
        """RMS per axis (mas) of the matched residuals, ``before`` or ``after``; NaN if none."""
        r = getattr(self, which)[self.used]
        return float(np.sqrt(np.mean(r ** 2))) if len(r) else float("nan")

    def mean_offset(self):
        """Mean residual (east, north) of the matched sources after alignment, mas."""
        r = self.after[self.used]
        return r.mean(axis=0) if len(r) else np.full(2, np.nan)


def _plane_offsets(plane, ra, dec):
    """East and north offsets (arcsec) of sky positions in the visit plane (x grows west)."""
    x, y = plane.world_to_tanp(np.asarray(ra, float), np.asarray(dec, float))
    return np.column_stack([-np.asarray(x), np.asarray(y)])


def _sky(wcs, x, y):
    """
    Sky positions of pixels ``x``, ``y`` and of the image's corners, in one evaluation
    of the WCS (the corners of its bounding box, as ``wcs.footprint`` takes them).
    """
    limits = bbox_limits(wcs)
    if limits is None:
        ra, dec = wcs.footprint(axis_type="spatial").T
        corners = (np.asarray(ra), np.asarray(dec))
        points = wcs(x, y, with_bounding_box=False) if len(x) else (np.zeros(0), np.zeros(0))
        return tuple(np.asarray(a) for a in points), corners
    (x0, x1), (y0, y1) = limits
    xs = np.concatenate([x, [x0, x0, x1, x1]])
    ys = np.concatenate([y, [y0, y1, y1, y0]])
    ra, dec = (np.asarray(a) for a in wcs(xs, ys, with_bounding_box=False))
    return (ra[:-4], dec[:-4]), (ra[-4:], dec[-4:])


def _nearest_unique(xy, ref_xy, radius):
    """
    Index into ``ref_xy`` of each point's nearest reference within ``radius`` (-1: none),
    one point per reference (the closest keeps it).
    """
    out = np.full(len(xy), -1)
    if not len(xy) or not len(ref_xy):
        return out
    dist, idx = cKDTree(ref_xy).query(xy, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    order = np.argsort(dist[ok])
    cand = np.flatnonzero(ok)[order]
    _, first = np.unique(idx[cand], return_index=True)
    out[cand[first]] = idx[cand[first]]
    return out


def visit_residuals(images, statuses, refcat=None, tolerance=0.1, plane=None):
    """
    Residuals of every image of one visit and filter, before and after alignment.

    Parameters
    ----------
    images : list of `ceers_steps.fitting.images.AlignImage`
        After `ceers_steps.fitting.visit.align_visit` (``original_wcs`` is the input WCS).
    statuses : dict
        Image name -> (``meta.cal_step.tweakreg``, WCS name): the aligned WCS is an
        image's when COMPLETE, its input WCS otherwise.
    refcat : Table, optional
        The reference catalog used (``RA``, ``DEC`` deg, optional ``MAG``); None:
        the other exposures' detections are the references.
    tolerance : float
        Matching radius, arcsec.
    plane : tweakwcs corrector, optional
        The visit's tangent plane (default: at the centre of the images).

    Returns
    -------
    list of ImageResiduals
        One per image, in order (an image without a catalog has no sources).
    """
    from ..core.wcs_utils import tangent_plane
    from ..fitting.images import sky_centre

    out, sky = [], {}  # sky: index -> (points, corners) through the input and aligned WCS
    for im in images:
        status = statuses.get(im.name, ("FAILED", None))[0]
        res = ImageResiduals(name=im.name, detector=im.key.detector, exposure=str(im.key.exposure),
                             status=status)
        out.append(res)
        if im.catalog is None or im.model is None:
            continue
        wcs0 = im.original_wcs if im.original_wcs is not None else im.model.meta.wcs
        wcs1 = im.model.meta.wcs if status == "COMPLETE" else wcs0
        cat = im.inside_catalog()
        res.x, res.y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
        before = _sky(wcs0, res.x, res.y)
        sky[len(out) - 1] = (before, _sky(wcs1, res.x, res.y) if wcs1 is not wcs0 else before)
        res.mag = (-2.5 * np.log10(np.clip(np.asarray(cat["flux"], float), 1e-30, None))
                   if "flux" in cat.colnames else np.full(len(res.x), np.nan))
    if plane is None and sky:
        corners = np.concatenate([np.column_stack(c) for _, (_, c) in sky.values()])
        plane = tangent_plane(*sky_centre(corners[:, 0], corners[:, 1])[:2])
    pos = {}  # index -> positions in the plane (input WCS, aligned WCS), arcsec
    for i, ((pts0, corners0), (pts1, corners1)) in sky.items():
        res = out[i]
        p0, p1 = _plane_offsets(plane, *pts0), _plane_offsets(plane, *pts1)
        pos[i] = (p0, p1)
        res.east, res.north = p1[:, 0], p1[:, 1]
        res.footprint_before = _plane_offsets(plane, *corners0)
        res.footprint_after = _plane_offsets(plane, *corners1)
        res.correction = float(np.max(np.hypot(*(res.footprint_after
                                                 - res.footprint_before).T)))

    if refcat is not None and len(refcat):
        ref_xy = _plane_offsets(plane, refcat["RA"], refcat["DEC"])
        ref_mag = np.asarray(refcat["MAG"], float) if "MAG" in refcat.colnames else None
        for i, (p0, p1) in pos.items():
            res = out[i]
            res.ref = _nearest_unique(p1, ref_xy, tolerance)
            m = res.ref >= 0
            res.before, res.after = (np.full((len(res.ref), 2), np.nan) for _ in range(2))
            res.before[m] = 1e3 * (p0[m] - ref_xy[res.ref[m]])
            res.after[m] = 1e3 * (p1[m] - ref_xy[res.ref[m]])
            if ref_mag is not None:
                res.mag = np.where(m, ref_mag[np.clip(res.ref, 0, None)], np.nan)
    else:
        _match_between_images(out, pos, tolerance)
    _flag(out)
    return out


def _match_between_images(out, pos, tolerance):
    """Without a reference catalog: each source against the other exposures' detections."""
    for i, (q0, q1) in pos.items():
        res = out[i]
        others = [j for j in pos if out[j].exposure != res.exposure]
        res.ref = np.full(len(q1), -1)
        res.before, res.after = (np.full((len(q1), 2), np.nan) for _ in range(2))
        if not others:
            continue
        p0 = np.concatenate([pos[j][0] for j in others])
        p1 = np.concatenate([pos[j][1] for j in others])
        res.ref = _nearest_unique(q1, p1, tolerance)
        m = res.ref >= 0
        res.before[m] = 1e3 * (q0[m] - p0[res.ref[m]])
        res.after[m] = 1e3 * (q1[m] - p1[res.ref[m]])


def _flag(out):
    """Matched / rejected / unmatched, rejecting beyond `CLIP` robust sigma of the visit."""
    all_after = np.concatenate([r.after[r.ref >= 0] for r in out if len(r.ref)] or
                               [np.zeros((0, 2))])
    centre, sigma = np.zeros(2), np.inf
    if len(all_after) >= 5:
        centre = np.median(all_after, axis=0)
        sigma = 1.4826 * float(np.median(np.abs(all_after - centre)))
        sigma = sigma if sigma > 0 else np.inf
    for res in out:
        res.flag = np.full(len(res.x), "unmatched", dtype="U9")
        if not len(res.ref):
            continue
        m = res.ref >= 0
        dist = np.hypot(*(res.after - centre).T) / sigma
        res.flag[m] = np.where(dist[m] > CLIP, "rejected", "matched")


@dataclass
class GradeLimits:
    """
    Where an image stops being good.

    Attributes
    ----------
    min_matches_poor, min_matches_check : int
        Fewer matched sources than this: poor / check.
    scatter_poor, scatter_check : float
        Residual RMS above this factor times the visit's median image RMS.
    offset_chi2_poor, offset_chi2_check : float
        The image's mean residual, ``n |mean|^2 / rms_visit^2`` (chi-square, 2 dof
        when the image fits the visit model): 30 (p ~ 3e-7) and 13.8 (p = 0.001).
    offset_min : float
        Mean residuals below this (mas) are never flagged, however significant.
    uncertainty_check : float
        Reported 1-sigma uncertainty at the worst corner above this (mas): check.
    correction_check : float
        Corrections above this fraction of the search radius: check (a false
        offset peak becomes possible near the search limit).
    holdout_check : float
        The hold-out error (``holdout_err``: the spread of the image's centre over fits
        each without a twentieth of the matched sources, plus its held-out sources' mean
        residual where significant) above this factor times the model's 1-sigma at the
        centre (``err_center``): check. The two measure the same error, one trusting the
        model and one not; they differ by this much only when the model misses something.
    min_reference_good : int
        Fewer matched reference sources over the whole visit: check. The uncertainty
        rests on the reference scatter measured from them, itself uncertain by
        ~1 / sqrt(2 (n - 3)) (18% for 20 sources): a 2.45-sigma ellipse then holds
        ~92% of true errors, not 95%, and the chance of a 3-sigma error is three
        times higher.
    """

    min_matches_poor: int = 3
    min_matches_check: int = 5
    scatter_poor: float = 3.0
    scatter_check: float = 1.5
    offset_chi2_poor: float = 30.0
    offset_chi2_check: float = 13.8
    offset_min: float = 2.0
    uncertainty_check: float = 5.0
    correction_check: float = 0.8
    holdout_check: float = 2.5
    min_reference_good: int = 30


@dataclass
class ImageGrade:
    """``grade`` (good / check / poor) and the ``reason``, with the numbers behind it."""

    name: str
    grade: str
    reason: str
    nmatch: int
    rms_before: float
    rms_after: float
    offset: tuple
    offset_chi2: float


def grade_images(residuals, uncertainty=None, searchrad=1.0, limits=None, failures=None,
                 holdout=None):
    """
    Grade every image: good, check or poor, with the reason.

    Good means that the model's uncertainty and the hold-out check both support it:
    its error is small (``uncertainty``), rests on enough reference sources, and its
    reference sources held out of the fit agree with it (``holdout``).

    Parameters
    ----------
    residuals : list of ImageResiduals
    uncertainty : dict, optional
        Image name -> reported 1-sigma uncertainty at the worst corner, mas.
    searchrad : float
        The fit's search radius, arcsec (for the correction-size check).
    limits : GradeLimits, optional
    failures : dict, optional
        Image name -> why it was not aligned (for FAILED images).
    holdout : dict, optional
        Image name -> (``holdout_err``, ``holdout_sigma``, ``err_center``, ``holdout_n``)
        in mas (the results table's columns): the hold-out estimate of its error, the
        noise per axis of its held-out sources' mean residual, the model's 1-sigma at its
        centre, its held-out sources. Also marks the images whose uncertainty comes from a joint fit (the
        reference-source count applies to those).

    Returns
    -------
    list of ImageGrade
    """
    limits = limits or GradeLimits()
    uncertainty, failures, holdout = uncertainty or {}, failures or {}, holdout or {}
    rms = [r.rms("after") for r in residuals if r.status == "COMPLETE" and r.used.sum()]
    visit_rms = float(np.median(rms)) if rms else float("nan")
    # Reference sources behind the visit's uncertainty: each matched one counted once.
    n_refs = len({int(k) for r in residuals if r.status == "COMPLETE" for k in r.ref[r.used]})
    grades = []
    for r in residuals:
        n = int(r.used.sum())
        mean = r.mean_offset()
        chi2 = float(n * np.sum(mean ** 2) / visit_rms ** 2) if n and visit_rms > 0 else 0.0
        poor, check = [], []
        if r.status != "COMPLETE":
            # Not aligned: its WCS is its input's, and that is all there is to say.
            reason = str(failures.get(r.name, r.status)).removeprefix("FAILED: ")
            grades.append(ImageGrade(name=r.name, grade="poor", reason=f"not aligned: {reason}",
                                     nmatch=n, rms_before=r.rms("before"),
                                     rms_after=r.rms("after"),
                                     offset=(float(mean[0]), float(mean[1])), offset_chi2=chi2))
            continue
        if n < limits.min_matches_poor:
            poor.append(f"{n} matched sources")
        elif n < limits.min_matches_check:
            check.append(f"only {n} matched sources")
        ratio = r.rms("after") / visit_rms if n and visit_rms > 0 else 0.0
        if ratio > limits.scatter_poor:
            poor.append(f"residual RMS {r.rms('after'):.1f} mas, {ratio:.1f}x the visit's")
        elif ratio > limits.scatter_check:
            check.append(f"residual RMS {r.rms('after'):.1f} mas, {ratio:.1f}x the visit's")
        size = float(np.hypot(*mean)) if n else 0.0
        offset = (f"mean offset {size:.1f} mas (E {mean[0]:+.1f}, N {mean[1]:+.1f}; "
                  f"chi2 {chi2:.0f})")
        if size >= limits.offset_min and chi2 > limits.offset_chi2_poor:
            poor.append(offset)
        elif size >= limits.offset_min and chi2 > limits.offset_chi2_check:
            check.append(offset)
        err = uncertainty.get(r.name, float("nan"))
        if np.isfinite(err) and err > limits.uncertainty_check:
            check.append(f"uncertainty {err:.1f} mas at a corner")
        held = holdout.get(r.name)
        if held is not None:
            check += _holdout_checks(held, n_refs, limits)
        if r.correction > limits.correction_check * searchrad:
            check.append(f"correction {r.correction:.2f} arcsec, near the search radius "
                         f"{searchrad:g} arcsec")
        if poor:
            grade, reason = "poor", "; ".join(poor + check)
        elif check:
            grade, reason = "check", "; ".join(check)
        else:
            grade, reason = "good", (f"{n} matches, RMS {r.rms('after'):.1f} mas, "
                                     f"mean offset {size:.1f} mas")
        grades.append(ImageGrade(name=r.name, grade=grade, reason=reason, nmatch=n,
                                 rms_before=r.rms("before"), rms_after=r.rms("after"),
                                 offset=(float(mean[0]), float(mean[1])), offset_chi2=chi2))
    return grades


def _holdout_checks(held, n_refs, limits):
    """
    What an image whose uncertainty comes from a joint fit needs checked: its held-out error
    against the model's (``held``: ``holdout_err``, ``holdout_sigma``, ``err_center``,
    ``holdout_n``, mas) and the reference sources behind its uncertainty.
    """
    check = []
    h_err, h_sig, centre, h_n = (float(v) for v in held)
    if (np.isfinite(h_err) and np.isfinite(centre) and centre > 0
            and h_err > limits.holdout_check * centre):
        check.append(f"held-out error {h_err:.1f} mas ({int(h_n)} of its sources held "
                     f"out), {h_err / centre:.1f}x the model's {centre:.1f} mas")
    if n_refs < limits.min_reference_good:
        check.append(f"uncertainty from only {n_refs} reference sources (fewer than "
                     f"{limits.min_reference_good}): itself uncertain by "
                     f"~{100 / np.sqrt(2 * max(n_refs - 3, 1)):.0f}%")
    return check
