"""CatalogStep: per-image SEP catalogs with the CEERS detection recipe (``strun ceers_catalog``)."""

import json
import os
from pathlib import Path

from ..core.engine import run_tasks
from ..core.fileio import atomic_output
from ..core.logs import AllImagesFailedError, get_logger
from ..detection.catalogs import catalog_path_for
from ..detection.sources import DetectionParameters
from ..io.inputs import load_inputs, open_image, written_library
from ..stages.tasks import detect_task, image_arrays
from .base import CeersStep

__all__ = ["CatalogStep", "log_catalog_results", "require_some_catalogs"]

log = get_logger(__name__)


class CatalogStep(CeersStep):
    """
    Detect sources on calibrated images with SEP, the CEERS way, and write catalogs.

    For every image: SEP background (mesh ``back_size``, filter
    ``back_filtersize``), detection on the background-subtracted SCI array
    with a flat RMS (median of the positive ERR values) and the 3x3
    ``default.conv`` filter, windowed centroids (Source Extractor's
    XWIN/YWIN, 0-based) and AUTO fluxes. DO_NOT_USE, NaN and zero-ERR pixels
    are masked. Writes ``<input stem>_cat.ecsv`` into the output directory,
    records it in ``meta.tweakreg_catalog`` and, for an association, writes a
    copy of the association whose members carry ``tweakreg_catalog``, which
    both `CeersTweakRegStep` and jwst's ``TweakRegStep(use_custom_catalogs=True)``
    read.
    """

    class_alias = "ceers_catalog"

    spec = """
        detect_thresh = float(default=4.0)  # Detection [and analysis] threshold in units of the RMS [CEERS cfg detect_thresh]
        detect_minarea = integer(default=16)  # Minimum number of connected pixels above threshold [CEERS cfg detect_minarea]
        back_size = integer(default=128)  # Background mesh size, pixels [Source Extractor BACK_SIZE]
        back_filtersize = integer(default=4)  # Background median filter size, meshes [BACK_FILTERSIZE]
        kernel = string(default='default')  # Detection filter: 'default' [3x3 default.conv, CEERS], 'none', 'gauss_<fwhm>_<n>x<n>' or 'tophat_<diameter>_<n>x<n>'
        rms = option('flat', 'map', default='flat')  # Detection noise: 'flat' = median of positive ERR values [CEERS], 'map' = the ERR array
        deblend_nthresh = integer(default=4)  # Number of deblending thresholds [CEERS cfg deblend; DEBLEND_NTHRESH]
        deblend_cont = float(default=0.005)  # Minimum contrast for deblending [DEBLEND_MINCONT]
        clean = boolean(default=True)  # Remove spurious detections near bright sources [CLEAN]
        clean_param = float(default=1.0)  # Cleaning efficiency [CLEAN_PARAM]
        border_margin = float(default=3.0)  # Reject centroids within this many pixels of the image edge or the reference-pixel border
        max_masked_fraction = float(min=0.0, max=1.0, default=0.05)  # Reject sources with more than this fraction of masked pixels [DO_NOT_USE, NaN, ERR<=0] in their centroid window; 1 keeps all
        max_flagged_fraction = float(min=0.0, max=1.0, default=0.25)  # Reject sources with more than this fraction of flag_dq pixels in their centroid window [CR and snowball residuals]; 1 keeps all
        flag_dq = string(default='JUMP_DET,SATURATED')  # DQ flags counted by max_flagged_fraction [JWST flag names, comma-separated]
        sharpness_limit = float(min=0.0, default=0.5)  # Reject sources whose peak falls off faster than this fraction of the PSF's fall-off [cosmic rays, hot pixels]; 0 keeps all
        psf_fwhm = float(default=None)  # PSF FWHM in pixels for the sharpness cut; None = from the image's filter and pixel scale
        saturation_radius = float(min=0.0, default=4.0)  # Reject sources within this many core radii [+3 px] of a saturated star; 0 disables the saturation cuts
        spike_length = float(min=0.0, default=300.0)  # Reject sources within this many pixels of a saturated star that are elongated towards it [diffraction spikes]
        spike_elongation = float(min=1.0, default=2.0)  # Minimum a/b of diffraction-spike debris
        catalog_suffix = string(default='cat')  # Catalogs are named <input stem>_<catalog_suffix>.ecsv
        save_images = boolean(default=False)  # Also save the images [with meta.tweakreg_catalog set] when saving results
        n_jobs = integer(default=None)  # Worker processes for detection: None or 0 = all cores, 1 = serial, -N = all but N-1
        scheduler = string(default='')  # Address of a dask.distributed scheduler [tcp://host:8786] to run detection on; empty = local
        output_use_model = boolean(default=True)  # Name outputs after meta.filename
    """  # noqa: E501

    def detection_parameters(self):
        """The step's detection parameters as a `DetectionParameters`."""
        return DetectionParameters(
            detect_thresh=self.detect_thresh,
            detect_minarea=self.detect_minarea,
            back_size=self.back_size,
            back_filtersize=self.back_filtersize,
            kernel=self.kernel,
            rms=self.rms,
            deblend_nthresh=self.deblend_nthresh,
            deblend_cont=self.deblend_cont,
            clean=self.clean,
            clean_param=self.clean_param,
            border_margin=self.border_margin,
            max_masked_fraction=self.max_masked_fraction,
            max_flagged_fraction=self.max_flagged_fraction,
            flag_dq=self.flag_dq,
            sharpness_limit=self.sharpness_limit,
            psf_fwhm=self.psf_fwhm,
            saturation_radius=self.saturation_radius,
            spike_length=self.spike_length,
            spike_elongation=self.spike_elongation,
        )

    def check_parameters(self):
        """Every parameter checked, naming it, before any image is read or catalog written."""
        self.check_finite_parameters()
        self.detection_parameters()

    def save_model(self, model, *args, **kwargs):
        """The step's product is the catalogs; images are saved only with ``save_images``."""
        if not self.save_images:
            return None
        return super().save_model(model, *args, **kwargs)

    def make_catalogs(self, inputs):
        """
        Detect sources on every image of an `InputSet` and write their catalogs.

        Images on disk are opened by the workers one at a time; in-memory models
        are sent as arrays. Returns one `ceers_steps.stages.tasks.CatalogResult` per image,
        in input order.
        """
        params = self.detection_parameters()
        out_dir = self.output_dir_path()
        tasks, names = [], []
        for image in inputs.images:
            if image.path is None:
                model = open_image(image, copy=False)
                name = model.meta.filename or image.name
                source = image_arrays(model)
            else:
                name, source = image.name, image.path
            path = catalog_path_for(name, out_dir, self.catalog_suffix)
            if image.path is not None and path.resolve() == image.path.resolve():
                raise ValueError(f"{image.name}: catalog would overwrite the input file")
            tasks.append((source, params, path, name))
            names.append(name)
        results = run_tasks(detect_task, tasks, n_jobs=self.n_jobs,
                            scheduler=self.scheduler or None, label="Detection", names=names)
        log_catalog_results(results)
        return results

    def process(self, input_data):
        from ..core.engine import worker_pool

        inputs = load_inputs(input_data)
        with worker_pool(self.n_jobs, self.scheduler or None, n_tasks=len(inputs)):
            results = self.make_catalogs(inputs)
        require_some_catalogs(results)
        paths = [res.catalog_path for res in results]
        out_dir = self.output_dir_path()

        if inputs.asn_path is not None:
            unreadable = {image.path for image, res in zip(inputs.images, results, strict=True)
                          if res.header is None}
            asn_out = write_catalog_association(inputs, paths, out_dir, exclude=unreadable)
            log.info("Association with tweakreg_catalog members: %s", asn_out)
            if all(image.path is not None for image in inputs.images):
                # Models are opened only when borrowed: nothing of the visit is held here.
                return written_library(asn_out)

        models = []
        for image, res in zip(inputs.images, results, strict=True):
            if res.header is None:
                continue  # unreadable: reported above, nothing to return
            model = open_image(image)
            if res.catalog_path is not None:
                from ..core.fileio import fits_safe_path

                safe = fits_safe_path(res.catalog_path, [out_dir, Path.cwd()])
                if safe is None:
                    log.warning("%s: the catalog path %s cannot be stored in a FITS header "
                                "(not ASCII); meta.tweakreg_catalog left unset", res.name,
                                res.catalog_path)
                else:
                    model.meta.tweakreg_catalog = safe
            models.append(model)
        if len(models) == 1 and inputs.asn is None:
            return models[0]
        from ..core.compat import make_library

        return make_library(models)


def log_catalog_results(results):
    """One log line per image: sources kept and rejected per cut, or why it failed."""
    for res in results:
        if res.error:
            log.error("%s: FAILED: %s; no catalog", res.name, res.error)
        elif res.warning:
            log.warning("%s: %s: empty catalog written to %s", res.name, res.warning,
                        res.catalog_path)
        else:
            cuts = ", ".join(f"{k} {v}" for k, v in (res.rejected or {}).items() if v)
            log.info("%s: %d sources (rms %.4g %s; %d rejected%s) -> %s", res.name,
                     res.n_sources, res.rms, res.unit, res.n_rejected, f": {cuts}" if cuts else "",
                     res.catalog_path)


def require_some_catalogs(results):
    """
    Raise `AllImagesFailedError` when no image got a catalog: a run fails only then.

    One image's failure is that image's (its status says why); the others go on.
    """
    failed = [res for res in results if res.error]
    if failed and len(failed) == len(results):
        raise AllImagesFailedError(
            f"all {len(results)} images failed: "
            + "; ".join(f"{res.name}: {res.error}" for res in failed))
    if failed:
        log.warning("%d of %d images FAILED (see above); the others go on", len(failed),
                    len(results))


def write_catalog_association(inputs, catalog_paths, out_dir, exclude=()):
    """
    Write ``<asn stem>_cat_asn.json`` into ``out_dir``: the input association
    with every member's ``expname`` relative to it and its ``tweakreg_catalog``
    as an absolute path, so that jwst's TweakRegStep reads it from any working
    directory.

    Members whose file is in ``exclude`` (files that cannot be read) are left
    out; a member whose detection failed (``None`` catalog) has no
    ``tweakreg_catalog``.
    """
    out_dir = Path(out_dir).resolve()
    asn = json.loads(json.dumps(inputs.asn))
    by_path = {image.path: cat for image, cat in zip(inputs.images, catalog_paths, strict=True)
               if cat is not None}
    exclude = {Path(p).resolve() for p in exclude}
    for product in asn["products"]:
        product["members"] = [m for m in product["members"]
                              if (inputs.asn_dir / m["expname"]).resolve() not in exclude]
        for member in product["members"]:
            member_path = (inputs.asn_dir / member["expname"]).resolve()
            member["expname"] = os.path.relpath(member_path, out_dir)
            if member_path in by_path:
                # Absolute: jwst's TweakRegStep joins tweakreg_catalog with the association's
                # folder only when expname is a bare file name (jwst 3.0, tweakreg_step.py);
                # otherwise it opens the path as given, i.e. from the working directory.
                member["tweakreg_catalog"] = str(Path(by_path[member_path]).resolve())
    stem = inputs.asn_path.name.removesuffix(".json").removesuffix("_asn")
    out = out_dir / f"{stem}_cat_asn.json"
    if out.resolve() == inputs.asn_path.resolve():
        raise ValueError(f"{inputs.asn_path}: refusing to overwrite the input association")
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(asn, indent=2))
    return out
