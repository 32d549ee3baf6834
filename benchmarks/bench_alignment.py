"""Alignment accuracy against truth, speed and memory: ceers_tweak vs jwst's TweakRegStep.

Usage:
    python benchmarks/bench_alignment.py [--case sw|sw-det|lw] [--seeds 1 2 3]
        [--modes joint detector visit] [--jwst] [--oracle] [--real|--builtin]
        [--frames clean|realistic|both] [--detector-rotation ARCSEC]
        [--no-detector-rotations]

Builds synthetic visits from the real CEERS WCS models and HST catalog (or the
built-in NIRCam-like WCS): 3 dithers x 8 SW detectors (or 2 LW detectors), a
visit offset (~0.5") and rotation (0.02 deg), ~20 mas per-dither errors, ~10 mas
intrinsic galaxy offsets and, for ``sw-det``, 30 mas rms per-detector placement
errors. ``--frames realistic`` renders the same sources with the nuisances of real
cal files (`ceers_steps.synthetic.visits.add_nircam_artifacts`); ``both`` runs each seed
clean and realistic and compares them. Catalogs: SEP with the CEERS recipe. Parameters: the real CEERS
nircam1 values for jw01345001001 (f200w for SW, f444w for LW), unchanged.
Score: on-sky difference between aligned and true WCS on a 16x16 pixel grid per
image; reported as the median over images of the per-image RMS and the worst
grid point, in mas. Times are for the alignment step with catalogs given
(in-memory models, untraced run); peak memory is the traced Python peak of a
second, identical call (excluding the input models, made before it).
"""

import argparse
import logging
import os
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

from ceers_steps.core.wcs_utils import alignment_accuracy
from ceers_steps.detection.catalogs import build_catalog, write_catalog
from ceers_steps.io.inputs import library_models
from ceers_steps.synthetic.visits import LW_DETECTORS, SW_DETECTORS, make_visit, oracle_floor

# CEERS nircam1 f200w / f444w, section [jw01345001001] (tweakreg_cfgs), unchanged.
CEERS_SW = dict(minobj=20, searchrad=1.0, separation=0.1, tolerance=0.05, nclip=1, sigma=0.7,
                abs_minobj=20, abs_searchrad=1.0, abs_separation=0.5, abs_tolerance=0.4,
                abs_nclip=1, abs_sigma=0.6, abs_fitgeometry="rshift")
CEERS_LW = dict(minobj=20, searchrad=1.0, separation=0.1, tolerance=0.02, nclip=1, sigma=0.6,
                abs_minobj=20, abs_searchrad=1.0, abs_separation=0.5, abs_tolerance=0.4,
                abs_nclip=1, abs_sigma=0.7, abs_fitgeometry="rscale")


def add_truth_options(parser):
    """``--builtin`` / ``--real``: which WCS truth the synthetic visits use."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--builtin", action="store_true", help="built-in NIRCam-like WCS truth")
    src.add_argument("--real", action="store_true", help="require the real CEERS data")


def truth_choice(args):
    """``use_real`` for `make_visit`: False, True, or None (the real data when present)."""
    return False if args.builtin else (True if args.real else None)


def quiet():
    """Benchmarks print their own results: no warnings, no step logs."""
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


def score(models, visit):
    return alignment_accuracy(models, [image.true_wcs for image in visit.images])


#: Seconds spent in `joint_fit` and the reported uncertainty (mas) per image, of the last run.
FIT_SECONDS, REPORTED = [], {}


def _instrument():
    """Time the joint fit itself and keep each image's reported uncertainty."""
    from ceers_steps.fitting import absolute

    fit, uncertainty = absolute.joint_fit, absolute._uncertainty

    def timed_fit(*args, **kwargs):
        t0 = time.perf_counter()
        out = fit(*args, **kwargs)
        FIT_SECONDS.append(time.perf_counter() - t0)
        return out

    def kept_uncertainty(fit_result, index, im, plane):
        out = uncertainty(fit_result, index, im, plane)
        REPORTED[im.name] = out["err_center"]
        return out

    absolute.joint_fit, absolute._uncertainty = timed_fit, kept_uncertainty


def centre_errors(models, visit):
    """On-sky error (mas) of each aligned image's centre against its true WCS."""
    from ceers_steps.core.wcs_utils import angular_separation_mas

    out = {}
    for model, image in zip(models, visit.images, strict=True):
        ny, nx = model.data.shape
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
        ra, dec = model.meta.wcs(cx, cy)
        ra0, dec0 = image.true_wcs(cx, cy)
        out[model.meta.filename] = float(angular_separation_mas(ra, dec, ra0, dec0))
    return out


def run_ceers(visit, refcat_path, params, mode, trace=True):
    from ceers_steps import CeersTweakRegStep
    from ceers_steps.core.compat import make_library

    def call(library):
        return CeersTweakRegStep.call(library, abs_refcat=str(refcat_path), abs_group=mode,
                                      save_fit_results=False, **params)

    # Memory in a traced run; time in an untraced one (tracing slows Python down).
    peak = float("nan")
    if trace:
        library = make_library([im.model.copy() for im in visit.images])
        tracemalloc.start()
        call(library)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    library = make_library([im.model.copy() for im in visit.images])
    FIT_SECONDS.clear()
    REPORTED.clear()
    t0 = time.perf_counter()
    result = call(library)
    dt = time.perf_counter() - t0
    out = library_models(result)
    return out, dt, peak


def run_jwst(visit, refcat_path, params):
    """jwst's TweakRegStep with the same SEP catalogs and the CEERS parameters it accepts."""
    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"  # stpipe accepts only true/yes words
    from jwst.tweakreg import TweakRegStep

    from ceers_steps.core.compat import make_library

    p = dict(params)
    for prefix in ("", "abs_"):
        sep, tol = p[prefix + "separation"], p[prefix + "tolerance"]
        if sep <= np.sqrt(2) * tol:  # jwst refuses these; the least change it accepts
            p[prefix + "separation"] = round(np.sqrt(2) * tol + 0.01, 3)
    models = [im.model.copy() for im in visit.images]
    t0 = time.perf_counter()
    result = TweakRegStep.call(
        make_library(models), use_custom_catalogs=True, abs_refcat=str(refcat_path),
        fitgeometry="shift", use2dhist=False, enforce_user_order=True, expand_refcat=False,
        minobj=p["minobj"], searchrad=p["searchrad"], separation=p["separation"],
        tolerance=p["tolerance"], nclip=p["nclip"], sigma=p["sigma"],
        abs_minobj=p["abs_minobj"], abs_searchrad=p["abs_searchrad"], abs_use2dhist=True,
        abs_separation=p["abs_separation"], abs_tolerance=p["abs_tolerance"],
        abs_fitgeometry=p["abs_fitgeometry"], abs_nclip=p["abs_nclip"], abs_sigma=p["abs_sigma"])
    dt = time.perf_counter() - t0
    out = library_models(result)
    return out, dt


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("sw", "sw-det", "lw"), default="sw")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--modes", nargs="+", default=["joint"],
                        choices=("joint", "detector", "visit"))
    parser.add_argument("--jwst", action="store_true", help="also run jwst's TweakRegStep")
    parser.add_argument("--oracle", action="store_true",
                        help="also print the oracle floor: the joint model fitted to the same "
                             "catalogs placed through the true WCS")
    parser.add_argument("--no-trace", action="store_true",
                        help="skip the traced run that measures peak memory (half the time)")
    parser.add_argument("--detector-rotation", type=float, default=0.0, metavar="ARCSEC",
                        help="also give each detector its own rotation error about its centre, "
                             "drawn with this rms (CEERS' 2022 per-detector fits differ by "
                             "26 arcsec median, up to 148, between NIRCam's modules)")
    parser.add_argument("--no-detector-rotations", action="store_true",
                        help="the joint fit without the detectors' own rotation terms "
                             "(abs_detector_rotations False: the model before them)")
    parser.add_argument("--frames", choices=("clean", "realistic", "both"), default="clean",
                        help="render clean frames, frames with real cal-file nuisances, or both")
    add_truth_options(parser)
    args = parser.parse_args()
    quiet()
    _instrument()

    lw = args.case == "lw"
    detectors = LW_DETECTORS if lw else SW_DETECTORS
    params = CEERS_LW if lw else CEERS_SW
    if args.no_detector_rotations:
        params = dict(params, abs_detector_rotations=False)
    use_real = truth_choice(args)
    print(f"case {args.case}: {len(detectors)} detectors x 3 dithers, CEERS parameters {params}"
          + (f", detector rotations {args.detector_rotation:g} arcsec rms"
             if args.detector_rotation else ""))
    frames = ("clean", "realistic") if args.frames == "both" else (args.frames,)
    print(f"{'seed':>4} {'frames':>9} {'method':>18} {'median mas':>11} {'worst mas':>10} "
          f"{'seconds':>8} {'peak MiB':>9} {'sources/img':>11}")
    summary = {}
    for seed in args.seeds:
        for kind in frames:
            visit = make_visit(detectors=detectors, n_dithers=3, use_real=use_real, seed=seed,
                               detector_error=0.03 if args.case == "sw-det" else 0.0,
                               detector_rotation=args.detector_rotation,
                               artifacts=kind == "realistic")
            run_seed(args, visit, params, seed, kind, summary)
    print()
    for (kind, method), values in summary.items():
        if method == "uncertainty":
            z = np.array(values)
            print(f"{kind:>9} reported uncertainty: true centre error within 2x the reported "
                  f"1-sigma (semi-major) for {np.mean(z < 2):.1%} of {len(z)} images, within 2.45x "
                  f"(2-D 95%) for {np.mean(z < 2.45):.1%}; joint fit "
                  f"{np.median(summary[(kind, 'fit seconds')]):.2f} s median, "
                  f"{np.max(summary[(kind, 'fit seconds')]):.2f} s max per visit")
            continue
        if method == "fit seconds":
            continue
        med = np.median([v[0] for v in values])
        worst = np.median([v[1] for v in values])
        crashed = sum(1 for v in values if not np.isfinite(v[0]))
        print(f"{kind:>9} {method:>18}: median over {len(values)} draws {med:.2f} mas median, "
              f"{worst:.2f} mas worst" + (f" (crashed on {crashed}, counted as infinite)"
                                          if crashed else ""))
        if method != "ceers_tweak joint" and (kind, "ceers_tweak joint") in summary:
            ours = np.array([v[0] for v in summary[(kind, "ceers_tweak joint")]])
            other = np.array([v[0] for v in values])
            diff = ours - other
            print(f"{'':>9} {'':>18}  joint minus this, per draw (mas): "
                  + " ".join(f"{d:+.2f}" for d in diff))
            # Paired over the same draws: a difference of medians over few draws is noise.
            ok = np.isfinite(diff)
            if ok.sum() > 1:
                d = diff[ok]
                print(f"{'':>9} {'':>18}  mean {d.mean():+.3f} +- {d.std(ddof=1) / np.sqrt(len(d)):.3f} "
                      f"mas (standard error); joint better on {int(np.sum(d < 0))}, worse by more "
                      f"than 0.2 mas on {int(np.sum(d > 0.2))} of {len(d)} draws")
    if len(frames) == 2:
        for method in {m for _, m in summary} - {"uncertainty", "fit seconds"}:
            c = np.median([v[0] for v in summary[("clean", method)]])
            r = np.median([v[0] for v in summary[("realistic", method)]])
            print(f"{method}: realistic / clean median = {r / c:.3f}")


def run_seed(args, visit, params, seed, kind, summary):
    with tempfile.TemporaryDirectory() as tmp:
        refcat_path = Path(tmp) / "refcat.ecsv"
        visit.refcat.write(refcat_path)
        n_sources = []
        for image in visit.images:
            cat = build_catalog(image.model)
            n_sources.append(len(cat))
            name = image.model.meta.filename.replace(".fits", "_cat.ecsv")
            path = write_catalog(cat, Path(tmp) / name)
            image.model.meta.tweakreg_catalog = str(path)
        n_src = f"{np.mean(n_sources):.1f}"
        for mode in args.modes:
            models, dt, peak = run_ceers(visit, refcat_path, params, mode, not args.no_trace)
            med, worst = score(models, visit)
            if mode == "joint":
                errors = centre_errors(models, visit)
                summary.setdefault((kind, "uncertainty"), []).extend(
                    errors[name] / REPORTED[name] for name in errors if name in REPORTED)
                summary.setdefault((kind, "fit seconds"), []).extend(FIT_SECONDS)
            label = "ceers_tweak " + mode
            summary.setdefault((kind, label), []).append((med, worst))
            print(f"{seed:>4} {kind:>9} {label:>18} {med:>11.2f} {worst:>10.2f} {dt:>8.1f} "
                  f"{peak:>9.0f} {n_src:>11}", flush=True)
        if args.oracle:
            geom = params["abs_fitgeometry"]
            med, worst = oracle_floor(visit, fitgeometry=geom)
            summary.setdefault((kind, "oracle floor"), []).append((med, worst))
            print(f"{seed:>4} {kind:>9} {'oracle floor':>18} {med:>11.2f} {worst:>10.2f} "
                  f"{'':>8} {'':>9} {n_src:>11}", flush=True)
        if args.jwst:
            try:
                models, dt = run_jwst(visit, refcat_path, params)
            except Exception as exc:  # noqa: BLE001 - jwst's own crash is a result to report
                summary.setdefault((kind, "jwst TweakRegStep"), []).append((np.inf, np.inf))
                print(f"{seed:>4} {kind:>9} {'jwst TweakRegStep':>18} crashed: "
                      f"{type(exc).__name__}: {str(exc)[:120]}", flush=True)
                return
            med, worst = score(models, visit)
            summary.setdefault((kind, "jwst TweakRegStep"), []).append((med, worst))
            print(f"{seed:>4} {kind:>9} {'jwst TweakRegStep':>18} {med:>11.2f} {worst:>10.2f} "
                  f"{dt:>8.1f} {'':>9} {n_src:>11}", flush=True)


if __name__ == "__main__":
    main()
