"""A camera model learned from the survey: each detector's residual distortion, shared by every
visit and filter of a run and fitted together with them.

Each visit's joint fit (`ceers_steps.fitting.jointfit`) takes shifts, rotations and scales per
visit, dither and detector. What it leaves is the detector's distortion beyond the pipeline's
reference files: a smooth field of a few mas, the same wherever the detector points. Every
visit sees each detector against other reference sources and, through its dithers, sees the
same galaxy at several places on the detector; together they measure the field, as Rubin's
gbdes/WCSFit does with a per-device model shared by all exposures.

The model is one `~ceers_steps.core.distortion.DetectorDistortion` per detector (Legendre terms
of degree 2 and 3 in its full-frame pixels, none of which a shift, rotation or scale can take).
The fit alternates, until the fields change by less than ``tol_mas``:

1. every visit's joint fit (screening, judgement, detector terms: what the step does) on
   its images' WCSs with the current fields inserted (`insert_distortion`);
2. one weighted least-squares step for every detector's field at once, on every matched
   detection of every visit, with each visit's terms held at their fit. As in the joint fit,
   each source's true position is an unknown eliminated exactly: a galaxy's offset from its
   reference position counts once, however many dithers see it, and its detections on
   different parts of a detector tie the field's shape at the centroid noise.

Since the fields have no linear part, the visits' terms and the fields hardly trade off, and
the alternation settles in two or three rounds. The fields' covariance is the sandwich
clustered by reference source (every observation of one galaxy in one cluster); a
detector's field is kept only where the data support it: its chi-square against that
covariance beyond a ``significance``-sigma Gaussian event (the test of the detector terms),
first for all its terms, then for the degree-3 terms alone (dropped when they are not).
"""

from dataclasses import dataclass, field

import numpy as np

from ..core.distortion import (
    TERMS,
    DetectorDistortion,
    distortion_basis,
    has_distortion,
    insert_distortion,
    subarray_origin,
)
from ..core.logs import get_logger
from ..core.wcs_utils import pixel_axes
from .absolute import _joint_setup, _judged_fit
from .detector_terms import _two_sided_p
from .least_squares import _source_means
from .source_matching import _isolated

__all__ = ["DistortionFit", "fit_distortion"]

log = get_logger(__name__)

_K = len(TERMS)
#: Degree-3 terms of `TERMS` (tested on their own).
_CUBIC = np.array([i + j == 3 for i, j in TERMS])
#: Fewest matched reference sources on a detector for its field to be fitted (14 unknowns).
MIN_SOURCES = 50
#: Cells per axis of the residual maps (`DistortionFit.maps`).
MAP_CELLS = 8


@dataclass
class DistortionFit:
    """
    Result of `fit_distortion`.

    Attributes
    ----------
    distortions : dict
        Detector -> `~ceers_steps.core.distortion.DetectorDistortion` (zero where not
        significant or not measured; ``meta`` says which and from what).
    maps : dict
        Detector -> the binned residuals on the detector (`MAP_CELLS` x `MAP_CELLS` cells):
        ``x``, ``y`` cell centres (full-frame pixels), ``before`` and ``after`` (n, 2): the
        mean offset the data ask for in the cell (reference minus aligned detection, mas,
        along the detector's pixel axes) before any field and after the last, ``n``
        detections per cell.
    iterations : list of float
        Largest change of a field per round (RMS over the detector, mas).
    status : str
        ``"SUCCESS"`` or why nothing was fitted.
    """

    distortions: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)
    iterations: list = field(default_factory=list)
    status: str = "SUCCESS"

    @property
    def success(self):
        return self.status == "SUCCESS"

    @property
    def fitted(self):
        """Detector -> its field, for the detectors whose field is not zero."""
        return {d: v for d, v in self.distortions.items() if not v.is_zero}


def fit_distortion(visits, refcats, params, significance=None, max_iter=6, tol_mas=0.05,
                   provenance=None):
    """
    Fit each detector's residual distortion from every visit of a run; insert it in every
    image's WCS.

    Parameters
    ----------
    visits : list of list of AlignImage
        The images of each visit (one or several filters: each is fitted as the step fits it).
        Their WCSs are replaced by the same WCSs with the fitted field inserted (or left as
        they are where the fit failed); ``original_wcs`` is not touched.
    refcats : list of Table
        Each visit's reference catalog (at its epoch); None leaves that visit out.
    params : AbsoluteParameters
        The absolute fit's parameters (the visits' fits, matching, clipping).
    significance : float, optional
        Sigma of the significance test (default ``params.significance``).
    max_iter : int
        Most rounds of the alternation.
    tol_mas : float
        Stop when no field changes by more than this (RMS over the detector, mas).
    provenance : dict, optional
        Added to every field's ``meta`` (e.g. the reference catalog's name).

    Returns
    -------
    DistortionFit
        Never raises for a fit that cannot be made: ``status`` says why.
    """
    significance = params.significance if significance is None else significance
    pairs = [(list(v), r) for v, r in zip(visits, refcats, strict=True) if v and r is not None]
    carrying = [im.name for v, _ in pairs for im in v if has_distortion(im.model.meta.wcs)]
    if carrying:
        return DistortionFit(status=f"FAILED: {len(carrying)} input image(s) already carry a "
                             f"residual distortion (e.g. {carrying[0]}): fit the inputs without one")
    if not pairs:
        return DistortionFit(status="FAILED: no visit with a reference catalog")
    start = {id(im): im.model.meta.wcs for v, _ in pairs for im in v}
    # One image per detector gives its pixel scale (the same in every image of it).
    first = {im.key.detector: im for v, _ in pairs for im in reversed(v)}
    scale = {det: _pixel_scale(im) for det, im in first.items()}
    detectors = sorted(scale)
    slot = {d: k for k, d in enumerate(detectors)}
    coeffs = np.zeros((len(detectors), 2 * _K))
    active = np.ones((len(detectors), 2 * _K), bool)
    result = DistortionFit()
    for round_ in range(max_iter):
        _insert(pairs, start, coeffs, detectors, slot, scale)
        system = _System(len(detectors))
        for images, ref in pairs:
            _add_visit(system, images, ref, params, slot)
        if system.n_rows == 0:
            _insert(pairs, start, np.zeros_like(coeffs), detectors, slot, scale)
            return DistortionFit(status="FAILED: no visit's joint fit succeeded")
        if round_ == 0:
            result.maps = {d: {"before": m["before"]} for d, m in system.maps(detectors, scale).items()}
        delta, cov, active, n_src = system.solve(coeffs, active, significance)
        change = max(_rms_mas(delta[k], scale[d]) for d, k in slot.items())
        coeffs = coeffs + delta
        result.iterations.append(change)
        log.info("fit_distortion: round %d: largest change of a detector's field %.3f mas",
                 round_ + 1, change)
        if change < tol_mas:
            break
    for d, after in system.maps(detectors, scale).items():
        result.maps.setdefault(d, {}).update(after=after["before"], x=after["x"], y=after["y"],
                                            n=after["n"])
    _insert(pairs, start, coeffs, detectors, slot, scale)
    visit_names = sorted({im.key.visit for v, _ in pairs for im in v})
    filters = sorted({im.key.filter for v, _ in pairs for im in v})
    for d, k in slot.items():
        cubic = bool(np.any(active[k][np.tile(_CUBIC, 2)]))
        kept = bool(np.any(active[k]))
        meta = {"visits": visit_names, "filters": filters, "n_visits": len(visit_names),
                "n_sources": int(n_src[k]), "n_detections": int(system.n_det[k]),
                "significant": kept, "max_degree": 3 if cubic else (2 if kept else 0),
                "significance": float(significance), "iterations": len(result.iterations),
                **(provenance or {})}
        if not kept:
            meta["reason"] = ("too few matched reference sources" if n_src[k] < MIN_SOURCES
                              else "not significant")
        c = cov[2 * _K * k:2 * _K * (k + 1), 2 * _K * k:2 * _K * (k + 1)]
        result.distortions[d] = DetectorDistortion(d, coeffs[k].reshape(2, _K), cov=c,
                                                   pixel_scale=scale[d], meta=meta)
    return result


def _threshold(significance, p, n):
    """
    The chi-square of ``p`` terms beyond which they are significant: a ``significance``-sigma
    Gaussian event, for a covariance estimated from ``n`` clusters (Hotelling's T^2: an
    F(p, n - p) law, the chi-square's for many clusters; with few, a field that is noise
    would pass the chi-square's test too often).
    """
    from scipy.stats import chi2, f

    alpha = _two_sided_p(significance)
    if n - p < 1:
        return float("inf")
    if n > 100 * p:
        return float(chi2.isf(alpha, p))
    return float(p * (n - 1) / (n - p) * f.isf(alpha, p, n - p))


def _pixel_scale(im):
    """The image's pixel scale at its centre, arcsec."""
    from .images import visit_plane

    plane = visit_plane([im])
    jac = _jacobian(im, plane)
    return float(np.sqrt(abs(np.linalg.det(jac))))


def _jacobian(im, plane, x=1023.5, y=1023.5):
    """d(plane position) / d(pixel) of an image at ``(x, y)`` (arcsec per pixel)."""
    ra, dec = im.model.meta.wcs(np.array([x - 0.5, x + 0.5, x, x]),
                                np.array([y, y, y - 0.5, y + 0.5]), with_bounding_box=False)
    px, py = plane.world_to_tanp(ra, dec)
    return np.array([[px[1] - px[0], px[3] - px[2]], [py[1] - py[0], py[3] - py[2]]])


def _insert(pairs, start, coeffs, detectors, slot, scale):
    """Every image's starting WCS with its detector's current field inserted."""
    for images, _ in pairs:
        for im in images:
            d = im.key.detector
            field_ = DetectorDistortion(d, coeffs[slot[d]].reshape(2, _K), pixel_scale=scale[d])
            im.set_wcs(insert_distortion(start[id(im)], field_, subarray_origin(im.model)))


def _rms_mas(c, pixel_scale):
    return max(DetectorDistortion("", c.reshape(2, _K), pixel_scale=pixel_scale).rms_mas())


class _System:
    """The least-squares problem of every detector's field, visit by visit."""

    def __init__(self, n_det):
        self.n = n_det * 2 * _K
        self.normal = np.zeros((self.n, self.n))
        self.rhs = np.zeros(self.n)
        self.blocks = []  # per visit: rows, rhs, clusters (for the sandwich)
        self.n_det = np.zeros(n_det, int)
        self.refs = [set() for _ in range(n_det)]
        self.cells = []  # per detection with a reference: detector, x, y, offset (mas, pixel axes)
        self.n_rows = 0
        self._sky_ids = {}  # a reference source's sky position (10 mas cells) -> its cluster
        self._n_ids = 0  # clusters so far (reference sources and sources without one)

    def sky_ids(self, ra, dec):
        """
        One id per reference source of the run, by its sky position: the same galaxy seen by
        several visits or filters (each fitted with its own catalog at its epoch) is one
        cluster, its offset from the reference one error, not one per fit.
        """
        keys = zip(np.round(np.asarray(ra) * 3.6e5).astype(np.int64),
                   np.round(np.asarray(dec) * 3.6e5).astype(np.int64), strict=True)
        out = []
        for k in keys:
            if k not in self._sky_ids:
                self._sky_ids[k] = self._n_ids
                self._n_ids += 1
            out.append(self._sky_ids[k])
        return np.array(out, int)

    def new_ids(self, n):
        """Ids of ``n`` clusters of their own (sources without a reference source)."""
        self._n_ids += n
        return np.arange(self._n_ids - n, self._n_ids)

    def add(self, rows, rhs, clusters):
        self.normal += rows.T @ rows
        self.rhs += rows.T @ rhs
        self.blocks.append((rows, rhs, clusters))
        self.n_rows += len(rows)

    def solve(self, coeffs, active, significance):
        """
        The update of every field (held at zero where not significant), its sandwich
        covariance and the matched reference sources per detector.
        """
        n_src = np.array([len(r) for r in self.refs])
        active = active.copy()
        active[n_src < MIN_SOURCES] = False
        delta = self._restricted(coeffs, active)
        cov = self._sandwich(delta, active)
        # The test on each detector's whole field, then on its degree-3 terms.
        cubic = np.tile(_CUBIC, 2)
        for k in range(len(n_src)):
            cols = np.arange(2 * _K * k, 2 * _K * (k + 1))
            total = (coeffs + delta)[k]
            for mask in (np.ones(2 * _K, bool), cubic):
                use = mask & active[k]
                if not use.any():
                    continue
                c = cov[np.ix_(cols[use], cols[use])]
                value = float(total[use] @ np.linalg.pinv(c, hermitian=True) @ total[use])
                if not value > _threshold(significance, int(use.sum()), int(n_src[k])):
                    active[k] &= ~mask
        delta = self._restricted(coeffs, active)
        cov = self._sandwich(delta, active)
        return delta, cov, active, n_src

    def _restricted(self, coeffs, active):
        """The step with the inactive terms set to zero (their current value taken back)."""
        a = active.ravel()
        step = -coeffs.ravel().copy()
        step[a] = 0.0
        if a.any():
            rhs = self.rhs[a] - self.normal[np.ix_(a, ~a)] @ step[~a]
            step[a] = np.linalg.lstsq(self.normal[np.ix_(a, a)], rhs, rcond=None)[0]
        return step.reshape(coeffs.shape)

    def _sandwich(self, delta, active):
        a = active.ravel()
        cov = np.zeros((self.n, self.n))
        if not a.any():
            return cov
        bread = np.linalg.pinv(self.normal[np.ix_(a, a)], hermitian=True)
        step = delta.ravel()
        # Scores summed per cluster over every fit of the run (a galaxy in several visits or
        # filters is one cluster).
        summed = np.zeros((self._n_ids, a.sum()))
        for rows, rhs, clusters in self.blocks:
            np.add.at(summed, clusters, rows[:, a] * (rhs - rows @ step)[:, None])
        used = np.any(summed != 0.0, axis=1)
        meat = summed[used].T @ summed[used]
        g = max(int(used.sum()), 2)
        cov[np.ix_(a, a)] = bread @ meat @ bread * (g / (g - 1))
        return cov

    def maps(self, detectors, scale):
        """Binned offsets the data ask for, per detector (`DistortionFit.maps`)."""
        if not self.cells:
            return {}
        k, x, y, off = (np.concatenate(c) for c in zip(*self.cells, strict=True))
        edges = np.linspace(0.0, 2048.0, MAP_CELLS + 1)
        centres = (edges[:-1] + edges[1:]) / 2.0 - 0.5
        gx, gy = (g.ravel() for g in np.meshgrid(centres, centres))
        out = {}
        for j, d in enumerate(detectors):
            m = k == j
            ix = np.clip(np.digitize(x[m], edges) - 1, 0, MAP_CELLS - 1)
            iy = np.clip(np.digitize(y[m], edges) - 1, 0, MAP_CELLS - 1)
            cell = iy * MAP_CELLS + ix
            n = np.bincount(cell, minlength=MAP_CELLS**2)
            mean = np.full((MAP_CELLS**2, 2), np.nan)
            for a in (0, 1):
                s = np.bincount(cell, off[m][:, a], minlength=MAP_CELLS**2)
                mean[:, a] = np.where(n > 0, s / np.maximum(n, 1), np.nan)
            out[d] = {"x": gx, "y": gy, "before": mean, "n": n}
        return out


def _add_visit(system, images, ref, params, slot):
    """One visit's joint fit and its rows of the fields' least-squares problem."""
    fitted = _visit_fit(images, ref, params)
    if fitted is None:
        return
    fit, kept, positions, separation, plane = fitted
    st = fit._state
    pix = _fit_pixels(images, kept, positions, separation)
    if len(pix) != len(st["p"]):  # the fit's detections must be these, in this order
        raise RuntimeError(f"fit_distortion: {len(pix)} detections, the fit has {len(st['p'])}")
    # Per fitted image: plane offset per pixel offset, after the image's linear term.
    gain = np.array([fit.image_matrix[k] @ _jacobian(images[i], plane)
                     for k, i in enumerate(kept)])
    axes = np.array([pixel_axes(images[i].model.meta.wcs, plane, 1023.5, 1023.5) for i in kept])
    det_slot = np.array([slot[images[i].key.detector] for i in kept])
    obs, model, w_det, w_ref = st["obs"], st["model"], st["w_det"], st["w_ref"]
    p, dith, det, chan, ref_xy, img = (st[k] for k in ("p", "dith", "det", "chan", "ref_xy",
                                                      "img"))
    di, ci, ri, rci = obs.det, obs.det_comp, obs.ref, obs.ref_comp
    v = model.apply(p[di], dith[di], det[di], chan[di])
    q = ref_xy[ri] if len(ri) else np.zeros((0, 2))
    im_k = img[di]
    # The rows' columns: this visit's detectors only (global index of each local column).
    used = np.unique(det_slot[im_k])
    cols = np.concatenate([np.arange(2 * _K * s, 2 * _K * (s + 1)) for s in used])
    jac = _design(distortion_basis(pix[di, 0], pix[di, 1]), gain[im_k],
                  np.searchsorted(used, det_slot[im_k]), len(cols))
    means, _ = _source_means(obs, w_det, w_ref, np.column_stack([v, jac[0], jac[1]]),
                             np.column_stack([q, np.zeros((len(ri), 2 * len(cols)))]))
    sd, sr = np.sqrt(w_det), np.sqrt(w_ref)
    rows, rhs = [], []
    for axis in (0, 1):
        vbar, jbar = means[:, axis], means[:, 2 + axis * len(cols):2 + (axis + 1) * len(cols)]
        rows += [sd[:, None] * (jac[axis] - jbar[ci]), -sr[:, None] * jbar[rci]]
        rhs += [-sd * (v[:, axis] - vbar[ci]), -sr * (q[:, axis] - vbar[rci])]
    full = np.zeros((sum(len(r) for r in rows), system.n))
    full[:, cols] = np.vstack(rows)
    # Clusters: a reference source (by its place on the sky, across the run's fits) and every
    # detection of it; a source without one alone.
    ref_of_comp = np.full(obs.n_comp, -1)
    ref_of_comp[rci] = ri
    sky = np.zeros(len(ref_xy), int)
    if len(ri):
        used_refs = np.unique(ri)
        sky[used_refs] = system.sky_ids(*plane.tanp_to_world(ref_xy[used_refs, 0],
                                                             ref_xy[used_refs, 1]))
    own = system.new_ids(obs.n_comp)
    det_cluster = np.where(ref_of_comp[ci] >= 0, sky[np.maximum(ref_of_comp[ci], 0)], own[ci])
    system.add(full, np.concatenate(rhs), np.concatenate([det_cluster, sky[ri], det_cluster,
                                                          sky[ri]]))
    # Bookkeeping: detections and reference sources per detector; the residual maps
    # (reference minus aligned detection, along the detector's pixel axes, mas).
    has_ref = ref_of_comp[ci] >= 0
    for s in used:
        mine = det_slot[im_k] == s
        system.n_det[s] += int(mine.sum())
        system.refs[s].update(sky[ref_of_comp[ci][mine & has_ref]].tolist())
    offset = ref_xy[ref_of_comp[ci[has_ref]]] - v[has_ref]
    along = 1e3 * np.einsum("nba,nb->na", axes[im_k[has_ref]], offset)
    system.cells.append((det_slot[im_k[has_ref]], pix[di[has_ref], 0], pix[di[has_ref], 1],
                         along))


def _visit_fit(images, ref, params):
    """The visit's joint fit as the step makes it: (fit, kept, positions, separation, plane)."""
    plane, ref_xy, ref_err, ref_group, positions, jp, channels, geometry = _joint_setup(
        images, ref, params)
    try:
        fit, rejected = _judged_fit(images, positions, ref_xy, jp, params, ref_err=ref_err,
                                    ref_group=ref_group, channels=channels, geometry=geometry)
    except Exception as exc:  # noqa: BLE001 - one visit's failure leaves it out only
        log.warning("fit_distortion: %s: visit fit failed (%s: %s); left out",
                    images[0].key.visit_filter, type(exc).__name__, exc)
        return None
    if fit is None or not fit.success or fit._state is None or not fit._state["absolute"]:
        log.warning("fit_distortion: %s: the visit's joint fit did not succeed; left out",
                    images[0].key.visit_filter)
        return None
    kept = [i for i in range(len(images)) if i not in rejected]
    return fit, kept, positions, jp.separation, plane


def _fit_pixels(images, kept, positions, separation):
    """
    Full-frame pixel positions of the joint fit's detections, in its order (each kept
    image's finite, isolated catalog positions, as `joint_fit` takes them).
    """
    pix = []
    for i in kept:
        cat = images[i].inside_catalog()
        xy = positions[i]
        idx = np.flatnonzero(np.all(np.isfinite(xy), axis=1))
        idx = idx[_isolated(xy[idx], separation)]
        origin = subarray_origin(images[i].model)
        pix.append(np.column_stack([np.asarray(cat["x"], float)[idx] + origin[0],
                                    np.asarray(cat["y"], float)[idx] + origin[1]]))
    return np.concatenate(pix) if pix else np.zeros((0, 2))


def _design(basis, gain, local, n_cols):
    """
    d(aligned plane position, per axis) / d(field coefficients) of each detection:
    (2, n, n_cols); ``gain`` (n, 2, 2) plane per pixel, ``local`` its detector's block.
    """
    n = len(basis)
    jac = np.zeros((2, n, n_cols))
    rows = np.arange(n)[:, None]
    cx = 2 * _K * local[:, None] + np.arange(_K)[None, :]
    for axis in (0, 1):
        jac[axis][rows, cx] = gain[:, axis, 0][:, None] * basis
        jac[axis][rows, cx + _K] = gain[:, axis, 1][:, None] * basis
    return jac
