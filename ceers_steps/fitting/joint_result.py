"""The result of the joint fit: its terms, their covariance, and each image's uncertainty.

`JointFitResult` holds the fitted visit terms (common linear term and shift, dither and detector
shifts, detectors' own rotations), the matches' statistics and measured scatters, and the fit's
covariance: the model's and the cluster-robust one, the larger of the two for any quantity.
`_result` assembles it from the fitted model.
"""

from dataclasses import dataclass, field

import numpy as np

from .holdout import HOLDOUT_FOLDS, holdout_validation
from .visit_model import _rotation_deg

__all__ = ["JointFitResult"]


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
        group the fit is redone without those sources -- their reference positions and all
        their detections (the source is the independent unit: its detections share its
        centroid and intrinsic scatter, which a fold keeping them would never sample) --
        one Gauss-Newton step from the full solution with its matches (the model is linear
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
        return holdout_validation(self, centres, folds, seed)


def _stats(r):
    if len(r) == 0:
        return {"nmatch": 0, "rmse": 0.0, "mae": 0.0}
    d = np.hypot(r[:, 0], r[:, 1])
    return {"nmatch": int(len(r)), "rmse": float(np.sqrt(np.mean(d**2))), "mae": float(np.mean(d))}


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
    return result
