"""Seconds per image of ApplyWcsStep on 2048x2048 cal files (read, apply, write).

Usage: python benchmarks/bench_apply_wcs.py [--n 8] [--n-jobs 1 2]

Writes n synthetic cal files and their WCS models, then times
``ApplyWcsStep.call(files, save_results=True, n_jobs=N)`` for each N (streamed:
each worker reads a FITS file and its WCS model, checks and applies it, and writes
``<base>_tweakreg.fits``; the outputs are published when all succeeded),
and, for reference, a plain read + write of the same FITS files.
"""

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2],
                        help="worker processes to time (streamed: one image per worker)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    from ceers_steps import ApplyWcsStep
    from ceers_steps.core.compat import datamodels
    from ceers_steps.io.wcs_models import exposure_base, save_wcs_model
    from ceers_steps.synthetic.visits import SW_DETECTORS, make_visit, write_visit

    dets = SW_DETECTORS[: max(1, min(8, args.n))]
    visit = make_visit(detectors=dets, n_dithers=max(1, -(-args.n // len(dets))), use_real=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, _, paths = write_visit(visit, tmp / "calibrated")
        paths = paths[: args.n]
        for image in visit.images:
            m = image.model
            save_wcs_model(tmp / "wcs" / f"{exposure_base(m.meta.filename)}_tweakreg.asdf",
                           m.meta.filename, m.meta.wcsinfo, m.meta.wcs)
        (tmp / "plain").mkdir()
        t0 = time.perf_counter()
        for p in paths:
            with datamodels.open(p) as m:
                m.save(tmp / "plain" / p.name)
        plain = (time.perf_counter() - t0) / len(paths)
        print(f"{len(paths)} images of 2048x2048: plain FITS read + write {plain:.3f} s/image")
        for n_jobs in args.n_jobs:
            t0 = time.perf_counter()
            ApplyWcsStep.call([str(p) for p in paths], wcs_dir=str(tmp / "wcs"),
                              output_dir=str(tmp / f"out{n_jobs}"), save_results=True,
                              n_jobs=n_jobs)
            step = (time.perf_counter() - t0) / len(paths)
            print(f"  ApplyWcsStep, n_jobs={n_jobs}: {step:.3f} s/image")


if __name__ == "__main__":
    main()
