"""calwebb_image3 with the CEERS alignment in place of jwst's tweakreg (``calwebb_image3_ceers``)."""

from jwst.pipeline import Image3Pipeline

from ..core.logs import LOGGER_NAME
from .base import OfflineMixin
from .pipeline import CeersAlignPipeline

__all__ = ["CeersImage3Pipeline"]


class CeersImage3Pipeline(Image3Pipeline):
    """
    jwst's stage-3 imaging pipeline whose ``tweakreg`` step is `CeersAlignPipeline`.

    Everything else is jwst's `Image3Pipeline` unchanged: the aligned models go
    on to skymatch, outlier detection, resample and source catalog. The
    alignment is configured under ``steps.tweakreg`` (its own sub-steps
    ``catalog`` and ``tweakreg``), e.g.
    ``--steps.tweakreg.steps.tweakreg.abs_refcat=refcat.ecsv``.

    CRDS parameter files: jwst's own steps get theirs as in ``calwebb_image3``
    (unless ``STPIPE_DISABLE_CRDS_STEPPARS`` is set); the CEERS steps and this
    class never ask for any. CRDS reference files: of the steps run, only jwst's
    ``source_catalog`` needs any (``apcorr``, ``abvegaoffset``). When no step
    that runs needs one, CRDS is never contacted, so the pipeline runs offline
    with ``--steps.source_catalog.skip=true`` (or with both overrides given).
    """

    class_alias = "calwebb_image3_ceers"

    step_defs = {**Image3Pipeline.step_defs, "tweakreg": CeersAlignPipeline}

    @classmethod
    def _get_config_from_parameters(cls, crds_parameters, crds_observatory):
        # stpipe >= 0.8: each sub-step's own CRDS parameters, none for this class itself
        # (CRDS has no pars-ceersimage3pipeline; asking would only fail offline).
        refcfg = cls._empty_config()
        for name, step_class in cls.step_defs.items():
            refcfg["steps"][name] = step_class._get_config_from_parameters(
                crds_parameters, crds_observatory)
        return refcfg

    def _precache_references(self, input_file):
        # stpipe asks CRDS even for an empty list of reference types; offline that is fatal.
        needed = [t for t in self.reference_file_types if self.get_ref_override(t) is None]
        if needed:
            super()._precache_references(input_file)

    def finalize_result(self, result, reference_files_used):
        # jwst's Pipeline asks CRDS for its context; with no reference file used (offline,
        # source_catalog skipped, overrides of "N/A") record the software versions only, as
        # a Step does.
        if any(name and str(name).upper() != "N/A" for _, name in reference_files_used):
            super().finalize_result(result, reference_files_used)
        else:
            from jwst.stpipe import Step

            Step.finalize_result(self, result, reference_files_used)

    @staticmethod
    def get_stpipe_loggers():
        """jwst's loggers and ours."""
        return OfflineMixin.get_stpipe_loggers()

    def process(self, input_data):
        import logging

        logging.getLogger(LOGGER_NAME).info("calwebb_image3 with the CEERS alignment as tweakreg")
        return super().process(input_data)
