"""Matching for the joint fit: detections and reference sources grouped into sources.

Every source of a visit has an unknown true position, observed by each of its detections and by
its reference source when it has one. These functions find them: the confusion rule (sources with
a neighbour of their own catalog are left out), the 2-D histogram of offsets that starts the fit,
and the sources themselves (connected groups of matches with at most one detection per image and
one reference source), within each channel.
"""

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["offset_from_2dhist"]

def _isolated(xy, separation):
    """Mask of points with no other point closer than ``separation``."""
    if len(xy) < 2 or separation <= 0:
        return np.ones(len(xy), bool)
    tree = cKDTree(xy)
    pairs = tree.query_pairs(separation, output_type="ndarray")
    keep = np.ones(len(xy), bool)
    keep[pairs.ravel()] = False
    return keep


def offset_from_2dhist(xy, ref_xy, searchrad, binsize=None, tree=None):
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
    tree : cKDTree, optional
        ``cKDTree(ref_xy)``, for a caller that histograms many catalogs against one reference.

    Returns
    -------
    offset : ndarray (2,)
        Mean of the offsets within one bin of the (3x3-smoothed) peak.
    npeak : int
        Number of offsets there.
    """
    binsize = binsize or searchrad / 25.0
    tree = tree if tree is not None else cKDTree(ref_xy)
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


@dataclass
class _Observations:
    """
    The matched observations of one iteration, grouped by source ("component").

    ``det``: indices of detections, ``det_comp`` their source; ``ref``: indices of
    reference sources, ``ref_comp`` their source. A source's true position is an
    unknown of the fit; it is eliminated exactly by centring each source's
    observations on their weighted mean (the Schur complement), so only the
    visit terms remain as columns.
    """

    det: np.ndarray
    det_comp: np.ndarray
    ref: np.ndarray
    ref_comp: np.ndarray
    n_comp: int
    comp_chan: np.ndarray = None

    def __post_init__(self):
        if self.comp_chan is None:
            self.comp_chan = np.zeros(self.n_comp, int)

    @property
    def ref_chan(self):
        return self.comp_chan[self.ref_comp]

    def subset(self, keep_det, keep_ref):
        return _Observations(self.det[keep_det], self.det_comp[keep_det], self.ref[keep_ref],
                             self.ref_comp[keep_ref], self.n_comp, self.comp_chan)


def _components(pred, img, n_img, ref_xy, tol_ref, tol_link, tree):
    """
    Group detections (and reference sources) into sources.

    Edges: each detection to its nearest reference source within ``tol_ref``
    (one detection per image per reference source, the closest), and pairs of
    detections of different images within ``tol_link``. A connected group is a
    source when it has at most one reference source and one detection per
    image; anything else is confused and left out.
    """
    n = len(pred)
    m = len(ref_xy) if ref_xy is not None else 0
    src, dst = [], []
    if m and tol_ref > 0:
        dist, ref_idx = tree.query(pred, distance_upper_bound=tol_ref)
        ok = np.isfinite(dist)
        order = np.lexsort((dist, ref_idx, img))
        pair = np.stack([img[order], ref_idx[order]], axis=1)
        first = np.ones(n, bool)
        first[1:] = np.any(pair[1:] != pair[:-1], axis=1)
        unique = np.zeros(n, bool)
        unique[order[first]] = True
        ok &= unique
        src.append(np.flatnonzero(ok))
        dst.append(n + ref_idx[ok])
    if tol_link > 0 and n > 1:
        pairs = cKDTree(pred).query_pairs(tol_link, output_type="ndarray")
        pairs = pairs[img[pairs[:, 0]] != img[pairs[:, 1]]]
        src.append(pairs[:, 0])
        dst.append(pairs[:, 1])
    src = np.concatenate(src) if src else np.zeros(0, int)
    dst = np.concatenate(dst) if dst else np.zeros(0, int)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n + m, n + m))
    n_comp, label = connected_components(graph, directed=False)
    det_label, ref_label = label[:n], label[n:]
    size = np.bincount(label, minlength=n_comp)
    n_ref = np.bincount(ref_label, minlength=n_comp)
    twice = np.zeros(n_comp, bool)
    key, count = np.unique(det_label.astype(np.int64) * n_img + img, return_counts=True)
    twice[(key[count > 1] // n_img).astype(int)] = True
    good = (size >= 2) & (n_ref <= 1) & ~twice
    det = np.flatnonzero(good[det_label])
    ref = np.flatnonzero(good[ref_label]) if m else np.zeros(0, int)
    # Renumber the kept sources 0..n_kept-1.
    new = np.cumsum(good) - 1
    return _Observations(det, new[det_label[det]], ref, new[ref_label[ref]], int(good.sum()))


def _components_by_channel(pred, img, chan, n_chan, n_img, ref_xy, tol_ref, tol_link, tree):
    """`_components` within each channel: a source's detections are linked within its channel
    only, and each channel's source has its own tie to the reference."""
    if n_chan == 1:
        return _components(pred, img, n_img, ref_xy, tol_ref, tol_link, tree)
    det, comp, ref, rcomp, cchan, offset = [], [], [], [], [], 0
    for c in range(n_chan):
        idx = np.flatnonzero(chan == c)
        if not len(idx):
            continue
        o = _components(pred[idx], img[idx], n_img, ref_xy, tol_ref, tol_link, tree)
        det.append(idx[o.det])
        comp.append(o.det_comp + offset)
        ref.append(o.ref)
        rcomp.append(o.ref_comp + offset)
        cchan.append(np.full(o.n_comp, c))
        offset += o.n_comp

    def cat(parts):
        return np.concatenate(parts).astype(int) if parts else np.zeros(0, int)

    return _Observations(cat(det), cat(comp), cat(ref), cat(rcomp), offset, cat(cchan))


def _dither_offsets(p, dith, n_dith, searchrad):
    """Start values of the dither terms: 2-D histogram of each dither against the first."""
    out = np.zeros((n_dith, 2))
    first = p[dith == 0]
    for d in range(1, n_dith):
        mine = p[dith == d]
        if len(mine) and len(first):
            offset, _ = offset_from_2dhist(mine, first, searchrad)
            out[d] = offset
    return out


def _n_matched(obs):
    """Detections matched to a reference source (what ``minobj`` counts, as in tweakwcs)."""
    has_ref = np.zeros(obs.n_comp, bool)
    has_ref[obs.ref_comp] = True
    return int(has_ref[obs.det_comp].sum())
