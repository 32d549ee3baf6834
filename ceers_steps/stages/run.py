"""
The CEERS alignment as named stages, in order: what `CeersTweakRegStep` (and so
`CeersAlignPipeline`, ``ceers-align`` and ``--all``) runs.

plan (`ceers_steps.stages.plan`: inputs -> images, catalogs to read or detect,
units with their reference catalog at their epoch) -> detect
(`ceers_steps.stages.detect`) -> fit (`ceers_steps.stages.fit`: per unit relative,
absolute, judge; statuses) -> write (`ceers_steps.stages.write`: images, WCS
models) -> report (`ceers_steps.stages.report`) -> results tables (last: a folder
holding them holds a complete run).

Each stage is a plain function of the step's parameters (``pars``: the step, or any
object with its parameters and hooks) and the dataclasses the earlier stages
returned. The algorithms are in `ceers_steps.fitting`; this package imports no Step.
"""

from ..core.logs import AllImagesFailedError, get_logger
from ..io.results import results_table
from . import report as report_stage
from .detect import detect
from .fit import fit
from .plan import plan, plan_units, settings
from .write import retire_earlier_results, write_distortion_files, write_images, write_results

__all__ = ["run_stages"]

log = get_logger(__name__)


def run_stages(pars, inputs, catalogs=None, save=False, suffix="tweakreg", stream=None,
               copy_inputs=None):
    """
    Align an `InputSet`; write results, WCS models and (with ``save``) aligned images.

    Parameters
    ----------
    pars : CeersTweakRegStep
        The step (or any object with its parameters and hooks: ``_find_sources``,
        ``_write_catalog``, ``_catalog_output_path``, ``_run_tasks``, ``output_dir_path``,
        ``image_output_path``, ``read_refcat``). The results table is left in ``pars.results``,
        the reports written in ``pars.report_paths``.
    inputs : InputSet
    catalogs : list of CatalogResult, optional
        From `CatalogStep.make_catalogs`, one per image; otherwise catalogs come
        from ``catfile``, the association or ``meta.tweakreg_catalog``.
    save : bool
        Write ``<base>_<suffix>.fits``. When every input is a file, the images
        are then streamed: each is opened, given its WCS, written and released
        by a worker, and the returned library opens the written files on demand.
    suffix : str
    stream : bool, optional
        Stream images on disk through workers (default: when saving and every
        input is a file). Streaming without ``save`` writes only the WCS models
        and returns None.
    copy_inputs : bool, optional
        Work on copies of in-memory models (default: when not inside a pipeline;
        pipelines that run on their own models align them in place).

    Returns
    -------
    ModelLibrary or None

    Raises
    ------
    AllImagesFailedError
        When no image could be used (after the tables and reports are written).
    """
    # Every parameter checked before anything is read or written.
    run = settings(pars, inputs, stream=stream, save=save, copy_inputs=copy_inputs)
    the_plan = detect(pars, inputs, plan(pars, inputs, run, catalogs))
    units, by_visit = plan_units(pars, the_plan, run.refcat)
    fitted = fit(pars, the_plan, units, by_visit, run)
    pars.results = results_table(fitted.rows) if fitted.rows else None
    # The results tables are written last, so a folder with them holds a complete run;
    # an earlier run's tables are removed first, so an interrupted rerun has none.
    earlier = retire_earlier_results(pars, fitted.tables)
    images = the_plan.images
    # Nothing written yet: a report made before the files (all images failed) links none.
    pars.distortion_fit = fitted.distortion
    pars.distortion_paths = {}
    failed = [im.name for im in images if im.status.get("unusable")]
    if failed and len(failed) == len(images):
        _report_and_results(pars, images, fitted, earlier)
        raise AllImagesFailedError(
            f"all {len(images)} images failed: "
            + "; ".join(r["image"] + ": " + r["status"] for r in the_plan.failed_rows))
    if failed:
        log.warning("%d of %d images FAILED: %s; the others were aligned", len(failed),
                    len(images), ", ".join(failed))
    # In-memory images are saved by stpipe after this returns; the tables come first then.
    result = write_images(pars, inputs, the_plan, fitted, run, save, suffix)
    # The distortion files before the reports, which link them.
    pars.distortion_paths = write_distortion_files(pars, fitted.distortion)
    _report_and_results(pars, images, fitted, earlier)
    return result


def _report_and_results(pars, images, fitted, earlier):
    pars.report_paths = report_stage.write_reports(pars, images, fitted)
    write_results(pars, fitted.tables, earlier)
