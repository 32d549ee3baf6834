"""Offline base classes shared by every step of the package.

jwst-based steps ask CRDS for ``pars-<class>`` parameter reference files when
they are run through ``strun`` or ``Step.call`` and die (CRDS FATAL) when no
server is reachable. Our steps need no reference files at all, so they never
ask. They also register the package's logger with stpipe, which (from stpipe
0.8 on) only routes the logger names a step declares.
"""

import logging
import math
import os
import re
from pathlib import Path

from jwst.stpipe import Pipeline as JwstPipeline
from jwst.stpipe import Step as JwstStep

from ..core.compat import empty_config, stpipe_logger_names
from ..core.logs import LOGGER_NAME, AllImagesFailedError

__all__ = ["AllImagesFailedError", "CeersPipeline", "CeersStep", "ImageOutputMixin", "LOGGER_NAME",
           "OfflineMixin"]

#: The loggers stpipe routes into a step's log; resolved at import, as older stpipe needs
#: our logger's level set before any step runs.
_LOGGER_NAMES = stpipe_logger_names(LOGGER_NAME)


class OfflineMixin:
    """Never ask CRDS for ``pars-*`` parameter files; log under ``ceers_steps`` too."""

    @classmethod
    def get_config_from_reference(cls, dataset, disable=None, crds_observatory=None):
        """No ``pars-*`` reference files exist for this package: never ask CRDS."""
        return empty_config(cls)

    @classmethod
    def _get_config_from_parameters(cls, crds_parameters, crds_observatory):
        # stpipe >= 0.8 asks each sub-step of a pipeline through this method.
        return empty_config(cls)

    @classmethod
    def _get_crds_parameters(cls, dataset):
        # Only used to look up parameter reference files, which we never do;
        # returning nothing also avoids opening the input twice.
        return {}, "jwst"

    @staticmethod
    def get_stpipe_loggers():
        """Names of the loggers stpipe configures and records into ``cal_logs``."""
        return _LOGGER_NAMES

    def check_finite_parameters(self):
        """
        Refuse NaN or infinite values of the float parameters of this step and its
        sub-steps, naming the parameter: every rule (``x > 0``...) is false for NaN, so
        NaN would otherwise pass every check and change results in silence.
        """
        for name in re.findall(r"^\s*(\w+)\s*=\s*float(?:_list)?\(", self.spec or "", re.M):
            value = getattr(self, name, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, (int, float)) and not isinstance(v, bool) and \
                        not math.isfinite(v):
                    where = f"{self.name}." if self.parent is not None else ""
                    raise ValueError(f"parameter {where}{name} must be a finite number, not {v}")
        for sub in getattr(self, "step_defs", {}):
            step = getattr(self, sub, None)
            if isinstance(step, OfflineMixin) and not step.skip:
                step.check_finite_parameters()

    def check_parameters(self):
        """Every parameter checked before the run reads or writes anything (`run` calls it)."""
        self.check_finite_parameters()

    def output_dir_path(self):
        """The step's (or its pipeline's) output directory, else the working directory."""
        return Path(self.search_attr("output_dir") or os.getcwd())

    def run(self, *args, **kwargs):
        """
        stpipe's ``run``; when it fails, an output directory that stpipe created for this
        run and that is still empty is removed, so a failed run leaves nothing behind.
        """
        out = None
        if self.output_dir:
            out = Path(os.path.expandvars(os.path.expanduser(self.output_dir)))
        existed = out is None or out.exists()
        if not self.skip:
            self.check_parameters()
        try:
            return super().run(*args, **kwargs)
        except BaseException:
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise


class CeersStep(OfflineMixin, JwstStep):
    """A jwst Step that never contacts CRDS and logs under ``ceers_steps``."""

    # No reference files: nothing to prefetch.
    reference_file_types = []
    prefetch_references = False


class CeersPipeline(OfflineMixin, JwstPipeline):
    """A jwst Pipeline that never contacts CRDS (nor records a CRDS context it did not use)."""

    reference_file_types = []
    prefetch_references = False

    def finalize_result(self, result, reference_files_used):
        # JwstPipeline asks CRDS for its context here; our pipelines use no reference files,
        # so record only the software versions, as a jwst Step does.
        JwstStep.finalize_result(self, result, reference_files_used)


class ImageOutputMixin:
    """Save images as ``<exposure base>_<suffix>.fits``, completely or not at all."""

    #: The input files of the current run, never to be written over (`remember_inputs`).
    _input_paths = ()

    def remember_inputs(self, inputs):
        """Record the run's input files (an `InputSet`): `save_model` never writes over them."""
        self._input_paths = tuple(image.path for image in inputs.images if image.path is not None)

    def image_output_path(self, filename, suffix=None):
        """``<output dir>/<exposure base>_<suffix>.fits``: where an image of this step is saved."""
        from ..io.wcs_models import exposure_base

        suffix = suffix or self.suffix or "tweakreg"
        from ..core.fileio import inside_folder

        out_dir = self.output_dir_path()
        return inside_folder(out_dir / f"{exposure_base(filename)}_{suffix}.fits", out_dir)

    def save_model(self, model, suffix=None, idx=None, output_file=None, force=False, **kwargs):
        """
        Save images as ``<exposure base>_<suffix>.fits`` (CEERS: ``_tweakreg``).

        Every output path is checked before the first is written: none may be an
        input of the run (same path or same file) and no two may coincide.
        """
        if not (force or self.save_results):
            return None
        if getattr(model, "outputs_written", False):
            return None  # a streamed run wrote its outputs as it went
        from ..core.fileio import atomic_output, check_outputs
        from ..io.inputs import library_models

        models = library_models(model)
        planned = [(self.image_output_path(m.meta.filename, suffix), m.meta.filename)
                   for m in models]
        # Steps with an ``overwrite`` parameter (apply_wcs) replace existing files only when
        # asked; the others (jwst's drop-ins) as jwst does.
        check_outputs(planned, self._input_paths, overwrite=getattr(self, "overwrite", True))
        paths = []
        for m, (path, _) in zip(models, planned, strict=True):
            with atomic_output(path) as tmp:
                m.save(str(tmp))
            paths.append(str(path))
            logging.getLogger(f"{LOGGER_NAME}.output").info("Saved %s", path)
        return paths
