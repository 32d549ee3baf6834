"""Console commands for the CEERS workflow."""

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["apply_wcs_main"]


def _apply_wcs_parser():
    p = argparse.ArgumentParser(
        prog="ceers-apply-wcs",
        description="Put saved tweaked WCS models (<base>_tweakreg.asdf) back onto calibrated "
                    "images and write <base>_<output suffix>.fits (CEERS' updatewcs.py).")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--image", help="one image file (a path, or a name inside --input-dir)")
    which.add_argument("--all", action="store_true",
                       help="every *_<input suffix>.fits in --input-dir")
    p.add_argument("--input-dir", default="calibrated", help="folder of the images (calibrated)")
    p.add_argument("--output-dir", default="calibrated", help="folder for the outputs (calibrated)")
    p.add_argument("--wcs-dir", default="tweakreg_wcs", help="folder of the WCS models (tweakreg_wcs)")
    p.add_argument("--input-suffix", default="cal", help="suffix of the input images (cal)")
    p.add_argument("--output-suffix", default="tweakreg", help="suffix of the outputs (tweakreg)")
    p.add_argument("--skip-missing", action="store_true",
                   help="copy images without a WCS model unchanged instead of failing")
    return p


def apply_wcs_main(argv=None):
    """``ceers-apply-wcs``: apply saved WCS models to one image or a folder of images."""
    args = _apply_wcs_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    if args.input_suffix == args.output_suffix and Path(args.input_dir).resolve() == \
            Path(args.output_dir).resolve():
        print("ceers-apply-wcs: input and output suffix are the same in the same folder: "
              "that would overwrite the inputs", file=sys.stderr)
        return 2
    input_dir = Path(args.input_dir)
    if args.image:
        image = Path(args.image)
        images = [image if image.exists() or image.is_absolute() else input_dir / image]
    else:
        images = sorted(input_dir.glob(f"*_{args.input_suffix}.fits"))
        if not images:
            print(f"ceers-apply-wcs: no *_{args.input_suffix}.fits in {input_dir}", file=sys.stderr)
            return 1
    from .apply_wcs_step import ApplyWcsStep

    try:
        ApplyWcsStep.call([str(p) for p in images], wcs_dir=args.wcs_dir,
                          output_dir=args.output_dir, suffix=args.output_suffix,
                          skip_missing=args.skip_missing, save_results=True)
    except (FileNotFoundError, ValueError, TypeError, OSError) as exc:
        print(f"ceers-apply-wcs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(apply_wcs_main())
