"""Hold-out validation of a joint fit by reference source: an accuracy that does not trust the
covariance.

The matched sources are split into folds at random; each fold is refitted without its sources
(their reference positions and all their detections: one Gauss-Newton step from the full
solution), and each image's error follows from the spread of its aligned centre over the folds
(the delete-a-group jackknife) and from the mean of its held-out residuals (`JointFitResult.holdout
<ceers_steps.fitting.jointfit.JointFitResult.holdout>` documents the measurement).
"""

import numpy as np

from .least_squares import _solve

__all__ = ["HOLDOUT_FOLDS", "holdout_validation"]

#: Groups of sources of the hold-out validation (`JointFitResult.holdout`). 20 rather than 10:
#: the jackknife has 19 degrees of freedom, not 9, so it is less noisy and widened less
#: (x1.08, not x1.19); see benchmarks/bench_coverage.py --holdout.
HOLDOUT_FOLDS = 20


def holdout_validation(result, centres=None, folds=HOLDOUT_FOLDS, seed=0):
    """
    The hold-out validation of ``result`` (a `JointFitResult`): what its ``holdout`` returns.

    Parameters
    ----------
    result : JointFitResult
    centres : ndarray (n_img, 2), optional
        Each image's centre in the visit plane through its WCS before the fit, arcsec
        (default: the mean of its matched detections).
    folds : int
        Number of groups (at least 2; fewer when there are fewer sources).
    seed : int
        Seed of the random split.

    Returns
    -------
    dict or None
        ``err``, ``n``, ``mean``, ``sigma``, ``chi2`` per image; None for a relative fit.
    """
    st = result._state
    if st is None or not st["absolute"]:
        return None
    obs, p, img = st["obs"], st["p"], st["img"]
    n_img = len(result._dither_of_image)
    refs = np.unique(obs.ref)
    k_folds = int(min(max(int(folds), 2), len(refs)))
    if k_folds < 2:
        return None
    rng = np.random.default_rng(seed)
    fold_of_ref = np.full(len(st["ref_xy"]), -1)
    fold_of_ref[refs] = rng.permutation(len(refs)) % k_folds
    ref_of_comp = np.full(obs.n_comp, -1)
    ref_of_comp[obs.ref_comp] = obs.ref
    det_ref = ref_of_comp[obs.det_comp]
    im_of = img[obs.det]
    if centres is None:
        centres = np.array([p[obs.det[im_of == i]].mean(axis=0) if np.any(im_of == i)
                            else np.zeros(2) for i in range(n_img)])
    centres = np.asarray(centres, float).reshape(n_img, 2)
    of_image = (result._dither_of_image, result._detector_of_image, result._channel_of_image)
    resid, moved = _fold_fits(st, fold_of_ref, det_ref, k_folds, centres, of_image)
    return _image_errors(resid, moved, im_of, result._channel_of_image, n_img, k_folds)


def _fold_fits(st, fold_of_ref, det_ref, k_folds, centres, of_image):
    """
    Each fold refitted without its sources (their reference positions and their detections:
    a source's detections share its own scatter, which with them kept in the fit no fold
    would sample): every held-out detection's residual
    (reference minus aligned position, (n_det, 2), NaN where not held out) and each image's
    aligned centre per fold (k_folds, n_img, 2).
    """
    obs, model, layout = st["obs"], st["model"], st["layout"]
    p, dith, det, chan, ref_xy = (st[k] for k in ("p", "dith", "det", "chan", "ref_xy"))
    di, ki, ci = of_image
    w_det, w_ref = st["w_det"], st["w_ref"]
    resid = np.full((len(obs.det), 2), np.nan)
    moved = np.full((k_folds, len(di), 2), np.nan)
    for f in range(k_folds):
        out = fold_of_ref[obs.ref] == f
        mine = np.isin(det_ref, obs.ref[out])
        o = obs.subset(~mine, ~out)
        m = model.copy()
        _solve(m, layout, o, p, dith, det, chan, ref_xy, w_det[~mine], w_ref[~out],
               step_only=True)
        d = obs.det[mine]
        resid[mine] = ref_xy[det_ref[mine]] - m.apply(p[d], dith[d], det[d], chan[d])
        moved[f] = m.apply(centres, di, ki, ci)
    return resid, moved


def _image_errors(resid, moved, im_of, ci, n_img, k_folds):
    """Each image's hold-out error from the folds' centres and its held-out residuals."""
    from scipy.stats import chi2 as chi2_dist
    from scipy.stats import f as f_dist

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
