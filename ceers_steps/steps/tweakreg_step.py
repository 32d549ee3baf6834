"""CeersTweakRegStep: the CEERS two-stage alignment on tweakwcs (``strun ceers_tweak``)."""

from pathlib import Path

from ..core.logs import get_logger
from ..io.inputs import load_inputs
from ..refcat import named_catalog, read_reference_catalogs
from ..stages import parameters as stage_parameters
from ..stages.jwstpars import detection_parameters, parse_catfile
from .base import CeersStep, ImageOutputMixin

__all__ = ["CeersTweakRegStep", "parse_catfile"]

log = get_logger(__name__)


class CeersTweakRegStep(ImageOutputMixin, CeersStep):
    """
    Align NIRCam images the CEERS way: relative per detector, then absolute to a catalog.

    A drop-in for jwst's TweakRegStep: every jwst 3.x parameter is accepted with
    jwst's meaning (`ceers_steps.stages.jwstpars`), catalogs follow jwst's
    ``use_custom_catalogs`` precedence, statuses are jwst's (COMPLETE / FAILED),
    and jwst's own tweakreg tests pass with the class swapped. Defaults are
    CEERS'. Built on tweakwcs directly, so it behaves the same with every
    supported jwst version, and accepts every parameter set tweakwcs accepts
    (all 30 CEERS visit sections). Relative alignment groups all dithers of one
    detector (``group_by = auto``: ``detector`` for NIRCam files, jwst's whole
    input otherwise) and fits shifts. Absolute alignment to ``abs_refcat`` is,
    with ``abs_group``:

    - ``joint`` (default): one least-squares fit per visit and filter of every
      match, image to image and image to reference, with a common rotation (and
      scale for ``rscale``), a common shift, one shift per dither and one shift per
      detector when the detector offsets are significant; per-dither shifts
      replace the relative fit, and each image's uncertainty is in the results
      (``err_center``, ``err_corner``, mas). Without ``abs_refcat`` the relative
      alignment (``group_by`` detector, ``fitgeometry`` shift) is the same model's.
      ``joint_channels`` fits a visit's filters that share exposures (SW and LW)
      together, ``shared_detector_terms`` measures detector offsets once from every
      visit of the run, ``fit_distortion`` each detector's residual distortion
      (`ceers_steps.fitting.distortion`);
    - ``detector``: one tweakwcs fit per relative group, as CEERS did;
    - ``visit``: one rigid tweakwcs fit of all images, as jwst does.

    Failures are per group or image: its WCS is left unchanged, its status is
    FAILED and the results say why; the others are aligned. The run itself is
    `ceers_steps.stages.run.run_stages`.
    """

    class_alias = "ceers_tweak"

    spec = """
        use_custom_catalogs = boolean(default=True)  # Use user catalogs [catfile, association tweakreg_catalog, meta.tweakreg_catalog; jwst's precedence]; False = detect on every image [jwst's default]
        catfile = string(default='')  # File listing '<image> [<catalog>]' per line [jwst format]; with use_custom_catalogs it overrides the association
        save_catalogs = boolean(default=False)  # Write the catalogs of sources this step detects itself as <image stem>_cat.<catalog_format>
        catalog_format = option('ecsv', 'fits', default='ecsv')  # Format of saved catalogs
        starfinder = string(default='iraf')  # jwst's photutils star finder: accepted, ignored [our detection is SEP with the CEERS recipe]
        snr_threshold = float(default=None)  # Own detection: threshold in units of the RMS [SEP detect_thresh]; None = CEERS recipe [4]
        kernel_fwhm = float(default=None)  # Own detection: Gaussian filter FWHM, pixels; None = CEERS recipe [default.conv]
        bkg_boxsize = integer(default=None)  # Own detection: background mesh, pixels; None = CEERS recipe [128]
        minsep_fwhm = float(default=0.0)  # jwst star finder: accepted, ignored
        sigma_radius = float(default=1.5)  # jwst star finder: accepted, ignored
        sharplo = float(default=0.5)  # jwst star finder: accepted, ignored
        sharphi = float(default=2.0)  # jwst star finder: accepted, ignored
        roundlo = float(default=0.0)  # jwst star finder: accepted, ignored
        roundhi = float(default=0.2)  # jwst star finder: accepted, ignored
        brightest = integer(default=None)  # Own detection: keep the N brightest sources; None = all
        peakmax = float(default=None)  # Own detection: drop sources whose peak pixel is >= peakmax; None = keep
        npixels = integer(default=None)  # Own detection: minimum connected pixels [SEP minarea]; None = CEERS recipe [16]
        connectivity = option(4, 8, default=8)  # jwst segmentation: accepted, ignored
        nlevels = integer(default=None)  # Own detection: deblending thresholds; None = CEERS recipe [4]
        contrast = float(default=None)  # Own detection: deblending contrast; None = CEERS recipe [0.005]
        multithresh_mode = option('exponential', 'linear', 'sinh', default='exponential')  # jwst segmentation: accepted, ignored
        localbkg_width = integer(default=0)  # jwst segmentation: accepted, ignored
        apermask_method = option('correct', 'mask', 'none', default='correct')  # jwst segmentation: accepted, ignored
        kron_params = float_list(min=2, max=3, default=None)  # jwst segmentation: accepted, ignored
        deblend = boolean(default=True)  # Own detection: False turns deblending off
        group_by = option('auto', 'detector', 'exposure', 'input', 'all', default='auto')  # Relative runs: detector = per visit, filter and detector, its dithers [CEERS]; exposure = per visit and filter, each exposure rigid; input = the whole input, each exposure rigid [jwst]; all = per visit and filter, every image alone; auto = detector when every image names its visit and detector, else input
        fitgeometry = option('shift', 'rshift', 'rscale', 'general', default='shift')  # Relative fit geometry [CEERS: shift]
        use2dhist = boolean(default=False)  # Relative matching: use a 2-D histogram to find the initial offset [CEERS: off]
        enforce_user_order = boolean(default=True)  # Relative: align in input order, first image is the reference
        expand_refcat = boolean(default=False)  # Relative: add matched sources to the reference catalog as images are aligned
        minobj = integer(default=20)  # Relative: minimum number of matched sources per image
        searchrad = float(default=1.0)  # Relative: search radius for matches, arcsec
        separation = float(default=0.1)  # Relative: sources closer than this are not used [confusion], arcsec
        tolerance = float(default=0.02)  # Relative: matching tolerance, arcsec
        xoffset = float(default=0.0)  # Relative: initial x offset guess, arcsec
        yoffset = float(default=0.0)  # Relative: initial y offset guess, arcsec
        nclip = integer(min=0, default=1)  # Relative: number of clipping iterations
        sigma = float(min=0.0, default=0.6)  # Relative: clipping limit in units of the fit RMSE
        abs_refcat = pass(default='')  # Absolute reference catalog[s]: a file Table.read reads with RA/DEC [any case] or sky_centroid, optional Gaia-like pmra/pmdec/ref_epoch/ra_error...; several separated by commas, in priority order; or one of jwst's named catalogs [GAIADR3, GAIADR2, GAIADR1, GAIAREFCAT], fetched from STScI's service [network]; empty = relative only
        abs_refcat_epoch = string(default='')  # Epoch of abs_refcat positions when it has no ref_epoch column: Julian year [2016.0] or a date
        abs_pm_missing = option('keep', 'drop', default='keep')  # Sources of a proper-motion catalog without their own: keep [errors grown by abs_pm_dispersion x epoch difference] or drop
        abs_pm_dispersion = float(min=0.0, default=5.0)  # Proper-motion dispersion assumed for those sources, mas/yr per axis
        abs_cuts = pass(default='')  # Cuts on any reference-catalog column, e.g. 'phot_g_mean_mag < 20; ruwe <= 1.4'
        save_abs_catalog = boolean(default=False)  # Write the reference catalog used for each visit and filter [after cuts, merging, propagation] as <visit>_<filter>_abs_refcat.ecsv
        abs_group = option('joint', 'detector', 'visit', default='joint')  # Absolute fit: joint visit model [default], per detector group [CEERS], one rigid fit [jwst]
        abs_minobj = integer(default=20)  # Absolute: minimum number of matches
        abs_searchrad = float(default=1.0)  # Absolute: search radius, arcsec
        abs_use2dhist = boolean(default=True)  # Absolute: find the initial offset with a 2-D histogram
        abs_separation = float(default=0.2)  # Absolute: confusion separation, arcsec
        abs_tolerance = float(default=0.1)  # Absolute: matching tolerance, arcsec
        abs_fitgeometry = option('shift', 'rshift', 'rscale', 'general', default='rshift')  # Absolute fit geometry [CEERS: rshift SW, rscale LW]
        abs_nclip = integer(min=0, default=1)  # Absolute [detector/visit]: clipping iterations
        abs_sigma = float(min=0.0, default=0.7)  # Absolute [detector/visit]: clipping limit in units of the fit RMSE
        abs_significance = float(min=0.0, default=3.0)  # Joint fit: fit detector offsets when jointly above this many sigma
        abs_detector_rotations = boolean(default=True)  # Joint fit: fit each detector's own rotation [and scale with rscale] about its centre, with its offset, when jointly above abs_significance [NIRCam's modules turned against each other]
        abs_image_minobj = integer(min=1, default=3)  # Absolute: matches each image needs of its own after the fit [and more than chance gives] to be called aligned
        joint_channels = boolean(default=False)  # Joint fit: the filters of one visit that share exposures [NIRCam SW and LW] in one fit, sharing the common shift, rotation and dither terms; results per visit and filter as before
        abs_fitgeometry_lw = option('', 'shift', 'rshift', 'rscale', 'general', default='')  # Joint channels: geometry of the long-wavelength images [CEERS: rscale]; empty = abs_fitgeometry
        shared_detector_terms = boolean(default=False)  # Joint fit: detector offsets measured once from all visits of the run [in each detector's pixel axes], then fixed in every visit's fit
        fit_distortion = boolean(default=False)  # Joint fit: fit each detector's residual distortion [Legendre terms of degree 2-3 in its pixels, kept where significant], shared by every visit and filter of the run; inserted before detector-to-V2V3 in every aligned WCS, written as <output_dir>/distortion/ceers_distortion_<detector>.asdf
        abs_mag_min = float(default=None)  # Use only reference sources at least this faint [needs a MAG column]
        abs_mag_max = float(default=None)  # Use only reference sources at least this bright [needs a MAG column]
        save_wcs = boolean(default=None)  # Save each tweaked WCS as <wcs_dir>/<base>_tweakreg.asdf [default: when saving results]
        wcs_dir = string(default='tweakreg_wcs')  # Folder for saved WCS models; a relative one is in the output directory [as apply_wcs reads it]
        distortion_file = string(default='')  # Residual distortion inserted into every input image's WCS before the fit [before its detector-to-V2V3 transform]: a ceers_distortion_<detector>.asdf file, a comma-separated list, or a folder of them; the aligned images and saved WCS models carry it, FAILED images keep their input WCS; an input WCS that carries one already is FAILED; empty = none
        save_report = boolean(default=None)  # Write <visit>_<filter>_alignment_report.html [plots, grades] and <visit>_<filter>_regions/*.reg [DS9]; None = on inside ceers_align [also ceers-align, calwebb_image3_ceers], off otherwise [alone or in jwst's pipelines, as jwst's TweakRegStep]
        save_fit_results = boolean(default=True)  # Write <visit>_<filter>_tweakreg_results.ecsv and tweakreg_results_all.<visit>_<filter>.txt
        sip_approx = boolean(default=True)  # Refresh the FITS SIP approximation in meta.wcsinfo
        sip_max_pix_error = float(default=0.01)  # SIP fit: max forward error, pixels
        sip_degree = integer(max=6, default=None)  # SIP fit: forward degree, None = best
        sip_max_inv_pix_error = float(default=0.01)  # SIP fit: max inverse error, pixels
        sip_inv_degree = integer(max=6, default=None)  # SIP fit: inverse degree, None = best
        sip_npoints = integer(default=12)  # SIP fit: grid points per axis
        in_memory = boolean(default=True)  # jwst's memory model: accepted, ignored [files are streamed through workers]
        n_jobs = integer(default=None)  # Worker processes for per-image and per-group work: None or 0 = all cores, 1 = serial, -N = all but N-1
        scheduler = string(default='')  # Address of a dask.distributed scheduler [tcp://host:8786] to run that work on; empty = local
        output_use_model = boolean(default=True)  # Name outputs after meta.filename
        suffix = string(default='tweakreg')  # Aligned images are saved as <exposure base>_<suffix>.fits
    """  # noqa: E501

    def relative_parameters(self):
        return stage_parameters.relative_parameters(self)

    def absolute_parameters(self):
        return stage_parameters.absolute_parameters(self)

    def check_parameters(self):
        """
        Every parameter checked, naming it, before anything is read or written (a pipeline
        calls it before its catalog step writes catalogs).
        """
        from ..refcat import julian_year, parse_cuts

        self.check_finite_parameters()
        self._normalise_lists()
        self.relative_parameters()
        self.absolute_parameters()
        self._check_sip_parameters()
        detection_parameters(self)
        if self.abs_refcat_epoch is not None and str(self.abs_refcat_epoch).strip():
            julian_year(self.abs_refcat_epoch, "abs_refcat_epoch")
        parse_cuts(self.abs_cuts)
        from ..io.distortion_files import read_distortion_files

        read_distortion_files(self.distortion_file or "")
        if self.fit_distortion and str(self.distortion_file or "").strip():
            # Inputs carrying a field cannot be fitted for one (it would be counted twice).
            raise ValueError("fit_distortion and distortion_file: give one of them (fit a new "
                             "residual distortion, or apply the files' one)")

    def _run_tasks(self, func, tasks, label, names=None):
        from ..core.engine import run_tasks

        return run_tasks(func, tasks, n_jobs=self.n_jobs, scheduler=self.scheduler or None,
                         label=label, names=names)

    def process(self, input_data):
        from ..core.engine import worker_pool

        inputs = load_inputs(input_data)
        self.remember_inputs(inputs)
        with worker_pool(self.n_jobs, self.scheduler or None, n_tasks=len(inputs)):
            return self.align(inputs, save=bool(self.save_results), suffix=self.suffix)

    def align(self, inputs, catalogs=None, save=False, suffix="tweakreg", stream=None,
              copy_inputs=None):
        """
        Align an `InputSet`; write results, WCS models and (with ``save``) aligned images.

        The work is `ceers_steps.stages.run.run_stages`; see there for the
        parameters. Returns a ModelLibrary or None.
        """
        from ..stages.run import run_stages

        return run_stages(self, inputs, catalogs=catalogs, save=save, suffix=suffix,
                          stream=stream, copy_inputs=copy_inputs)

    def _normalise_lists(self):
        stage_parameters.normalise_lists(self)

    def read_refcat(self):
        """
        The reference catalogs of ``abs_refcat``, read, cut and merged (not yet
        propagated); for a jwst named catalog (``GAIADR3``...) its name: it is
        fetched per visit, around the visit's footprint, when the images are known.
        """
        self._normalise_lists()
        named = named_catalog(self.abs_refcat)
        if named:
            return named
        return read_reference_catalogs(
            self.abs_refcat, epoch=self.abs_refcat_epoch or None, cuts=self.abs_cuts,
            mag_min=self.abs_mag_min, mag_max=self.abs_mag_max, merge_radius=self.abs_tolerance)

    def _find_sources(self, image_model):
        """
        Detect sources on an image model: SEP, the CEERS recipe with the step's
        jwst star-finder settings mapped onto it (`ceers_steps.stages.jwstpars`).

        Returns
        -------
        Table
            The catalog (``xcentroid``, ``ycentroid`` 0-based, ``flux``, ...).
        """
        from ..detection.catalogs import build_catalog

        return build_catalog(image_model, detection_parameters(self))

    def _catalog_output_path(self, filename):
        """Where a detected catalog is saved, as jwst names it: ``<stem>_cat.<catalog_format>``
        (``.fits`` replaced) in the output directory, else the working directory."""
        if self.catalog_format not in ("ecsv", "fits"):
            raise ValueError("'catalog_format' must be \"ecsv\" or \"fits\".")
        out_dir = Path(self.output_dir) if self.output_dir else Path(".")
        return out_dir / Path(str(filename)).name.replace(".fits", f"_cat.{self.catalog_format}")

    def _write_catalog(self, catalog, filename):
        """Write a detected catalog as jwst does (`_catalog_output_path`); returns its path."""
        from ..detection.catalogs import write_catalog

        path = write_catalog(catalog, self._catalog_output_path(filename))
        log.info("Wrote source catalog: %s", path)
        return str(path)

    def _check_sip_parameters(self):
        stage_parameters.check_sip_parameters(self)

    def _sip(self):
        return stage_parameters.sip_options(self)
