"""CeersTweakRegStep: the CEERS two-stage alignment on tweakwcs (``strun ceers_tweak``)."""

from pathlib import Path

import numpy as np

from ._stpipe import AllImagesFailedError, CeersStep, ImageOutputMixin, get_logger
from .alignment import (
    AbsoluteParameters,
    AlignImage,
    RelativeParameters,
    align_visit,
    result_row,
)
from .catalogs import catalog_path_for, read_catalog
from .detection import DetectionParameters
from .grouping import image_key
from .inputs import load_inputs, open_image, written_library
from .refcat import read_reference_catalogs, refcat_paths
from .results import (
    format_summary,
    results_table,
    summary_line,
    write_ceers_results,
    write_results_table,
)
from .tasks import detect_task, finish_aligned_model, header_task, image_arrays, write_aligned_task
from .wcs_io import exposure_base, save_wcs_model, wcs_dir_path

__all__ = ["CeersTweakRegStep", "parse_catfile"]

log = get_logger(__name__)


def parse_catfile(catfile):
    """
    Read a jwst-style ``catfile``: lines ``<image file> <catalog file>``.

    Catalog paths are relative to the catfile's folder. Returns a dict
    image file name -> catalog path (None when the line names no catalog).
    """
    path = Path(catfile)
    if not path.exists():
        raise FileNotFoundError(f"catfile not found: {path}")
    catalogs = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image, *rest = line.split()
        if len(rest) > 1:
            raise ValueError(f"{path}, line {n}: expected '<image> <catalog>', got {line!r}")
        catalogs[Path(image).name] = str(path.parent / rest[0]) if rest else None
    return catalogs


def _not_aligned_reason(rows, name):
    """Why an image was not aligned: its last result row that is not a success."""
    reasons = [row["status"] for row in rows
               if row["image"] == name and row["status"] not in ("SUCCESS",)
               and not row["status"].startswith("REFERENCE")]
    return reasons[-1] if reasons else "not aligned"


class CeersTweakRegStep(ImageOutputMixin, CeersStep):
    """
    Align NIRCam images the CEERS way: relative per detector, then absolute to a catalog.

    Built on tweakwcs directly, so it behaves the same with every supported
    jwst version, and accepts every parameter set tweakwcs accepts (all 30
    CEERS visit sections). Relative alignment groups all dithers of one
    detector (``group_by = detector``) and fits shifts. Absolute alignment to
    ``abs_refcat`` is, with ``abs_group``:

    - ``joint`` (default): one least-squares fit per visit and filter with a
      common rotation (and scale for ``rscale``), a common shift, one shift per
      dither and one shift per detector kept only where significant; per-dither
      shifts replace the relative fit;
    - ``detector``: one tweakwcs fit per relative group, as CEERS did;
    - ``visit``: one rigid tweakwcs fit of all images, as jwst does.

    Failures are per group: that group's WCS is left unchanged and its status
    says why; the other groups are aligned.
    """

    class_alias = "ceers_tweak"

    spec = """
        catfile = string(default='')  # File listing '<image> <catalog>' per line (jwst format); overrides association and meta catalogs
        group_by = option('detector', 'exposure', 'all', default='detector')  # Relative runs: per detector, all its dithers (CEERS); per visit with each exposure rigid (jwst); per visit, every image alone (needs expand_refcat)
        fitgeometry = option('shift', 'rshift', 'rscale', 'general', default='shift')  # Relative fit geometry (CEERS: shift)
        use2dhist = boolean(default=False)  # Relative matching: use a 2-D histogram to find the initial offset (CEERS: off)
        enforce_user_order = boolean(default=True)  # Relative: align in input order, first image is the reference
        expand_refcat = boolean(default=False)  # Relative: add matched sources to the reference catalog as images are aligned
        minobj = integer(default=20)  # Relative: minimum number of matched sources per image
        searchrad = float(default=1.0)  # Relative: search radius for matches, arcsec
        separation = float(default=0.1)  # Relative: sources closer than this are not used (confusion), arcsec
        tolerance = float(default=0.02)  # Relative: matching tolerance, arcsec
        xoffset = float(default=0.0)  # Relative: initial x offset guess, arcsec
        yoffset = float(default=0.0)  # Relative: initial y offset guess, arcsec
        nclip = integer(min=0, default=1)  # Relative: number of clipping iterations
        sigma = float(min=0.0, default=0.6)  # Relative: clipping limit in units of the fit RMSE
        abs_refcat = pass(default='')  # Absolute reference catalog(s): a file Table.read reads with RA/DEC (any case) or sky_centroid, optional Gaia-like pmra/pmdec/ref_epoch/ra_error...; several separated by commas, in priority order; empty = relative only
        abs_refcat_epoch = string(default='')  # Epoch of abs_refcat positions when it has no ref_epoch column: Julian year (2016.0) or a date
        abs_pm_missing = option('keep', 'drop', default='keep')  # Sources of a proper-motion catalog without their own: keep (errors grown by abs_pm_dispersion x epoch difference) or drop
        abs_pm_dispersion = float(min=0.0, default=5.0)  # Proper-motion dispersion assumed for those sources, mas/yr per axis
        abs_cuts = pass(default='')  # Cuts on any reference-catalog column, e.g. 'phot_g_mean_mag < 20; ruwe <= 1.4'
        save_abs_catalog = boolean(default=False)  # Write the reference catalog used for each visit and filter (after cuts, merging, propagation) as <visit>_<filter>_abs_refcat.ecsv
        abs_group = option('joint', 'detector', 'visit', default='joint')  # Absolute fit: joint visit model (default), per detector group (CEERS), one rigid fit (jwst)
        abs_minobj = integer(default=20)  # Absolute: minimum number of matches
        abs_searchrad = float(default=1.0)  # Absolute: search radius, arcsec
        abs_use2dhist = boolean(default=True)  # Absolute: find the initial offset with a 2-D histogram
        abs_separation = float(default=0.2)  # Absolute: confusion separation, arcsec
        abs_tolerance = float(default=0.1)  # Absolute: matching tolerance, arcsec
        abs_fitgeometry = option('shift', 'rshift', 'rscale', 'general', default='rshift')  # Absolute fit geometry (CEERS: rshift SW, rscale LW)
        abs_nclip = integer(min=0, default=1)  # Absolute (detector/visit): clipping iterations
        abs_sigma = float(min=0.0, default=0.7)  # Absolute (detector/visit): clipping limit in units of the fit RMSE
        abs_significance = float(min=0.0, default=3.0)  # Joint fit: keep a per-detector offset above this many sigma
        abs_image_minobj = integer(min=1, default=3)  # Absolute: matches each image needs of its own after the fit (and more than chance gives) to be called aligned
        abs_mag_min = float(default=None)  # Use only reference sources at least this faint (needs a MAG column)
        abs_mag_max = float(default=None)  # Use only reference sources at least this bright (needs a MAG column)
        save_wcs = boolean(default=None)  # Save each tweaked WCS as <wcs_dir>/<base>_tweakreg.asdf (default: when saving results)
        wcs_dir = string(default='tweakreg_wcs')  # Folder for saved WCS models; a relative one is in the output directory (as apply_wcs reads it)
        save_fit_results = boolean(default=True)  # Write <visit>_<filter>_tweakreg_results.ecsv and tweakreg_results_all.<visit>_<filter>.txt
        sip_approx = boolean(default=True)  # Refresh the FITS SIP approximation in meta.wcsinfo
        sip_max_pix_error = float(default=0.01)  # SIP fit: max forward error, pixels
        sip_degree = integer(max=6, default=None)  # SIP fit: forward degree, None = best
        sip_max_inv_pix_error = float(default=0.01)  # SIP fit: max inverse error, pixels
        sip_inv_degree = integer(max=6, default=None)  # SIP fit: inverse degree, None = best
        sip_npoints = integer(default=12)  # SIP fit: grid points per axis
        n_jobs = integer(default=None)  # Worker processes for per-image and per-group work: None or 0 = all cores, 1 = serial, -N = all but N-1
        scheduler = string(default='')  # Address of a dask.distributed scheduler (tcp://host:8786) to run that work on; empty = local
        output_use_model = boolean(default=True)  # Name outputs after meta.filename
        suffix = string(default='tweakreg')  # Aligned images are saved as <exposure base>_<suffix>.fits
    """  # noqa: E501

    def relative_parameters(self):
        return RelativeParameters(
            fitgeometry=self.fitgeometry, use2dhist=self.use2dhist,
            enforce_user_order=self.enforce_user_order, expand_refcat=self.expand_refcat,
            minobj=self.minobj, searchrad=self.searchrad, separation=self.separation,
            tolerance=self.tolerance, xoffset=self.xoffset, yoffset=self.yoffset,
            nclip=self.nclip, sigma=self.sigma)

    def absolute_parameters(self):
        return AbsoluteParameters(
            minobj=self.abs_minobj, searchrad=self.abs_searchrad, use2dhist=self.abs_use2dhist,
            separation=self.abs_separation, tolerance=self.abs_tolerance,
            fitgeometry=self.abs_fitgeometry, nclip=self.abs_nclip, sigma=self.abs_sigma,
            group=self.abs_group, significance=self.abs_significance,
            image_minobj=self.abs_image_minobj)

    def _catalog_source(self, image, meta_catalog, catfile_map, asn_dir):
        """Where the image's catalog comes from (None: detect)."""
        name = image.name
        if catfile_map is not None and name in catfile_map:
            return catfile_map[name]
        if image.member.get("tweakreg_catalog"):
            return str(Path(asn_dir or ".") / image.member["tweakreg_catalog"])
        if meta_catalog and image.path is not None and not Path(meta_catalog).is_absolute() \
                and not Path(meta_catalog).exists():
            # Written relative to the image (a folder name FITS cannot hold).
            beside = image.path.parent / meta_catalog
            if beside.exists():
                return str(beside)
        return meta_catalog or None

    def _run_tasks(self, func, tasks, label, names=None):
        from .engine import run_tasks

        return run_tasks(func, tasks, n_jobs=self.n_jobs, scheduler=self.scheduler or None,
                         label=label, names=names)

    def process(self, input_data):
        from .engine import worker_pool

        inputs = load_inputs(input_data)
        self.remember_inputs(inputs)
        with worker_pool(self.n_jobs, self.scheduler or None, n_tasks=len(inputs)):
            return self.align(inputs, save=bool(self.save_results), suffix=self.suffix)

    def align(self, inputs, catalogs=None, save=False, suffix="tweakreg", stream=None,
              copy_inputs=None):
        """
        Align an `InputSet`; write results, WCS models and (with ``save``) aligned images.

        Parameters
        ----------
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
        """
        # Every parameter checked before anything is read or written.
        self._normalise_lists()
        rel, abs_ = self.relative_parameters(), self.absolute_parameters()
        self._check_sip_parameters()
        on_disk = all(image.path is not None for image in inputs.images)
        stream = on_disk and (save if stream is None else stream)
        refcat = None
        if self.abs_refcat and self.abs_refcat.strip():
            refcat = getattr(self, "preloaded_refcat", None)
            refcat = self.read_refcat() if refcat is None else refcat
            for cat in refcat.meta["catalogs"]:
                log.info("Absolute reference catalog %s: %d sources read, %d after cuts",
                         cat["file"], cat["n_read"], cat["n_after_cuts"])
        catfile_map = parse_catfile(self.catfile) if self.catfile and self.catfile.strip() else None

        if copy_inputs is None:
            copy_inputs = self.parent is None
        headers = self._open_inputs(inputs, stream, catalogs, copy_inputs)
        images, unusable_rows, catalog_paths = [], [], []
        detect = []

        def unusable(model, name, key, reason):
            log.error("%s: FAILED: %s; its WCS is left unchanged", name, reason)
            unusable_rows.append(result_row("relative", f"{key.visit_filter}_{key.detector}",
                                            name, f"FAILED: {reason}", self.fitgeometry))
            images.append(AlignImage(name=name, model=model, catalog=None, key=key,
                                     status={"unusable": True}))
            catalog_paths.append(None)

        for i, (image, (model, key, meta_catalog, error)) in enumerate(zip(inputs.images, headers,
                                                                           strict=True)):
            name = (model.meta.filename if model is not None else None) or image.name
            if error is None and catalogs is not None and catalogs[i].error:
                error = catalogs[i].error
            if error is not None:
                unusable(model, name, key, error)
                continue
            try:
                if catalogs is not None:
                    catalog, source = catalogs[i].xy, catalogs[i].catalog_path
                else:
                    source = self._catalog_source(image, meta_catalog, catfile_map, inputs.asn_dir)
                    catalog = read_catalog(source) if source else None
            except (FileNotFoundError, ValueError) as exc:
                unusable(model, name, key, str(exc))
                continue
            if catalog is None:
                detect.append(i)
            else:
                log.info("%s: %d sources from %s", name, len(catalog), source)
            images.append(AlignImage(name=name, model=model, catalog=catalog, key=key))
            catalog_paths.append(str(source) if source else None)
        if detect:
            unusable_rows += self._detect_missing(inputs, images, detect, catalog_paths)

        rows = list(unusable_rows)
        failed_row = {row["image"]: row for row in unusable_rows}
        by_visit = {}
        for im in images:
            group = by_visit.setdefault(im.key.visit_filter, [])
            if not im.status.get("unusable"):
                group.append(im)
        tables, used_refcats = {}, {}
        for visit_filter, group in by_visit.items():
            visit_rows = []
            ref_used = None
            if group:
                log.info("Aligning %s: %d images", visit_filter, len(group))
                if refcat is not None:
                    ref_used = self._refcat_at_epoch(refcat, group, visit_filter)
                    used_refcats[visit_filter] = ref_used
                visit_rows = align_visit(group, ref_used, rel, abs_, group_by=self.group_by,
                                         runner=self._run_tasks)
            rows += visit_rows
            failed_here = [failed_row[im.name] for im in images
                           if im.status.get("unusable") and im.key.visit_filter == visit_filter]
            meta = {"visit_filter": visit_filter, "abs_refcat": self.abs_refcat,
                    "abs_group": self.abs_group}
            if ref_used is not None:
                meta.update(abs_refcat_catalogs=ref_used.meta.get("catalogs"),
                            abs_refcat_epoch=ref_used.meta.get("epoch"),
                            abs_refcat_sources=len(ref_used))
            tables[visit_filter] = results_table(failed_here + visit_rows, meta=meta)
            log.info("Results for %s: %s", visit_filter, summary_line(tables[visit_filter]))
            log.debug("Results for %s:\n%s", visit_filter, format_summary(tables[visit_filter]))

        statuses = self._statuses(images, rows, refcat is not None)
        self.results = results_table(rows) if rows else None
        # The results tables are written last, so a folder with them holds a complete run;
        # an earlier run's tables are removed first, so an interrupted rerun has none.
        self._retire_earlier_results(tables)
        failed = [im.name for im in images if im.status.get("unusable")]
        if failed and len(failed) == len(images):
            self._write_results(tables)
            raise AllImagesFailedError(
                f"all {len(images)} images failed: "
                + "; ".join(r["image"] + ": " + r["status"] for r in unusable_rows))
        if failed:
            log.warning("%d of %d images FAILED: %s; the others were aligned", len(failed),
                        len(images), ", ".join(failed))
        save_wcs = self.save_wcs if self.save_wcs is not None else bool(save)
        if stream and not save and not save_wcs:
            log.warning("Streaming without saving images: saving the WCS models, or the fit "
                        "would be lost")
            save_wcs = True
        wcs_dir = wcs_dir_path(self.wcs_dir, self.output_dir_path())
        self._save_abs_catalogs(used_refcats, inputs)
        if stream:
            result = self._write_streamed(inputs, images, statuses, catalog_paths, suffix,
                                          wcs_dir if save_wcs else None, save, rows)
            self._write_results(tables)
            return result

        readable = [im for im in images if im.model is not None]
        for im in readable:
            status, wcs_name = statuses[im.name]
            finish_aligned_model(im.model, None, wcs_name, status, self._sip(), log=log)
        from .fileio import check_outputs

        # Every output of the run (images saved by stpipe afterwards, WCS models) checked first.
        saved = [im for im in readable if statuses[im.name][0] != "FAILED"] if save_wcs else []
        wcs_paths = [(wcs_dir / f"{exposure_base(im.model.meta.filename)}_tweakreg.asdf", im.name)
                     for im in saved]
        image_paths = [(self.image_output_path(im.model.meta.filename, suffix), im.name)
                       for im in readable] if save else []
        check_outputs(image_paths + wcs_paths, [image.path for image in inputs.images])
        if save_wcs:
            for im, (path, _) in zip(saved, wcs_paths, strict=True):
                status = statuses[im.name][0]
                save_wcs_model(path, im.model.meta.filename, im.model.meta.wcsinfo,
                               im.model.meta.wcs, status=status,
                               reason=_not_aligned_reason(rows, im.name) if status != "COMPLETE"
                               else None)
            log.info("Saved %d WCS models in %s", len(saved), wcs_dir)
        # In-memory images are saved by stpipe after this returns; the tables come first then.
        self._write_results(tables)

        from jwst.datamodels import ModelLibrary

        return ModelLibrary([im.model for im in readable])

    def _normalise_lists(self):
        """
        ``abs_refcat`` and ``abs_cuts`` as one string: on a command line or in a
        parameter file configobj turns ``a.ecsv,b.ecsv`` into a list.
        """
        for name, sep in (("abs_refcat", ", "), ("abs_cuts", "; ")):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, sep.join(str(v).strip() for v in value))
            elif value is None:
                setattr(self, name, "")
            elif not isinstance(value, str):
                raise TypeError(f"{name} must be a string, not {value!r}")

    def read_refcat(self):
        """The reference catalogs of ``abs_refcat``, read, cut and merged (not yet propagated)."""
        self._normalise_lists()
        return read_reference_catalogs(
            self.abs_refcat, epoch=self.abs_refcat_epoch or None, cuts=self.abs_cuts,
            mag_min=self.abs_mag_min, mag_max=self.abs_mag_max, merge_radius=self.abs_tolerance)

    def _refcat_at_epoch(self, refcat, group, visit_filter):
        """The reference catalog propagated to the mean epoch of a visit's images."""
        from astropy.time import Time

        from .refcat import at_epoch, image_epoch

        epochs = [image_epoch(im.model) for im in group]
        known = [e for e in epochs if e is not None]
        has_pm = bool(np.any(np.isfinite(refcat["PMRA"])))
        if has_pm and not known:
            log.warning("%s: the images carry no observation time: reference positions are "
                        "used at their catalog epoch, without proper motions", visit_filter)
        epoch = Time(np.mean([e.mjd for e in known]), format="mjd", scale="utc") if known else None
        used = at_epoch(refcat, epoch if has_pm else None, pm_missing=self.abs_pm_missing,
                        pm_dispersion=self.abs_pm_dispersion)
        if len(used.meta.get("catalogs", [])) > 1:
            log.info("%s: reference sources used per catalog (after merging): %s", visit_filter,
                     ", ".join(f"{Path(c['file']).name} {c['n_used']}"
                               for c in used.meta["catalogs"]))
        if has_pm and epoch is not None:
            spread = max(abs(e.mjd - epoch.mjd) for e in known) / 365.25
            pm_max = float(np.nanmax(np.hypot(refcat["PMRA"], refcat["PMDEC"])))
            log.info("%s: reference positions moved to epoch %.4f (largest motion %.1f mas); "
                     "within the visit they differ from each exposure's by at most %.3f mas",
                     visit_filter, epoch.jyear, used.meta["max_motion_mas"], pm_max * spread)
        return used

    def _save_abs_catalogs(self, used_refcats, inputs):
        if not self.save_abs_catalog or not used_refcats:
            return
        from .fileio import check_outputs, write_ecsv

        paths = {vf: self.output_dir_path() / f"{vf}_abs_refcat.ecsv" for vf in used_refcats}
        check_outputs([(p, vf) for vf, p in paths.items()],
                      [image.path for image in inputs.images]
                      + [p for p in refcat_paths(self.abs_refcat)])
        for vf, path in paths.items():
            table = used_refcats[vf].copy()
            table.meta = {k: v for k, v in table.meta.items()
                          if k in ("catalogs", "epoch", "max_motion_mas", "source")}
            write_ecsv(table, path)
            log.info("%s: reference catalog used (%d sources) written to %s", vf, len(table), path)

    def _results_paths(self, visit_filter):
        out_dir = self.output_dir_path()
        return (out_dir / f"{visit_filter}_tweakreg_results.ecsv",
                out_dir / f"tweakreg_results_all.{visit_filter}.txt")

    def _retire_earlier_results(self, tables):
        """Say so when the output folder holds an earlier run of the same visit, and retire it."""
        if not self.save_fit_results:
            return
        for visit_filter in tables:
            earlier = [p for p in self._results_paths(visit_filter) if p.exists()]
            if earlier:
                log.warning("%s: %s holds the results of an earlier run (%s); its outputs are "
                            "being replaced", visit_filter, earlier[0].parent,
                            ", ".join(p.name for p in earlier))
                for path in earlier:
                    path.unlink()

    def _write_results(self, tables):
        if not self.save_fit_results:
            return
        for visit_filter, table in tables.items():
            ecsv_path, txt_path = self._results_paths(visit_filter)
            ecsv = write_results_table(table, ecsv_path)
            txt = write_ceers_results(table, txt_path)
            log.info("Wrote %s and %s", ecsv, txt)

    def _open_inputs(self, inputs, stream, catalogs, copy_inputs):
        """
        Per image: the model (or, when streaming, its `ImageHeader`), its `ImageKey`,
        its ``meta.tweakreg_catalog`` and an error. A file that cannot be opened gives
        ``(None, key from its FITS header or name, None, reason)``; the run goes on.
        """
        from .tasks import describe_error, key_from_file

        if stream:
            if catalogs is not None:
                return [(res.header, res.key, None, res.error if res.header is None else None)
                        for res in catalogs]
            return self._run_tasks(header_task, [(image.path,) for image in inputs.images],
                                   "Reading headers", names=[im.name for im in inputs.images])
        out = []
        for image in inputs.images:
            try:
                model = open_image(image, copy=copy_inputs)
            except Exception as exc:  # noqa: BLE001 - one unreadable input fails only itself
                if image.path is None:
                    raise
                out.append((None, key_from_file(image.path), None,
                            f"cannot be read: {describe_error(exc)}"))
                continue
            out.append((model, image_key(model, image.name),
                        getattr(model.meta, "tweakreg_catalog", None), None))
        return out

    def _detect_missing(self, inputs, images, indices, catalog_paths):
        """
        Images without a catalog get one from the CatalogStep detection (defaults).
        Returns the FAILED rows of images whose detection failed.
        """
        tasks = []
        for i in indices:
            image = inputs.images[i]
            source = image.path if image.model is None else image_arrays(images[i].model)
            path = catalog_path_for(images[i].name, self.output_dir_path())
            tasks.append((source, DetectionParameters(), path, images[i].name))
        results = self._run_tasks(detect_task, tasks, "Detection",
                                  names=[images[i].name for i in indices])
        failed_rows = []
        for i, res in zip(indices, results, strict=True):
            im = images[i]
            if res.error:
                log.error("%s: FAILED: %s; its WCS is left unchanged", im.name, res.error)
                im.status["unusable"] = True
                failed_rows.append(result_row("relative", f"{im.key.visit_filter}_{im.key.detector}",
                                              im.name, f"FAILED: {res.error}", self.fitgeometry))
                continue
            im.catalog = res.xy
            catalog_paths[i] = str(res.catalog_path)
            log.info("%s: no catalog given: detected %d sources with the CatalogStep defaults "
                     "-> %s", im.name, res.n_sources, res.catalog_path)
        return failed_rows

    def _check_sip_parameters(self):
        for name in ("sip_max_pix_error", "sip_max_inv_pix_error"):
            value = getattr(self, name)
            if value is None or not value > 0:
                raise ValueError(f"{name} must be positive (pixels), not {value}")
        if self.sip_npoints is None or self.sip_npoints < 3:
            raise ValueError(f"sip_npoints must be at least 3, not {self.sip_npoints}")
        for name in ("sip_degree", "sip_inv_degree"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be between 1 and 6 or None, not {value}")

    def _sip(self):
        if not self.sip_approx:
            return None
        return {"max_pix_error": self.sip_max_pix_error, "degree": self.sip_degree,
                "max_inv_pix_error": self.sip_max_inv_pix_error,
                "inv_degree": self.sip_inv_degree, "npoints": self.sip_npoints}

    def _write_streamed(self, inputs, images, statuses, catalog_paths, suffix, wcs_dir, save, rows):
        """Workers write every aligned image (and WCS model); return a library over them."""
        from .fileio import check_outputs

        # Each output path once: checked against the inputs and each other, then written.
        plan = []
        for image, im, cat in zip(inputs.images, images, catalog_paths, strict=True):
            if im.model is None:
                continue  # an unreadable file has nothing to write
            status, wcs_name = statuses[im.name]
            out_path = self.image_output_path(im.name, suffix) if save else None
            wcs_path = (wcs_dir / f"{exposure_base(im.name)}_tweakreg.asdf"
                        if wcs_dir is not None and status != "FAILED" else None)
            plan.append((image, im, cat, status, wcs_name, out_path, wcs_path))
        check_outputs([(path, im.name) for _, im, _, _, _, out_path, wcs_path in plan
                       for path in (out_path, wcs_path) if path is not None],
                      [image.path for image in inputs.images])
        tasks, members = [], []
        for image, im, cat, status, wcs_name, out_path, wcs_path in plan:
            tasks.append((image.path, out_path, im.model.meta.wcs if status == "COMPLETE" else None,
                          wcs_name, status, self._sip(), wcs_path, cat,
                          _not_aligned_reason(rows, im.name) if status != "COMPLETE" else None))
            members.append({"expname": str(out_path), "exptype": "science",
                            "group_id": im.key.exposure})
        self._run_tasks(write_aligned_task, tasks,
                        "Writing aligned images" if save else "Writing WCS models",
                        names=[im.name for im in images if im.model is not None])
        if wcs_dir is not None:
            log.info("Saved %d WCS models in %s", sum(t[6] is not None for t in tasks), wcs_dir)
        if not save:
            return None
        name = (inputs.asn or {}).get("products", [{}])[0].get("name", "aligned")
        return written_library({"products": [{"name": name, "members": members}]}, outputs=True)

    def _statuses(self, images, rows, absolute):
        """
        Image name -> (``meta.cal_step.tweakreg``, WCS name).

        An image is COMPLETE when one of its own fits succeeded (``FIT-LVL3-<refcat>``
        after an absolute fit, ``FIT-REL`` after a relative one); the reference image
        of a relative group counts only in a relative-only run where others were
        aligned to it. An image that could not be read or has no usable catalog is
        FAILED; everything else is SKIPPED. Both keep their WCS unchanged.
        """
        stages = {}
        group_success = set()
        for row in rows:
            stages.setdefault(row["image"], {})[row["stage"]] = row["status"]
            if row["stage"] == "relative" and row["status"] == "SUCCESS":
                group_success.add(row["group"])
        reference_groups = {row["image"]: row["group"] for row in rows
                            if row["status"].startswith("REFERENCE")}
        out = {}
        for im in images:
            if im.status.get("unusable"):
                out[im.name] = ("FAILED", None)
                continue
            if im.status.get("rejected"):
                out[im.name] = ("SKIPPED", None)  # failed its own judgement: WCS unchanged
                continue
            st = stages.get(im.name, {})
            abs_ok = st.get("absolute") == "SUCCESS"
            rel_ok = st.get("relative") == "SUCCESS" or (
                not absolute and reference_groups.get(im.name) in group_success)
            if abs_ok:
                names = "+".join(p.name for p in refcat_paths(self.abs_refcat))
                out[im.name] = ("COMPLETE", f"FIT-LVL3-{names}")
            elif rel_ok:
                out[im.name] = ("COMPLETE", "FIT-REL")
            else:
                out[im.name] = ("SKIPPED", None)
        return out
