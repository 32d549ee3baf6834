"""Detector terms: whether a visit's detector offsets (and own rotations) are significant, and
offsets shared by several visits.

A detector's placement error is a property of the instrument: one visit measures it from its
~30 reference galaxies per detector; `combine_detector_offsets` combines the visits' estimates
(generalised least squares, offsets summing to zero) and `offsets_significant` tests them.
"""

import numpy as np

from .least_squares import _solve
from .visit_model import _centre_gauge, _Layout

__all__ = ["combine_detector_offsets", "offsets_significant"]

def _detector_terms_significant(terms, model, obs, p, dith, det, chan, ref_xy, w, geoms, n_dith,
                                significance, rotated=()):
    """
    Whether the visit's detector ``terms`` are significant: every detector's offset
    (and, for ``"rotations"``, its own rotation and scale) fitted about their mean,
    the chi-square of the tested terms against their covariance (``"offsets"``:
    2 (n_det - 1) degrees of freedom, the detectors' rotations as in ``rotated``)
    beyond a ``significance``-sigma Gaussian event.
    """
    from scipy.stats import chi2

    probe = model.copy()
    every = tuple(range(len(model.detector)))
    _centre_gauge(probe, every)
    turned = every if terms == "rotations" else rotated
    layout = _Layout(geoms, True, n_dith, every, every, turned, probe.det_centre)
    cov, _, _ = _solve(probe, layout, obs, p, dith, det, chan, ref_xy, *w)
    if terms == "rotations":
        n = len(layout.rot_names)
        cols = [c + j for c in layout.rotation_col.values() for j in range(n)]
        x = np.concatenate([[probe.det_rot[k], probe.det_scale[k]][:n]
                            for k in layout.rotation_col])
    else:
        cols = [c + a for c in layout.detector_col.values() for a in (0, 1)]
        x = np.concatenate([probe.detector[k] for k in layout.detector_col])
    c = cov[np.ix_(cols, cols)]
    if not np.all(np.isfinite(c)):
        return False
    value = float(x @ np.linalg.lstsq(c, x, rcond=None)[0])
    return value > chi2.isf(_two_sided_p(significance), len(cols))


def combine_detector_offsets(estimates):
    """
    Detector offsets shared by several visits, from each visit's own fit of them.

    A detector's placement error is a property of the instrument, the same in every
    visit; one visit measures it from ~30 reference galaxies per detector. Each
    visit's fit (`joint_fit` with ``detector_terms="all"``) gives its detectors'
    offsets about their mean over that visit (the mean is part of the visit's
    common shift), with their covariance. The offsets shared by all visits are
    the generalised least-squares solution of ``y_v = P_v u`` over the visits
    (``P_v`` takes the detectors of visit ``v`` and centres them), offsets summing
    to zero. Visits share no sources, so this is the joint least-squares solution
    of all visits' detections for ``u`` with each visit's own terms profiled out.

    Parameters
    ----------
    estimates : list of (list, ndarray, ndarray)
        Per visit: its detector names (n), their offsets (n, 2) and the covariance
        (2n, 2n) of the flattened offsets (x0, y0, x1, y1, ...), in one frame
        common to the visits (the detector frame: offsets rotate with the roll),
        arcsec.

    Returns
    -------
    dict
        Detector -> (offset (2,), covariance (2, 2)), arcsec, the offsets summing
        to zero over the detectors. Empty when no visit gave an estimate.
    """
    names, u, cov_u = _combine(estimates)
    return {k: (u[2 * j:2 * j + 2].copy(), cov_u[2 * j:2 * j + 2, 2 * j:2 * j + 2].copy())
            for j, k in enumerate(names)}


def _combine(estimates):
    """`combine_detector_offsets`' solution: names, offsets (2n,), covariance (2n, 2n)."""
    names = list(dict.fromkeys(k for est in estimates for k in est[0]))
    n = len(names)
    if not n:
        return names, np.zeros(0), np.zeros((0, 0))
    normal, rhs = np.zeros((2 * n, 2 * n)), np.zeros(2 * n)
    for dets, offsets, cov in estimates:
        m = len(dets)
        take = np.zeros((2 * m, 2 * n))
        for j, k in enumerate(dets):
            take[2 * j, 2 * names.index(k)] = take[2 * j + 1, 2 * names.index(k) + 1] = 1.0
        centre = np.kron(np.eye(m) - 1.0 / m, np.eye(2))
        # Weights within the centred subspace only: the visit cannot see its offsets' mean.
        w = centre @ np.linalg.pinv(centre @ np.asarray(cov, float) @ centre, rcond=1e-10,
                                    hermitian=True) @ centre
        normal += take.T @ w @ take
        rhs += take.T @ w @ np.asarray(offsets, float).ravel()
    # The common offset of all detectors is not measurable (each visit's common shift takes
    # it): solved in the subspace of offsets summing to zero.
    basis = np.linalg.eigh(np.kron(np.eye(n) - 1.0 / n, np.eye(2)))[1][:, 2:]
    cov_u = basis @ np.linalg.pinv(basis.T @ normal @ basis, hermitian=True) @ basis.T
    return names, cov_u @ rhs, cov_u


def offsets_significant(estimates, significance):
    """
    Whether the detector offsets combined from ``estimates`` (as for
    `combine_detector_offsets`) are significant: their chi-square against their
    covariance, 2 (n - 1) degrees of freedom, beyond a ``significance``-sigma Gaussian
    event (the test `joint_fit` applies to one visit's offsets).
    """
    from scipy.stats import chi2

    names, u, cov = _combine(estimates)
    if len(names) < 2:
        return False
    value = float(u @ np.linalg.pinv(cov, hermitian=True) @ u)
    return value > chi2.isf(_two_sided_p(significance), 2 * (len(names) - 1))


def _two_sided_p(nsigma):
    from math import erfc, sqrt

    return erfc(nsigma / sqrt(2.0))
