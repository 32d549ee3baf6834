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
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..core.logs import get_logger

__all__ = ["JointFitResult", "JointParameters", "combine_detector_offsets", "joint_fit",
           "offset_from_2dhist", "offsets_significant"]

log = get_logger(__name__)

FITGEOMETRIES = ("shift", "rshift", "rscale", "general")
#: Groups of reference sources of the hold-out validation (`JointFitResult.holdout`).
HOLDOUT_FOLDS = 10


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


@dataclass
class JointFitResult:
    """
    Result of `joint_fit`.

    Attributes
    ----------
    status : str
        ``"SUCCESS"`` or ``"FAILED: <reason>"``.
    matrix : ndarray (2, 2)
        Common linear term ``A`` (of the first channel).
    channel_matrix : dict
        Channel -> its linear term (one entry without channels).
    image_matrix : list of ndarray (2, 2)
        The linear term of each image (its channel's).
    shift : ndarray (2,)
        Common shift ``T`` (first dither), arcsec.
    dither_shift : dict
        Dither id -> shift relative to the first dither, arcsec.
    detector_shift : dict
        Detector -> offset (zero where not significant; fixed offsets included), arcsec.
    detector_significant : dict
        Detector -> whether its offset was kept.
    detector_rotated : bool
        Whether the detectors' own rotations (and scales) were significant, and fitted.
    detector_rotation, detector_scale : dict
        Detector -> its own rotation (deg) and scale about its centre (0 and 1 when
        not fitted), on top of the common linear term.
    image_shift : list of ndarray
        Total shift of each image (``T + t + u``), arcsec: its aligned positions are
        ``image_matrix[i] @ p + image_shift[i]``.
    image_stats, dither_stats, detector_stats : list or dict of dict
        ``nmatch``, ``rmse``, ``mae`` (arcsec) of the matched, unclipped residuals.
    nmatch, rmse, mae : int, float, float
        Totals: matched detections against their reference source (relative fit:
        against the other images' detections of the same source).
    n_linked : int
        Detections used, linked to another image's detection or to a reference source.
    sigma_centroid : float
        Measured centroid scatter of one detection, arcsec per axis (first channel).
    sigma_reference : list of float
        Measured reference scatter per reference catalog (intrinsic offsets and
        catalog errors beyond ``ref_err``), arcsec per axis (first channel).
    channel_sigma_centroid, channel_sigma_reference : dict
        The same per channel.
    rotation : float
        Rotation of ``A``, deg (positive from north through east).
    scale : float
        Scale of ``A``.
    channel_scale : dict
        Channel -> scale of its linear term.
    """

    status: str
    matrix: np.ndarray = field(default_factory=lambda: np.eye(2))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))
    dither_shift: dict = field(default_factory=dict)
    detector_shift: dict = field(default_factory=dict)
    detector_significant: dict = field(default_factory=dict)
    detector_rotated: bool = False
    detector_rotation: dict = field(default_factory=dict)
    detector_scale: dict = field(default_factory=dict)
    image_shift: list = field(default_factory=list)
    image_stats: list = field(default_factory=list)
    dither_stats: dict = field(default_factory=dict)
    detector_stats: dict = field(default_factory=dict)
    nmatch: int = 0
    rmse: float = 0.0
    mae: float = 0.0
    rotation: float = 0.0
    scale: float = 1.0
    n_linked: int = 0
    sigma_centroid: float = 0.0
    sigma_reference: list = field(default_factory=list)
    channel_matrix: dict = field(default_factory=dict)
    image_matrix: list = field(default_factory=list)
    channel_scale: dict = field(default_factory=dict)
    channel_sigma_centroid: dict = field(default_factory=dict)
    channel_sigma_reference: dict = field(default_factory=dict)
    _layout: object = field(default=None, repr=False)
    _cov: np.ndarray = field(default=None, repr=False)
    _dither_of_image: np.ndarray = field(default=None, repr=False)
    _detector_of_image: np.ndarray = field(default=None, repr=False)
    _channel_of_image: np.ndarray = field(default=None, repr=False)
    _channel_names: list = field(default_factory=list, repr=False)
    _detector_channel: dict = field(default_factory=dict, repr=False)
    _fixed_cov: dict = field(default_factory=dict, repr=False)
    _state: dict = field(default=None, repr=False)
    _cov_robust: np.ndarray = field(default=None, repr=False)
    #: Effective degrees of freedom of the reference scatter, and the factor by which the
    #: covariance was widened for them (Student: a scatter measured from few sources).
    dof_reference: float = float("inf")
    small_sample_factor: float = 1.0

    @property
    def success(self):
        return self.status == "SUCCESS"

    def position_covariance(self, image, xy):
        """
        Covariance of image ``image``'s aligned positions, from the fit covariance.

        Parameters
        ----------
        image : int
            Index of the image in the fit's input.
        xy : ndarray (n, 2)
            Points in the visit plane through the image's WCS before the fit
            (e.g. its centre and corners), arcsec.

        Returns
        -------
        ndarray (n, 2, 2)
            Covariance of each point's aligned position, arcsec^2 (NaN where the fit
            has no information on a term of this image).
        """
        xy = np.asarray(xy, float).reshape(-1, 2)
        n = len(xy)
        jac = self._layout.design(xy @ self.image_matrix[image].T,
                                  np.full(n, self._dither_of_image[image]),
                                  np.full(n, self._detector_of_image[image]),
                                  np.full(n, self._channel_of_image[image]))
        jac = np.moveaxis(jac, 1, 0)  # (n, 2, k)
        cov = self._larger(jac)
        fixed = self._fixed_cov.get(int(self._detector_of_image[image]))
        return cov if fixed is None else cov + fixed

    def _larger(self, rows):
        """
        ``rows @ cov @ rows.T`` (rows (..., m, k)) from the model's covariance or the
        cluster-robust one, whichever is the larger (by trace) for these rows.

        The model's (a per-source random offset, centroid noise, each scatter measured)
        is exact when its structure is the sky's and stable from few sources; the
        cluster-robust one holds whatever the same galaxy's observations share (its offset
        in every filter of a multi-channel fit) but is noisy and low from few sources.
        The larger of the two, as Angrist & Pischke advise for robust standard errors.
        """
        rows = np.asarray(rows, float)
        a = rows @ self._cov @ np.swapaxes(rows, -1, -2)
        if self._cov_robust is None:
            return a
        b = rows @ self._cov_robust @ np.swapaxes(rows, -1, -2)
        ta, tb = np.trace(a, axis1=-2, axis2=-1), np.trace(b, axis1=-2, axis2=-1)
        pick = np.isfinite(tb) & (tb > ta)
        return np.where(pick[..., None, None], b, a)

    def terms(self, channel=None):
        """
        The fitted visit terms with their 1-sigma uncertainties, as plain numbers.

        Shifts are on the sky, in mas, ``east`` (RA cos Dec) and ``north``; the
        common shift is the first dither's, each dither's is relative to the
        first, detector offsets sum to zero over the fitted detectors (zero and
        ``fitted: False`` for the others). A relative fit (no reference) has no
        common terms (``common`` is None).

        Parameters
        ----------
        channel : hashable, optional
            With channels: the rotation and scale of this channel's linear term, and
            its detectors only (default: the first channel's terms, every detector).

        Returns
        -------
        dict
            ``common`` (``east``, ``north``, ``err_east``, ``err_north`` mas,
            ``rotation``, ``err_rotation`` deg, ``scale``, ``err_scale``),
            ``dithers`` and ``detectors``: lists of dicts with ``id``, ``east``,
            ``north``, ``err_east``, ``err_north`` (mas; detectors also ``fitted``).
        """
        lay = self._layout
        c = self._channel_names.index(channel) if channel is not None else 0

        def shift(value, rows, extra=None):
            cv = self._larger(rows) if rows is not None else np.zeros((2, 2))
            cv = cv if extra is None else cv + extra
            err = np.sqrt(np.clip(np.diag(cv), 0.0, None))
            # Plane x grows to the west: east is -x.
            return {"east": 0.0 - 1e3 * float(value[0]), "north": 1e3 * float(value[1]) + 0.0,
                    "err_east": 1e3 * float(err[0]), "err_north": 1e3 * float(err[1])}

        def cols(col):
            rows = np.zeros((2, lay.k))
            rows[0, col], rows[1, col + 1] = 1.0, 1.0
            return rows

        def variance(name):
            col = lay.lin_cols[c].get(name)
            if col is None:
                return 0.0
            rows = np.zeros((1, lay.k))
            rows[0, col] = 1.0
            return max(float(self._larger(rows)[0, 0]), 0.0)

        common = None
        if lay.absolute:
            m = self.image_matrix[list(self._channel_of_image).index(c)] if channel is not None \
                else self.matrix
            common = {**shift(self.shift, cols(lay.t_col)), "rotation": _rotation_deg(m),
                      # the rotation column is a small rotation, rad
                      "err_rotation": float(np.rad2deg(np.sqrt(variance("rot")))),
                      "scale": float(np.sqrt(abs(np.linalg.det(m)))),
                      "err_scale": float(np.sqrt(variance("scale")))}
        dithers = [{"id": str(d), **shift(value, cols(lay.dither_col[k]) if k in lay.dither_col
                                          else None)}
                   for k, (d, value) in enumerate(self.dither_shift.items())]
        def own(k, name):
            # The detector's own rotation (arcsec) and scale, about its centre.
            rows = lay.rotation_rows(k)
            err = np.sqrt(np.clip(np.diag(self._larger(rows)), 0.0, None))
            return {"rotated": self.detector_rotated,
                    "rotation": 3600.0 * self.detector_rotation.get(name, 0.0),
                    "err_rotation": float(np.rad2deg(err[0]) * 3600.0) if len(err) else 0.0,
                    "scale": self.detector_scale.get(name, 1.0),
                    "err_scale": float(err[1]) if len(err) > 1 else 0.0}

        detectors = [{"id": str(name), "fitted": bool(self.detector_significant[name]),
                      **shift(value, lay.detector_rows(k), self._fixed_cov.get(k)), **own(k, name)}
                     for k, (name, value) in enumerate(self.detector_shift.items())
                     if channel is None or self._detector_channel.get(name) == c]
        return {"common": common, "dithers": dithers, "detectors": detectors}

    def detector_covariance(self):
        """
        The detector offsets (n, 2) and the covariance (2n, 2n) of the flattened offsets
        (x0, y0, x1, y1, ...), arcsec, in the order of ``detector_shift`` (what
        `combine_detector_offsets` takes; fixed offsets are not included).
        """
        rows = np.vstack([self._layout.detector_rows(k) for k in range(len(self.detector_shift))])
        offsets = np.array(list(self.detector_shift.values()), float).reshape(-1, 2)
        return offsets, self._larger(rows)

    def position_sigma(self, image, xy):
        """
        1-sigma semi-major axis of the error ellipse of image ``image``'s aligned
        positions at ``xy`` (see `position_covariance`), arcsec.
        """
        out = np.full(len(np.atleast_2d(xy)), np.nan)
        for j, c in enumerate(self.position_covariance(image, xy)):
            if np.all(np.isfinite(c)):
                out[j] = float(np.sqrt(max(np.linalg.eigvalsh(c)[-1], 0.0)))
        return out

    def holdout(self, centres=None, folds=HOLDOUT_FOLDS, seed=0):
        """
        Hold-out validation by reference source: a measured accuracy that does not trust
        the covariance.

        The matched reference sources are split into ``folds`` groups at random; for each
        group the fit is redone without those sources' reference positions (their
        detections still link the images, as any unmatched source's would), one
        Gauss-Newton step from the full solution with its matches (the model is linear
        but for the rotation, ~1e-4 rad), and each held-out detection's residual
        (reference minus aligned position) is kept: every matched source is held out
        once. Two measurements per image follow:

        - the spread of its aligned centre over the fold fits (the delete-a-group
          jackknife: ``(K - 1) / K`` times the sum of squared deviations, clustered by
          reference source whatever the sources share between images and filters), widened
          for its ``K - 1`` degrees of freedom as `joint_fit` widens the model's
          covariance: ``err``, 1-sigma (semi-major axis), the hold-out counterpart of
          `position_sigma`;
        - the mean of its held-out residuals ``m`` over its ``n`` held-out sources: the
          image's error near its centre, plus noise of ``s / sqrt(n)`` per axis (``s``:
          the held-out residuals' scatter about their image's mean, pooled over the
          channel's images). Where that mean is significant (chi-square beyond 13.8,
          p = 0.001, against its noise and ``err``), the image is off by more than the
          sampling of its sources explains (a WCS the model cannot describe), and
          ``err`` becomes ``sqrt(err^2 + |m|^2 - 2 s^2 / n)``.

        Parameters
        ----------
        centres : ndarray (n_img, 2), optional
            Each image's centre in the visit plane through its WCS before the fit,
            arcsec (default: the mean of its matched detections).
        folds : int
            Number of groups (at least 2; fewer when there are fewer sources).
        seed : int
            Seed of the random split (the same split on every call).

        Returns
        -------
        dict or None
            Per image, arrays in the fit's image order: ``err`` (arcsec, NaN where the
            image has no held-out source), ``n`` its held-out sources, ``mean`` (n_img, 2)
            their mean residual and ``sigma`` its noise per axis (arcsec), ``chi2`` of that
            mean. None for a relative fit.
        """
        from scipy.stats import chi2 as chi2_dist
        from scipy.stats import f as f_dist

        st = self._state
        if st is None or not st["absolute"]:
            return None
        obs, model, layout = st["obs"], st["model"], st["layout"]
        p, dith, det, chan, ref_xy, img = (st[k] for k in ("p", "dith", "det", "chan", "ref_xy",
                                                           "img"))
        n_img = len(self._dither_of_image)
        refs = np.unique(obs.ref)
        k_folds = int(min(max(int(folds), 2), len(refs)))
        if k_folds < 2:
            return None
        rng = np.random.default_rng(seed)
        fold_of_ref = np.full(len(ref_xy), -1)
        fold_of_ref[refs] = rng.permutation(len(refs)) % k_folds
        ref_of_comp = np.full(obs.n_comp, -1)
        ref_of_comp[obs.ref_comp] = obs.ref
        det_ref = ref_of_comp[obs.det_comp]
        im_of = img[obs.det]
        if centres is None:
            centres = np.array([p[obs.det[im_of == i]].mean(axis=0) if np.any(im_of == i)
                                else np.zeros(2) for i in range(n_img)])
        centres = np.asarray(centres, float).reshape(n_img, 2)
        ci, di = self._channel_of_image, self._dither_of_image
        ki = self._detector_of_image
        w_det, w_ref = st["w_det"], st["w_ref"]
        resid = np.full((len(obs.det), 2), np.nan)
        moved = np.full((k_folds, n_img, 2), np.nan)
        for f in range(k_folds):
            out = fold_of_ref[obs.ref] == f
            keep = ~out
            o = obs.subset(np.ones(len(obs.det), bool), keep)
            m = model.copy()
            _solve(m, layout, o, p, dith, det, chan, ref_xy, w_det, w_ref[keep], step_only=True)
            mine = np.isin(det_ref, obs.ref[out])
            d = obs.det[mine]
            resid[mine] = ref_xy[det_ref[mine]] - m.apply(p[d], dith[d], det[d], chan[d])
            moved[f] = m.apply(centres, di, ki, ci)
        # The jackknife covariance of each image's aligned centre over the folds.
        dev = moved - moved.mean(axis=0)
        jk = (k_folds - 1) / k_folds * np.einsum("fia,fib->iab", dev, dev)
        widen = f_dist.ppf(0.95, 2, k_folds - 1) / (chi2_dist.ppf(0.95, 2) / 2.0)
        err2 = widen * np.array([max(np.linalg.eigvalsh(c)[-1], 0.0) for c in jk])
        ok = np.all(np.isfinite(resid), axis=1)
        n = np.bincount(im_of[ok], minlength=n_img)
        mean = np.full((n_img, 2), np.nan)
        for a in (0, 1):
            mean[:, a] = np.bincount(im_of[ok], resid[ok, a], minlength=n_img) / np.maximum(n, 1)
        # The held-out scatter per channel, about each image's mean.
        s2 = np.full(n_img, np.nan)
        for c in np.unique(ci):
            rows = ok & (ci[im_of] == c)
            dof = 2.0 * (rows.sum() - len(np.unique(im_of[rows])))
            if dof > 0:
                spread = resid[rows] - mean[im_of[rows]]
                s2[ci == c] = float(np.sum(spread**2) / dof)
        noise2 = s2 / np.maximum(n, 1)
        size2 = np.sum(mean**2, axis=1)
        chi2 = size2 / (noise2 + err2)
        off = np.isfinite(chi2) & (chi2 > chi2_dist.isf(0.001, 2))
        err2 = np.where(off, err2 + np.clip(size2 - 2.0 * noise2, 0.0, None), err2)
        err = np.where(n > 0, np.sqrt(err2), np.nan)
        return {"err": err, "n": n, "mean": mean, "sigma": np.sqrt(noise2), "chi2": chi2}


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


#: Linear columns per geometry beyond the shared rotation, and each one's Jacobian at (x, y).
_EXTRA_COLUMNS = {"shift": (), "rshift": (), "rscale": ("scale",),
                  "general": ("scale", "shear1", "shear2")}


def _column_jacobian(name, x, y):
    return {"rot": (-y, x), "scale": (x, y), "shear1": (x, -y), "shear2": (y, x)}[name]


def _step_matrix(sol, cols, fitgeometry):
    """The 2x2 update of one channel's linear term for a linearised step ``sol``."""
    theta = sol[cols["rot"]] if "rot" in cols else 0.0
    if fitgeometry == "rshift":  # stays a pure rotation
        return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    s = sol[cols["scale"]] if "scale" in cols else 0.0
    if fitgeometry == "rscale":
        return np.array([[1 + s, -theta], [theta, 1 + s]])
    if fitgeometry == "general":
        e1, e2 = sol[cols["shear1"]], sol[cols["shear2"]]
        return np.eye(2) + np.array([[s + e1, e2 - theta], [e2 + theta, s - e1]])
    return np.eye(2)


def _rotation_deg(m):
    return float(np.rad2deg(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))


class _Model:
    """
    Current estimate: linear term per channel, common shift, dither and detector shifts,
    and each detector's own small rotation (and scale) about its centre.
    """

    def __init__(self, n_dith, n_det, n_chan=1):
        self.matrix = np.repeat(np.eye(2)[None], n_chan, axis=0)
        self.shift = np.zeros(2)
        self.dither = np.zeros((n_dith, 2))
        self.detector = np.zeros((n_det, 2))
        self.det_rot = np.zeros(n_det)
        self.det_scale = np.zeros(n_det)
        self.det_centre = np.zeros((n_det, 2))

    def linear(self, p, chan):
        return np.einsum("nij,nj->ni", self.matrix[chan], p)

    def detector_matrix(self, k):
        """The small linear term (2, 2) of detector ``k`` about its centre."""
        r, s = self.det_rot[k], self.det_scale[k]
        return np.array([[s, -r], [r, s]])

    def apply(self, p, dith, det, chan):
        xlin = self.linear(p, chan)
        out = xlin + self.shift + self.dither[dith] + self.detector[det]
        if np.any(self.det_rot) or np.any(self.det_scale):
            d = xlin - self.det_centre[det]
            r, s = self.det_rot[det][:, None], self.det_scale[det][:, None]
            out = out + r * np.column_stack([-d[:, 1], d[:, 0]]) + s * d
        return out

    def copy(self):
        other = _Model(len(self.dither), len(self.detector), len(self.matrix))
        other.matrix, other.shift = self.matrix.copy(), self.shift.copy()
        other.dither, other.detector = self.dither.copy(), self.detector.copy()
        other.det_rot, other.det_scale = self.det_rot.copy(), self.det_scale.copy()
        other.det_centre = self.det_centre.copy()
        return other


@dataclass
class _Layout:
    """
    Columns of the unknowns: the linear terms (one rotation shared by the channels
    whose geometry has one: the telescope's roll; then each channel's scale and
    shears as its geometry asks), common shift ``T``, one shift per dither after
    the first, one per fitted detector. With ``gauge`` the offsets of those
    detectors sum to zero: the last one carries minus the others' sum (its own
    columns do not exist), so ``T`` stays their common part.
    """

    geometries: tuple
    absolute: bool
    n_dith: int
    fitted: tuple = ()
    gauge: tuple = ()
    rotated: tuple = ()
    centres: np.ndarray = None

    def __post_init__(self):
        geoms = self.geometries if self.absolute else ("shift",) * len(self.geometries)
        self.channel_geometry = geoms
        self.lin_cols = [{} for _ in geoms]
        col = 0
        if any(g != "shift" for g in geoms):
            for c, g in enumerate(geoms):
                if g != "shift":
                    self.lin_cols[c]["rot"] = 0
            col = 1
        for c, g in enumerate(geoms):
            for name in _EXTRA_COLUMNS[g]:
                self.lin_cols[c][name] = col
                col += 1
        self.n_lin = col
        self.t_col = col if self.absolute else None
        col += 2 if self.absolute else 0
        self.dither_col = {}
        for d in range(1, self.n_dith):
            self.dither_col[d] = col
            col += 2
        self.detector_col = {}
        last = self.gauge[-1] if self.gauge else None
        for k in self.fitted:
            if k != last:
                self.detector_col[k] = col
                col += 2
        # Detector rotations (and scales where the geometry has one) about each detector's
        # centre, summing to zero over the rotated detectors: the last one carries minus
        # the others' sum, so the common terms keep their meaning.
        self.rot_names = ("rot", "scale") if _EXTRA_COLUMNS[geoms[0]] else ("rot",)
        self.rotation_col = {}
        for k in self.rotated[:-1]:
            self.rotation_col[k] = col
            col += len(self.rot_names)
        self.k = col

    def design(self, xlin, dith, det, chan):
        """Jacobian (2, n, k) of the corrected positions of detections at ``xlin = A p``."""
        n = len(xlin)
        jac = np.zeros((2, n, self.k))
        for c, cols in enumerate(self.lin_cols):
            m = chan == c
            if cols and m.any():
                for name, col in cols.items():
                    jx, jy = _column_jacobian(name, xlin[m, 0], xlin[m, 1])
                    jac[0, m, col], jac[1, m, col] = jx, jy
        if self.t_col is not None:
            jac[0, :, self.t_col] = jac[1, :, self.t_col + 1] = 1.0
        for cols, ids in ((self.dither_col, dith), (self.detector_col, det)):
            for key, c in cols.items():
                m = ids == key
                jac[0, m, c] = jac[1, m, c + 1] = 1.0
        if self.gauge:
            m = det == self.gauge[-1]
            for key in self.gauge[:-1]:
                c = self.detector_col[key]
                jac[0, m, c] = jac[1, m, c + 1] = -1.0
        if self.rotated:
            d = xlin - self.centres[det]
            cols = {"rot": (-d[:, 1], d[:, 0]), "scale": (d[:, 0], d[:, 1])}
            last = self.rotated[-1]
            for key, c in self.rotation_col.items():
                for j, name in enumerate(self.rot_names):
                    for m, sign in ((det == key, 1.0), (det == last, -1.0)):
                        jac[0, m, c + j] = sign * cols[name][0][m]
                        jac[1, m, c + j] = sign * cols[name][1][m]
        return jac

    def rotation_rows(self, k):
        """Jacobian (len(rot_names), k) of detector ``k``'s own rotation (and scale)."""
        rows = np.zeros((len(self.rot_names), self.k))
        if k in self.rotation_col:
            rows[:, self.rotation_col[k]:self.rotation_col[k] + len(self.rot_names)] = np.eye(
                len(self.rot_names))
        elif self.rotated and k == self.rotated[-1]:
            for c in self.rotation_col.values():
                rows[:, c:c + len(self.rot_names)] -= np.eye(len(self.rot_names))
        return rows

    def detector_rows(self, k):
        """Jacobian (2, k) of detector ``k``'s offset."""
        rows = np.zeros((2, self.k))
        if k in self.detector_col:
            c = self.detector_col[k]
            rows[0, c] = rows[1, c + 1] = 1.0
        elif self.gauge and k == self.gauge[-1]:
            for key in self.gauge[:-1]:
                c = self.detector_col[key]
                rows[0, c] = rows[1, c + 1] = -1.0
        return rows

    def update(self, model, sol):
        """Apply the solution ``sol`` (a linearised step) to ``model``."""
        for c, cols in enumerate(self.lin_cols):
            if cols:
                model.matrix[c] = _step_matrix(sol, cols, self.channel_geometry[c]) @ model.matrix[c]
        if self.t_col is not None:
            model.shift = model.shift + sol[self.t_col:self.t_col + 2]
        for d, c in self.dither_col.items():
            model.dither[d] += sol[c:c + 2]
        fitted = set(self.fitted)
        for k in range(len(model.detector)):
            if k in self.detector_col:
                model.detector[k] += sol[self.detector_col[k]:self.detector_col[k] + 2]
            elif k not in fitted:
                model.detector[k] = 0.0
        if self.gauge:
            model.detector[self.gauge[-1]] = -sum(model.detector[k] for k in self.gauge[:-1])
        rotated = set(self.rotated)
        for k in range(len(model.detector)):
            if k in self.rotation_col:
                c = self.rotation_col[k]
                model.det_rot[k] += sol[c]
                if "scale" in self.rot_names:
                    model.det_scale[k] += sol[c + 1]
            elif k not in rotated:
                model.det_rot[k] = model.det_scale[k] = 0.0
        if self.rotated:
            others = list(self.rotation_col)
            model.det_rot[self.rotated[-1]] = -model.det_rot[others].sum()
            model.det_scale[self.rotated[-1]] = -model.det_scale[others].sum()


def _centre_gauge(model, gauge):
    """Move the mean offset of the ``gauge`` detectors into the common shift (same positions)."""
    if gauge:
        mean = model.detector[list(gauge)].mean(axis=0)
        model.detector[list(gauge)] -= mean
        model.shift = model.shift + mean


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


def _robust_sigma(r):
    """Per-axis scatter from the median absolute deviation (Gaussian-equivalent; `judge`'s)."""
    s = 1.4826 * np.median(np.abs(r - np.median(r, axis=0)), axis=0)
    return np.maximum(s, 1e-6)


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


def _stats(r):
    if len(r) == 0:
        return {"nmatch": 0, "rmse": 0.0, "mae": 0.0}
    d = np.hypot(r[:, 0], r[:, 1])
    return {"nmatch": int(len(r)), "rmse": float(np.sqrt(np.mean(d**2))), "mae": float(np.mean(d))}


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
    absolute = ref_xy is not None
    n_img = len(positions)
    dith_names = list(dict.fromkeys(dither_ids))
    det_names = list(dict.fromkeys(detector_ids))
    channel_ids = list(channel_ids) if channel_ids is not None else [None] * n_img
    chan_names = list(dict.fromkeys(channel_ids))
    n_dith, n_det, n_chan = len(dith_names), len(det_names), len(chan_names)
    geoms = tuple((channel_fitgeometry or {}).get(c, params.fitgeometry) for c in chan_names)
    for g in geoms:
        if g not in FITGEOMETRIES:
            raise ValueError(f"fitgeometry must be one of {FITGEOMETRIES}, not {g!r}")

    if absolute:
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
            return JointFitResult(status=f"FAILED: only {len(ref_xy)} usable reference sources "
                                         f"(abs_minobj {params.minobj}){why}")
        tree = cKDTree(ref_xy)
    else:
        groups, ref_var, tree = np.zeros(0, int), np.zeros(0), None
    n_groups = int(groups.max()) + 1 if len(groups) else 1
    dith_of_img = np.array([dith_names.index(d) for d in dither_ids], int)
    det_of_img = np.array([det_names.index(k) for k in detector_ids], int)
    chan_of_img = np.array([chan_names.index(c) for c in channel_ids], int)
    fixed = np.zeros((n_det, 2))
    for name, value in (detector_offsets or {}).items():
        if name in det_names:
            fixed[det_names.index(name)] = np.asarray(value, float)
    p_list, img_list = [], []
    for i, xy in enumerate(positions):
        xy = np.asarray(xy, float).reshape(-1, 2)
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        xy = xy[_isolated(xy, params.separation)]
        p_list.append(xy + fixed[det_of_img[i]])
        img_list.append(np.full(len(xy), i))
    p = np.concatenate(p_list) if p_list else np.zeros((0, 2))
    img = np.concatenate(img_list).astype(int) if img_list else np.zeros(0, int)
    if len(p) < params.minobj:
        return JointFitResult(status=f"FAILED: only {len(p)} usable detections "
                                     f"(minobj {params.minobj})")
    dith, det, chan = dith_of_img[img], det_of_img[img], chan_of_img[img]

    model = _Model(n_dith, n_det, n_chan)
    for k in range(n_det):
        if np.any(det == k):
            model.det_centre[k] = p[det == k].mean(axis=0)
    if absolute and params.use2dhist:
        offset, npeak = offset_from_2dhist(p, ref_xy, params.searchrad)
        log.debug("2-D histogram offset %.4f, %.4f arcsec (%d in peak)", *offset, npeak)
        model.shift = offset
    elif not absolute:
        model.dither = _dither_offsets(p, dith, n_dith, params.searchrad)
    # Scatters (arcsec per axis), per channel (and reference catalog): first guesses, then
    # measured after every solve.
    sig_int2 = np.full((n_chan, n_groups), (params.tolerance / 5.0) ** 2)
    sig_cen2 = np.full(n_chan, (params.tolerance / 10.0) ** 2)
    tol_ref = params.tolerance if absolute else 0.0
    # The first absolute pass matches to the reference only: the dithers are then within a
    # few mas of each other, and linking detections of different images is safe.
    tol_link = 0.0 if absolute else params.tolerance
    fitted = tuple(range(n_det)) if (absolute and params.detector_terms == "all"
                                     and n_det > 1) else ()
    test_terms = absolute and params.detector_terms is True and n_det > 1
    # A detector turned about an unknown point is turned about its centre and moved: its
    # rotation comes with its offset, so both need detector terms.
    test_rotations = (absolute and params.detector_rotations and params.detector_terms
                      and n_det > 1 and n_chan == 1)
    rotated = ()
    prev, obs = None, None

    def weights(o):
        w_det = 1.0 / sig_cen2[chan[o.det]]
        w_ref = (1.0 / (sig_int2[o.ref_chan, groups[o.ref]] + ref_var[o.ref]) if len(o.ref)
                 else np.zeros(0))
        return w_det, w_ref

    for iteration in range(params.max_iter):
        pred = model.apply(p, dith, det, chan)
        obs = _components_by_channel(pred, img, chan, n_chan, n_img, ref_xy, tol_ref, tol_link,
                                     tree)
        n_obs = _n_matched(obs) if absolute else len(obs.det)
        if n_obs < params.minobj:
            what = ("detections matched to the reference" if absolute
                    else "detections matched between images")
            return JointFitResult(status=f"FAILED: not enough {what} ({n_obs}, minobj "
                                         f"{params.minobj}) within {max(tol_ref, tol_link):.3g} "
                                         "arcsec")
        gauge = fitted if len(fitted) == n_det else ()
        _centre_gauge(model, gauge)
        layout = _Layout(geoms, absolute, n_dith, fitted, gauge, rotated, model.det_centre)
        keep_det, keep_ref = np.ones(len(obs.det), bool), np.ones(len(obs.ref), bool)
        for _ in range(max(params.nclip, 0) + 1):
            o = obs.subset(keep_det, keep_ref)
            w_det, w_ref = weights(o)
            _, lev_det, lev_ref = _solve(model, layout, o, p, dith, det, chan, ref_xy, w_det,
                                         w_ref)
            r_det, h_det, r_ref, h_ref = _residuals(model, o, p, dith, det, chan, ref_xy, w_det,
                                                    w_ref)
            h_det, h_ref = h_det + lev_det, h_ref + lev_ref
            # Variances from the residuals (mean squares: what the covariance needs). The
            # clipping limit of the first pass is wide: the first guesses may be far off.
            limit = params.sigma if iteration else 3.0 * params.sigma
            c_det = chan[o.det]
            for c in range(n_chan):
                ms = _mean_square(r_det[c_det == c], h_det[c_det == c])
                if ms is not None:
                    sig_cen2[c] = max(ms, 1e-5**2)
            if absolute and len(r_ref):
                g_used, c_used = groups[o.ref], o.ref_chan
                for c in range(n_chan):
                    for g in range(n_groups):
                        # Too few of this catalog in this channel: the channel's, then all.
                        for m in ((c_used == c) & (g_used == g), c_used == c,
                                  np.ones(len(g_used), bool)):
                            if m.sum() >= 10:
                                break
                        ms = _mean_square(r_ref[m], h_ref[m], 1.0 / np.median(w_ref[m]), limit)
                        if ms is not None:
                            sig_int2[c, g] = max(ms - float(np.median(ref_var[o.ref][m])),
                                                 0.0005**2)
                w_det, w_ref = weights(o)
            # Clip each residual normalised by the spread expected for its kind (a chi-square
            # cut: a Gaussian core loses ~1% at 3 sigma).
            new_det = _unclipped(r_det, h_det, sig_cen2[c_det], params.sigma)
            new_ref = _unclipped(r_ref, h_ref, 1.0 / w_ref, params.sigma)
            full_det, full_ref = keep_det.copy(), keep_ref.copy()
            full_det[keep_det], full_ref[keep_ref] = new_det, new_ref
            clipped = obs.subset(full_det, full_ref)
            if (params.nclip <= 0 or (new_det.all() and new_ref.all())
                    or (_n_matched(clipped) if absolute else full_det.sum()) < params.minobj):
                break
            keep_det, keep_ref = full_det, full_ref
        obs = obs.subset(keep_det, keep_ref)
        if test_rotations:
            rotated = (tuple(range(n_det)) if _detector_terms_significant(
                "rotations", model, obs, p, dith, det, chan, ref_xy, weights(obs), geoms,
                n_dith, params.significance) else ())
        if test_terms:
            # All detectors or none: a per-detector choice leaves offsets just below the
            # threshold unmodelled, errors of up to ~3.5 sigma the covariance cannot know
            # (measured: such images fall within 2 sigma 28% of the time instead of 95%),
            # and an offset fitted where there is none costs less than one omitted.
            fitted = (tuple(range(n_det)) if rotated or _detector_terms_significant(
                "offsets", model, obs, p, dith, det, chan, ref_xy, weights(obs), geoms, n_dith,
                params.significance, rotated) else ())
        # Tighten the matching radii towards 5x the scatter of each kind of observation.
        s_ref = np.sqrt(float(np.max(sig_int2)) + float(np.max(sig_cen2)))
        tol_ref = float(min(params.tolerance, max(5.0 * s_ref, 0.01))) if absolute else 0.0
        tol_link = float(min(params.tolerance,
                             max(5.0 * np.sqrt(2 * float(np.max(sig_cen2))), 0.002)))
        state = (obs.det.tobytes(), obs.ref.tobytes(), fitted, rotated, iteration > 0)
        if state == prev:
            break
        prev = state

    # The final step at the solution: its covariance is that of the result.
    gauge = fitted if len(fitted) == n_det else ()
    _centre_gauge(model, gauge)
    layout = _Layout(geoms, absolute, n_dith, fitted, gauge, rotated, model.det_centre)
    w_det, w_ref = weights(obs)
    cov, _, lev_ref, robust = _solve(model, layout, obs, p, dith, det, chan, ref_xy, w_det, w_ref,
                                     robust=True)
    r_det, h_det, r_ref, h_ref = _residuals(model, obs, p, dith, det, chan, ref_xy, w_det, w_ref)
    # The reference scatter is measured from the visit's own sources: from few of them it is
    # itself uncertain (chi-square with ~n_ref - (terms they fix) degrees of freedom), and an
    # error normalised by it follows Student's law, not Gauss'. The covariance is widened
    # so that its 2-D 95% ellipse keeps 95%: the ratio of the F(2, dof) and F(2, inf) 95%
    # points (1.11 for 15 sources, 1.01 for 150).
    dof, factor = (_reference_dof(h_ref, lev_ref) if absolute and len(obs.ref)
                   else (float("inf"), 1.0))
    cov = cov * factor**2
    fixed_cov = {det_names.index(k): np.asarray(v, float) for k, v in
                 (detector_offset_cov or {}).items() if k in det_names}
    result = _result(model, layout, cov, obs, p, img, dith, det, chan, ref_xy, r_det, h_det,
                     (dith_names, det_names, chan_names), (dith_of_img, det_of_img, chan_of_img),
                     fitted, sig_cen2, sig_int2, absolute, fixed, fixed_cov)
    result.dof_reference, result.small_sample_factor = dof, factor
    result._cov_robust = robust
    result._state = {"obs": obs, "model": model.copy(), "layout": layout, "p": p, "dith": dith,
                     "det": det, "chan": chan, "ref_xy": ref_xy, "img": img, "w_det": w_det,
                     "w_ref": w_ref, "absolute": absolute}
    return result


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


def _n_matched(obs):
    """Detections matched to a reference source (what ``minobj`` counts, as in tweakwcs)."""
    has_ref = np.zeros(obs.n_comp, bool)
    has_ref[obs.ref_comp] = True
    return int(has_ref[obs.det_comp].sum())


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


def _result(model, layout, cov, obs, p, img, dith, det, chan, ref_xy, r_det, h_det, names,
            of_image, fitted, sig_cen2, sig_int2, absolute, fixed, fixed_cov):
    dith_names, det_names, chan_names = names
    dith_of_img, det_of_img, chan_of_img = of_image
    n_img, n_dith, n_det = len(dith_of_img), len(dith_names), len(det_names)
    det_chan = {det_of_img[i]: chan_of_img[i] for i in range(n_img)}
    result = JointFitResult(status="SUCCESS", matrix=model.matrix[0].copy(),
                            shift=model.shift.copy())
    result.channel_matrix = {c: model.matrix[k].copy() for k, c in enumerate(chan_names)}
    # A detector's own term E about its centre C: (I + E) A p - E C on the sky.
    own = [model.detector_matrix(k) for k in range(n_det)]
    result.image_matrix = [(np.eye(2) + own[det_of_img[i]]) @ model.matrix[chan_of_img[i]]
                           for i in range(n_img)]
    result.dither_shift = {dith_names[d]: model.dither[d].copy() for d in range(n_dith)}
    # Fixed offsets were added to the positions before the linear term: A u on the sky.
    moved = np.array([model.matrix[det_chan.get(k, 0)] @ fixed[k] for k in range(n_det)])
    result.detector_shift = {det_names[k]: model.detector[k] + moved[k] for k in range(n_det)}
    result.detector_significant = {det_names[k]: k in fitted for k in range(n_det)}
    result.image_shift = [model.shift + model.dither[dith_of_img[i]] + model.detector[det_of_img[i]]
                          + moved[det_of_img[i]]
                          - own[det_of_img[i]] @ model.det_centre[det_of_img[i]]
                          for i in range(n_img)]
    result.detector_rotated = bool(layout.rotated)
    result.detector_rotation = {det_names[k]: float(np.rad2deg(model.det_rot[k]))
                                for k in range(n_det)}
    result.detector_scale = {det_names[k]: 1.0 + float(model.det_scale[k]) for k in range(n_det)}
    if absolute:
        # Residuals against the reference: each matched detection minus its source's
        # reference position (CEERS' and tweakwcs' RMSE).
        ref_of_comp = np.full(obs.n_comp, -1)
        ref_of_comp[obs.ref_comp] = obs.ref
        has = ref_of_comp[obs.det_comp] >= 0
        d = obs.det[has]
        r = ref_xy[ref_of_comp[obs.det_comp[has]]] - model.apply(p[d], dith[d], det[d], chan[d])
    else:
        # Residuals against the other images' detections of the same source.
        has = (1.0 - h_det) > 1e-9
        d = obs.det[has]
        r = -r_det[has] / (1.0 - h_det[has])[:, None]
    result.image_stats = [_stats(r[img[d] == i]) for i in range(n_img)]
    result.dither_stats = {dith_names[k]: _stats(r[dith[d] == k]) for k in range(n_dith)}
    result.detector_stats = {det_names[k]: _stats(r[det[d] == k]) for k in range(n_det)}
    tot = _stats(r)
    result.nmatch, result.rmse, result.mae = tot["nmatch"], tot["rmse"], tot["mae"]
    result.n_linked = int(len(obs.det))
    result.channel_sigma_centroid = {c: float(np.sqrt(sig_cen2[k]))
                                     for k, c in enumerate(chan_names)}
    result.channel_sigma_reference = {c: [float(v) for v in np.sqrt(sig_int2[k])] if absolute
                                      else [] for k, c in enumerate(chan_names)}
    result.sigma_centroid = result.channel_sigma_centroid[chan_names[0]]
    result.sigma_reference = result.channel_sigma_reference[chan_names[0]]
    result._layout, result._cov = layout, cov
    result._dither_of_image, result._detector_of_image = dith_of_img, det_of_img
    result._channel_of_image, result._channel_names = chan_of_img, list(chan_names)
    result._detector_channel = {det_names[k]: int(c) for k, c in det_chan.items()}
    result._fixed_cov = fixed_cov
    result.rotation = _rotation_deg(result.matrix)
    result.scale = float(np.sqrt(abs(np.linalg.det(result.matrix))))
    result.channel_scale = {c: float(np.sqrt(abs(np.linalg.det(m))))
                            for c, m in result.channel_matrix.items()}
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


def _two_sided_p(nsigma):
    from math import erfc, sqrt

    return erfc(nsigma / sqrt(2.0))
