"""A camera model learned from the survey: ``ceers-align --all --fit-distortion`` against truth.

Usage:
    python benchmarks/bench_distortion.py [--visits 4] [--detectors nrca1 nrca2 nrca3 nrca4]
        [--shape 2048] [--draws 5] [--first-seed 1] [--rms-mas 3.0] [--n-jobs 2]
        [--noise 0.1] [--mag-limit 26.5]
        [--shared-detector-terms] [--cross-validate] [--keep DIR]

Per draw (seed ``s``), two CEERS-like surveys with the real CEERS WCS models as truth
(as benchmarks/bench_survey.py builds them): ``--visits`` of its VISITS x F200W (group
02201) x ``--detectors`` x 3 dithers, frames of ``--shape`` pixels (the detector's first
rows and columns; 2048, full frames, by default), the real HST F160W reference catalog.
The two are the same draw (visit, dither and galaxy errors, noise) except that one has a
residual distortion injected per detector (``random_distortion(detectors, --rms-mas,
seed=s)``: Legendre terms of degree 2-3, ``--rms-mas`` per axis over the frame, the same
in every visit and dither; `ceers_steps.synthetic.visits.make_visit`), which the
assigned WCS lacks and the truth carries.

Four runs per draw, each a fresh ``ceers-align --all`` process (``--n-jobs``; with
``--shared-detector-terms`` all four take it; all with one ``--params`` file, visit
001's F200W one by default, since ``--fit-distortion`` fits the run as one unit with its
first group's parameters where a plain run gives each visit its own):

    A  no residual, plain          B  no residual, --fit-distortion
    C  residual, --fit-distortion  D  residual, plain

Each image is scored against its truth (the saved WCS model on a 16x16 pixel grid: RMS
and worst point, mas); a run's figures are the median over images of the RMS and the
worst point of all. The fitted residual of each detector (``<out>/distortion/
ceers_distortion_<det>.asdf``) is compared with the injected one on a 32x32 grid over the
frame after removing from both the mean and linear trend per axis (what the images' own
fits take): RMS of the difference per axis, mas. Wall time and peak memory (sum of the
proportional set sizes of the process tree, sampled every 50 ms as bench_scaling.py does)
of every run.

With ``--cross-validate``, per draw on the survey with the residual: ``--fit-distortion``
on all visits but one (visit ``draw index mod --visits`` held out), then the held-out visit
aligned alone twice, plain and with ``--distortion-file`` of those files: its median
per-image RMS before and after, against the in-sample gain (D - C) on the same images.

Acceptance (issue 32): median per-image RMS of C within 0.3 mas of A, worst point within
0.6 mas; B within 0.05 mas of A; the fitted residual within 1.0 mas RMS of the injected
one per detector.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_survey import VISITS, run

#: The SW filter and the real CEERS pointings (truth group) of the survey.
FILTER, GROUP = "F200W", "02201"
#: One parameter file for every group: --fit-distortion fits the run as one unit with its
#: first group's parameters, the plain runs each visit with its own (CEERS' differ).
PARAMS = (Path(__file__).resolve().parents[1] / "ceers_steps" / "parameter_files"
          / "jw01345001001_f200w.asdf")
RUNS = (("A", False, False), ("B", False, True), ("C", True, True), ("D", True, False))


def build(folders, n_visits, detectors, shape, seed, rms_mas, noise=0.1, mag_limit=26.5):
    """
    Write the two surveys' cal files (``folders``: without, with the residual).

    Returns
    -------
    truth : dict
        (survey, image name) -> true WCS (survey 0 without, 1 with the residual).
    names : dict
        visit -> its image names (the same in both surveys).
    injected : dict
        detector -> DetectorDistortion.
    refcat : Path
    """
    from ceers_steps.synthetic import ceers_data_dir, make_visit, random_distortion

    data = ceers_data_dir()
    if data is None:
        sys.exit("bench_distortion: the real CEERS data are needed "
                 "(../shared/ceers or $CEERS_DATA_DIR)")
    injected = random_distortion(detectors, rms_mas=rms_mas, seed=seed)
    rng = np.random.default_rng(seed)
    truth, names = {}, {}
    for k, visit in enumerate(VISITS[:n_visits]):
        shift = tuple(rng.uniform(-0.5, 0.5, 2))
        for survey, folder in enumerate(folders):
            v = make_visit(detectors=detectors, n_dithers=3, shape=(shape, shape), use_real=True,
                           seed=seed * 100 + 10 * k, visit_id=visit, filter_name=FILTER,
                           group=GROUP, visit_shift=shift,
                           distortion=injected if survey else None, noise=noise, mag_limit=mag_limit)
            names[visit] = [im.model.meta.filename for im in v.images]
            for image in v.images:
                image.model.save(folder / image.model.meta.filename)
                truth[survey, image.model.meta.filename] = image.true_wcs
                image.model.close()
            del v
    return truth, names, injected, data / "CEERS_EGS_HST_v1.9_cat_radecmag.ecsv"


def score(out, names, truth, survey, shape):
    """Image name -> (RMS, worst point) of its saved WCS model against its truth, mas."""
    import asdf

    from ceers_steps.core.wcs_utils import angular_separation_mas

    g = np.linspace(0, shape - 1, 16)
    x, y = np.meshgrid(g, g)
    out_scores = {}
    for name in names:
        path = out / "tweakreg_wcs" / name.replace("_cal.fits", "_tweakreg.asdf")
        if not path.exists():
            out_scores[name] = (float("inf"), float("inf"))
            continue
        with asdf.open(path) as af:
            d = angular_separation_mas(*af["wcs"](x, y), *truth[survey, name](x, y))
        out_scores[name] = (float(np.sqrt(np.mean(d**2))), float(d.max()))
    return out_scores


def summarize(scores, names=None):
    """Median per-image RMS and worst point of ``names`` (all by default), mas."""
    names = list(scores) if names is None else names
    rms = [scores[n][0] for n in names]
    return float(np.median(rms)), float(max(scores[n][1] for n in names))


def _detrended(dx, dy, x, y):
    """dx, dy without their mean and linear trend in x, y (least squares)."""
    a = np.column_stack([np.ones_like(x), x, y])
    return tuple(v - a @ np.linalg.lstsq(a, v, rcond=None)[0] for v in (dx, dy))


def compare_residuals(folder, injected, shape):
    """
    Detector -> (fitted RMS x, y; its error x, y; fitted - injected RMS x, y), mas, from the
    files in ``folder`` (absent detectors: None). Compared on a 32x32 grid over the frame
    (``shape`` pixels from its first) after removing the mean and linear trend per axis.
    """
    from ceers_steps.io.distortion_files import distortion_file_name, read_distortion_file

    g = np.linspace(0.0, shape - 1.0, 32)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    out = {}
    for det, inj in injected.items():
        path = Path(folder) / distortion_file_name(det)
        if not path.exists():
            out[det] = None
            continue
        fit = read_distortion_file(path)
        scale = 1e3 * inj.pixel_scale
        fx, fy = _detrended(*fit.offset(x, y), x, y)
        ix, iy = _detrended(*inj.offset(x, y), x, y)
        rms = scale * np.sqrt([np.mean(fx**2), np.mean(fy**2)])
        diff = scale * np.sqrt([np.mean((fx - ix) ** 2), np.mean((fy - iy) ** 2)])
        out[det] = (tuple(rms), tuple(fit.rms_error_mas()), tuple(diff))
    return out


def link(names, src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.link(src / name, dst / name)


def align(exe, cal, out, work, common, extra=()):
    """One fresh ``ceers-align --all`` process: seconds, peak bytes, exit code."""
    shutil.rmtree(out, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    return run([exe, "--all", "--input-dir", str(cal), "--output-dir", str(out), *common,
                *extra], work)


def has_option(exe, option):
    text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    return option in text


def draw(args, exe, tmp, seed, index, can_fit, can_apply):
    """One draw: the four runs (and the cross-validation). Returns its figures."""
    from ceers_steps.core.distortion import DetectorDistortion

    root = tmp / f"draw{seed}"
    shutil.rmtree(root, ignore_errors=True)
    cal = [root / "plain" / "cal", root / "residual" / "cal"]
    for c in cal:
        c.mkdir(parents=True)
    start = time.perf_counter()
    truth, names, injected, refcat = build(cal, args.visits, args.detectors, args.shape, seed,
                                           args.rms_mas, args.noise, args.mag_limit)
    all_names = [n for ns in names.values() for n in ns]
    print(f"\ndraw seed {seed}: {args.visits} visits x {FILTER} x {len(args.detectors)} detectors "
          f"x 3 dithers = {len(all_names)} images {args.shape}x{args.shape} per survey, injected "
          f"{args.rms_mas} mas rms per axis (built both in {time.perf_counter() - start:.0f} s)")
    common = ["--abs-refcat", str(refcat), "--n-jobs", str(args.n_jobs), "--params", args.params]
    if args.shared_detector_terms:
        common.append("--shared-detector-terms")
    res = {"seed": seed}
    print(f"{'run':32s} {'median mas':>10s} {'worst mas':>9s} {'seconds':>8s} {'peak MiB':>8s} "
          f"{'exit':>4s} {'models':>6s}")
    for label, residual, fit in RUNS:
        if fit and not can_fit:
            print(f"{label} (ceers-align has no --fit-distortion yet): skipped")
            continue
        out = root / f"out_{label}"
        s, peak, code = align(exe, cal[residual], out, root / f"work_{label}", common,
                              ["--fit-distortion"] if fit else [])
        scores = score(out, all_names, truth, int(residual), args.shape)
        med, worst = summarize(scores)
        res[label] = {"scores": scores, "median": med, "worst": worst, "seconds": s,
                      "peak": peak / 2**20, "exit": code, "out": out}
        what = f"{label} {'residual' if residual else 'no residual'}, " \
               f"{'--fit-distortion' if fit else 'plain'}"
        saved = sum(np.isfinite(v[0]) for v in scores.values())
        print(f"{what:32s} {med:10.3f} {worst:9.3f} {s:8.1f} {peak / 2**20:8.0f} {code:4d} "
              f"{saved:3d}/{len(scores)}")

    if "C" in res:
        res["fitted"] = compare_residuals(res["C"]["out"] / "distortion", injected, args.shape)
    if "B" in res:
        zero = {det: DetectorDistortion.zero(det, d.pixel_scale) for det, d in injected.items()}
        res["fitted_none"] = compare_residuals(res["B"]["out"] / "distortion", zero, args.shape)
    _print_residuals(res, injected)
    if args.cross_validate:
        res["cv"] = cross_validate(args, exe, root, cal[1], names, truth, index, common, res,
                                   can_fit, can_apply)
    if not args.keep:
        shutil.rmtree(root)
    return res


def _print_residuals(res, injected):
    if "fitted" not in res and "fitted_none" not in res:
        return
    print(f"{'detector':9s} {'injected x, y':>14s} {'C fitted x, y (error)':>28s} "
          f"{'C - injected x, y':>18s} {'B fitted x, y':>14s}   (mas rms, detrended)")
    for det, inj in injected.items():
        ix, iy = inj.rms_mas()
        c = res.get("fitted", {}).get(det)
        b = res.get("fitted_none", {}).get(det)
        ctext = (f"{c[0][0]:5.2f} {c[0][1]:5.2f} ({c[1][0]:.2f} {c[1][1]:.2f})" if c
                 else "no file")
        dtext = f"{c[2][0]:5.2f} {c[2][1]:5.2f}" if c else "-"
        btext = f"{b[0][0]:5.2f} {b[0][1]:5.2f}" if b else "no file"
        print(f"{det:9s} {ix:6.2f} {iy:6.2f}  {ctext:>28s} {dtext:>18s} {btext:>14s}")


def cross_validate(args, exe, root, cal, names, truth, index, common, res, can_fit, can_apply):
    """Fit on all visits but one; align the held-out visit alone, plain and with the files."""
    held = VISITS[index % args.visits]
    if not (can_fit and can_apply):
        print("cross-validation: ceers-align lacks --fit-distortion or --distortion-file: skipped")
        return None
    train = [n for v, ns in names.items() if v != held for n in ns]
    link(train, cal, root / "cv_train" / "cal")
    link(names[held], cal, root / "cv_held" / "cal")
    fit_out = root / "cv_train" / "out"
    s_fit, _, code_fit = align(exe, root / "cv_train" / "cal", fit_out, root / "cv_train" / "work",
                               common, ["--fit-distortion"])
    figures = {"held": held, "exit_fit": code_fit}
    for label, extra in (("before", []),
                         ("after", ["--distortion-file", str(fit_out / "distortion")])):
        out = root / "cv_held" / f"out_{label}"
        _, _, code = align(exe, root / "cv_held" / "cal", out, root / "cv_held" / f"work_{label}",
                           common, extra)
        scores = score(out, names[held], truth, 1, args.shape)
        figures[label] = summarize(scores)
        figures[f"exit_{label}"] = code
    if "C" in res and "D" in res:
        figures["in_D"] = summarize(res["D"]["scores"], names[held])
        figures["in_C"] = summarize(res["C"]["scores"], names[held])
    b, a = figures["before"][0], figures["after"][0]
    line = (f"cross-validation, {held} held out (fit on the other {args.visits - 1} visits in "
            f"{s_fit:.0f} s, exit {code_fit}): median RMS alone {b:.3f} -> with the files {a:.3f} "
            f"mas (gain {b - a:+.3f})")
    if "in_D" in figures:
        gain = figures["in_D"][0] - figures["in_C"][0]
        line += (f"; in-sample on its images D {figures['in_D'][0]:.3f} -> C "
                 f"{figures['in_C'][0]:.3f} (gain {gain:+.3f})")
    print(line)
    return figures


def report(results, args):
    """The summary over draws against the acceptance figures."""
    print(f"\nsummary over {len(results)} draws ({args.visits} visits x {FILTER} x "
          f"{len(args.detectors)} detectors x 3 dithers, {args.shape} px, injected "
          f"{args.rms_mas} mas rms per axis; mas)")
    head = (f"{'seed':>4s} {'A med':>6s} {'C med':>6s} {'C-A':>6s} {'A wst':>6s} {'C wst':>6s} "
            f"{'C-A':>6s} {'D med':>6s} {'B-A':>6s} {'|B-A|i':>6s} {'fit-inj':>7s} "
            f"{'t C/D':>6s} {'t B/A':>6s} {'M C/D':>6s} {'M B/A':>6s}")
    print(head)
    rows = []
    for r in results:
        if not all(k in r for k in "ABCD"):
            print(f"{r['seed']:4d}  (runs missing: {''.join(k for k in 'ABCD' if k not in r)})")
            continue
        a, b, c, d = (r[k] for k in "ABCD")
        per_image = np.median([abs(b["scores"][n][0] - a["scores"][n][0]) for n in a["scores"]])
        fits = [max(v[2]) for v in r["fitted"].values() if v is not None]
        worst_fit = max(fits) if len(fits) == len(r["fitted"]) else float("inf")
        row = (c["median"] - a["median"], c["worst"] - a["worst"], b["median"] - a["median"],
               per_image, worst_fit)
        rows.append(row)
        print(f"{r['seed']:4d} {a['median']:6.3f} {c['median']:6.3f} {row[0]:+6.3f} "
              f"{a['worst']:6.2f} {c['worst']:6.2f} {row[1]:+6.2f} {d['median']:6.3f} "
              f"{row[2]:+6.3f} {row[3]:6.3f} {row[4]:7.3f} {c['seconds'] / d['seconds']:6.2f} "
              f"{b['seconds'] / a['seconds']:6.2f} {c['peak'] / d['peak']:6.2f} "
              f"{b['peak'] / a['peak']:6.2f}")
    print("C-A: median per-image RMS (and worst point) with the residual and --fit-distortion "
          "minus without the residual, plain; B-A: --fit-distortion's change without a residual "
          "(|B-A|i: median over images of the change of its RMS); fit-inj: worst detector's "
          "fitted - injected residual (larger axis); t, M: wall time, peak PSS ratios")
    if rows:
        rows = np.array(rows)
        print(f"acceptance over {len(rows)} draws: |C-A| median <= 0.3: "
              f"{int(np.sum(np.abs(rows[:, 0]) <= 0.3))}/{len(rows)} (largest "
              f"{np.max(np.abs(rows[:, 0])):.3f}); |C-A| worst <= 0.6: "
              f"{int(np.sum(np.abs(rows[:, 1]) <= 0.6))}/{len(rows)} (largest "
              f"{np.max(np.abs(rows[:, 1])):.3f}); |B-A| <= 0.05: "
              f"{int(np.sum(np.abs(rows[:, 2]) <= 0.05))}/{len(rows)} (largest "
              f"{np.max(np.abs(rows[:, 2])):.3f}); fitted - injected <= 1.0 per detector: "
              f"{int(np.sum(rows[:, 4] <= 1.0))}/{len(rows)} (largest {np.max(rows[:, 4]):.3f})")
        times = {k: np.median([r[k]["seconds"] for r in results if k in r]) for k in "ABCD"}
        peaks = {k: np.median([r[k]["peak"] for r in results if k in r]) for k in "ABCD"}
        print("median wall time, peak PSS: " + ", ".join(
            f"{k} {times[k]:.0f} s {peaks[k]:.0f} MiB" for k in "ABCD"))
    cv = [r["cv"] for r in results if r.get("cv")]
    if cv:
        before = np.array([c["before"][0] for c in cv])
        after = np.array([c["after"][0] for c in cv])
        ins = [c["in_D"][0] - c["in_C"][0] for c in cv if "in_D" in c]
        print(f"cross-validation over {len(cv)} draws: held-out median RMS {np.median(before):.3f}"
              f" -> {np.median(after):.3f} mas (median gain {np.median(before - after):+.3f}); "
              f"in-sample gain on the same images "
              f"{np.median(ins) if ins else float('nan'):+.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=4)
    parser.add_argument("--detectors", nargs="+", default=["nrca1", "nrca2", "nrca3", "nrca4"])
    parser.add_argument("--shape", type=int, default=2048)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--rms-mas", type=float, default=3.0)
    # make_visit's defaults (noise 0.1, sources to 26.5) give ~30-60 detections per SW frame;
    # --noise 0.03 --mag-limit 27.5: CEERS' depth (F200W 5-sigma ~28.9, deeper than the HST
    # reference), every reference source in the frame detected.
    parser.add_argument("--noise", type=float, default=0.1, help="pixel noise of make_visit")
    parser.add_argument("--mag-limit", type=float, default=26.5,
                        help="faintest reference source rendered")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--params", default=str(PARAMS),
                        help="parameter file of every run (default: visit 001's F200W file)")
    parser.add_argument("--shared-detector-terms", action="store_true",
                        help="pass --shared-detector-terms to every run")
    parser.add_argument("--cross-validate", action="store_true")
    parser.add_argument("--keep", help="build the surveys and keep the outputs in this folder")
    args = parser.parse_args()
    if not 2 <= args.visits <= len(VISITS):
        parser.error(f"--visits must be 2 to {len(VISITS)}")
    exe = str(Path(sys.executable).parent / "ceers-align")
    can_fit = has_option(exe, "--fit-distortion")
    can_apply = has_option(exe, "--distortion-file")
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_distortion_"))
    tmp.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(args.draws):
        results.append(draw(args, exe, tmp, args.first_seed + i, i, can_fit, can_apply))
        # A long run outlives a command's development: look again before the next draw.
        can_fit = has_option(exe, "--fit-distortion")
        can_apply = has_option(exe, "--distortion-file")
    report(results, args)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
