"""
Stage 2, detect: images without a catalog get one from our own detection.

Models in memory are detected here (the step's ``_find_sources``), files by
workers (`ceers_steps.stages.tasks.detect_task`); catalogs are saved only with
``save_catalogs``, never over an input.
"""

from dataclasses import replace

from ..core.logs import get_logger
from ..detection.catalogs import catalog_xy
from ..fitting.images import result_row
from .jwstpars import detection_parameters
from .tasks import describe_error, detect_task

__all__ = ["detect"]

log = get_logger(__name__)


def detect(pars, inputs, the_plan):
    """
    Detect sources on the images the `Plan` lists in ``to_detect``.

    Each image detected gets its catalog (``AlignImage.catalog``); one whose
    detection failed is marked unusable. Returns the plan with the catalog paths
    and FAILED rows updated and nothing left to detect.
    """
    if not the_plan.to_detect:
        return the_plan
    images, indices = the_plan.images, the_plan.to_detect
    params = detection_parameters(pars)
    planned = {}
    if pars.save_catalogs:
        from ..core.fileio import check_outputs

        # Saved catalogs never overwrite an input (image or catalog) or each other.
        planned = {i: pars._catalog_output_path(images[i].name) for i in indices}
        check_outputs([(path, images[i].name) for i, path in planned.items()],
                      [image.path for image in inputs.images] + list(the_plan.named_catalogs))
    results = _detect_files(pars, inputs, images, indices, planned, params)
    for i in indices:
        if i not in results:
            results[i] = _detect_model(pars, images[i], planned.get(i))
    catalog_paths = list(the_plan.catalog_paths)
    failed_rows = []
    for i in indices:
        error, xy, path = results[i]
        im = images[i]
        if error:
            log.error("%s: FAILED: %s; its WCS is left unchanged", im.name, error)
            im.status["unusable"] = True
            failed_rows.append(result_row("relative", f"{im.key.visit_filter}_{im.key.detector}",
                                          im.name, f"FAILED: {error}", pars.fitgeometry))
            continue
        im.catalog = xy
        catalog_paths[i] = str(path) if path else None
        log.info("%s: detected %d sources%s", im.name, len(xy), f" -> {path}" if path else "")
    return replace(the_plan, catalog_paths=catalog_paths, to_detect=[],
                   failed_rows=the_plan.failed_rows + failed_rows)


def _detect_files(pars, inputs, images, indices, planned, params):
    """Images on disk, through workers: index -> (error, catalog, saved path)."""
    files = [i for i in indices if inputs.images[i].model is None]
    tasks = [(inputs.images[i].path, params, planned.get(i), images[i].name) for i in files]
    return {i: (res.error, res.xy, res.catalog_path)
            for i, res in zip(files, pars._run_tasks(detect_task, tasks, "Detection",
                                                     names=[images[i].name for i in files]),
                              strict=True)}


def _detect_model(pars, im, planned_path):
    """A model in memory: (error, catalog, saved path)."""
    try:
        catalog = catalog_xy(pars._find_sources(im.model), where=im.name)
    except Exception as exc:  # noqa: BLE001 - a failed detection fails only this image
        return f"detection failed: {describe_error(exc)}", None, None
    path = None
    if planned_path is not None:
        path = pars._write_catalog(catalog, im.name)
        im.model.meta.tweakreg_catalog = path
    return None, catalog, path
