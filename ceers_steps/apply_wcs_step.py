"""ApplyWcsStep: put saved (tweaked) WCS models back onto calibrated images (``strun apply_wcs``)."""

from ._stpipe import CeersStep, ImageOutputMixin, get_logger
from .inputs import load_inputs, open_image
from .wcs_io import apply_wcs_model, load_wcs_for_image, wcs_dir_path

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
    recording a COMPLETE fit, bounding box equal to the image; ``force`` overrides
    all but the first);
    a problem is an error naming the image and the file, unless
    ``skip_missing`` passes such images through unchanged with a warning.
    """

    class_alias = "apply_wcs"

    spec = """
        wcs_dir = string(default='tweakreg_wcs')  # Folder holding the saved WCS models <base>_tweakreg.asdf, relative to the output directory (as ceers_tweak writes them)
        skip_missing = boolean(default=False)  # Pass images without a usable WCS model through unchanged (warning) instead of failing
        force = boolean(default=False)  # Experts: apply models that record an unaligned (FAILED) fit, another exposure, or a bounding box that does not match the image
        suffix = string(default='tweakreg')  # Outputs are saved as <base>_<suffix>.fits
        output_use_model = boolean(default=True)  # Name outputs after meta.filename
    """  # noqa: E501

    def wcs_dir_path(self):
        """
        ``wcs_dir``, a relative one taken in the output directory (or the working
        directory without one): the same meaning as ``ceers_tweak``'s ``wcs_dir``.
        """
        return wcs_dir_path(self.wcs_dir, self.output_dir_path())

    def process(self, input_data):
        inputs = load_inputs(input_data)
        self.remember_inputs(inputs)
        wcs_dir = self.wcs_dir_path()
        plan = []
        # Check every image first, so that a bad one stops the run before anything is written.
        for image in inputs.images:
            model = open_image(image, copy=self.parent is None, require_wcs=False)
            try:
                found = load_wcs_for_image(model, wcs_dir, model.meta.filename or image.name,
                                           force=self.force)
            except (FileNotFoundError, ValueError) as exc:
                if not self.skip_missing:
                    raise
                log.warning("%s; image passed through unchanged", exc)
                model.meta.cal_step.tweakreg = model.meta.cal_step.tweakreg or "SKIPPED"
                found = None
            plan.append((model, found))
        for model, found in plan:
            if found is not None:
                path, wcsinfo, wcs = found
                apply_wcs_model(model, wcsinfo, wcs)
                log.info("%s: applied %s", model.meta.filename, path)
        models = [m for m, _ in plan]
        if len(models) == 1 and inputs.asn is None:
            return models[0]
        from jwst.datamodels import ModelLibrary

        return ModelLibrary(models)
