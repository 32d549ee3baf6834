"""Console commands for the CEERS workflow."""

import argparse
import contextlib
import functools
import sys
from pathlib import Path

__all__ = ["add_version", "align_main", "apply_wcs_main", "convert_cfg_main"]


#: The exit stacks of the running commands (`one_line_errors`): `_log_to` enters the
#: command's logging there, so it ends with the command however the command returns.
_STACKS = []


def _log_to(log_path, verbose):
    """The command's log to ``log_path``, warnings on the console (`command_logging`)."""
    from .console import command_logging

    return _STACKS[-1].enter_context(command_logging(log_path, verbose=verbose))


def _lock(out_dir):
    """
    Hold the output folder's lock (`ceers_steps.io.runstate.output_lock`) until the command
    returns; a dict saying whether the folder was created for this run.
    """
    from ..io.runstate import output_lock

    return _STACKS[-1].enter_context(output_lock(out_dir))


def _user_error_types():
    from ..core.logs import AllImagesFailedError

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
                with contextlib.ExitStack() as stack:
                    _STACKS.append(stack)
                    try:
                        return main(argv)
                    finally:
                        _STACKS.remove(stack)
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

    from .. import __version__

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
    p.add_argument("--output-dir", default=None,
                   help="folder for the outputs and ceers-apply-wcs.log (default: the folder of "
                        "the input images, beside them)")
    p.add_argument("--wcs-dir", default="tweakreg_wcs", help="folder of the WCS models (tweakreg_wcs)")
    p.add_argument("--input-suffix", default="cal", help="suffix of the input images (cal)")
    p.add_argument("--output-suffix", default="tweakreg", help="suffix of the outputs (tweakreg)")
    p.add_argument("--skip-missing", action="store_true",
                   help="copy images without a WCS model unchanged instead of failing")
    p.add_argument("--force", action="store_true",
                   help="experts: apply models of unaligned (FAILED) fits, of other exposures, "
                        "whose bounding box does not match the image, or beyond --max-offset")
    p.add_argument("--max-offset", type=float, default=2.0, metavar="ARCSEC",
                   help="refuse a model that puts its image farther than this from the image's "
                        "own WCS (2 arcsec; CEERS' own tweaks moved images by < 0.4)")
    p.add_argument("--distortion-file", default="", metavar="FILES",
                   help="residual distortion to insert after the WCS models: a "
                        "ceers_distortion_<detector>.asdf file, a comma-separated list, or a "
                        "folder of them (an image whose WCS carries one already is refused)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist already (never the inputs); without "
                        "it such a run stops before writing anything, naming the file")
    p.add_argument("--n-jobs", type=int, default=None,
                   help="worker processes (default: all cores; 1 = serial)")
    p.add_argument("--scheduler", default="", help="dask.distributed scheduler address")
    from .console import add_verbose

    add_verbose(p)
    return p


def _resolved_list(paths):
    """A comma-separated list of paths, each resolved from the working directory."""
    return ",".join(str(Path(p.strip()).expanduser().resolve()) for p in paths.split(",")
                    if p.strip())


@one_line_errors("ceers-apply-wcs")
def apply_wcs_main(argv=None):
    """``ceers-apply-wcs``: apply saved WCS models to one image or a folder of images."""
    args = _apply_wcs_parser().parse_args(argv)
    input_dir = Path(args.input_dir)
    if args.image:
        image = Path(args.image)
        images = [image if image.exists() or image.is_absolute() else input_dir / image]
    else:
        images = sorted(input_dir.glob(f"*_{args.input_suffix}.fits"))
        if not images:
            print(f"ceers-apply-wcs: no *_{args.input_suffix}.fits in {input_dir}", file=sys.stderr)
            return 1
    # The outputs go beside the inputs unless told otherwise (a different suffix: never over them).
    out_dir = Path(args.output_dir) if args.output_dir else images[0].parent
    if args.input_suffix == args.output_suffix and images[0].parent.resolve() == out_dir.resolve():
        print("ceers-apply-wcs: input and output suffix are the same in the same folder: "
              "that would overwrite the inputs", file=sys.stderr)
        return 2
    if not images[0].exists():
        # Name the path the user gave (and where else it was looked for), not only the fallback.
        given = Path(args.image) if args.image else images[0]
        elsewhere = f" (nor {images[0]})" if images[0] != given else ""
        print(f"ceers-apply-wcs: image not found: {given}{elsewhere}", file=sys.stderr)
        return 1
    from ..io.wcs_models import exposure_base
    from ..steps.apply_wcs_step import ApplyWcsStep
    from .console import run_step

    _lock(out_dir)  # before the log: a refused run must not replace the running one's log
    if not args.overwrite:
        # Refused before the log is opened (the step checks again, by the names the images
        # record, before it writes); an input is refused by the step with its own message.
        from ..core.fileio import refuse_existing

        inputs = {p.resolve() for p in images}
        existing = [o for o in (out_dir / f"{exposure_base(p.name)}_{args.output_suffix}.fits"
                                for p in images) if o.exists() and o.resolve() not in inputs]
        if existing:
            raise FileExistsError(refuse_existing(existing, flag="--overwrite"))
    log_path = _log_to(out_dir / "ceers-apply-wcs.log", args.verbose)
    try:
        # Command-line paths are relative to where the command runs.
        run_step(ApplyWcsStep, [str(p) for p in images], wcs_dir=str(Path(args.wcs_dir).resolve()),
                 output_dir=str(out_dir), suffix=args.output_suffix,
                 skip_missing=args.skip_missing, force=args.force, overwrite=args.overwrite,
                 save_results=True, max_offset=args.max_offset,
                 distortion_file=_resolved_list(args.distortion_file),
                 n_jobs=args.n_jobs, scheduler=args.scheduler)
    except (FileNotFoundError, ValueError, TypeError, OSError) as exc:
        print(f"ceers-apply-wcs: {exc}", file=sys.stderr)
        return 1
    written = [out_dir / f"{exposure_base(p.name)}_{args.output_suffix}.fits" for p in images]
    what = written[0].name if len(written) == 1 else f"<base>_{args.output_suffix}.fits"
    print(f"ceers-apply-wcs: wrote {len(written)} image{'s' * (len(written) != 1)} ({what}) in "
          f"{out_dir}; WCS models from {Path(args.wcs_dir)}; log {log_path}")
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace parameter files that exist already (without it: nothing is "
                        "written and the first such file is named)")
    args = p.parse_args(argv)
    from ..survey.cfgconvert import convert_cfg

    try:
        written = convert_cfg(args.cfg, args.output_dir, abs_refcat=args.abs_refcat,
                              overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as exc:
        print(f"ceers-convert-cfg: {exc}", file=sys.stderr)
        return 1
    for path, section in written:
        unused = ", ".join(f"{k}={v}" for k, v in section.unused.items())
        print(f"{section.source} [{section.visit}] -> {path}"
              + (f"  (not used: {unused})" if unused else ""))
    print(f"{len(written)} parameter files written to {args.output_dir}")
    return 0


def _align_parser():
    p = argparse.ArgumentParser(
        prog="ceers-align",
        description="Align one visit and filter the CEERS way (replaces 'python run_tweakreg.py "
                    "<visit> <filter>'): select its *_cal.fits by FILTER header, write one "
                    "association per detector, detect sources, align, write results and WCS "
                    "models, print the summary. With --all: every visit and filter found in "
                    "--input-dir, in parallel, plus survey_summary.ecsv, survey_crossfilter.ecsv (the "
                    "filters of each visit compared after alignment) and survey_index.html.",
        epilog="Exit status: 0 when every image was aligned (COMPLETE; with --resume also "
               "groups left alone as complete); 1 when some or all images FAILED or a group "
               "could not run (each named on stderr with its reason), or the output folder is "
               "in use; 2 for a usage error; 130 after Ctrl-C.")
    add_version(p)
    p.add_argument("visit", nargs="?", help="visit id, e.g. jw01345001001")
    p.add_argument("filter", nargs="?", help="filter, e.g. f115w")
    p.add_argument("--all", action="store_true",
                   help="every visit and filter among the *_cal.fits of --input-dir (by header)")
    p.add_argument("--resume", action="store_true",
                   help="with --all: leave alone the visits and filters whose last run in "
                        "--output-dir was COMPLETE with the same input files and parameters; "
                        "redo the others (replacing their outputs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in --output-dir (without it, "
                        "and without --resume, such a run writes nothing and names the file)")
    p.add_argument("--input-dir", default="calibrated", help="folder of the *_cal.fits (calibrated)")
    p.add_argument("--output-dir", default=".",
                   help="folder for catalogs, associations, results, tweakreg_wcs/ (.)")
    p.add_argument("--params", help="parameter file: ceers_align .asdf, or a CEERS .cfg "
                                    "(its [visit] section is used)")
    p.add_argument("--params-dir", action="append", type=Path,
                   help="folder of <visit>_<filter>.asdf files (default: $CEERS_PARAMETER_FILES, "
                        "./parameter_files, the package's parameter_files)")
    p.add_argument("--abs-refcat", help="absolute reference catalog (overrides the parameter file)")
    p.add_argument("--distortion-file", default="", metavar="FILES",
                   help="residual distortion inserted into every image's WCS before the fit: "
                        "a ceers_distortion_<detector>.asdf file, a comma-separated list, or a "
                        "folder of them (e.g. an earlier run's <output-dir>/distortion)")
    p.add_argument("--save-results", action="store_true",
                   help="also write the aligned images <base>_tweakreg.fits")
    p.add_argument("--n-jobs", type=int, default=None,
                   help="worker processes (default: all cores; 1 = serial); with --all the "
                        "visits and filters are spread over them")
    p.add_argument("--scheduler", default="", help="dask.distributed scheduler address")
    p.add_argument("--no-report", action="store_true",
                   help="do not write <visit>_<filter>_alignment_report.html and the DS9 regions")
    p.add_argument("--joint-channels", action="store_true",
                   help="with --all: fit the filters of a visit that share exposures (NIRCam SW "
                        "and LW) together, sharing pointing and dither terms")
    p.add_argument("--shared-detector-terms", action="store_true",
                   help="with --all: measure detector offsets once from all visits, fixed in "
                        "every visit's fit (the run becomes one task)")
    p.add_argument("--fit-distortion", action="store_true",
                   help="with --all: fit each detector's residual distortion (degree 2-3 in its "
                        "pixels, where significant), shared by every visit and filter, into every "
                        "aligned WCS; files in OUT/distortion/ceers_distortion_<detector>.asdf "
                        "(the run becomes one task)")
    from .console import add_verbose

    add_verbose(p)
    return p


def _options(args):
    from ..survey.survey import SurveyOptions

    return SurveyOptions(params=args.params, params_dirs=args.params_dir or [],
                         abs_refcat=args.abs_refcat, save_results=args.save_results,
                         report=not args.no_report, n_jobs=args.n_jobs, scheduler=args.scheduler,
                         joint_channels=args.joint_channels,
                         shared_detector_terms=args.shared_detector_terms,
                         fit_distortion=args.fit_distortion,
                         distortion_file=_resolved_list(args.distortion_file))


def _probe(scheduler):
    """A scheduler that does not answer fails the command before it writes anything (its log too)."""
    if scheduler:
        from ..core.engine import probe_scheduler

        probe_scheduler(scheduler)


def _count(n, one, many):
    """``1 visit and filter``, ``2 visits and filters``."""
    return f"{n} {one if n == 1 else many}"


def _say(text, error=False):
    print(text, file=sys.stderr if error else sys.stdout)


@one_line_errors("ceers-align")
def align_main(argv=None):
    """``ceers-align VISIT FILTER`` (CEERS' per-visit, per-filter run) or ``ceers-align --all``."""
    import re

    from ..survey.survey import (
        Group,
        align_group,
        default_parameter_dirs,
        load_parameters,
        select_images,
    )

    parser = _align_parser()
    args = parser.parse_args(argv)
    if args.all:
        if args.visit or args.filter:
            parser.error("give either VISIT FILTER or --all, not both")
        return _align_all(args)
    if not args.visit or not args.filter:
        parser.error("VISIT and FILTER are required (or --all)")
    if args.resume or args.joint_channels or args.shared_detector_terms or args.fit_distortion:
        parser.error("--resume, --joint-channels, --shared-detector-terms and --fit-distortion "
                     "go with --all")
    visit, filter_name = args.visit.strip().lower(), args.filter.strip().lower()
    if not re.fullmatch(r"jw\d{11}", visit):
        print(f"ceers-align: {args.visit!r} is not a visit id like jw01345001001", file=sys.stderr)
        return 2
    from ..io.grouping import UnsafeNameError, name_part

    try:
        name_part(filter_name, "FILTER", "ceers-align")
    except UnsafeNameError as exc:
        print(f"{exc}: not a filter like f200w", file=sys.stderr)
        return 2
    input_dir, out_dir = Path(args.input_dir), Path(args.output_dir)
    if not input_dir.is_dir():
        print(f"ceers-align: input folder not found: {input_dir}", file=sys.stderr)
        return 1
    try:
        steps, source = load_parameters(args.params, visit, filter_name,
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
    _probe(args.scheduler)
    group = Group(visit, filter_name, selected)
    lock = _lock(out_dir)  # before the log: a refused run must not replace the running one's
    if not args.overwrite:
        _refuse_existing([group], out_dir, args)
    log_path = _log_to(out_dir / f"{visit}_{filter_name}_ceers-align.log", args.verbose)
    print(f"ceers-align: log {log_path}")
    outcome = align_group(group, out_dir, steps, source, _options(args), _say,
                          out_dir_created=lock["created"])
    _print_outcomes([outcome])
    return 0 if outcome.status == "COMPLETE" else 1


def _refuse_existing(groups, out_dir, args, survey=False):
    """
    Stop before anything is written when an earlier run's outputs are in the output
    folder (this run would write over them): ``FileExistsError`` naming the first.
    """
    from ..core.fileio import refuse_existing
    from ..survey.survey import existing_outputs

    existing = [p for g in groups for p in existing_outputs(g, out_dir, args.save_results)]
    if survey:
        existing += [p for p in (Path(out_dir) / "survey_summary.ecsv",
                                 Path(out_dir) / "survey_crossfilter.ecsv",
                                 Path(out_dir) / "survey_index.html") if p.exists()]
    if existing:
        raise FileExistsError(refuse_existing(
            existing, flag="--overwrite",
            alternative=", --resume to redo only what is not complete" if survey else ""))


def _print_outcomes(outcomes):
    """
    The final summary: per visit and filter its images COMPLETE and FAILED, the time,
    the outcome (COMPLETE only when every image was aligned) and the parameter file used.
    """
    def counts(r):
        if r.n_complete is not None:
            return r.n_complete, r.n_failed
        return (0, r.n_images) if r.status == "FAILED" else (r.n_images, 0)

    print(f"{'visit_filter':22s} {'images':>6s} {'COMPLETE':>8s} {'FAILED':>6s} {'seconds':>8s}"
          "  outcome  (parameters)")
    for r in outcomes:
        ok, bad = counts(r)
        print(f"{r.name:22s} {r.n_images:6d} {ok:8d} {bad:6d} {r.seconds:8.1f}  {r.status}"
              + (f": {r.message}" if r.message else "")
              + (f"  (parameters: {r.source})" if r.source else ""))
    ok = sum(counts(r)[0] for r in outcomes)
    bad = sum(counts(r)[1] for r in outcomes)
    print(f"ceers-align: {ok} images COMPLETE, {bad} FAILED"
          + ("" if not bad else " (exit status 1: see the FAILED lines above and the reports)"))


def _align_all(args):
    """``ceers-align --all``: every visit and filter of ``--input-dir``."""
    from ..survey.survey import discover_groups, run_survey

    input_dir, out_dir = Path(args.input_dir), Path(args.output_dir)
    if not input_dir.is_dir():
        print(f"ceers-align: input folder not found: {input_dir}", file=sys.stderr)
        return 1
    groups, problems = discover_groups(input_dir)
    for path, why in problems:
        print(f"ceers-align: {path}: left out: {why}", file=sys.stderr)
    if not groups:
        print(f"ceers-align: no *_cal.fits with a visit and filter in {input_dir}; nothing written",
              file=sys.stderr)
        return 1
    n = sum(len(g.images) for g in groups)
    groups_said = _count(len(groups), "visit and filter", "visits and filters")
    print(f"ceers-align: {groups_said}, {n} images in {input_dir}: "
          + ", ".join(f"{g.name} ({len(g.images)})" for g in groups))
    _probe(args.scheduler)
    from ..io.runstate import remove_partial_files

    _lock(out_dir)  # before the log: a refused run must not replace the running one's log
    if not (args.overwrite or args.resume):
        _refuse_existing(groups, out_dir, args, survey=True)
    log_path = _log_to(out_dir / "ceers-align_all.log", args.verbose)
    print(f"ceers-align: log {log_path}")
    if args.resume:
        for path in remove_partial_files(out_dir):
            print(f"ceers-align: removed {path}, left half-written by an interrupted run")
    outcomes, summary, index = run_survey(groups, out_dir, _options(args), resume=args.resume,
                                          n_jobs=args.n_jobs, scheduler=args.scheduler)
    for result in outcomes:
        for text, error in result.lines:
            if error:
                print(text, file=sys.stderr)
    _print_outcomes(outcomes)
    if args.fit_distortion:
        _print_distortion(out_dir)
    print(f"ceers-align: survey summary {summary}")
    print(f"ceers-align: survey index {index} (links every report; open it in a browser)")
    return 0 if all(r.status != "FAILED" for r in outcomes) else 1


def _print_distortion(out_dir):
    """One line on the run's residual distortion (``--fit-distortion``), from its files."""
    from ..io.distortion_files import read_distortion_files
    from ..stages.write import DISTORTION_DIR

    folder = Path(out_dir) / DISTORTION_DIR
    try:
        fields = read_distortion_files(folder)
    except (FileNotFoundError, ValueError):
        print(f"ceers-align: no residual distortion fitted (why: {out_dir / 'ceers-align_all.log'})")
        return
    parts = []
    for det, d in sorted(fields.items()):
        if d.is_zero:
            parts.append(f"{det} none ({d.meta.get('reason', 'not significant')}; "
                         f"{d.meta.get('n_sources', 0)} reference sources)")
        else:
            (rx, ry), (ex, ey) = d.rms_mas(), d.rms_error_mas()
            parts.append(f"{det} {rx:.2f}+-{ex:.2f} / {ry:.2f}+-{ey:.2f} mas")
    print(f"ceers-align: residual distortion per detector (rms x / y): {', '.join(parts)}; "
          f"files in {folder}")


if __name__ == "__main__":
    sys.exit(apply_wcs_main())
