"""A whole survey in one command: ``ceers-align --all`` against one ``ceers-align`` per group.

Usage:
    python benchmarks/bench_survey.py [--visits 5] [--shape 1024] [--seed 1]
        [--memory-groups 1 5 15] [--n-jobs 2] [--keep DIR]

Builds a CEERS-like survey with the real CEERS WCS models as truth: ``--visits``
of jw01345001001, 002001, 003001, 004001, 052001, each in three filters observed
by CEERS' real pointings: F200W (SW, group 02201), F150W (SW, group 04201; visit
052001 has only 02201, whose pointings it reuses) and F444W (LW, group 02201),
3 dithers x 8 SW or 2 LW detectors. Frames are cut to ``--shape`` pixels (the
detector's first rows and columns, a subarray; 1024 by default to keep the run
within minutes; CEERS' are 2048). The reference catalog is the real HST F160W one;
each group has its own visit error (~0.5"), dither errors and galaxy offsets as in
`ceers_steps.synthetic.visits.make_visit`. Parameters: the package's CEERS parameter files.

Then, with ``--n-jobs`` processes: (1) ``ceers-align --all`` over the whole folder,
(2) ``ceers-align VISIT FILTER`` once per group, one after the other (as CEERS ran
``run_tweakreg.py``), (3) ``ceers-align --all`` over the first 1, 5, ... groups of
``--memory-groups`` (files linked into folders of their own). Each is a fresh process;
the peak memory of its whole process tree (sum of proportional set sizes, sampled
every 50 ms, as in bench_scaling.py) is reported, with wall time, seconds per image, and the
accuracy of every group against its truth (saved WCS models on a 16x16 grid per
image: median over images of the per-image RMS, worst point; mas).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VISITS = ["jw01345001001", "jw01345002001", "jw01345003001", "jw01345004001", "jw01345052001"]
SW = ("nrca1", "nrca2", "nrca3", "nrca4", "nrcb1", "nrcb2", "nrcb3", "nrcb4")
LW = ("nrcalong", "nrcblong")
# (filter, detectors, truth group, file group)
FILTERS = [("F200W", SW, "02201", "02201"), ("F150W", SW, "04201", "04201"),
           ("F444W", LW, "02201", "02201")]


def build(folder, n_visits, shape, seed):
    """Write the survey's cal files; return image name -> true WCS and the group list."""
    from ceers_steps.synthetic import ceers_data_dir, make_visit

    data = ceers_data_dir()
    if data is None:
        sys.exit("bench_survey: the real CEERS data are needed (../shared/ceers or $CEERS_DATA_DIR)")
    available = {p.name.split("_")[0] + "_" + p.name.split("_")[1]
                 for p in (data / "tweakreg_wcs").glob("*.asdf")}
    rng = np.random.default_rng(seed)
    truth, groups = {}, []
    for k, visit in enumerate(VISITS[:n_visits]):
        for f, (filt, dets, group, label) in enumerate(FILTERS):
            if f"{visit}_{group}" not in available:
                group = "02201"  # visit 052001: the second SW filter reuses 02201's pointings
            shift = tuple(rng.uniform(-0.5, 0.5, 2))
            v = make_visit(detectors=dets, n_dithers=3, shape=(shape, shape), use_real=True,
                           seed=seed * 100 + 10 * k + f, visit_id=visit, filter_name=filt,
                           group=group, visit_shift=shift)
            for image in v.images:
                name = image.model.meta.filename.replace(f"_{group}_", f"_{label}_")
                image.model.meta.filename = name
                image.model.save(folder / name)
                truth[name] = image.true_wcs
            groups.append((visit, filt.lower(), [im.model.meta.filename for im in v.images]))
    return truth, groups, data / "CEERS_EGS_HST_v1.9_cat_radecmag.ecsv"


def run(cmd, cwd):
    """Run a command; return (seconds, peak PSS of its process tree in bytes, returncode)."""
    # bench_scaling's sampler: proportional set sizes, so pages shared by forked workers
    # count once (a plain RSS sum counts the parent's jwst import once per worker).
    from bench_scaling import run_measured

    seconds, peak_mib, code, *_ = run_measured(cmd, cwd, dict(os.environ))
    return seconds, peak_mib * 2**20, code


def accuracy(out, names, truth, shape):
    import asdf

    from ceers_steps.core.wcs_utils import angular_separation_mas

    g = np.linspace(0, shape - 1, 16)
    x, y = np.meshgrid(g, g)
    rms, worst = [], 0.0
    for name in names:
        path = out / "tweakreg_wcs" / name.replace("_cal.fits", "_tweakreg.asdf")
        if not path.exists():
            return float("inf"), float("inf")
        with asdf.open(path) as af:
            d = angular_separation_mas(*af["wcs"](x, y), *truth[name](x, y))
        rms.append(float(np.sqrt(np.mean(d ** 2))))
        worst = max(worst, float(d.max()))
    return float(np.median(rms)), worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=5)
    parser.add_argument("--shape", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--memory-groups", type=int, nargs="*", default=[1, 5, 15])
    parser.add_argument("--keep", help="build (or reuse) the survey in this folder")
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "ceers-align")
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_survey_"))
    cal = tmp / "calibrated"
    cal.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    truth, groups, refcat = build(cal, args.visits, args.shape, args.seed)
    n = len(truth)
    print(f"survey: {len(groups)} groups ({args.visits} visits x F200W, F150W, F444W), {n} images "
          f"{args.shape}x{args.shape} (built in {time.perf_counter() - start:.0f} s), "
          f"--n-jobs {args.n_jobs}")
    common = ["--abs-refcat", str(refcat), "--n-jobs", str(args.n_jobs)]

    out = tmp / "all"
    shutil.rmtree(out, ignore_errors=True)
    seconds, peak, code = run([exe, "--all", "--input-dir", str(cal), "--output-dir", str(out),
                               *common], tmp)
    print(f"\nceers-align --all: {seconds:.1f} s, {seconds / n:.3f} s per image, peak PSS of the "
          f"process tree {peak / 2**20:.0f} MiB, exit {code}")
    print(f"{'group':24s} {'images':>6s} {'median mas':>10s} {'worst mas':>9s}")
    for visit, filt, names in groups:
        med, worst = accuracy(out, names, truth, args.shape)
        print(f"{visit + '_' + filt:24s} {len(names):6d} {med:10.2f} {worst:9.2f}")

    one = tmp / "one_at_a_time"
    shutil.rmtree(one, ignore_errors=True)
    total, peaks = 0.0, []
    for visit, filt, _ in groups:
        s, p, code = run([exe, visit, filt, "--input-dir", str(cal), "--output-dir", str(one),
                          *common], tmp)
        total += s
        peaks.append(p)
    same = all(accuracy(one, names, truth, args.shape) == accuracy(out, names, truth, args.shape)
               for _, _, names in groups)
    print(f"\none 'ceers-align VISIT FILTER' per group, one after the other: {total:.1f} s, "
          f"{total / n:.3f} s per image, largest peak PSS {max(peaks) / 2**20:.0f} MiB; "
          f"same WCS as --all: {same}")
    print(f"--all / one at a time: {seconds / total:.2f} of the time")

    if args.memory_groups:
        print(f"\n{'groups':>6s} {'images':>6s} {'seconds':>8s} {'s/image':>8s} {'peak MiB':>9s}")
    for k in args.memory_groups:
        k = min(k, len(groups))
        sub = tmp / f"mem{k}"
        shutil.rmtree(sub, ignore_errors=True)
        (sub / "cal").mkdir(parents=True)
        names = [name for _, _, ns in groups[:k] for name in ns]
        for name in names:
            os.link(cal / name, sub / "cal" / name)
        s, p, code = run([exe, "--all", "--input-dir", str(sub / "cal"), "--output-dir",
                          str(sub / "out"), *common], tmp)
        print(f"{k:6d} {len(names):6d} {s:8.1f} {s / len(names):8.3f} {p / 2**20:9.0f}")
    if not args.keep:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
