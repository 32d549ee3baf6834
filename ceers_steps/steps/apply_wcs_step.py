"""ApplyWcsStep: put saved (tweaked) WCS models back onto calibrated images (``strun apply_wcs``)."""

from pathlib import Path

from ..core.logs import get_logger
from ..io.inputs import load_inputs, open_image
from ..io.wcs_models import wcs_dir_path
from .base import CeersStep, ImageOutputMixin

__all__ = ["ApplyWcsStep"]

log = get_logger(__name__)


class ApplyWcsStep(ImageOutputMixin, CeersStep):
    """
    Apply saved WCS models (CEERS ``<base>_tweakreg.asdf`` files) to calibrated images.

    For each image, ``<wcs_dir>/<base>_tweakreg.asdf`` is read (a relative
    ``wcs_dir`` is in the output directory, where ``ceers_tweak`` writes it), where ``<base>`` is
    the exposure name up to and including the detector, whatever the image's
    suffix. Its ``wcs`` and ``wcsinfo`` replace the image's, and
    ``meta.cal_step.tweakreg`` is set to COMPLETE. Before anything is applied,
    every image is checked (model found, made for this exposure and detector,
    recording a COMPLETE fit, bounding box equal to the image, putting the image
    within ``max_offset`` arcsec of its own WCS; ``force`` overrides all but the
    first);
    a problem is an error naming the image and the file, unless
    ``skip_missing`` passes such images through unchanged with a warning. An
    output file that exists already is an error naming it (nothing is written)
    unless ``overwrite`` is set; inputs are never written over.

    ``distortion_file`` (a residual-distortion file ``ceers_distortion_<detector>.asdf``,
    a comma-separated list of them, or a folder holding them) inserts each image's
    detector's residual distortion into its WCS after the saved model (or into the image's
    own WCS when ``skip_missing`` passes it without one), before the detector-to-V2V3
    transform, so that resample uses it. An image whose WCS already carries one (a model
    saved by a ``fit_distortion`` run) is refused like a bad model, never given a second;
    an image of a detector without a file is left without one, with a warning. The FITS
    SIP keywords of ``meta.wcsinfo`` are not refitted.

    Several image files with ``save_results`` (``strun`` on an association,
    ``ceers-apply-wcs --all``) are streamed: each worker of ``n_jobs`` (or of a
    Dask ``scheduler``) opens one image, checks and applies its model and writes
    it under a temporary name; only when every image succeeded are the outputs
    moved into place, so memory does not grow with the number of images and a
    bad image still leaves no output.
    """

    class_alias = "apply_wcs"

    spec = """
        wcs_dir = string(default='tweakreg_wcs')  # Folder holding the saved WCS models <base>_tweakreg.asdf, relative to the output directory [as ceers_tweak writes them]
        skip_missing = boolean(default=False)  # Pass images without a usable WCS model through unchanged [warning] instead of failing
        force = boolean(default=False)  # Experts: apply models that record an unaligned [FAILED] fit, another exposure, a bounding box that does not match the image, or an offset beyond max_offset
        max_offset = float(default=2.0)  # Largest distance [arcsec] between the model's and the image's own WCS over the image for the model to be applied [CEERS' tweaks: < 0.4]; a model of another image is refused
        suffix = string(default='tweakreg')  # Outputs are saved as <base>_<suffix>.fits
        overwrite = boolean(default=False)  # Replace output files that exist already [never the inputs]; without it such a run writes nothing
        output_use_model = boolean(default=True)  # Name outputs after meta.filename
        n_jobs = integer(default=None)  # Worker processes when streaming several files: None or 0 = all cores, 1 = serial, -N = all but N-1
        scheduler = string(default='')  # Address of a dask.distributed scheduler [tcp://host:8786] for that work; empty = local
        distortion_file = string(default='')  # Residual distortion to insert after the saved WCS models: a ceers_distortion_<detector>.asdf file, a comma-separated list, or a folder of them; empty = none
    """  # noqa: E501

    def wcs_dir_path(self):
        """
        ``wcs_dir``, a relative one taken in the output directory (or the working
        directory without one): the same meaning as ``ceers_tweak``'s ``wcs_dir``.
        """
        return wcs_dir_path(self.wcs_dir, self.output_dir_path())

    def _max_offset(self):
        """``max_offset``, checked: a positive number of arcsec."""
        value = self.max_offset
        if value is None or not value > 0 or value == float("inf"):
            raise ValueError(f"max_offset must be a positive number of arcsec, not {value!r}")
        return float(value)

    def distortions(self):
        """The residual distortions of ``distortion_file``: detector -> DetectorDistortion."""
        from ..io.distortion_files import read_distortion_files

        return read_distortion_files(self.distortion_file or "")

    def process(self, input_data):
        from ..stages.tasks import apply_wcs_plan, plan_apply_wcs

        inputs = load_inputs(input_data)
        self._max_offset()
        distortions = self.distortions()
        self.remember_inputs(inputs)
        wcs_dir = self.wcs_dir_path()
        if (self.save_results and len(inputs.images) > 1
                and all(image.path is not None for image in inputs.images)):
            return self._stream(inputs, wcs_dir, distortions)
        plan = []
        # Check every image first, so that a bad one stops the run before anything is written.
        in_memory = set()  # ids of the models this run did not open from a file
        for image in inputs.images:
            model = open_image(image, copy=self.parent is None, require_wcs=False)
            if image.path is None:
                in_memory.add(id(model))
            try:
                planned = plan_apply_wcs(model, model.meta.filename or image.name, wcs_dir,
                                         self.force, self.skip_missing, self._max_offset(),
                                         distortions)
            except (FileNotFoundError, ValueError):
                # Files this run opened are closed before the run fails.
                for opened in [m for m, _ in plan] + [model]:
                    if id(opened) not in in_memory:
                        opened.close()
                raise
            for warning in planned.warnings:
                log.warning("%s", warning)
            if planned.skipped:
                model.meta.cal_step.tweakreg = model.meta.cal_step.tweakreg or "SKIPPED"
            plan.append((model, planned))
        for model, planned in plan:
            apply_wcs_plan(model, planned)
            _log_applied(model.meta.filename, planned.found and planned.found[0],
                         planned.distortion, planned.source)
        models = [m for m, _ in plan]
        if len(models) == 1 and inputs.asn is None:
            return models[0]
        from ..core.compat import make_library

        return make_library(models)

    def _stream(self, inputs, wcs_dir, distortions):
        """Per-image tasks write into a temporary folder; published only if all succeeded."""
        import os
        import shutil
        import tempfile

        from ..core.engine import run_tasks
        from ..core.fileio import check_outputs
        from ..io.inputs import written_library
        from ..stages.tasks import apply_wcs_task

        out_dir = self.output_dir_path()
        if not self.overwrite:
            # Before any work: the outputs as the inputs' names give them (checked again,
            # by the names the images record, before anything is moved into place).
            from ..core.fileio import refuse_existing
            from ..io.wcs_models import exposure_base

            # (An input itself is refused below, with its own message.)
            ours = {Path(image.path).resolve() for image in inputs.images}
            existing = [p for p in (out_dir / f"{exposure_base(image.path.name)}_{self.suffix}.fits"
                                    for image in inputs.images)
                        if p.exists() and p.resolve() not in ours]
            if existing:
                raise FileExistsError(refuse_existing(existing))
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".apply_wcs.", suffix=".part", dir=out_dir))
        try:
            done = run_tasks(apply_wcs_task,
                             [(image.path, wcs_dir, self.force, self.skip_missing, out_dir,
                               self.suffix, tmp, self._max_offset(), distortions)
                              for image in inputs.images],
                             n_jobs=self.n_jobs, scheduler=self.scheduler or None,
                             label="Applying WCS models",
                             names=[image.name for image in inputs.images])
            for result in done:
                if "error" in result:
                    kind = FileNotFoundError if result["kind"] == "FileNotFoundError" else (
                        TypeError if result["kind"] == "TypeError" else ValueError)
                    raise kind(result["error"])
            check_outputs([(r["output"], r["name"]) for r in done], self._input_paths,
                          overwrite=self.overwrite)
            for result in done:
                for warning in result["warnings"]:
                    log.warning("%s", warning)
                _log_applied(result["name"], result["applied"], result["distortion"],
                             result["source"])
                os.replace(result["written"], result["output"])
                log.info("Saved %s", result["output"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        name = (inputs.asn or {}).get("products", [{}])[0].get("name", "apply_wcs")
        members = [{"expname": r["output"], "exptype": "science"} for r in done]
        return written_library({"products": [{"name": name, "members": members}]}, outputs=True)


def _log_applied(name, path, distortion, source):
    """Say what was applied to an image: its saved model, the residual distortion."""
    if path:
        log.info("%s: applied %s", name, path)
    if distortion == "applied":
        log.info("%s: residual distortion inserted%s", name, f" ({source})" if source else "")
