"""
Stage 4, write: aligned images, WCS models, the reference catalogs used, and the
results tables (last, so a folder holding them holds a complete run).

Every output path is checked against the inputs and the other outputs before
anything is written (`ceers_steps.core.fileio.check_outputs`).
"""

from ..core.logs import get_logger
from ..io.inputs import written_library
from ..io.results import results_paths, write_ceers_results, write_results_table
from ..io.wcs_models import save_wcs_model, wcs_dir_path, wcs_model_path
from ..refcat import named_catalog, refcat_paths
from .parameters import sip_options
from .tasks import finish_aligned_model, write_aligned_task

__all__ = ["not_aligned_reason", "retire_earlier_results", "write_distortion_files", "write_images",
           "write_results"]

#: Folder of the residual-distortion files (``fit_distortion``), in the output directory.
DISTORTION_DIR = "distortion"

log = get_logger(__name__)


def write_images(pars, inputs, the_plan, fitted, run, save, suffix):
    """
    The aligned images (with ``save``) and WCS models (with ``save_wcs``; default
    ``save``), and the reference catalogs used (``save_abs_catalog``).

    Streamed runs write through workers and return a library over the written
    files (None without ``save``); in-memory runs finish the models (status, WCS
    name, SIP) and return a library over them, which stpipe saves afterwards.
    """
    save_wcs = pars.save_wcs if pars.save_wcs is not None else bool(save)
    if run.stream and not save and not save_wcs:
        log.warning("Streaming without saving images: saving the WCS models, or the fit "
                    "would be lost")
        save_wcs = True
    wcs_dir = wcs_dir_path(pars.wcs_dir, pars.output_dir_path())
    save_abs_catalogs(pars, fitted.used_refcats, inputs)
    if run.stream:
        return _write_streamed(pars, inputs, the_plan, fitted, suffix,
                               wcs_dir if save_wcs else None, save)
    return _finish_in_memory(pars, inputs, the_plan.images, fitted, suffix,
                             wcs_dir if save_wcs else None, save)


def _finish_in_memory(pars, inputs, images, fitted, suffix, wcs_dir, save):
    from ..core.compat import make_library
    from ..core.fileio import check_outputs

    readable = [im for im in images if im.model is not None]
    for im in readable:
        status, wcs_name = fitted.statuses[im.name]
        finish_aligned_model(im.model, None, wcs_name, status, sip_options(pars), log=log)
    # Every output of the run (images saved by stpipe afterwards, WCS models) checked first.
    saved = [im for im in readable if not im.status.get("unusable")] if wcs_dir else []
    wcs_paths = [(wcs_model_path(wcs_dir, im.model.meta.filename), im.name) for im in saved]
    image_paths = [(pars.image_output_path(im.model.meta.filename, suffix), im.name)
                   for im in readable] if save else []
    check_outputs(image_paths + wcs_paths, [image.path for image in inputs.images])
    if wcs_dir:
        for im, (path, _) in zip(saved, wcs_paths, strict=True):
            status = fitted.statuses[im.name][0]
            save_wcs_model(path, im.model.meta.filename, im.model.meta.wcsinfo,
                           im.model.meta.wcs, status=status,
                           reason=not_aligned_reason(fitted.rows, im.name)
                           if status != "COMPLETE" else None)
        log.info("Saved %d WCS models in %s", len(saved), wcs_dir)
    return make_library([im.model for im in readable])


def _write_streamed(pars, inputs, the_plan, fitted, suffix, wcs_dir, save):
    """Workers write every aligned image (and WCS model); return a library over them."""
    from ..core.fileio import check_outputs

    # Each output path once: checked against the inputs and each other, then written.
    plan = []
    for image, im, cat in zip(inputs.images, the_plan.images, the_plan.catalog_paths,
                              strict=True):
        if im.model is None:
            continue  # an unreadable file has nothing to write
        status, wcs_name = fitted.statuses[im.name]
        out_path = pars.image_output_path(im.name, suffix) if save else None
        wcs_path = (wcs_model_path(wcs_dir, im.name)
                    if wcs_dir is not None and not im.status.get("unusable") else None)
        plan.append((image, im, cat, status, wcs_name, out_path, wcs_path))
    check_outputs([(path, im.name) for _, im, _, _, _, out_path, wcs_path in plan
                   for path in (out_path, wcs_path) if path is not None],
                  [image.path for image in inputs.images])
    tasks, members = [], []
    for image, im, cat, status, wcs_name, out_path, wcs_path in plan:
        tasks.append((image.path, out_path, im.model.meta.wcs if status == "COMPLETE" else None,
                      wcs_name, status, sip_options(pars), wcs_path, cat,
                      not_aligned_reason(fitted.rows, im.name) if status != "COMPLETE" else None))
        members.append({"expname": str(out_path), "exptype": "science",
                        "group_id": im.key.exposure})
    pars._run_tasks(write_aligned_task, tasks,
                    "Writing aligned images" if save else "Writing WCS models",
                    names=[im.name for im in the_plan.images if im.model is not None])
    if wcs_dir is not None:
        log.info("Saved %d WCS models in %s", sum(t[6] is not None for t in tasks), wcs_dir)
    if not save:
        return None
    name = (inputs.asn or {}).get("products", [{}])[0].get("name", "aligned")
    return written_library({"products": [{"name": name, "members": members}]}, outputs=True)


def save_abs_catalogs(pars, used_refcats, inputs):
    """Each visit's reference catalog as used (``save_abs_catalog``)."""
    if not pars.save_abs_catalog or not used_refcats:
        return
    from ..core.fileio import check_outputs, inside_folder, write_ecsv

    out_dir = pars.output_dir_path()
    paths = {vf: inside_folder(out_dir / f"{vf}_abs_refcat.ecsv", out_dir)
             for vf in used_refcats}
    check_outputs([(p, vf) for vf, p in paths.items()],
                  [image.path for image in inputs.images]
                  + ([] if named_catalog(pars.abs_refcat) else refcat_paths(pars.abs_refcat)))
    for vf, path in paths.items():
        table = used_refcats[vf].copy()
        table.meta = {k: v for k, v in table.meta.items()
                      if k in ("catalogs", "epoch", "max_motion_mas", "source")}
        write_ecsv(table, path)
        log.info("%s: reference catalog used (%d sources) written to %s", vf, len(table), path)


def retire_earlier_results(pars, tables):
    """
    The results files of a visit and filter may hold rows of earlier runs: another
    detector's (CEERS aligned one detector per call) or this run's images'. Rows of
    this run's images are removed now, so an interrupted run leaves none of theirs;
    the other images' rows stay and are kept when this run's rows are added.

    Returns
    -------
    dict
        Visit and filter -> the other images' earlier rows, for `write_results`.
    """
    from ..io.results import read_results_table, rows_of_other_images

    kept = {}
    if not pars.save_fit_results:
        return kept
    for visit_filter, table in tables.items():
        ecsv_path, txt_path = results_paths(pars.output_dir_path(), visit_filter)
        earlier = read_results_table(ecsv_path)
        if earlier is None and (txt_path.exists() or ecsv_path.exists()):
            log.warning("%s: earlier results files in %s cannot be read; they are replaced",
                        visit_filter, ecsv_path.parent)
        others = None if earlier is None else rows_of_other_images(earlier, table)
        n_others = 0 if others is None else len(others)
        if earlier is not None and len(earlier) > n_others:
            log.warning("%s: %s holds results of an earlier run of %d of these images; "
                        "they are being replaced", visit_filter, ecsv_path.name,
                        len({str(n) for n in earlier["image"]}
                            & {str(n) for n in table["image"]}))
        if others is None:
            for path in (ecsv_path, txt_path):
                path.unlink(missing_ok=True)
            continue
        log.info("%s: keeping the rows of %d other images in %s", visit_filter,
                 len(set(others["image"])), ecsv_path.name)
        kept[visit_filter] = others
        if len(earlier) > n_others:
            write_results_table(others, ecsv_path)
            write_ceers_results(others, txt_path)
    return kept


def write_results(pars, tables, earlier):
    """Each visit's results table (ECSV and CEERS' text), merged with ``earlier`` rows."""
    from ..io.results import merge_results

    if not pars.save_fit_results:
        return
    for visit_filter, table in tables.items():
        ecsv_path, txt_path = results_paths(pars.output_dir_path(), visit_filter)
        merged = merge_results(earlier.get(visit_filter), table)
        ecsv = write_results_table(merged, ecsv_path)
        txt = write_ceers_results(merged, txt_path)
        log.info("Wrote %s and %s", ecsv, txt)


def not_aligned_reason(rows, name):
    """Why an image was not aligned: its last result row that is not a success."""
    from ..io.results import REFERENCE_ALONE

    reasons = [row["status"] for row in rows
               if row["image"] == name and row["status"] not in ("SUCCESS",)
               and not row["status"].startswith("REFERENCE")]
    if reasons:
        return reasons[-1]
    if any(row["image"] == name and row["status"].startswith("REFERENCE") for row in rows):
        return f"FAILED: {REFERENCE_ALONE}"
    return "FAILED: not aligned"


def write_distortion_files(pars, distortion):
    """
    One ``ceers_distortion_<detector>.asdf`` per detector of a successful ``fit_distortion``
    in ``<output_dir>/distortion`` (each written completely or not at all; a detector
    whose field was not significant gets a file with a zero field and the reason, so that
    the folder describes every detector the run measured). Detector -> path.

    With ``fit_distortion``, the files an earlier run left there go first: the folder holds
    this run's fields or, when this run could not fit one, none (a field another run fitted
    on other data must not pass for this run's).
    """
    folder = pars.output_dir_path() / DISTORTION_DIR
    if getattr(pars, "fit_distortion", False) and folder.is_dir():
        earlier = sorted(folder.glob("ceers_distortion_*.asdf"))
        for path in earlier:
            path.unlink()
        if earlier and (distortion is None or not distortion.success):
            log.warning("fit_distortion: no field fitted; the %d residual distortion file(s) of "
                        "an earlier run in %s were removed", len(earlier), folder)
    if distortion is None or not distortion.success:
        return {}
    from ..io.distortion_files import distortion_file_name, write_distortion_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for det, field_ in distortion.distortions.items():
        path = folder / distortion_file_name(det)
        write_distortion_file(path, field_, overwrite=True)
        paths[det] = path
    log.info("Residual distortion files: %s", ", ".join(str(p) for p in paths.values()))
    return paths
