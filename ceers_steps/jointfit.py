"""Joint absolute alignment of a visit: one least-squares fit with the visit's error structure.

The WCS errors of a NIRCam visit have structure: a pointing error common to
every image (shift and roll), one offset per dither (the same for all
detectors of that exposure) and one placement offset per detector (the same
in every dither). Fitting each detector alone (CEERS) rests on ~30 sources and
is noisy; fitting the visit as one rigid body (jwst) cannot remove detector
offsets. This fit has exactly those terms:

    q = A p + T + t_dither + u_detector

in a tangent plane at the visit centre (arcsec; x west, y north), where ``p``
is a detection's position through the current WCS and ``q`` its reference
catalog position. ``A`` is a rotation (``rshift``), rotation and scale
(``rscale``), a full 2x2 matrix (``general``) or the identity (``shift``).
``t`` is zero for the first dither. A detector term ``u`` is kept only when
the detector's mean residual without it is significant, judged against the
standard error ``scatter / sqrt(unique sources)``: the same galaxy's intrinsic
offset repeats in every dither, so detections of one source are not
independent. Every detection is matched to the reference catalog (a 2-D
histogram of offsets finds the visit shift first), and matching is repeated
with a tolerance that tightens to a few times the residual scatter.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ._stpipe import get_logger

__all__ = ["JointFitResult", "JointParameters", "joint_fit", "offset_from_2dhist"]

log = get_logger(__name__)

FITGEOMETRIES = ("shift", "rshift", "rscale", "general")


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
        Clipping limit on the residual normalised by the robust (MAD) scatter of
        each axis. Deliberately not the tweakwcs RMSE cut: CEERS' 0.6-0.7 x RMSE
        discards real matches and shrinks the scatter that the matching
        tolerance and the detector-term test rely on.
    minobj : int
        Minimum number of matched detections for the visit.
    significance : float
        A per-detector offset is kept when its chi-square (2 dof) exceeds that of
        a ``significance``-sigma Gaussian event.
    detector_terms : bool or "all"
        Allow per-detector offsets where significant (True), never (False), or
        fit one for every detector ("all").
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
    max_iter: int = 10

    def __post_init__(self):
        if self.fitgeometry not in FITGEOMETRIES:
            raise ValueError(f"fitgeometry must be one of {FITGEOMETRIES}, not {self.fitgeometry!r}")


@dataclass
class JointFitResult:
    """
    Result of `joint_fit`.

    Attributes
    ----------
    status : str
        ``"SUCCESS"`` or ``"FAILED: <reason>"``.
    matrix : ndarray (2, 2)
        Common linear term ``A``.
    shift : ndarray (2,)
        Common shift ``T`` (first dither), arcsec.
    dither_shift : dict
        Dither id -> shift relative to the first dither, arcsec.
    detector_shift : dict
        Detector -> offset (zero where not significant), arcsec.
    detector_significant : dict
        Detector -> whether its offset was kept.
    image_shift : list of ndarray
        Total shift of each image (``T + t + u``), arcsec.
    image_stats, dither_stats, detector_stats : list or dict of dict
        ``nmatch``, ``rmse``, ``mae`` (arcsec) of the matched, unclipped residuals.
    nmatch, rmse, mae : int, float, float
        Totals.
    rotation : float
        Rotation of ``A``, deg (positive from north through east).
    scale : float
        Scale of ``A``.
    """

    status: str
    matrix: np.ndarray = field(default_factory=lambda: np.eye(2))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))
    dither_shift: dict = field(default_factory=dict)
    detector_shift: dict = field(default_factory=dict)
    detector_significant: dict = field(default_factory=dict)
    image_shift: list = field(default_factory=list)
    image_stats: list = field(default_factory=list)
    dither_stats: dict = field(default_factory=dict)
    detector_stats: dict = field(default_factory=dict)
    nmatch: int = 0
    rmse: float = 0.0
    mae: float = 0.0
    rotation: float = 0.0
    scale: float = 1.0

    @property
    def success(self):
        return self.status == "SUCCESS"


def _isolated(xy, separation):
    """Mask of points with no other point closer than ``separation``."""
    if len(xy) < 2 or separation <= 0:
        return np.ones(len(xy), bool)
    tree = cKDTree(xy)
    pairs = tree.query_pairs(separation, output_type="ndarray")
    keep = np.ones(len(xy), bool)
    keep[pairs.ravel()] = False
    return keep


def offset_from_2dhist(xy, ref_xy, searchrad, binsize=None):
    """
    The most common offset ``ref - xy`` within ``searchrad`` (a 2-D histogram peak).

    Parameters
    ----------
    xy, ref_xy : ndarray (n, 2), (m, 2)
        Positions in a common plane (arcsec).
    searchrad : float
        Largest offset considered, arcsec.
    binsize : float, optional
        Histogram bin, arcsec; ``searchrad / 25`` by default.

    Returns
    -------
    offset : ndarray (2,)
        Mean of the offsets within one bin of the (3x3-smoothed) peak.
    npeak : int
        Number of offsets there.
    """
    binsize = binsize or searchrad / 25.0
    tree = cKDTree(ref_xy)
    lists = tree.query_ball_point(xy, searchrad)
    dx = np.concatenate([ref_xy[idx, 0] - xy[i, 0] for i, idx in enumerate(lists) if idx] or [[]])
    dy = np.concatenate([ref_xy[idx, 1] - xy[i, 1] for i, idx in enumerate(lists) if idx] or [[]])
    if dx.size == 0:
        return np.zeros(2), 0
    nb = int(np.ceil(2 * searchrad / binsize))
    edges = np.linspace(-searchrad, searchrad, nb + 1)
    hist, _, _ = np.histogram2d(dx, dy, bins=(edges, edges))
    smooth = hist.copy()
    smooth[1:-1, 1:-1] = sum(hist[1 + i:nb - 1 + i, 1 + j:nb - 1 + j]
                             for i in (-1, 0, 1) for j in (-1, 0, 1))
    ix, iy = np.unravel_index(np.argmax(smooth), smooth.shape)
    cx, cy = (edges[ix] + edges[ix + 1]) / 2, (edges[iy] + edges[iy + 1]) / 2
    near = (np.abs(dx - cx) <= 1.5 * binsize) & (np.abs(dy - cy) <= 1.5 * binsize)
    return np.array([dx[near].mean(), dy[near].mean()]), int(near.sum())


def _linear_columns(p, fitgeometry):
    """Design-matrix blocks (2n x k) for the common linear term about the identity."""
    n = len(p)
    x, y = p[:, 0], p[:, 1]
    z = np.zeros(n)
    if fitgeometry == "shift":
        return np.zeros((2 * n, 0))
    if fitgeometry == "rshift":  # small rotation: d(q) = theta * (-y, x)
        return np.column_stack([np.concatenate([-y, x])])
    if fitgeometry == "rscale":  # (a-1)*(x, y) + b*(-y, x)
        return np.column_stack([np.concatenate([x, y]), np.concatenate([-y, x])])
    # general: (m11-1) x + m12 y, m21 x + (m22-1) y
    return np.column_stack([np.concatenate([x, z]), np.concatenate([y, z]),
                            np.concatenate([z, x]), np.concatenate([z, y])])


def _matrix_from(params, fitgeometry):
    if fitgeometry == "shift":
        return np.eye(2)
    if fitgeometry == "rshift":
        t = params[0]
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    if fitgeometry == "rscale":
        a, b = 1 + params[0], params[1]
        return np.array([[a, -b], [b, a]])
    return np.eye(2) + np.array([[params[0], params[1]], [params[2], params[3]]])


class _Model:
    """Current estimate: common matrix/shift, dither and detector shifts."""

    def __init__(self, n_dith, n_det):
        self.matrix = np.eye(2)
        self.shift = np.zeros(2)
        self.dither = np.zeros((n_dith, 2))
        self.detector = np.zeros((n_det, 2))

    def apply(self, p, dith, det):
        return p @ self.matrix.T + self.shift + self.dither[dith] + self.detector[det]


def _solve(p, q, dith, det, active, n_dith, n_det, fitgeometry, model, weights=None):
    """
    One linearised least-squares update of ``model`` from matched pairs p -> q
    (weighted by ``weights``, 1/variance per pair, when given).
    """
    n = len(p)
    pred = model.apply(p, dith, det)
    resid = np.concatenate([q[:, 0] - pred[:, 0], q[:, 1] - pred[:, 1]])
    # Linearise the common term about the current matrix: d(A p) = dA p.
    p_lin = p @ model.matrix.T
    blocks = [_linear_columns(p_lin, fitgeometry)]
    names = [("lin", i) for i in range(blocks[0].shape[1])]
    ex, ey = np.concatenate([np.ones(n), np.zeros(n)]), np.concatenate([np.zeros(n), np.ones(n)])
    blocks.append(np.column_stack([ex, ey]))
    names += [("T", 0), ("T", 1)]
    for d in range(1, n_dith):
        m = np.tile(dith == d, 2)
        blocks.append(np.column_stack([ex * m, ey * m]))
        names += [("t", (d, 0)), ("t", (d, 1))]
    act = [k for k in range(n_det) if active[k]]
    for k in act:
        m = np.tile(det == k, 2)
        blocks.append(np.column_stack([ex * m, ey * m]))
        names += [("u", (k, 0)), ("u", (k, 1))]
    a = np.column_stack(blocks)
    b = resid
    if weights is not None:
        root = np.sqrt(np.tile(weights / np.mean(weights), 2))
        a, b = a * root[:, None], b * root
    if act and len(act) == n_det:
        # Every detector has its own offset: pin their mean to zero (T is the common shift).
        w = 1e3
        for axis in (0, 1):
            row = np.zeros(a.shape[1])
            for j, nm in enumerate(names):
                if nm[0] == "u" and nm[1][1] == axis:
                    row[j] = w
            a = np.vstack([a, row])
            b = np.append(b, 0.0)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    lin = np.array([sol[j] for j, nm in enumerate(names) if nm[0] == "lin"])
    if fitgeometry != "shift":
        dmat = _matrix_from(lin, fitgeometry)
        model.matrix = dmat @ model.matrix
    for j, nm in enumerate(names):
        kind, idx = nm
        if kind == "T":
            model.shift[idx] += sol[j]
        elif kind == "t":
            model.dither[idx[0], idx[1]] += sol[j]
        elif kind == "u":
            model.detector[idx[0], idx[1]] += sol[j]
    for k in range(n_det):
        if not active[k]:
            model.detector[k] = 0.0


def _robust_sigma(r):
    """Per-axis scatter from the median absolute deviation (Gaussian-equivalent)."""
    s = 1.4826 * np.median(np.abs(r - np.median(r, axis=0)), axis=0)
    return np.maximum(s, 1e-6)


def _stats(r):
    if len(r) == 0:
        return {"nmatch": 0, "rmse": 0.0, "mae": 0.0}
    d = np.hypot(r[:, 0], r[:, 1])
    return {"nmatch": int(len(r)), "rmse": float(np.sqrt(np.mean(d**2))), "mae": float(np.mean(d))}


def joint_fit(positions, dither_ids, detector_ids, ref_xy, params=None, ref_err=None,
              ref_group=None):
    """
    Fit the visit model to detections matched to a reference catalog.

    Parameters
    ----------
    positions : list of ndarray (n_i, 2)
        Per image, detection positions in the visit tangent plane through the
        image's current WCS, arcsec.
    dither_ids, detector_ids : list of hashable
        Per image, its dither (exposure) and detector.
    ref_xy : ndarray (m, 2)
        Reference catalog positions in the same plane, arcsec.
    params : JointParameters, optional
    ref_err : ndarray (m,), optional
        Position error of each reference source at the images' epoch, arcsec per
        axis. Each match is then weighted by 1 / (intrinsic scatter^2 + error^2),
        the intrinsic scatter (the galaxy-to-galaxy part of the residuals) measured
        from the residuals at each iteration. Without it all matches weigh the same.
    ref_group : ndarray (m,) of int, optional
        The catalog each reference source comes from: the intrinsic scatter is then
        measured per catalog (an older, noisier catalog weighs less), wherever a
        catalog has at least 10 matches.

    Returns
    -------
    result : `JointFitResult`
        Never raises for a failed fit: ``result.status`` says why.
    """
    params = params or JointParameters()
    n_img = len(positions)
    dith_names = list(dict.fromkeys(dither_ids))
    det_names = list(dict.fromkeys(detector_ids))
    n_dith, n_det = len(dith_names), len(det_names)

    # Drop confused sources (closer than `separation` to another of the same catalog).
    ref_xy = np.asarray(ref_xy, float).reshape(-1, 2)
    isolated = _isolated(ref_xy, params.separation)
    ref_xy = ref_xy[isolated]
    groups = (np.zeros(len(isolated), int) if ref_group is None
              else np.asarray(ref_group, int))[isolated]
    n_groups = int(groups.max()) + 1 if len(groups) else 1
    weighted = (ref_err is not None and np.any(np.asarray(ref_err) > 0)) or n_groups > 1
    ref_var = (np.nan_to_num(np.asarray(ref_err, float)[isolated]) ** 2 if ref_err is not None
               else np.zeros(len(groups)))
    # Intrinsic scatter per catalog: a first guess, measured after each solve.
    sig_int2 = np.full(n_groups, (params.tolerance / 5.0) ** 2)
    if len(ref_xy) < params.minobj:
        return JointFitResult(status=f"FAILED: only {len(ref_xy)} usable reference sources "
                                     f"(abs_minobj {params.minobj})")
    p_list, img_list = [], []
    for i, xy in enumerate(positions):
        xy = np.asarray(xy, float).reshape(-1, 2)
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        xy = xy[_isolated(xy, params.separation)]
        p_list.append(xy)
        img_list.append(np.full(len(xy), i))
    p = np.concatenate(p_list) if p_list else np.zeros((0, 2))
    img = np.concatenate(img_list).astype(int) if img_list else np.zeros(0, int)
    if len(p) < params.minobj:
        return JointFitResult(status=f"FAILED: only {len(p)} usable detections "
                                     f"(abs_minobj {params.minobj})")
    dith = np.array([dith_names.index(dither_ids[i]) for i in img], int)
    det = np.array([det_names.index(detector_ids[i]) for i in img], int)

    model = _Model(n_dith, n_det)
    if params.use2dhist:
        offset, npeak = offset_from_2dhist(p, ref_xy, params.searchrad)
        log.debug("2-D histogram offset %.4f, %.4f arcsec (%d in peak)", *offset, npeak)
        model.shift = offset
    tree = cKDTree(ref_xy)
    force_all = params.detector_terms == "all" and n_det > 1
    active = np.full(n_det, force_all)
    tol = params.tolerance
    chi2_limit = -2.0 * np.log(_two_sided_p(params.significance))
    prev = None
    for _ in range(params.max_iter):
        q_pred = model.apply(p, dith, det)
        dist, ref_idx = tree.query(q_pred, distance_upper_bound=tol)
        ok = np.isfinite(dist)
        # One detection per reference source per image: keep the closest.
        order = np.lexsort((dist, ref_idx, img))
        pair = np.stack([img[order], ref_idx[order]], axis=1)
        first = np.ones(len(order), bool)
        first[1:] = np.any(pair[1:] != pair[:-1], axis=1)
        unique = np.zeros(len(p), bool)
        unique[order[first]] = True
        ok &= unique
        if ok.sum() < params.minobj:
            return JointFitResult(status=f"FAILED: not enough matches ({int(ok.sum())}, "
                                         f"abs_minobj {params.minobj}) within {tol:.3g} arcsec")
        sel = np.flatnonzero(ok)
        q = ref_xy[ref_idx[sel]]
        use = np.ones(len(sel), bool)
        for _ in range(max(params.nclip, 0) + 1):
            s = sel[use]
            ref_s = ref_idx[s]
            w = 1.0 / (sig_int2[groups[ref_s]] + ref_var[ref_s]) if weighted else None
            _solve(p[s], q[use], dith[s], det[s], active, n_dith, n_det, params.fitgeometry, model,
                   weights=w)
            r = q - model.apply(p[sel], dith[sel], det[sel])
            s_axis = _robust_sigma(r[use])
            if weighted:
                # Residual scatter = intrinsic (+ centroid) scatter and the reference errors.
                g_used = groups[ref_idx[sel][use]]
                for g in range(n_groups):
                    m = g_used == g
                    if m.sum() < 10:
                        m = np.ones(len(g_used), bool)
                    s_g = _robust_sigma(r[use][m])
                    ref_part = float(np.median(ref_var[ref_idx[sel][use][m]]))
                    sig_int2[g] = max(float(np.mean(s_g**2)) - ref_part, 0.0005**2)
                log.debug("intrinsic scatter per catalog (mas): %s, matches %s",
                          np.sqrt(sig_int2) * 1e3, np.bincount(g_used, minlength=n_groups))
            # Robust clipping: normalised 2-D residual beyond `sigma` (a chi-square cut, so
            # a Gaussian core loses ~1% at 3 sigma; aggressive RMSE cuts would bias the scatter).
            new_use = np.hypot(r[:, 0] / s_axis[0], r[:, 1] / s_axis[1]) <= params.sigma
            if params.nclip <= 0 or np.array_equal(new_use, use) or new_use.sum() < params.minobj:
                break
            use = new_use
        # Residual scatter per axis (robust) and per-detector significance.
        resid = r[use]
        s_axis = _robust_sigma(resid)
        if params.detector_terms is True and n_det > 1:
            new_active = active.copy()
            for k in range(n_det):
                m = det[sel][use] == k
                if m.sum() < 3:
                    new_active[k] = False
                    continue
                # Mean residual of detector k with its own term put back.
                mean_k = resid[m].mean(axis=0) + model.detector[k]
                n_unique = len(np.unique(ref_idx[sel][use][m]))
                chi2 = np.sum((mean_k / (s_axis / np.sqrt(n_unique))) ** 2)
                new_active[k] = chi2 > chi2_limit
            if not np.array_equal(new_active, active):
                active = new_active
                if not active.any():
                    model.detector[:] = 0.0
                state = None
            else:
                state = (tuple(sel[use]), tuple(active))
        else:
            state = (tuple(sel[use]), tuple(active))
        # Tighten the matching radius towards a few times the scatter.
        tol = float(min(params.tolerance, max(5.0 * np.max(s_axis), 0.01)))
        if state is not None and state == prev:
            break
        prev = state

    # Final statistics on the matched, unclipped pairs.
    s = sel[use]
    r = ref_xy[ref_idx[s]] - model.apply(p[s], dith[s], det[s])
    result = JointFitResult(status="SUCCESS", matrix=model.matrix.copy(), shift=model.shift.copy())
    result.dither_shift = {dith_names[d]: model.dither[d].copy() for d in range(n_dith)}
    result.detector_shift = {det_names[k]: model.detector[k].copy() for k in range(n_det)}
    result.detector_significant = {det_names[k]: bool(active[k]) for k in range(n_det)}
    for i in range(n_img):
        d_i, k_i = dith_names.index(dither_ids[i]), det_names.index(detector_ids[i])
        result.image_shift.append(model.shift + model.dither[d_i] + model.detector[k_i])
        result.image_stats.append(_stats(r[img[s] == i]))
    result.dither_stats = {dith_names[d]: _stats(r[dith[s] == d]) for d in range(n_dith)}
    result.detector_stats = {det_names[k]: _stats(r[det[s] == k]) for k in range(n_det)}
    tot = _stats(r)
    result.nmatch, result.rmse, result.mae = tot["nmatch"], tot["rmse"], tot["mae"]
    m = result.matrix
    result.rotation = float(np.rad2deg(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))
    result.scale = float(np.sqrt(abs(np.linalg.det(m))))
    log.info("Joint fit: %d matches, RMSE %.2f mas, rotation %.5f deg, scale %.7f, "
             "shift (%.2f, %.2f) mas, detector terms: %s", result.nmatch, 1e3 * result.rmse,
             result.rotation, result.scale, *(1e3 * result.shift),
             ", ".join(k for k, v in result.detector_significant.items() if v) or "none")
    return result


def _two_sided_p(nsigma):
    from math import erfc, sqrt

    return erfc(nsigma / sqrt(2.0))
