"""Judge every fitted image before it is called aligned.

A visit-wide fit can carry an image along that it does not fit: a wrong WCS
(wrong guide star, corrupt header), an empty or all-NaN frame, a catalog with
nothing on the image. The fit itself succeeds on the other images, and that
image would inherit their correction. So after every absolute fit each image
is checked on its own, against the reference catalog, through its fitted WCS:

- **its own matches**: at least ``min_matches`` of its detections lie within
  the judging radius of a reference source, and more than a WCS that is wrong
  altogether gets by chance with probability ``CHANCE_PROBABILITY`` (Poisson,
  mean = detections x reference density x radius area). The radius is five times the
  visit's robust residual scatter (at least 20 mas, at most ``tolerance``), so
  chance coincidences are rare (~0.3 per 300 detections for CEERS' HST catalog
  density);
- **its residual scatter**: the robust scatter of its residuals is at most
  ``SCATTER_FACTOR`` times the median over the visit's images (chance matches
  spread over the whole radius);
- **its mean offset** (only where the model claims to describe every image,
  the joint fit): the mean residual is within ``OFFSET_SIGMA`` standard errors
  of zero (standard error: visit scatter / sqrt(matches)).

Plain functions on positions in a tangent plane (arcsec); the alignment code
calls `judge_images` and acts on the verdicts.
"""

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .source_matching import _isolated, offset_from_2dhist

__all__ = ["CHANCE_PROBABILITY", "MIN_RADIUS", "OFFSET_SIGMA", "SCATTER_FACTOR", "ImageVerdict",
           "judge_images", "screen_images"]

#: An image's mean residual beyond this many standard errors is an outlier (joint fit).
OFFSET_SIGMA = 5.0
#: An image whose residual scatter exceeds the visit median by this factor is an outlier.
SCATTER_FACTOR = 3.0
#: Smallest judging radius, arcsec.
MIN_RADIUS = 0.02
#: An image needs more matches than chance gives a wrong WCS with this probability.
CHANCE_PROBABILITY = 0.01


@dataclass
class ImageVerdict:
    """
    The judgement of one image.

    Attributes
    ----------
    ok : bool
    reason : str or None
        Why the image is not aligned (None when ``ok``).
    nmatch : int
        Its own matches within ``radius``.
    radius : float
        Judging radius, arcsec.
    offset : ndarray (2,)
        Mean residual (reference - image), arcsec.
    scatter : float
        Robust residual scatter (both axes), arcsec.
    """

    ok: bool
    reason: str | None
    nmatch: int
    radius: float
    offset: np.ndarray
    scatter: float


def _poisson():
    # scipy.stats takes ~0.3 s to import: paid by the runs that judge images, not by every
    # process that imports the steps (strun, the CLI, workers).
    from scipy.stats import poisson

    return poisson


def _robust_sigma(r):
    """Per-axis scatter from the median absolute deviation (Gaussian-equivalent)."""
    s = 1.4826 * np.median(np.abs(r - np.median(r, axis=0)), axis=0)
    return np.maximum(s, 1e-6)


def _density(ref_xy):
    """Reference sources per square arcsec (over their bounding box)."""
    if len(ref_xy) < 2:
        return 0.0
    span = np.ptp(ref_xy, axis=0)
    return len(ref_xy) / max(float(span[0] * span[1]), 1e-6)


def _matches(xy, tree, ref_xy, radius):
    """Residuals ``ref - xy`` of the detections within ``radius`` of a reference source."""
    if len(xy) == 0 or len(ref_xy) == 0:
        return np.zeros((0, 2))
    dist, idx = tree.query(xy, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    return ref_xy[idx[ok]] - xy[ok]


def _usable(positions, separation):
    """
    Each image's finite detections that no other of its own lies within ``separation``
    of (the fits' confusion rule), and how many of them were finite.
    """
    pos = [np.asarray(p, float).reshape(-1, 2) for p in positions]
    pos = [p[np.all(np.isfinite(p), axis=1)] for p in pos]
    n_finite = [len(p) for p in pos]
    return [p[_isolated(p, separation)] for p in pos], n_finite


def _unusable_reason(total, n_finite, separation):
    """Why an image with ``total`` sources (``n_finite`` of them finite) has none usable."""
    if not total:
        return "no sources in its catalog"
    if n_finite:
        return (f"none of the {total} sources in its catalog is isolated (each has another "
                f"within {separation:g} arcsec): far too dense a catalog")
    return f"none of the {total} sources in its catalog is usable (non-finite or outside the image)"


def screen_images(positions, ref_xy, searchrad, min_matches, n_sources=None, separation=0.0):
    """
    Before any fit: whether each image's catalog matches the reference catalog at all.

    A fit of several images moves every image by shared terms (the common shift, a
    dither's, a detector's, a channel's): an image whose catalog matches nothing (a
    frame of artefacts, a wrong WCS far beyond ``searchrad``) pulls those terms with
    its chance matches, and the judgement after the fit then fails the images that
    share them too. Each image on its own: it needs a usable detection, and the peak
    of its 2-D histogram of offsets to the reference within ``searchrad``
    (`ceers_steps.fitting.jointfit.offset_from_2dhist`) must hold more detections than chance
    puts in the highest of the histogram's windows with probability
    ``CHANCE_PROBABILITY`` (Poisson, mean = detections x reference density x window
    area, over the number of windows searched).

    Parameters
    ----------
    positions : list of ndarray (n_i, 2)
        Per image, its detections through its current WCS, in a tangent plane, arcsec.
    ref_xy : ndarray (m, 2)
        Reference sources in the same plane, arcsec.
    searchrad : float
        The largest offset searched, arcsec.
    min_matches : int
        Detections an image needs at its offset in any case.
    n_sources : list of int, optional
        Sources in each image's catalog before any cut (for the message when none
        were usable).
    separation : float
        Detections and reference sources closer than this to another of their own set
        count for nothing (the fits' confusion rule), arcsec.

    Returns
    -------
    list of ImageVerdict
        ``nmatch``: detections at the best offset; ``radius``: half the window's
        side; ``offset``: the best offset; ``scatter``: NaN.
    """
    ref_xy = np.asarray(ref_xy, float).reshape(-1, 2)
    ref_xy = ref_xy[_isolated(ref_xy, separation)]
    tree = cKDTree(ref_xy) if len(ref_xy) else None
    density = _density(ref_xy)
    binsize = searchrad / 25.0  # offset_from_2dhist's bins; its peak window is 3 x 3 bins
    window = (3.0 * binsize) ** 2
    n_windows = (2.0 * searchrad / binsize) ** 2
    pos, n_finite = _usable(positions, separation)
    out = []
    for i, p in enumerate(pos):
        offset, npeak, reason = np.zeros(2), 0, None
        if len(p) == 0:
            total = n_sources[i] if n_sources is not None else n_finite[i]
            reason = _unusable_reason(total, n_finite[i], separation)
        elif tree is None:
            reason = "no reference source"
        else:
            offset, npeak = offset_from_2dhist(p, ref_xy, searchrad, binsize, tree=tree)
            chance = len(p) * density * window
            need = max(min_matches,
                       int(_poisson().isf(CHANCE_PROBABILITY / n_windows, chance)) + 1)
            if npeak < need:
                reason = (f"its catalog matches the reference catalog at no offset within "
                          f"{searchrad:g} arcsec ({npeak} detections at the best one, {need} "
                          "needed to tell a match from chance)")
        out.append(ImageVerdict(ok=reason is None, reason=reason, nmatch=npeak,
                                radius=1.5 * binsize, offset=offset, scatter=np.nan))
    return out


def judge_images(positions, ref_xy, tolerance, min_matches, n_sources=None, offset_test=False,
                 separation=0.0):
    """
    Judge each image's fitted positions against the reference catalog.

    Parameters
    ----------
    positions : list of ndarray (n_i, 2)
        Per image, its detections through its fitted WCS, in a tangent plane, arcsec.
    ref_xy : ndarray (m, 2)
        Reference sources in the same plane, arcsec.
    tolerance : float
        The fit's matching tolerance, arcsec: the judging radius never exceeds it.
    min_matches : int
        Matches an image needs of its own.
    n_sources : list of int, optional
        Sources in each image's catalog before any cut (for the message when none
        were usable).
    offset_test : bool
        Also test each image's mean residual against zero.
    separation : float
        Detections and reference sources closer than this to another of their own
        set count for nothing (the fits' confusion rule), arcsec.

    Returns
    -------
    list of ImageVerdict
    """
    ref_xy = np.asarray(ref_xy, float).reshape(-1, 2)
    ref_xy = ref_xy[_isolated(ref_xy, separation)]
    tree = cKDTree(ref_xy) if len(ref_xy) else None
    pos, n_finite = _usable(positions, separation)
    # The visit's scatter from every image's matches within the fit's own tolerance.
    wide = [_matches(p, tree, ref_xy, tolerance) if tree is not None else np.zeros((0, 2))
            for p in pos]
    centred = [r - np.median(r, axis=0) for r in wide if len(r) >= 3]
    if centred:
        sigma = float(np.max(_robust_sigma(np.concatenate(centred))))
    else:
        sigma = tolerance / 5.0
    radius = float(min(tolerance, max(5.0 * sigma, MIN_RADIUS)))
    own = [_matches(p, tree, ref_xy, radius) if tree is not None else np.zeros((0, 2))
           for p in pos]
    scatters = [float(np.hypot(*_robust_sigma(r)) / np.sqrt(2)) if len(r) >= 3 else np.nan for r in own]
    typical = np.nanmedian(scatters) if np.any(np.isfinite(scatters)) else np.nan
    density = _density(ref_xy)
    out = []
    for i, r in enumerate(own):
        n = len(r)
        # Matches a WCS that is wrong altogether would still get by chance, and their spread.
        chance = len(pos[i]) * density * np.pi * radius**2
        need = max(min_matches, int(_poisson().isf(CHANCE_PROBABILITY, chance)) + 1)
        offset = r.mean(axis=0) if n else np.zeros(2)
        scatter = scatters[i]
        reason = None
        if len(pos[i]) == 0:
            total = n_sources[i] if n_sources is not None else n_finite[i]
            reason = _unusable_reason(total, n_finite[i], separation)
        elif n < need:
            rule = (f"abs_image_minobj {min_matches}" if need == min_matches else
                    f"{chance:.1f} expected by chance")
            reason = (f"{n} matches of its own within {1e3 * radius:.0f} mas of the reference "
                      f"catalog after the fit (needs {need}: {rule}): its WCS does not agree "
                      "with the visit's")
        elif np.isfinite(scatter) and np.isfinite(typical) and scatter > SCATTER_FACTOR * typical:
            reason = (f"residual scatter {1e3 * scatter:.1f} mas, more than {SCATTER_FACTOR:g}x "
                      f"the visit's {1e3 * typical:.1f} mas")
        elif offset_test:
            stderr = max(sigma, 1e-4) / np.sqrt(n)
            nsig = float(np.hypot(*offset) / stderr)
            if nsig > OFFSET_SIGMA:
                reason = (f"mean residual {1e3 * np.hypot(*offset):.1f} mas after the fit, "
                          f"{nsig:.1f} sigma from the visit's solution")
        out.append(ImageVerdict(ok=reason is None, reason=reason, nmatch=n, radius=radius,
                                offset=offset, scatter=scatter))
    return out
