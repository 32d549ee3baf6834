"""What the hold-out validation costs: alignment time of a visit with and without it.

Usage:
    python benchmarks/bench_holdout_time.py [--case sw|lw] [--seed 1] [--repeats 3]

One synthetic visit (3 dithers x 8 SW or 2 LW detectors, 2048x2048, built-in WCS),
SEP catalogs with the CEERS recipe, then CeersTweakRegStep (default joint fit,
results and report off) timed alternately with the hold-out
(`ceers_steps.fitting.jointfit.JointFitResult.holdout`) and with it switched off, ``--repeats``
times each; prints each time, the medians, the hold-out's own time and the ratio.
"""

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ceers_steps.detection.catalogs import build_catalog, write_catalog
from ceers_steps.fitting.jointfit import JointFitResult
from ceers_steps.synthetic.visits import LW_DETECTORS, SW_DETECTORS, make_visit


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("sw", "lw"), default="sw")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    from ceers_steps import CeersTweakRegStep
    from ceers_steps.core.compat import make_library

    visit = make_visit(detectors=LW_DETECTORS if args.case == "lw" else SW_DETECTORS,
                       n_dithers=3, use_real=False, seed=args.seed)
    holdout, spent = JointFitResult.holdout, []

    def timed(self, *a, **k):
        t0 = time.perf_counter()
        out = holdout(self, *a, **k)
        spent.append(time.perf_counter() - t0)
        return out

    times = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        refcat = Path(tmp) / "refcat.ecsv"
        visit.refcat.write(refcat)
        for image in visit.images:
            path = Path(tmp) / image.model.meta.filename.replace(".fits", "_cat.ecsv")
            write_catalog(build_catalog(image.model), path)
            image.model.meta.tweakreg_catalog = str(path)
        for _ in range(args.repeats):
            for mode in ("with", "without"):
                JointFitResult.holdout = timed if mode == "with" else (lambda self, *a, **k: None)
                library = make_library([im.model.copy() for im in visit.images])
                t0 = time.perf_counter()
                CeersTweakRegStep.call(library, abs_refcat=str(refcat), save_fit_results=False,
                                       save_report=False)
                times[mode].append(time.perf_counter() - t0)
                print(f"{mode:>7} hold-out: {times[mode][-1]:.2f} s", flush=True)
    JointFitResult.holdout = holdout
    w, wo = np.median(times["with"]), np.median(times["without"])
    print(f"{args.case}, {len(visit.images)} images: alignment {wo:.2f} s without the hold-out, "
          f"{w:.2f} s with it (medians of {args.repeats}); the hold-out itself "
          f"{np.median(spent):.2f} s median = {np.median(spent) / wo:.1%} of the alignment "
          f"time; with / without = {w / wo:.3f}")


if __name__ == "__main__":
    main()
