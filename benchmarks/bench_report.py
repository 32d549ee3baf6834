"""What the alignment report costs: seconds and memory per visit, against the alignment itself.

Usage:
    python benchmarks/bench_report.py [--case sw|lw] [--seed 1] [--repeat 3]
        [--artifacts] [--real|--builtin]

Builds one synthetic visit (3 dithers x 8 SW detectors, or 2 LW, 2048x2048, from
the real CEERS WCS models and HST catalog when present), SEP catalogs with the
CEERS recipe, and runs CeersTweakRegStep with the CEERS jw01345001001 parameters
``--repeat`` times with ``save_report=True`` (the first run includes importing
matplotlib) and once without. Prints per run the time of the report alone
(`ceers_steps.stages.report.write_reports`: residuals, grades, figures, HTML, DS9 regions), the
step's total time, the page's size and the grades; then the report's traced peak
Python memory in one more run (tracing slows it, so it is not timed).
"""

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench_alignment import CEERS_LW, CEERS_SW, add_truth_options, quiet, truth_choice

from ceers_steps import CeersTweakRegStep
from ceers_steps.detection.catalogs import build_catalog, write_catalog
from ceers_steps.stages import report as report_stage
from ceers_steps.synthetic.visits import LW_DETECTORS, SW_DETECTORS, make_visit

REPORT = []  # (seconds, traced peak bytes or None) of each write_reports call
TRACE = [False]  # trace memory in the next call (tracing slows Python code: timed apart)


def _instrument():
    original = report_stage.write_reports

    def timed(pars, *args, **kwargs):
        if TRACE[0]:
            tracemalloc.start()
        start = time.perf_counter()
        try:
            return original(pars, *args, **kwargs)
        finally:
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] if TRACE[0] else None
            tracemalloc.stop()
            if report_stage.report_enabled(pars):
                REPORT.append((seconds, peak))

    report_stage.write_reports = timed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("sw", "lw"), default="sw")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--artifacts", action="store_true", help="realistic cal-file nuisances")
    add_truth_options(parser)
    args = parser.parse_args()
    quiet()
    _instrument()
    from ceers_steps.core.compat import make_library

    lw = args.case == "lw"
    params = CEERS_LW if lw else CEERS_SW
    use_real = truth_choice(args)
    visit = make_visit(detectors=LW_DETECTORS if lw else SW_DETECTORS, n_dithers=3,
                       use_real=use_real, seed=args.seed, artifacts=args.artifacts)
    n = len(visit.images)
    print(f"case {args.case}: {n} images 2048x2048, real truth {visit.truth['real']}, "
          f"artifacts {args.artifacts}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        visit.refcat.write(tmp / "refcat.ecsv")
        for image in visit.images:
            path = tmp / image.model.meta.filename.replace(".fits", "_cat.ecsv")
            write_catalog(build_catalog(image.model), path)
            image.model.meta.tweakreg_catalog = str(path)

        def run(report, out):
            library = make_library([im.model.copy() for im in visit.images])
            step = CeersTweakRegStep(abs_refcat=str(tmp / "refcat.ecsv"), output_dir=str(out),
                                     save_report=report, **params)
            start = time.perf_counter()
            step.run(library)
            return time.perf_counter() - start, step

        print(f"{'run':>14} {'report s':>9} {'s/image':>8} {'step s':>7} {'page KiB':>9}  grades")
        for k in range(args.repeat):
            total, step = run(True, tmp / f"out{k}")
            seconds, _ = REPORT[-1]
            page = next(iter(step.report_paths.values()))
            html = page.read_text()
            grades = {g: html.count(f"data-col='grade'>{g}<") for g in ("good", "check", "poor")}
            label = "report (cold)" if k == 0 else f"report #{k + 1}"
            print(f"{label:>14} {seconds:9.2f} {seconds / n:8.3f} {total:7.2f} "
                  f"{page.stat().st_size / 1024:9.0f}  {grades}")
        total, _ = run(False, tmp / "off")
        print(f"{'no report':>14} {'':>9} {'':>8} {total:7.2f}")
        TRACE[0] = True
        run(True, tmp / "traced")
        peak = REPORT[-1][1]
        warm = [s for s, _ in REPORT[1:-1]] or [REPORT[0][0]]
        print(f"report: {REPORT[0][0]:.2f} s cold (first in the process, matplotlib import "
              f"included), {statistics.median(warm):.2f} s warm median, for {n} images; "
              f"traced peak Python memory of the report {peak / 2**20:.1f} MiB (separate run)")


if __name__ == "__main__":
    main()
