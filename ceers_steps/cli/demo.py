"""``ceers-demo``: run the package on a small synthetic visit made on the fly.

Builds a synthetic NIRCam visit (built-in NIRCam-like WCS and a random galaxy
catalog, or the real CEERS models when ``--real``), writes its cal files, an
association and a reference catalog, then runs the steps as a user would and
prints what they produced, how far from the truth, and what it wrote to disk.
The steps' log goes to ``<output-dir>/demo.log``; the console shows warnings and the
demo's own summary only (``--verbose``: the log too).
"""

import argparse
import sys
import warnings
from pathlib import Path

from .commands import add_version, one_line_errors
from .console import add_verbose, command_logging, run_step

__all__ = ["main"]


def _parser():
    p = argparse.ArgumentParser(
        prog="ceers-demo",
        description="Run the package on a small synthetic NIRCam visit made on the fly: build it "
                    "(cal files, association, reference catalog), run CatalogStep, "
                    "CeersTweakRegStep and ApplyWcsStep, print the WCS error against the "
                    "injected truth and what was written. The full log is "
                    "<output-dir>/demo.log.")
    p.add_argument("--output-dir", default="demo_output", help="where everything is written")
    p.add_argument("--detectors", default="nrca1,nrca3",
                   help="comma-separated NIRCam detectors (default: 2 SW detectors)")
    p.add_argument("--size", type=int, default=1024,
                   help="image size in pixels (default 1024; real cal files are 2048)")
    p.add_argument("--dithers", type=int, default=3, help="number of dithers (default 3)")
    p.add_argument("--real", action="store_true",
                   help="use the real CEERS WCS models and HST catalog (needs ../shared/ceers)")
    p.add_argument("--seed", type=int, default=1,
                   help="random seed of the synthetic visit: sources, noise, WCS errors (default 1)")
    add_verbose(p)
    add_version(p)
    return p


def _accuracy(models, visit):
    """Median per-image RMS and worst point (mas) against the injected truth."""
    from ..core.wcs_utils import alignment_accuracy
    from ..io.inputs import library_models
    from ..io.wcs_models import exposure_base

    truth = {exposure_base(im.model.meta.filename): im.true_wcs for im in visit.images}
    models = library_models(models)
    return alignment_accuracy(models, [truth[exposure_base(m.meta.filename)] for m in models])


def _footprint(folder):
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


@one_line_errors("ceers-demo")
def main(argv=None):
    import time

    parser = _parser()
    args = parser.parse_args(argv)
    from ..synthetic.visits import LW_DETECTORS, SW_DETECTORS

    detectors = tuple(d.strip().lower() for d in args.detectors.split(",") if d.strip())
    unknown = [d for d in detectors if d not in SW_DETECTORS + LW_DETECTORS]
    if not detectors or unknown:
        parser.error(f"--detectors: unknown NIRCam detector(s) {', '.join(unknown) or '(none)'}; "
                     f"use {', '.join(SW_DETECTORS + LW_DETECTORS)}")
    if set(detectors) & set(SW_DETECTORS) and set(detectors) & set(LW_DETECTORS):
        parser.error("--detectors: SW and LW detectors observe different filters; use one channel")
    if args.size < 256:
        parser.error(f"--size must be at least 256 pixels, not {args.size}")
    if args.dithers < 1 or (args.real and args.dithers > 3):
        parser.error(f"--dithers must be at least 1 (at most 3 with --real), not {args.dithers}")
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    from ..steps.apply_wcs_step import ApplyWcsStep
    from ..steps.catalog_step import CatalogStep
    from ..steps.tweakreg_step import CeersTweakRegStep
    from ..synthetic.visits import make_visit, write_visit

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with command_logging(out / "demo.log", verbose=args.verbose):
        print(f"Building a synthetic visit: {len(detectors)} detectors x {args.dithers} dithers, "
              f"{args.size} x {args.size} pixels ...")
        try:
            visit = make_visit(detectors=detectors, n_dithers=args.dithers,
                               shape=(args.size, args.size),
                               use_real=True if args.real else False, seed=args.seed)
        except (KeyError, ValueError, FileNotFoundError) as exc:
            print(f"ceers-demo: cannot build the visit: {exc}", file=sys.stderr)
            return 2
        asn, refcat, paths = write_visit(visit, out / "calibrated")
        print(f"  {len(paths)} cal files, association {asn}, reference catalog {refcat}")

        print("Running CatalogStep (SEP, CEERS recipe) ...")
        run_step(CatalogStep, str(asn), output_dir=str(out / "catalogs"))
        cat_asn = out / "catalogs" / "asn_cat_asn.json"
        print(f"  catalogs and association with tweakreg_catalog members: {cat_asn}")

        print("Running CeersTweakRegStep (relative + joint absolute fit to the reference catalog) ...")
        aligned = run_step(CeersTweakRegStep, str(cat_asn), abs_refcat=str(refcat), save_wcs=True,
                        save_report=True, output_dir=str(out / "aligned"))
        before = _accuracy([im.model for im in visit.images], visit)
        after = _accuracy(aligned, visit)
        print(f"  results tables, WCS models and the alignment report in {out / 'aligned'}")

        print("Running ApplyWcsStep (saved WCS models back onto the untouched cal files) ...")
        reapplied = run_step(ApplyWcsStep, [str(p) for p in paths],
                          wcs_dir=str((out / "aligned" / "tweakreg_wcs").resolve()))
        again = _accuracy(reapplied, visit)

    print()
    print("WCS error against the injected truth (16x16 grid per image, mas):")
    print(f"  {'':28s} {'median':>8s} {'worst':>8s}")
    print(f"  {'as assigned (injected error)':28s} {before[0]:8.2f} {before[1]:8.2f}")
    print(f"  {'after ceers_tweak':28s} {after[0]:8.2f} {after[1]:8.2f}")
    print(f"  {'after apply_wcs':28s} {again[0]:8.2f} {again[1]:8.2f}")
    print(f"Results: {out / 'aligned' / 'tweakreg_results_all.jw01345001001_f200w.txt'}")
    print(f"Report: {out / 'aligned' / 'jw01345001001_f200w_alignment_report.html'} "
          "(open it in a browser)")
    print(f"Log: {out / 'demo.log'}")
    n_files, size = _footprint(out)
    print(f"Wrote {n_files} files, {size / 2**20:.1f} MiB, in {out} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
