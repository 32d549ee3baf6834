"""Seconds per 2048x2048 image, peak memory and catalog purity of the CEERS detection recipe.

Usage: python benchmarks/bench_catalog.py [--repeat 5] [--seeds 1 2 3] [--real]

For each seed, renders the same visit twice from the same sources: clean (Gaussian
sources, white noise) and realistic (`ceers_steps.synthetic.visits.add_nircam_artifacts`:
reference-pixel border, hot and warm pixels, cosmic-ray residuals, snowballs, 1/f
striping, saturated stars with spikes, NaN patches). For each image it reports the
number of catalog sources, the spurious ones (more than 3 pixels from every injected
source), how many injected sources found on the clean frame are lost on the realistic
one, the centroid RMS of S/N > 50 sources against truth (all of them, and on the realistic
frame those measured to 0.1 px on the clean one: isolated, unblended), and the median wall time of
`ceers_steps.detection.catalogs.build_catalog` (one core, untraced); then the peak traced
memory of one call per frame type.
"""

import argparse
import statistics
import time
import tracemalloc
import warnings

import numpy as np

from ceers_steps.detection.catalogs import build_catalog
from ceers_steps.synthetic import make_visit

SW, LW = ("nrca1", "nrcb3"), ("nrcalong",)


def nearest(cat, truth):
    """Distance (pixels) and index of the nearest injected source for every catalog row."""
    if len(cat) == 0:
        return np.zeros(0), np.zeros(0, int)
    d = np.hypot(np.asarray(cat["xcentroid"])[:, None] - truth[None, :, 0],
                 np.asarray(cat["ycentroid"])[:, None] - truth[None, :, 1])
    j = d.argmin(axis=1)
    return d[np.arange(len(cat)), j], j


def centroid_rms(cat, truth, only=None):
    """
    RMS per axis (pixels) of the S/N > 50 sources matched within 1 pixel; with ``only``
    (indices into ``truth``), of those sources alone.
    """
    d, j = nearest(cat, truth)
    snr = np.asarray(cat["flux"]) / np.asarray(cat["flux_err"])
    ok = (d < 1.0) & (snr > 50)
    if only is not None:
        ok &= np.isin(j, list(only))
    if not ok.any():
        return float("nan"), 0
    dx = np.asarray(cat["xcentroid"])[ok] - truth[j[ok], 0]
    dy = np.asarray(cat["ycentroid"])[ok] - truth[j[ok], 1]
    return float(np.sqrt(np.mean(dx**2 + dy**2) / 2)), int(ok.sum())


def timed(model, repeat):
    build_catalog(model)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        cat = build_catalog(model)
        times.append(time.perf_counter() - t0)
    return cat, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--real", action="store_true", help="real CEERS WCS/catalog as truth")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    use_real = True if args.real else False
    print(f"{'seed':>4} {'detector':>9} | {'clean n':>7} {'spur':>4} {'cen px':>7} {'s':>6} | "
          f"{'real n':>6} {'spur':>4} {'lost':>4} {'cen px':>7} {'iso px':>7} {'s':>6}  rejected by cut")
    totals = {"clean": [0, 0, [], []], "realistic": [0, 0, [], []]}
    lost_total = found_total = 0
    iso = []
    peak = {}
    for seed in args.seeds:
        clean, real = [], []
        # SW detectors see F200W, the LW detector F444W (each with its own PSF).
        for dets in (SW, LW):
            clean += make_visit(detectors=dets, n_dithers=1, use_real=use_real, seed=seed).images
            real += make_visit(detectors=dets, n_dithers=1, use_real=use_real, seed=seed,
                               artifacts=True).images
        for c_im, r_im in zip(clean, real, strict=True):
            truth = c_im.true_sources
            row = []
            for label, im in (("clean", c_im), ("realistic", r_im)):
                cat, seconds = timed(im.model, args.repeat)
                d, j = nearest(cat, truth)
                rms, n_bright = centroid_rms(cat, truth)
                tot = totals[label]
                tot[0] += len(cat)
                tot[1] += int((d > 3).sum())
                tot[2].append(seconds)
                if np.isfinite(rms):
                    tot[3].append(rms)
                row.append((cat, d, j, rms, seconds))
            (c_cat, c_d, c_j, c_rms, c_s), (r_cat, r_d, r_j, r_rms, r_s) = row
            # Isolated, well-measured sources: within 0.1 px of truth on the clean frame.
            isolated = set(c_j[c_d < 0.1])
            iso_rms, _ = centroid_rms(r_cat, truth, only=isolated)
            iso.append(iso_rms)
            found_clean = set(c_j[c_d < 1.0])
            lost = len(found_clean - set(r_j[r_d < 1.0]))
            lost_total += lost
            found_total += len(found_clean)
            cuts = ", ".join(f"{k} {v}" for k, v in r_cat.meta["rejected"].items() if v)
            print(f"{seed:>4} {c_im.detector:>9} | {len(c_cat):>7d} {int((c_d > 3).sum()):>4d} "
                  f"{c_rms:>7.4f} {c_s:>6.3f} | {len(r_cat):>6d} {int((r_d > 3).sum()):>4d} "
                  f"{lost:>4d} {r_rms:>7.4f} {iso_rms:>7.4f} {r_s:>6.3f}  {cuts}")
        for label, im in (("clean", clean[0]), ("realistic", real[0])):
            tracemalloc.start()
            build_catalog(im.model)
            peak[label] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    print()
    for label, (n, spur, secs, rms) in totals.items():
        print(f"{label:>9}: {n} sources, {spur} spurious ({100 * spur / max(n, 1):.1f}%), "
              f"centroid RMS (S/N>50) median {np.median(rms):.4f} px, "
              f"{np.median(secs):.3f} s/image median, peak {peak[label]:.0f} MiB")
    print(f"injected sources found on clean frames and lost on realistic ones: {lost_total} of "
          f"{found_total} ({100 * lost_total / max(found_total, 1):.1f}%)")
    print(f"realistic centroid RMS of the S/N > 50 sources measured to 0.1 px on the clean frame: "
          f"median {np.nanmedian(iso):.4f} px, worst image {np.nanmax(iso):.4f} px")
    slow = np.median(totals["realistic"][2]) / np.median(totals["clean"][2]) - 1
    print(f"realistic frames take {100 * slow:+.0f}% time per image")


if __name__ == "__main__":
    main()
