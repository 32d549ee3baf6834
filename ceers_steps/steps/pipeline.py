"""CeersAlignPipeline: catalogs, then CEERS alignment (``strun ceers_align``)."""

from ..core.logs import get_logger
from ..io.inputs import load_inputs
from .base import CeersPipeline, ImageOutputMixin
from .catalog_step import CatalogStep
from .tweakreg_step import CeersTweakRegStep

__all__ = ["CeersAlignPipeline"]

log = get_logger(__name__)


class CeersAlignPipeline(ImageOutputMixin, CeersPipeline):
    """
    Detect sources and align NIRCam images the CEERS way, in one run.

    Sub-steps: ``catalog`` (`CatalogStep`: SEP catalogs with the CEERS recipe,
    written as ``<stem>_cat.ecsv``) and ``tweakreg`` (`CeersTweakRegStep`:
    relative per detector, then absolute to ``abs_refcat``). Skip ``catalog``
    to use catalogs named in the association or by ``steps.tweakreg.catfile``.

    Outputs as the steps define them: ``<base>_tweakreg.fits`` (with
    ``save_results``, on under ``strun``), ``tweakreg_wcs/<base>_tweakreg.asdf``,
    ``<visit>_<filter>_tweakreg_results.ecsv`` and
    ``tweakreg_results_all.<visit>_<filter>.txt``. When every input is a file
    and results are saved, images are streamed: a worker opens one, detects,
    writes its catalog and releases it; after the fit a worker opens it again,
    sets its WCS and writes it. Memory then does not grow with the number of
    images. ``n_jobs`` and ``scheduler`` apply to both sub-steps unless they set
    their own.
    """

    class_alias = "ceers_align"

    #: Its ``tweakreg`` writes the alignment report unless told not to (``save_report``).
    writes_alignment_report = True

    spec = """
        n_jobs = integer(default=None)  # Worker processes for detection, group fits and writing: None or 0 = all cores, 1 = serial, -N = all but N-1
        scheduler = string(default='')  # Address of a dask.distributed scheduler [tcp://host:8786]; empty = local processes
        in_memory = boolean(default=True)  # False: with file inputs, never hold the images; without save_results only WCS models, catalogs and tables are written and nothing is returned
        suffix = string(default='tweakreg')  # Aligned images are saved as <exposure base>_<suffix>.fits
        output_use_model = boolean(default=True)  # Name outputs after meta.filename
    """  # noqa: E501

    step_defs = {"catalog": CatalogStep, "tweakreg": CeersTweakRegStep}

    def check_parameters(self):
        """
        The parameters of the pipeline and of both sub-steps checked, naming them, before
        the catalog step writes anything (a bad tweakreg value would otherwise be found
        only after every catalog was written).
        """
        self.check_finite_parameters()
        for step in (self.catalog, self.tweakreg):
            if not step.skip:
                step.check_parameters()

    def _share_engine(self):
        for step in (self.catalog, self.tweakreg):
            if step.n_jobs is None:
                step.n_jobs = self.n_jobs
            if not step.scheduler:
                step.scheduler = self.scheduler

    def process(self, input_data):
        from ..core.engine import worker_pool

        self._share_engine()
        inputs = load_inputs(input_data)
        self.remember_inputs(inputs)
        # One pool for the whole run, forked now while this process is small.
        with worker_pool(self.n_jobs, self.scheduler or None, n_tasks=len(inputs)):
            return self._process(inputs)

    def _process(self, inputs):
        self.tweakreg._normalise_lists()
        refcat = self.tweakreg.abs_refcat.strip()
        if refcat and not self.tweakreg.skip:
            # Read and checked (files, columns, epochs, cuts) before detection writes anything.
            self.tweakreg.preloaded_refcat = self.tweakreg.read_refcat()
        log.info("CEERS alignment of %d images", len(inputs))
        catalogs = None
        if not self.catalog.skip:
            catalogs = self.catalog.make_catalogs(inputs)
        else:
            log.info("Step catalog skipped: catalogs come from the association, catfile or "
                     "meta.tweakreg_catalog")
        if self.tweakreg.skip:
            log.info("Step tweakreg skipped: images unchanged")
            from ..core.compat import make_library
            from ..io.inputs import open_image

            return make_library([open_image(im) for im in inputs.images])
        save = bool(self.save_results)
        result = self.tweakreg.align(inputs, catalogs=catalogs, save=save, suffix=self.suffix,
                                     stream=save or not self.in_memory,
                                     copy_inputs=self.parent is None)
        self.results = self.tweakreg.results
        return result
