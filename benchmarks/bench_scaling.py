"""Whole-run scaling: ceers_align (serial and parallel) vs jwst's TweakRegStep, as whole processes.

Usage:
    python benchmarks/bench_scaling.py [--sizes 6 24 48 96] [--jwst-sizes 6 24]
        [--workdir DIR] [--keep] [--real]

For each size, writes a synthetic SW visit of 2048x2048 cal files (8 detectors x
n/8 dithers; 6 = 2 detectors x 3 dithers; built-in NIRCam-like WCS truth, or with
``--real`` the real CEERS WCS models for 24 images) with a known WCS error, then
runs, each as its own process, exactly what a user types:

- ``strun parameter_files/jw01345001001_f200w.asdf asn.json --steps.tweakreg.abs_refcat=...
  --n_jobs=1`` (serial) and without ``--n_jobs`` (all cores): detection, relative and
  absolute fits, writing catalogs, results, WCS models and ``*_tweakreg.fits``;
- ``strun tweakreg asn.json`` (jwst, its own star finder with the cfg's
  ``snr_threshold``/``kernel_fwhm``/``bkg_boxsize``, the same fit parameters with
  ``abs_separation`` raised to just above sqrt(2) x tolerance, which it requires),
  ``STPIPE_DISABLE_CRDS_STEPPARS=true``.

Reports wall seconds, seconds per image, peak memory of the whole process tree
(sum of the processes' proportional set sizes, PSS, sampled every 50 ms: pages
shared between forked workers are counted once) and accuracy of the written
``*_tweakreg.fits`` against the truth (median per-image RMS / worst point, mas).

Where the time goes: each ceers_align run's phases, from the time stamps of its own log
lines (start-up: process start, imports and the parameter file, to the first line of work;
detection; fit: reference catalog, matching and fits; writing: aligned images and WCS
models; report: alignment report and results tables; exit). And the per-image floor
measured in this process on the same files, serially: ``datamodels.open`` + the CEERS
detection (`ceers_steps.detection.catalogs.build_catalog`, SEP) + ``model.save`` of a copy, the
read + detect + write that every run of these files does through stdatamodels and SEP.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "parameter_files" / "jw01345001001_f200w.asdf"
SW = ("nrca1", "nrca2", "nrca3", "nrca4", "nrcb1", "nrcb2", "nrcb3", "nrcb4")
JWST_ARGS = ["--snr_threshold=2.5", "--kernel_fwhm=1.5", "--bkg_boxsize=100", "--minobj=20",
             "--searchrad=1.0", "--separation=0.1", "--tolerance=0.05", "--nclip=1",
             "--sigma=0.7", "--abs_minobj=20", "--abs_searchrad=1.0", "--abs_separation=0.576",
             "--abs_tolerance=0.4", "--abs_nclip=1", "--abs_sigma=0.6", "--abs_fitgeometry=rshift"]


def _tree_pids(root):
    pids, frontier = [root], [root]
    while frontier:
        pid = frontier.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            pids.append(child)
            frontier.append(child)
    return pids


def _pss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_measured(cmd, cwd, env):
    """
    Run a command; return seconds, peak MiB of the process tree, return code, the tail of
    its log, and its `phases` (None when its log has not every phase's line).
    """
    peak = [0.0]
    t0, epoch0 = time.perf_counter(), time.time()
    with open(Path(cwd) / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], sum(_pss_mib(p) for p in _tree_pids(proc.pid)))
                done.wait(0.05)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        rc = proc.wait()
        done.set()
        thread.join()
    seconds = time.perf_counter() - t0
    text = (Path(cwd) / "run.log").read_text()
    return seconds, peak[0], rc, text[-1500:], phases(text, epoch0, epoch0 + seconds)


#: Log lines that end each phase of a ceers_align run (the first one starts the work).
PHASES = (("start-up", "CEERS alignment of"), ("detection", "Detection: "),
          ("fit", "Results for"), ("writing", "Writing aligned images: "),
          ("report", "Step ceers_align done"))


def phases(log_text, t_start, t_end):
    """Seconds per phase of a ceers_align run, from its log's time stamps (local time)."""
    from datetime import datetime

    stamps = []
    for line in log_text.splitlines():
        try:
            when = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        stamps.append((when, line))
    out, last = {}, t_start
    for name, marker in PHASES:
        # The last line carrying the marker: "Detection: 24/24 done" ends detection.
        hits = [when for when, line in stamps if marker in line and
                (not marker.endswith(": ") or " done" in line)]
        if not hits:
            return None
        out[name] = hits[-1] - last
        last = hits[-1]
    out["exit"] = t_end - last
    return out


def floor(paths, out_dir):
    """Per-image seconds of open + CEERS detection + save, serially, on ``paths``."""
    from ceers_steps.core.compat import datamodels
    from ceers_steps.detection.catalogs import build_catalog
    from ceers_steps.steps.pipeline import CeersAlignPipeline

    params = CeersAlignPipeline.from_config_file(str(PARAMS)).catalog.detection_parameters()
    out_dir.mkdir(parents=True, exist_ok=True)
    spent = {"read": 0.0, "detect": 0.0, "write": 0.0}
    for path in paths:
        t0 = time.perf_counter()
        model = datamodels.open(str(path))
        t1 = time.perf_counter()
        build_catalog(model, params)
        t2 = time.perf_counter()
        model.save(str(out_dir / Path(path).name))
        model.close()
        t3 = time.perf_counter()
        spent["read"] += t1 - t0
        spent["detect"] += t2 - t1
        spent["write"] += t3 - t2
    shutil.rmtree(out_dir)
    return {k: v / len(paths) for k, v in spent.items()}


def make_data(n, directory, real):
    from ceers_steps.synthetic import make_visit, write_visit

    if n == 6:
        detectors, dithers = SW[:2], 3
    else:
        detectors, dithers = SW, n // 8
    visit = make_visit(detectors=detectors, n_dithers=dithers, seed=1,
                       use_real=real and dithers <= 3)
    asn, refcat, paths = write_visit(visit, directory)
    return visit, asn, refcat


def score(out_dir, visit):
    from ceers_steps.core.compat import datamodels
    from ceers_steps.core.wcs_utils import alignment_accuracy

    models = []
    for image in visit.images:
        stem = image.model.meta.filename.replace("_cal.fits", "")
        # ceers_align writes <base>_tweakreg.fits; strun tweakreg <base>_tweakregstep.fits
        found = [p for p in (Path(out_dir) / f"{stem}_tweakreg.fits",
                             Path(out_dir) / f"{stem}_tweakregstep.fits") if p.exists()]
        if not found:
            return float("nan"), float("nan")
        path = found[0]
        models.append(datamodels.open(path))
    result = alignment_accuracy(models, [image.true_wcs for image in visit.images])
    for m in models:
        m.close()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6, 24, 48, 96])
    parser.add_argument("--jwst-sizes", type=int, nargs="*", default=[6, 24])
    parser.add_argument("--workdir", help="where to write the visits (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the visits and outputs")
    parser.add_argument("--real", action="store_true",
                        help="real CEERS WCS truth where possible (up to 24 images)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    bindir = Path(sys.executable).parent
    strun = str(bindir / "strun")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "STPIPE"))}
    jwst_env = dict(env, STPIPE_DISABLE_CRDS_STEPPARS="true")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ceers_scaling_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; data in {work}")
    header = (f"{'images':>6} {'run':>16} {'seconds':>8} {'s/image':>8} {'peak MiB':>9} "
              f"{'median mas':>10} {'worst mas':>9}")
    print(header)
    rows = []
    for n in args.sizes:
        d = work / f"visit_{n}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        visit, asn, refcat = make_data(n, d / "data", args.real)
        runs = [
            ("ceers_align -j1", [strun, str(PARAMS), str(asn), f"--steps.tweakreg.abs_refcat={refcat}",
                                 "--n_jobs=1"], env),
            ("ceers_align", [strun, str(PARAMS), str(asn), f"--steps.tweakreg.abs_refcat={refcat}"],
             env),
        ]
        if n in args.jwst_sizes:
            runs.append(("jwst TweakRegStep", [strun, "tweakreg", str(asn),
                                               f"--abs_refcat={refcat}", *JWST_ARGS], jwst_env))
        times, profile = {}, {}
        for name, cmd, run_env in runs:
            out = d / name.replace(" ", "_")
            out.mkdir()
            seconds, peak, rc, tail, spent = run_measured([*cmd, f"--output_dir={out}"], out,
                                                          run_env)
            if rc != 0:
                print(f"{name} failed (exit {rc}):\n{tail}")
                continue
            median, worst = score(out, visit)
            times[name] = seconds
            row = (n, name, seconds, seconds / n, peak, median, worst)
            rows.append(row)
            print(f"{n:>6} {name:>16} {seconds:>8.1f} {seconds / n:>8.2f} {peak:>9.0f} "
                  f"{median:>10.2f} {worst:>9.2f}", flush=True)
            if spent and name.startswith("ceers_align"):
                profile[name] = spent
                print(f"{'':>6} {'phases':>16} " + ", ".join(
                    f"{k} {v:.1f} s" for k, v in spent.items()), flush=True)
        if "jwst TweakRegStep" in times and "ceers_align" in times:
            print(f"{n:>6} {'jwst / ceers_align':>16} "
                  f"{times['jwst TweakRegStep'] / times['ceers_align']:>8.1f}x", flush=True)
        cal = sorted((d / "data").glob("*_cal.fits"))
        least = floor(cal, d / "floor")
        print(f"{n:>6} {'floor per image':>16} read {least['read']:.3f} s + detect "
              f"{least['detect']:.3f} s + write {least['write']:.3f} s = "
              f"{sum(least.values()):.3f} s (open + CEERS detection + save, serial)", flush=True)
        rows.append((n, "floor", least, profile))
        if not args.keep:
            shutil.rmtree(d)
    (work / "scaling.json").write_text(json.dumps(rows, indent=1))
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
