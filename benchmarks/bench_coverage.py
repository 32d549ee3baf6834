"""Are the reported uncertainties honest? Coverage of err_center over many draws, at catalog level.

Usage:
    python benchmarks/bench_coverage.py [--cases sw sw-det lw demo] [--draws 50]
        [--offsets source detection] [--first-seed 1] [--estimator new|old|both]
        [--holdout] [--confirm N]

A catalog-level harness: full step runs (rendering, SEP) take ~30 s per 24-image
draw on this machine, so the draws are made in the visit's tangent plane with
the geometry of `ceers_steps.synthetic.visits.make_visit` (built-in NIRCam-like WCS,
its random galaxy catalog, its error model: visit shift and rotation, ~20 mas
per-dither errors, 30 mas per-detector errors for ``sw-det``) and detections
drawn the way SEP sees the rendered sources (a signal-to-noise cut and a
centroid error sqrt(2) sigma / SNR, ``--confirm`` compares both on full runs).
Each image's detections, seen through its erroneous WCS, go through the step's
own code: `ceers_steps.fitting.absolute._judged_fit` (screening, joint fit, judgement)
with the step's parameters (CEERS jw01345001001 for sw / sw-det / lw, the step
defaults for ``demo``: 2 SW detectors x 3 dithers of 1024x1024 pixels), and the
uncertainty at the image centre as the step computes it (`position_sigma`).

Intrinsic galaxy offsets (~10 mas rms per axis): ``source`` (the galaxy's own,
the same in every dither and detector: the sky), or ``detection`` (drawn anew
for every detection). Prints per case: the fraction of images whose true centre
error lies within 2.45x (2-D 95%) and 3.5x err_center, the median per-image RMS
(16x16 grid) and, with ``--estimator both``, the paired per-draw differences of
the median RMS (new minus old). ``--holdout``: the hold-out error too.
"""

import argparse
import logging
import time
import warnings
from types import SimpleNamespace

import numpy as np

from ceers_steps.core.wcs_utils import tangent_plane
from ceers_steps.synthetic.visits import (
    _DITHERS,
    DETECTOR_GEOMETRY,
    LW_DETECTORS,
    SW_DETECTORS,
    _random_refcat,
    nircam_like_wcs,
    rotation_matrix,
)

# CEERS nircam1 f200w / f444w [jw01345001001] absolute parameters (bench_alignment's).
CASES = {
    "sw": dict(detectors=SW_DETECTORS, shape=2048, detector_error=0.0,
               abs=dict(separation=0.5, tolerance=0.4, fitgeometry="rshift", minobj=20)),
    "sw-det": dict(detectors=SW_DETECTORS, shape=2048, detector_error=0.03,
                   abs=dict(separation=0.5, tolerance=0.4, fitgeometry="rshift", minobj=20)),
    "lw": dict(detectors=LW_DETECTORS, shape=2048, detector_error=0.0,
               abs=dict(separation=0.5, tolerance=0.4, fitgeometry="rscale", minobj=20)),
    # ceers-demo: 2 SW detectors x 3 dithers, 1024 x 1024, the step's default parameters.
    "demo": dict(detectors=("nrca1", "nrca3"), shape=1024, detector_error=0.0, abs={}),
    # SW and LW images of the same exposures in one joint fit (joint_channels, as a survey
    # aligns F115W with F277W): a galaxy's offset largely the same in both filters.
    "swlw": dict(detectors=SW_DETECTORS + LW_DETECTORS, shape=2048, detector_error=0.0,
                 abs=dict(separation=0.5, tolerance=0.4, fitgeometry="rshift", minobj=20)),
}
#: Correlation of a galaxy's intrinsic offset between the SW and LW filters (swlw).
FILTER_CORRELATION = 0.8
#: make_visit's rendering: zeropoint, pixel noise, faintest magnitude rendered.
ZEROPOINT, NOISE, MAG_LIMIT = 27.0, 0.1, 26.5
#: Detection: at least DETECT_AREA pixels above DETECT_LEVEL (image units) -- SEP's
#: threshold and minimum area, calibrated on the demo's SEP catalogs (6-10 sources per
#: 1024x1024 nrca1 image, centroid scatter 0.55 mas); centroid error sqrt(2) sigma / SNR.
DETECT_LEVEL, DETECT_AREA, CENTROID_FACTOR = 0.3, 16.0, 1.0

_GEOMETRY = {}
#: Seconds spent in the hold-out (JointFitResult.holdout) per draw.
HOLDOUT_SECONDS = []


def geometry(detectors, shape):
    """Per image (detector, dither): true centre and pixel->plane Jacobian, in the visit plane."""
    key = (tuple(detectors), shape)
    if key in _GEOMETRY:
        return _GEOMETRY[key]
    c = (shape - 1) / 2.0
    wcss = {(det, d): nircam_like_wcs(det, shape=(shape, shape), dither=_DITHERS[d])[0]
            for det in detectors for d in range(3)}
    centres = np.array([w(c, c, with_bounding_box=False) for w in wcss.values()])
    ra0, dec0 = float(np.mean(centres[:, 0])), float(np.mean(centres[:, 1]))
    plane = tangent_plane(ra0, dec0)
    images = []
    for (det, d), w in wcss.items():
        pts = np.array([[c, c], [c + 1, c], [c, c + 1]])
        xy = np.column_stack(plane.world_to_tanp(*w(pts[:, 0], pts[:, 1],
                                                   with_bounding_box=False)))
        jac = np.column_stack([xy[1] - xy[0], xy[2] - xy[0]])
        images.append(dict(detector=det, dither=d, centre=xy[0], jac=jac,
                           inv=np.linalg.inv(jac), scale=DETECTOR_GEOMETRY[det][3]))
    _GEOMETRY[key] = (ra0, dec0, plane, images)
    return _GEOMETRY[key]


def draw(case, seed, offsets="source", galaxy_scatter=0.010):
    """One visit at catalog level: per image its detections through its erroneous WCS."""
    spec = CASES[case]
    ra0, dec0, plane, images = geometry(spec["detectors"], spec["shape"])
    rng = np.random.default_rng(seed)
    refcat = _random_refcat(ra0, dec0, 420.0, rng)
    ref = np.column_stack(plane.world_to_tanp(np.asarray(refcat["RA"]), np.asarray(refcat["DEC"])))
    n_src = len(ref)
    own_off = rng.normal(0.0, galaxy_scatter, size=(n_src, 2))
    rho = FILTER_CORRELATION
    lw_off = rho * own_off + np.sqrt(1 - rho**2) * rng.normal(0.0, galaxy_scatter, (n_src, 2))
    mag, rh = np.asarray(refcat["MAG"]), np.asarray(refcat["rh"])
    visit_shift, visit_rotation = np.array([0.45, -0.25]), 0.02
    dither = rng.normal(0.0, 0.020, size=(3, 2))
    dets = spec["detectors"]
    det_shift = {k: rng.normal(0.0, spec["detector_error"], size=2) for k in dets}
    matrix = rotation_matrix(visit_rotation)
    half = spec["shape"] / 2.0
    positions, truths, names = [], [], []
    for im in images:
        psf = (0.13 if im["detector"] in LW_DETECTORS else 0.06) / 2.355
        sigma_pix = np.hypot(psf, 0.25 * rh * 0.06 / 2.355) / im["scale"]
        flux = 10 ** (-0.4 * (mag - ZEROPOINT))
        snr = flux / (NOISE * np.sqrt(4 * np.pi) * sigma_pix)
        peak = flux / (2 * np.pi * sigma_pix**2)
        area = 2 * np.pi * sigma_pix**2 * np.log(np.maximum(peak / DETECT_LEVEL, 1.0))
        lw = im["detector"] in LW_DETECTORS
        sky = ref + ((lw_off if lw and case == "swlw" else own_off) if offsets == "source"
                     else rng.normal(0.0, galaxy_scatter, size=(n_src, 2)))
        pix = (sky - im["centre"]) @ im["inv"].T
        inside = (np.all(np.abs(pix) < half - 3, axis=1) & (mag < MAG_LIMIT)
                  & (area >= DETECT_AREA))
        err = CENTROID_FACTOR * np.sqrt(2.0) * sigma_pix[inside] / snr[inside]  # pixels
        seen_pix = pix[inside] + rng.normal(size=(inside.sum(), 2)) * err[:, None]
        true_xy = seen_pix @ im["jac"].T + im["centre"]
        total = visit_shift + dither[im["dither"]] + det_shift[im["detector"]]
        positions.append(true_xy @ matrix.T + total)
        truths.append((matrix, total))
        names.append((f"d{im['dither']}", im["detector"]))
    return dict(positions=positions, truths=truths, names=names, ref=ref, images=images,
                shape=spec["shape"])


def _params(case):
    from ceers_steps.fitting.parameters import AbsoluteParameters

    return AbsoluteParameters(**CASES[case]["abs"])


def run(case, visit, holdout=False):
    """The step's joint fit on one draw: per image (true centre error, err_center, rms, ...)."""
    from ceers_steps.fitting import absolute

    params = _params(case)
    jp = absolute.JointParameters(fitgeometry=params.fitgeometry, searchrad=params.searchrad,
                                   use2dhist=params.use2dhist, separation=params.separation,
                                   tolerance=params.tolerance, minobj=params.minobj,
                                   significance=params.significance,
                                   detector_rotations=params.detector_rotations)
    pos = visit["positions"]
    images = [SimpleNamespace(key=SimpleNamespace(exposure=e, detector=k), catalog=p)
              for (e, k), p in zip(visit["names"], pos, strict=True)]
    channels = geometry_lw = None
    if case == "swlw":
        channels = ["LW" if k in LW_DETECTORS else "SW" for _, k in visit["names"]]
        geometry_lw = {"SW": params.fitgeometry, "LW": params.fitgeometry}
    fit, rejected = absolute._judged_fit(images, pos, visit["ref"], jp, params,
                                         channels=channels, geometry=geometry_lw)
    out = []
    if fit is None or not fit.success:
        return out, fit
    kept = [i for i in range(len(images)) if i not in rejected]
    hold = None
    if holdout:
        t0 = time.perf_counter()
        hold = fit.holdout(np.array([visit["images"][i]["centre"] @ visit["truths"][i][0].T
                                     + visit["truths"][i][1] for i in kept]))
        HOLDOUT_SECONDS.append(time.perf_counter() - t0)
    half = visit["shape"] / 2.0
    g = np.linspace(-half, half, 16)
    grid = np.array([(a, b) for a in g for b in g])
    for j, i in enumerate(kept):
        im = visit["images"][i]
        m, total = visit["truths"][i]
        true_pts = grid @ im["jac"].T + im["centre"]
        seen = true_pts @ m.T + total
        aligned = seen @ fit.image_matrix[j].T + fit.image_shift[j]
        d = 1e3 * np.hypot(*(aligned - true_pts).T)
        centre_seen = im["centre"] @ m.T + total
        err_c = 1e3 * np.hypot(*(centre_seen @ fit.image_matrix[j].T + fit.image_shift[j]
                                 - im["centre"]))
        sig = 1e3 * fit.position_sigma(j, centre_seen[None])[0]
        row = dict(err=float(err_c), sigma=float(sig), rms=float(np.sqrt(np.mean(d**2))),
                   sigma_old=float(_old_sigma(fit, j, centre_seen)))
        if hold is not None:
            row["holdout"] = 1e3 * float(hold["err"][j])
            row["holdout_n"] = int(hold["n"][j])
            row["holdout_sigma"] = 1e3 * float(hold["sigma"][j])
        out.append(row)
    return out, fit


def _old_sigma(fit, j, xy):
    """err_center as the estimator before issue 28 gave it: the model's covariance alone,
    without the small-sample factor and the cluster-robust check."""
    factor = getattr(fit, "small_sample_factor", 1.0)
    saved = fit._cov, getattr(fit, "_cov_robust", None)
    try:
        fit._cov, fit._cov_robust = saved[0] / factor**2, None
        return 1e3 * fit.position_sigma(j, xy[None])[0]
    finally:
        fit._cov, fit._cov_robust = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES))
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--offsets", nargs="+", choices=("source", "detection"),
                        default=["source", "detection"])
    parser.add_argument("--holdout", action="store_true", help="also the hold-out error")
    parser.add_argument("--save", metavar="FILE",
                        help="write each draw's median per-image RMS (mas) here, one line per "
                             "case, offsets and seed (for paired differences between versions)")
    args = parser.parse_args()
    saved = open(args.save, "w") if args.save else None  # noqa: SIM115
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    print(f"{'case':>7} {'offsets':>9} {'images':>6} {'<2.45x':>7} {'<3.5x':>7} "
          f"{'old<2.45':>8} {'old<3.5':>7} {'ratio med':>9} {'rms med':>8} {'fit s':>6}"
          + (f" {'hold/true':>9} {'hold<2.45':>9} {'hold<3.5':>8} {'hold/sig':>8} {'check':>6} "
             f"{'hold s':>6}" if args.holdout else ""))
    for case in args.cases:
        for offsets in args.offsets:
            rows, rms, secs = [], [], []
            for seed in range(args.first_seed, args.first_seed + args.draws):
                visit = draw(case, seed, offsets)
                t0 = time.perf_counter()
                out, _ = run(case, visit, holdout=args.holdout)
                secs.append(time.perf_counter() - t0)
                rows += out
                rms.append(np.median([r["rms"] for r in out]) if out else np.nan)
                if saved:
                    saved.write(f"{case} {offsets} {seed} {rms[-1]:.6f}\n")
                    saved.flush()
            z = np.array([r["err"] / r["sigma"] for r in rows])
            zo = np.array([r["err"] / r["sigma_old"] for r in rows])
            line = (f"{case:>7} {offsets:>9} {len(z):>6} {np.mean(z < 2.45):>7.1%} "
                    f"{np.mean(z < 3.5):>7.1%} {np.mean(zo < 2.45):>8.1%} {np.mean(zo < 3.5):>7.1%} "
                    f"{np.median(z):>9.2f} {np.nanmedian(rms):>8.2f} "
                    f"{np.median(secs):>6.2f}")
            if args.holdout:
                h = np.array([r["holdout"] for r in rows])
                e = np.array([r["err"] for r in rows])
                s = np.array([r["sigma"] for r in rows])
                line += (f" {np.nanmedian(h / e):>9.2f} {np.nanmean(e < 2.45 * h):>9.1%} "
                         f"{np.nanmean(e < 3.5 * h):>8.1%} {np.nanmedian(h / s):>8.2f} "
                         f"{np.nanmean(h > 2.5 * s):>6.1%} {np.median(HOLDOUT_SECONDS):>6.2f}")
                HOLDOUT_SECONDS.clear()
            print(line, flush=True)


if __name__ == "__main__":
    main()
