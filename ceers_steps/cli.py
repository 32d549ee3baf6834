"""Console commands for the CEERS workflow."""

import argparse
import functools
import logging
import sys
from pathlib import Path

__all__ = ["add_version", "align_main", "apply_wcs_main", "convert_cfg_main",
           "default_parameter_dirs", "select_images"]


_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def _log_once():
    """
    Show every log record of a pipeline run as an instance (``pipe.run``) once.

    stpipe >= 0.8 configures no handler for an instance's run: one root handler does.
    Older stpipe (jwst 1.16) puts a handler on its own logger at import and forwards
    root records to it: a root handler there would print every line twice.
    """
    import stpipe  # noqa: F401 - older versions set their handlers up on import

    if not logging.getLogger("stpipe").handlers:
        logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)


def _user_error_types():
    from ._stpipe import AllImagesFailedError

    return (OSError, ValueError, TypeError, ImportError, AllImagesFailedError)


def one_line_errors(prog):
    """
    A console command ends with one line on stderr and an exit status, never a traceback,
    for what a user can fix (a path, a file, a parameter, a full disk): status 1, and
    130 after Ctrl-C. Anything else is a bug and keeps its traceback.
    """
    def wrap(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted; files being written were not left half-written",
                      file=sys.stderr)
                return 130
            except _user_error_types() as exc:
                text = " ".join(str(exc).split()) or type(exc).__name__
                print(f"{prog}: {text}", file=sys.stderr)
                return 1
        return run
    return wrap


def add_version(parser):
    """``--version``: this package's version and the jwst it runs on (without importing jwst)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        jwst = version("jwst")
    except PackageNotFoundError:
        jwst = "not installed"
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s (ceers-steps {__version__}, jwst {jwst})")


def _apply_wcs_parser():
    p = argparse.ArgumentParser(
        prog="ceers-apply-wcs",
        description="Put saved tweaked WCS models (<base>_tweakreg.asdf) back onto calibrated "
                    "images and write <base>_<output suffix>.fits (CEERS' updatewcs.py).")
    add_version(p)
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
    p.add_argument("--force", action="store_true",
                   help="experts: apply models of unaligned (FAILED) fits, of other exposures, "
                        "or whose bounding box does not match the image")
    return p


@one_line_errors("ceers-apply-wcs")
def apply_wcs_main(argv=None):
    """``ceers-apply-wcs``: apply saved WCS models to one image or a folder of images."""
    args = _apply_wcs_parser().parse_args(argv)
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
        # Command-line paths are relative to where the command runs.
        ApplyWcsStep.call([str(p) for p in images], wcs_dir=str(Path(args.wcs_dir).resolve()),
                          output_dir=args.output_dir, suffix=args.output_suffix,
                          skip_missing=args.skip_missing, force=args.force, save_results=True)
    except (FileNotFoundError, ValueError, TypeError, OSError) as exc:
        print(f"ceers-apply-wcs: {exc}", file=sys.stderr)
        return 1
    return 0


@one_line_errors("ceers-convert-cfg")
def convert_cfg_main(argv=None):
    """``ceers-convert-cfg``: CEERS cfg files -> ``<visit>_<filter>.asdf`` parameter files."""
    p = argparse.ArgumentParser(
        prog="ceers-convert-cfg",
        description="Convert CEERS tweakreg .cfg files (one [visit] section each) into ASDF "
                    "parameter files for ceers_align, one per section: <visit>_<filter>.asdf.")
    add_version(p)
    p.add_argument("cfg", nargs="+", help="CEERS cfg files, e.g. tweakreg_cfgs/nircam1/f200w.cfg")
    p.add_argument("--output-dir", required=True, help="folder for the parameter files")
    p.add_argument("--abs-refcat", help="absolute reference catalog to write into every file")
    args = p.parse_args(argv)
    from .cfgconvert import convert_cfg

    try:
        written = convert_cfg(args.cfg, args.output_dir, abs_refcat=args.abs_refcat)
    except (FileNotFoundError, ValueError) as exc:
        print(f"ceers-convert-cfg: {exc}", file=sys.stderr)
        return 1
    for path, section in written:
        unused = ", ".join(f"{k}={v}" for k, v in section.unused.items())
        print(f"{section.source} [{section.visit}] -> {path}"
              + (f"  (not used: {unused})" if unused else ""))
    print(f"{len(written)} parameter files written to {args.output_dir}")
    return 0


def default_parameter_dirs():
    """Where ``ceers-align`` looks for ``<visit>_<filter>.asdf`` when no --params is given."""
    import os

    dirs = []
    if os.environ.get("CEERS_PARAMETER_FILES"):
        dirs.append(Path(os.environ["CEERS_PARAMETER_FILES"]))
    dirs.append(Path.cwd() / "parameter_files")
    dirs.append(Path(__file__).resolve().parent.parent / "parameter_files")  # a source checkout
    return dirs


def select_images(input_dir, visit, filter_name, suffix="cal"):
    """
    The ``<visit>_*_<suffix>.fits`` images in ``input_dir`` whose FILTER header is ``filter_name``.

    A file whose FITS header cannot be read is reported on stderr and left out.

    Returns
    -------
    selected : dict
        Detector -> sorted list of paths.
    other_filters : set of str
        Filters of that visit's images that were not selected (for messages).
    """
    from astropy.io import fits

    selected, others = {}, set()
    for path in sorted(Path(input_dir).glob(f"{visit}_*_{suffix}.fits")):
        try:
            header = fits.getheader(path, 0)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the run
            print(f"ceers-align: {path}: FAILED: cannot read its FITS header ({exc}); "
                  "left out", file=sys.stderr)
            continue
        filt = str(header.get("FILTER", "")).strip().lower()
        if filt != filter_name:
            others.add(filt or "<no FILTER>")
            continue
        detector = str(header.get("DETECTOR", "")).strip().lower() or path.name.split("_")[3]
        selected.setdefault(detector, []).append(path)
    return selected, others


def _write_detector_associations(selected, visit, filter_name, out_dir):
    """One level-3 association per detector, ``<visit>_<filter>_<detector>_asn.json``."""
    import os

    from .fileio import write_association

    paths = []
    for detector, images in sorted(selected.items()):
        name = f"{visit}_{filter_name}_{detector}"
        paths.append(write_association(
            out_dir / f"{name}_asn.json", name,
            [os.path.relpath(p.resolve(), out_dir.resolve()) for p in images],
            asn_id=name, asn_rule="ceers_align", asn_pool="ceers-align", program=visit[2:7]))
    return paths


def _load_parameters(params, visit, filter_name, params_dirs):
    """
    The pipeline's step parameters, and where they came from.

    Returns
    -------
    steps : dict
        ``{"catalog": {...}, "tweakreg": {...}}``
    source : str
    """
    from .cfgconvert import read_cfg

    if params is None:
        for d in params_dirs:
            candidate = d / f"{visit}_{filter_name}.asdf"
            if candidate.is_file():
                params = candidate
                break
        else:
            return {}, "defaults (no parameter file found for this visit and filter)"
    params = Path(params)
    if not params.is_file():
        raise FileNotFoundError(f"parameter file not found: {params}")
    if params.suffix.lower() == ".cfg":
        sections = {s.visit: s for s in read_cfg(params)}
        if visit not in sections:
            raise ValueError(f"{params}: no section [{visit}] (sections: "
                             f"{', '.join(sorted(sections))})")
        section = sections[visit]
        return {k: dict(v) for k, v in section.steps.items()}, f"{params} [{visit}]"
    return _read_parameter_file(params), str(params)


def _read_parameter_file(path):
    """Step parameters of a ceers_align ASDF parameter file, checked by stpipe itself."""
    from stpipe import Step

    from .pipeline import CeersAlignPipeline

    # Validation only: the run itself creates (and logs) the pipeline once.
    logging.disable(logging.INFO)
    try:
        pipe = Step.from_config_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable stpipe parameter file: {exc}") from None
    finally:
        logging.disable(logging.NOTSET)
    if not isinstance(pipe, CeersAlignPipeline):
        raise ValueError(f"{path}: a parameter file for {type(pipe).__name__}, "
                         "not for ceers_align (CeersAlignPipeline)")
    import asdf

    with asdf.open(path) as af:
        return {step["name"]: dict(step.get("parameters", {})) for step in af.tree.get("steps", [])}


def _align_parser():
    p = argparse.ArgumentParser(
        prog="ceers-align",
        description="Align one visit and filter the CEERS way (replaces 'python run_tweakreg.py "
                    "<visit> <filter>'): select its *_cal.fits by FILTER header, write one "
                    "association per detector, detect sources, align, write results and WCS "
                    "models, print the summary.")
    add_version(p)
    p.add_argument("visit", help="visit id, e.g. jw01345001001")
    p.add_argument("filter", help="filter, e.g. f115w")
    p.add_argument("--input-dir", default="calibrated", help="folder of the *_cal.fits (calibrated)")
    p.add_argument("--output-dir", default=".",
                   help="folder for catalogs, associations, results, tweakreg_wcs/ (.)")
    p.add_argument("--params", help="parameter file: ceers_align .asdf, or a CEERS .cfg "
                                    "(its [visit] section is used)")
    p.add_argument("--params-dir", action="append", type=Path,
                   help="folder of <visit>_<filter>.asdf files (default: $CEERS_PARAMETER_FILES, "
                        "./parameter_files, the package's parameter_files)")
    p.add_argument("--abs-refcat", help="absolute reference catalog (overrides the parameter file)")
    p.add_argument("--save-results", action="store_true",
                   help="also write the aligned images <base>_tweakreg.fits")
    p.add_argument("--n-jobs", type=int, default=None,
                   help="worker processes (default: all cores; 1 = serial)")
    p.add_argument("--scheduler", default="", help="dask.distributed scheduler address")
    p.add_argument("--no-report", action="store_true",
                   help="do not write <visit>_<filter>_alignment_report.html and the DS9 regions")
    return p


@one_line_errors("ceers-align")
def align_main(argv=None):
    """``ceers-align VISIT FILTER``: the CEERS per-visit, per-filter alignment run."""
    import re

    args = _align_parser().parse_args(argv)
    _log_once()
    visit, filter_name = args.visit.strip().lower(), args.filter.strip().lower()
    if not re.fullmatch(r"jw\d{11}", visit):
        print(f"ceers-align: {args.visit!r} is not a visit id like jw01345001001", file=sys.stderr)
        return 2
    input_dir, out_dir = Path(args.input_dir), Path(args.output_dir)
    if not input_dir.is_dir():
        print(f"ceers-align: input folder not found: {input_dir}", file=sys.stderr)
        return 1
    try:
        steps, source = _load_parameters(args.params, visit, filter_name,
                                         args.params_dir or default_parameter_dirs())
        selected, others = select_images(input_dir, visit, filter_name)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"ceers-align: {exc}", file=sys.stderr)
        return 1
    if not selected:
        found = f" (that visit has: {', '.join(sorted(others))})" if others else \
            " (no images of that visit at all)"
        print(f"ceers-align: no {visit}_*_cal.fits with FILTER {filter_name.upper()} in "
              f"{input_dir}{found}; nothing written", file=sys.stderr)
        return 1
    n_images = sum(len(v) for v in selected.values())
    print(f"ceers-align: {visit} {filter_name}: {n_images} images on {len(selected)} detectors; "
          f"parameters: {source}")

    steps.setdefault("tweakreg", {})
    if args.abs_refcat:
        steps["tweakreg"]["abs_refcat"] = args.abs_refcat
    if not steps["tweakreg"].get("abs_refcat"):
        print("ceers-align: no absolute reference catalog (--abs-refcat): relative alignment only",
              file=sys.stderr)
    steps["tweakreg"]["save_wcs"] = True
    if args.no_report:
        steps["tweakreg"]["save_report"] = False
    from .refcat import named_catalog, refcat_paths

    spec = steps["tweakreg"].get("abs_refcat") or ""
    for refcat in [] if named_catalog(spec) else refcat_paths(spec):
        if not refcat.is_file():
            print(f"ceers-align: reference catalog not found: {refcat}; nothing written",
                  file=sys.stderr)
            return 1
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    asn_paths = _write_detector_associations(selected, visit, filter_name, out_dir)
    for path in asn_paths:
        print(f"  association {path}")

    from ._stpipe import AllImagesFailedError
    from .pipeline import CeersAlignPipeline
    from .results import format_summary

    images = [str(p) for det in sorted(selected) for p in selected[det]]
    pipe = CeersAlignPipeline(steps=steps, output_dir=str(out_dir),
                              save_results=args.save_results, in_memory=False,
                              n_jobs=args.n_jobs, scheduler=args.scheduler)
    try:
        pipe.run(images)
    except (FileNotFoundError, ValueError, TypeError, OSError, AllImagesFailedError) as exc:
        print(f"ceers-align: {exc}", file=sys.stderr)
        _remove_if_alone(asn_paths, out_dir if created else None)
        return 1
    if pipe.results is not None:
        print(format_summary(pipe.results))
    print(f"ceers-align: results in {out_dir / f'{visit}_{filter_name}_tweakreg_results.ecsv'} "
          f"and {out_dir / f'tweakreg_results_all.{visit}_{filter_name}.txt'}")
    report = getattr(pipe.tweakreg, "report_paths", {}).get(f"{visit}_{filter_name}")
    if report is not None:
        print(f"ceers-align: report {report} (open it in a browser)")
    return 0


def _remove_if_alone(asn_paths, created_dir):
    """
    After a failed run: remove the associations written for it when nothing else was
    written beside them, and the output folder if this run created it and it is empty.
    """
    if created_dir is None:
        return
    others = [p for p in created_dir.rglob("*") if p.is_file() and p not in set(asn_paths)]
    if others:
        return
    for path in asn_paths:
        path.unlink(missing_ok=True)
    for folder in sorted((p for p in created_dir.rglob("*") if p.is_dir()), reverse=True):
        folder.rmdir()
    created_dir.rmdir()


if __name__ == "__main__":
    sys.exit(apply_wcs_main())
