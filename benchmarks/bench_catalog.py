"""Seconds per 2048x2048 image and peak memory of the CEERS detection recipe.

Usage: python benchmarks/bench_catalog.py [--repeat 7] [--real]

Reports the median wall time of detection + windowed centroids + AUTO fluxes
(`ceers_steps.detection.detect_sources`, one core) on synthetic NIRCam SW and
LW images, the number of sources, and the peak traced memory of one call.
"""

import argparse
import statistics
import time
import tracemalloc
import warnings

from ceers_steps.detection import detect_sources
from ceers_steps.synthetic import make_visit


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--real", action="store_true", help="real CEERS WCS/catalog as truth")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    visit = make_visit(detectors=("nrca1", "nrcb3", "nrcalong"), n_dithers=1,
                       use_real=True if args.real else False, seed=5)
    print(f"{'detector':>9} {'sources':>8} {'median s':>9} {'min s':>7} {'peak MiB':>9}")
    for image in visit.images:
        m = image.model
        detect_sources(m.data, m.err, m.dq)  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            cat = detect_sources(m.data, m.err, m.dq)
            times.append(time.perf_counter() - t0)
        tracemalloc.start()
        detect_sources(m.data, m.err, m.dq)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"{image.detector:>9} {len(cat):>8d} {statistics.median(times):>9.3f} "
              f"{min(times):>7.3f} {peak:>9.1f}")


if __name__ == "__main__":
    main()
