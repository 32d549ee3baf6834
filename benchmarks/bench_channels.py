"""``--joint-channels`` and ``--shared-detector-terms`` against each visit and filter alone.

Usage:
    python benchmarks/bench_channels.py [--cases channels shared] [--draws 5] [--shape 1024]
        [--visits 5] [--detector-error 30] [--n-jobs 2] [--seed 1] [--keep DIR]

Every case is built with the real CEERS WCS models as truth and the real HST F160W
catalog (as `ceers_steps.synthetic.visits.make_visit` does; frames cut to ``--shape`` pixels,
a subarray of each detector, 1024 by default to keep a draw within a minute or two),
then aligned by ``ceers-align --all`` with the package's CEERS parameter files, once
without and once with the option, on the same files (so on the same catalogs: SEP is
deterministic). Accuracy: each saved WCS model against its truth on a 16x16 pixel grid,
the image's RMS; per draw the median over the images scored (mas).

``channels``: per draw one CEERS visit (jw01345001001, pointings 02201) in F200W (SW,
8 detectors x 3 dithers) and F444W (LW, 2 x 3), the same exposures: one pointing error
(uniform within 0.5" per axis, 0.02 deg roll) and one set of dither errors (20 mas rms)
shared by both channels, no detector errors; each channel its own galaxy offsets
(10 mas rms, independent draws). Scored: the LW images (and the SW ones).

``shared``: per draw ``--visits`` CEERS visits in F200W, each its own pointing and dither
errors, and the same detector placement errors (``--detector-error`` mas rms per axis,
drawn once per draw along each detector's pixel axes, turned onto the sky through each
visit's real roll). Scored: every image.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VISITS = ["jw01345001001", "jw01345002001", "jw01345003001", "jw01345004001", "jw01345052001"]
SW = ("nrca1", "nrca2", "nrca3", "nrca4", "nrcb1", "nrcb2", "nrcb3", "nrcb4")
LW = ("nrcalong", "nrcblong")


def _save(visit, folder, truth):
    for image in visit.images:
        image.model.save(folder / image.model.meta.filename)
        truth[image.model.meta.filename] = image.true_wcs


def build_channels(folder, shape, seed):
    """One visit in F200W and F444W sharing its exposures' errors; image name -> truth, LW names."""
    from ceers_steps.synthetic import make_visit

    rng = np.random.default_rng(seed)
    shift = tuple(rng.uniform(-0.5, 0.5, 2))
    dithers = rng.normal(0.0, 0.020, (3, 2))
    common = {"n_dithers": 3, "shape": (shape, shape), "use_real": True, "visit_id": VISITS[0],
              "group": "02201", "visit_shift": shift, "dither_shift": dithers}
    truth = {}
    sw = make_visit(detectors=SW, filter_name="F200W", seed=seed * 100 + 1, **common)
    lw = make_visit(detectors=LW, filter_name="F444W", seed=seed * 100 + 2, center=sw.center,
                    **common)
    _save(sw, folder, truth)
    _save(lw, folder, truth)
    return truth, [im.model.meta.filename for im in lw.images]


def build_shared(folder, shape, seed, n_visits, detector_error):
    """``n_visits`` visits in F200W with the same detector errors (pixel axes)."""
    from ceers_steps.synthetic import make_visit

    rng = np.random.default_rng(seed)
    offsets = {det: rng.normal(0.0, detector_error, 2) for det in SW}
    truth = {}
    for k, visit in enumerate(VISITS[:n_visits]):
        v = make_visit(detectors=SW, n_dithers=3, shape=(shape, shape), use_real=True,
                       seed=seed * 100 + 10 + k, visit_id=visit, filter_name="F200W",
                       group="02201", visit_shift=tuple(rng.uniform(-0.5, 0.5, 2)),
                       detector_offsets_pixel=offsets)
        _save(v, folder, truth)
    return truth


def image_rms(out, names, truth, shape):
    """Per image: RMS (mas) of its saved WCS model against its truth on a 16x16 grid."""
    import asdf

    from ceers_steps.core.wcs_utils import angular_separation_mas

    g = np.linspace(0, shape - 1, 16)
    x, y = np.meshgrid(g, g)
    rms = {}
    for name in names:
        path = out / "tweakreg_wcs" / name.replace("_cal.fits", "_tweakreg.asdf")
        if not path.exists():
            rms[name] = float("inf")
            continue
        with asdf.open(path) as af:
            d = angular_separation_mas(*af["wcs"](x, y), *truth[name](x, y))
        rms[name] = float(np.sqrt(np.mean(d**2)))
    return rms


def align(cal, out, refcat, n_jobs, *flags):
    """``ceers-align --all`` in a fresh process; seconds."""
    import subprocess

    exe = str(Path(sys.executable).parent / "ceers-align")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    res = subprocess.run([exe, "--all", "--input-dir", str(cal), "--output-dir", str(out),
                          "--abs-refcat", str(refcat), "--n-jobs", str(n_jobs), "--no-report",
                          *flags], capture_output=True, text=True, check=False)
    if res.returncode not in (0, 1):
        sys.exit(f"bench_channels: ceers-align failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - start


def main():
    from ceers_steps.synthetic import ceers_data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["channels", "shared"],
                        choices=["channels", "shared"])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--shape", type=int, default=1024)
    parser.add_argument("--visits", type=int, default=5)
    parser.add_argument("--detector-error", type=float, default=30.0, help="mas rms per axis")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", help="work in this folder and keep it")
    args = parser.parse_args()
    data = ceers_data_dir()
    if data is None:
        sys.exit("bench_channels: the real CEERS data are needed (../shared/ceers or "
                 "$CEERS_DATA_DIR)")
    refcat = data / "CEERS_EGS_HST_v1.9_cat_radecmag.ecsv"
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_channels_"))
    for case in args.cases:
        option = "--joint-channels" if case == "channels" else "--shared-detector-terms"
        print(f"\n{case}: {args.draws} draws, {args.shape}x{args.shape} frames, --n-jobs "
              f"{args.n_jobs}; median per-image RMS against truth, mas")
        if case == "channels":
            print(f"{'draw':>4s} {'LW alone':>9s} {'LW joint':>9s} {'SW alone':>9s} "
                  f"{'SW joint':>9s} {'s alone':>8s} {'s joint':>8s}")
        else:
            print(f"{'draw':>4s} {'alone':>9s} {'shared':>9s} {'s alone':>8s} {'s shared':>8s}")
        rows = []
        for draw in range(args.draws):
            seed = args.seed + draw
            cal = tmp / case / f"draw{draw}" / "cal"
            shutil.rmtree(cal.parent, ignore_errors=True)
            cal.mkdir(parents=True)
            if case == "channels":
                truth, lw = build_channels(cal, args.shape, seed)
            else:
                truth = build_shared(cal, args.shape, seed, args.visits,
                                     args.detector_error / 1e3)
                lw = []
            t_alone = align(cal, cal.parent / "alone", refcat, args.n_jobs)
            t_with = align(cal, cal.parent / "with", refcat, args.n_jobs, option)
            alone = image_rms(cal.parent / "alone", list(truth), truth, args.shape)
            with_ = image_rms(cal.parent / "with", list(truth), truth, args.shape)
            if case == "channels":
                sw = [n for n in truth if n not in lw]
                row = [np.median([alone[n] for n in lw]), np.median([with_[n] for n in lw]),
                       np.median([alone[n] for n in sw]), np.median([with_[n] for n in sw])]
            else:
                row = [np.median(list(alone.values())), np.median(list(with_.values()))]
            rows.append(row)
            print(f"{draw:4d} " + " ".join(f"{v:9.2f}" for v in row)
                  + f" {t_alone:8.1f} {t_with:8.1f}", flush=True)
            if not args.keep:
                shutil.rmtree(cal.parent)
        med = np.median(np.array(rows), axis=0)
        better = sum(r[1] < r[0] for r in rows)
        print("median " + " ".join(f"{v:9.2f}" for v in med)
              + f"   ({'LW ' if case == 'channels' else ''}better in {better} of {len(rows)} "
              "draws)")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
