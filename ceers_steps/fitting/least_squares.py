"""The joint fit's weighted least squares: one Gauss-Newton step, residuals, scatters, clipping.

The source positions are eliminated exactly (each source's observations centred on their weighted
mean, the Schur complement), so the normal matrix has only the visit terms; its inverse is the
model's covariance, and the cluster-robust ("sandwich") covariance, clustered by reference source,
holds whatever the same galaxy's observations share. The scatters of each kind of observation
(centroid, reference) are measured from the residuals with their leverages, and residuals beyond
``sigma`` of their kind's spread are clipped.
"""

import numpy as np
from scipy.sparse import coo_matrix

from .source_matching import _n_matched

__all__ = []


def _source_means(obs, w_det, w_ref, det_values, ref_values):
    """
    Weighted mean over each source's observations of per-observation values
    (``det_values`` (n, m) for its detections, ``ref_values`` (r, m) for its
    reference source), and each source's weight sum.
    """
    def total(comp, w, values):
        spread = coo_matrix((w, (comp, np.arange(len(comp)))), shape=(obs.n_comp, len(comp)))
        return spread.tocsr() @ values

    wsum = np.bincount(obs.det_comp, w_det, obs.n_comp) + np.bincount(obs.ref_comp, w_ref,
                                                                       obs.n_comp)
    wsum = np.where(wsum > 0, wsum, 1.0)
    sums = total(obs.det_comp, w_det, det_values) + total(obs.ref_comp, w_ref, ref_values)
    return sums / wsum[:, None], wsum


def _solve(model, layout, obs, p, dith, det, chan, ref_xy, w_det, w_ref, robust=False,
           step_only=False):
    """
    One Gauss-Newton step of the weighted least-squares fit; ``model`` is updated.

    With ``robust``, also returns (fourth) the cluster-robust ("sandwich") covariance
    of the step's unknowns, clustered by reference source: every observation tied to one
    reference source -- its detections in every image and channel, and its reference
    position -- forms one cluster (a source without one is its own), so whatever the
    same galaxy shares between its observations (its offset from the catalog in every
    filter) counts once. ``G / (G - 1)`` small-sample factor over ``G`` clusters.
    With ``step_only``, only the update (no covariance: the hold-out's refits).

    Returns the covariance (k x k, arcsec and radians) of the step's unknowns:
    the inverse of the normal matrix, with weights 1 / variance in arcsec^-2.
    """
    di, ci, ri, rci = obs.det, obs.det_comp, obs.ref, obs.ref_comp
    pts = p[di]
    v = model.apply(pts, dith[di], det[di], chan[di])
    q = ref_xy[ri] if len(ri) else np.zeros((0, 2))
    jac = layout.design(model.linear(pts, chan[di]), dith[di], det[di], chan[di])
    k = layout.k
    # Centring on each source's weighted mean eliminates its position (reference sources
    # have no visit terms: zero Jacobian).
    means, _ = _source_means(obs, w_det, w_ref, np.column_stack([v, jac[0], jac[1]]),
                             np.column_stack([q, np.zeros((len(ri), 2 * k))]))
    sd, sr = np.sqrt(w_det), np.sqrt(w_ref)
    rows, rhs = [], []
    for axis in (0, 1):
        vbar, jbar = means[:, axis], means[:, 2 + axis * k:2 + (axis + 1) * k]
        rows += [sd[:, None] * (jac[axis] - jbar[ci]), -sr[:, None] * jbar[rci]]
        rhs += [-sd * (v[:, axis] - vbar[ci]), -sr * (q[:, axis] - vbar[rci])]
    a, b = np.vstack(rows), np.concatenate(rhs)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    layout.update(model, sol)
    if step_only:
        return None
    normal = a.T @ a
    cov = np.linalg.pinv(normal)
    # Leverage of each observation on the visit terms (the hat matrix diagonal, per axis):
    # the fitted terms absorb part of the residuals, which the variance estimates restore.
    lev = np.einsum("ij,jk,ik->i", a, cov, a)
    nd, nr = len(di), len(ri)
    lev_det = (lev[:nd] + lev[nd + nr:2 * nd + nr]) / 2
    lev_ref = (lev[nd:nd + nr] + lev[2 * nd + nr:]) / 2
    # A column without data (a dither or detector nobody matched) has no variance to report.
    empty = np.diag(normal) <= 0
    cov[empty, :] = np.nan
    cov[:, empty] = np.nan
    if not robust:
        return cov, lev_det, lev_ref
    ref_of_comp = np.full(obs.n_comp, -1)
    ref_of_comp[rci] = ri
    top = int(ri.max()) + 1 if len(ri) else 0
    det_cluster = np.where(ref_of_comp[ci] >= 0, ref_of_comp[ci], top + ci)
    cluster = np.concatenate([det_cluster, ri, det_cluster, ri])
    scores = a * (b - a @ sol)[:, None]
    ids, cluster = np.unique(cluster, return_inverse=True)
    summed = np.zeros((len(ids), a.shape[1]))
    np.add.at(summed, cluster, scores)
    g = len(ids)
    bread = np.nan_to_num(cov)
    sandwich = bread @ (summed.T @ summed) @ bread * (g / max(g - 1, 1))
    sandwich[empty, :] = np.nan
    sandwich[:, empty] = np.nan
    return cov, lev_det, lev_ref, sandwich


def _residuals(model, obs, p, dith, det, chan, ref_xy, w_det, w_ref):
    """
    Residuals from each source's weighted mean position, and their leverages.

    Returns ``r_det`` (n, 2), ``h_det`` (n,), ``r_ref`` (m, 2), ``h_ref`` (m,):
    the residual of an observation with variance ``s^2`` has variance ``s^2 (1 - h)``.
    """
    di, ci, ri, rci = obs.det, obs.det_comp, obs.ref, obs.ref_comp
    v = model.apply(p[di], dith[di], det[di], chan[di])
    q = ref_xy[ri] if len(ri) else np.zeros((0, 2))
    mean, wsum = _source_means(obs, w_det, w_ref, v, q)
    return v - mean[ci], w_det / wsum[ci], q - mean[rci], w_ref / wsum[rci]


def _mean_square(r, h, variance=None, sigma=None):
    """
    Variance per axis of observations whose residuals ``r`` have leverages ``h``.

    With ``variance`` and ``sigma``: estimated from the residuals within ``sigma``
    of the current ``variance`` (the clipping limit) and corrected for that
    truncation, as for a 2-D Gaussian, so outliers do not inflate it and clipping
    does not shrink it. For Gaussian scatter only (the reference's intrinsic
    offsets): centroid errors range from a fraction of a mas to several, and a
    truncated estimate of such a mixture shrinks at every iteration.
    """
    if len(r) == 0:
        return None
    free = np.maximum(1.0 - h, 1e-6)
    if variance is None:
        return float(np.sum(r**2) / (2.0 * np.sum(free))) if np.sum(free) > 0.5 else None
    inside = np.hypot(r[:, 0], r[:, 1]) <= sigma * np.sqrt(variance * free)
    if np.sum(free[inside]) <= 0.5:
        return None
    tail = np.exp(-0.5 * sigma**2)
    kept = (1.0 - (1.0 + 0.5 * sigma**2) * tail) / (1.0 - tail)
    return float(np.sum(r[inside] ** 2) / (2.0 * np.sum(free[inside])) / kept)


def _unclipped(r, h, variance, sigma):
    """
    Observations whose normalised 2-D residual is within ``sigma``.

    The spread is the measured variance (a mean square), not a robust one: centroid
    errors range from a fraction of a mas for bright sources to several mas for faint
    ones, and a MAD-based cut would discard the faint half as outliers.
    """
    if len(r) == 0:
        return np.ones(0, bool)
    scale = np.sqrt(variance * np.maximum(1.0 - h, 1e-6))
    return np.hypot(r[:, 0], r[:, 1]) / scale <= sigma


def _reference_dof(h_ref, lev_ref):
    """
    Effective degrees of freedom of the reference scatter (per axis: the reference
    residuals' sum of 1 - leverage) and the covariance factor it asks for.
    """
    from scipy.stats import chi2
    from scipy.stats import f as f_dist

    dof = float(np.sum(np.clip(1.0 - h_ref - lev_ref, 0.0, 1.0)))
    gauss = chi2.ppf(0.95, 2) / 2.0  # the F(2, inf) point
    return dof, float(np.sqrt(f_dist.ppf(0.95, 2, max(dof, 1.0)) / gauss))


class _Scatters:
    """
    The scatters of the fit's observations (variances, arcsec^2 per axis): the centroid
    scatter of one detection per channel, the reference scatter per channel and reference
    catalog (the galaxies' intrinsic offsets and the catalog's errors beyond ``ref_var``).
    First guesses from the matching tolerance, then measured after every solve.
    """

    def __init__(self, chan, groups, ref_var, n_chan, n_groups, tolerance):
        self.chan, self.groups, self.ref_var = chan, groups, ref_var
        self.n_chan, self.n_groups = n_chan, n_groups
        self.sig_int2 = np.full((n_chan, n_groups), (tolerance / 5.0) ** 2)
        self.sig_cen2 = np.full(n_chan, (tolerance / 10.0) ** 2)

    def weights(self, o):
        """Weights (1 / variance) of the detections and reference sources of ``o``."""
        w_det = 1.0 / self.sig_cen2[self.chan[o.det]]
        w_ref = (1.0 / (self.sig_int2[o.ref_chan, self.groups[o.ref]] + self.ref_var[o.ref])
                 if len(o.ref) else np.zeros(0))
        return w_det, w_ref

    def measure_centroid(self, r_det, h_det, c_det):
        """Each channel's centroid scatter from its detections' residuals (a mean square)."""
        for c in range(self.n_chan):
            ms = _mean_square(r_det[c_det == c], h_det[c_det == c])
            if ms is not None:
                self.sig_cen2[c] = max(ms, 1e-5**2)

    def measure_reference(self, o, r_ref, h_ref, w_ref, limit):
        """Each channel's and catalog's reference scatter, within the clipping ``limit``."""
        g_used, c_used = self.groups[o.ref], o.ref_chan
        for c in range(self.n_chan):
            for g in range(self.n_groups):
                # Too few of this catalog in this channel: the channel's, then all.
                for m in ((c_used == c) & (g_used == g), c_used == c,
                          np.ones(len(g_used), bool)):
                    if m.sum() >= 10:
                        break
                ms = _mean_square(r_ref[m], h_ref[m], 1.0 / np.median(w_ref[m]), limit)
                if ms is not None:
                    self.sig_int2[c, g] = max(ms - float(np.median(self.ref_var[o.ref][m])),
                                              0.0005**2)


def _clip_pass(model, layout, o, data, scatters, params, iteration, absolute):
    """
    One solve of the clipping loop on the observations ``o`` (``model`` is updated, the
    scatters measured anew): which of them lie within ``params.sigma`` of their kind's spread.
    ``data``: the detections' positions, dithers, detectors and channels, and the reference
    positions (``p, dith, det, chan, ref_xy``).
    """
    chan = data[3]
    w_det, w_ref = scatters.weights(o)
    _, lev_det, lev_ref = _solve(model, layout, o, *data, w_det, w_ref)
    r_det, h_det, r_ref, h_ref = _residuals(model, o, *data, w_det, w_ref)
    h_det, h_ref = h_det + lev_det, h_ref + lev_ref
    # Variances from the residuals (mean squares: what the covariance needs). The
    # clipping limit of the first pass is wide: the first guesses may be far off.
    limit = params.sigma if iteration else 3.0 * params.sigma
    c_det = chan[o.det]
    scatters.measure_centroid(r_det, h_det, c_det)
    if absolute and len(r_ref):
        scatters.measure_reference(o, r_ref, h_ref, w_ref, limit)
        w_det, w_ref = scatters.weights(o)
    # Clip each residual normalised by the spread expected for its kind (a chi-square
    # cut: a Gaussian core loses ~1% at 3 sigma).
    new_det = _unclipped(r_det, h_det, scatters.sig_cen2[c_det], params.sigma)
    new_ref = _unclipped(r_ref, h_ref, 1.0 / w_ref, params.sigma)
    return new_det, new_ref


def _clipped_solve(model, layout, obs, data, scatters, params, iteration, absolute):
    """
    Solve and clip until nothing more is clipped (at most ``params.nclip`` times, and never
    below ``params.minobj`` matches): the observations of ``obs`` that remain.
    """
    keep_det, keep_ref = np.ones(len(obs.det), bool), np.ones(len(obs.ref), bool)
    for _ in range(max(params.nclip, 0) + 1):
        o = obs.subset(keep_det, keep_ref)
        new_det, new_ref = _clip_pass(model, layout, o, data, scatters, params, iteration,
                                      absolute)
        full_det, full_ref = keep_det.copy(), keep_ref.copy()
        full_det[keep_det], full_ref[keep_ref] = new_det, new_ref
        clipped = obs.subset(full_det, full_ref)
        if (params.nclip <= 0 or (new_det.all() and new_ref.all())
                or (_n_matched(clipped) if absolute else full_det.sum()) < params.minobj):
            break
        keep_det, keep_ref = full_det, full_ref
    return obs.subset(keep_det, keep_ref)
