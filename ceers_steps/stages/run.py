"""
The work of `CeersTweakRegStep`, as plain orchestration the Step calls.

`TweakRegRun` takes the step's parameters (any object with the step's attribute
names and its detection hooks), an `InputSet` and optional catalogs, and does
the run: choose or detect catalogs, group images, call `align_visit`, decide the
statuses and write models, WCS models and results. The algorithms are in
`ceers_steps.fitting.alignment`, `ceers_steps.fitting.jointfit` and `ceers_steps.fitting.judge`; this
module only wires them, and imports no Step.
"""

from pathlib import Path

import numpy as np

from ..core.logs import AllImagesFailedError, get_logger
from ..detection.catalogs import catalog_xy, read_catalog
from ..fitting.images import AlignImage, result_row
from ..fitting.visit import align_visit
from ..io.grouping import image_key, read_primary_header
from ..io.inputs import open_image, written_library
from ..io.results import (
    format_summary,
    results_paths,
    results_table,
    summary_line,
    write_ceers_results,
    write_results_table,
)
from ..io.wcs_models import save_wcs_model, wcs_dir_path, wcs_model_path
from ..refcat.refcats import named_catalog, refcat_label, refcat_paths
from .jwstpars import choose_catalogs, detection_parameters, ignored_settings, parse_catfile
from .tasks import detect_task, finish_aligned_model, header_task, write_aligned_task

__all__ = ["TweakRegRun"]

log = get_logger(__name__)


class TweakRegRun:
    """
    One run of the CEERS alignment.

    Parameters
    ----------
    pars : CeersTweakRegStep
        The step (or any object with its parameters and hooks: ``_find_sources``,
        ``_write_catalog``, ``_run_tasks``, ``_sip``, ``output_dir_path``,
        ``image_output_path``, ``read_refcat``, ``relative_parameters``,
        ``absolute_parameters``). The results table is left in ``pars.results``.
    """

    def __init__(self, pars):
        self.pars = pars
        #: Visit and filter -> the alignment report written (`ceers_steps.report.html`).
        self.report_paths = {}

    def run(self, inputs, catalogs=None, save=False, suffix="tweakreg", stream=None,
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
        self.pars._normalise_lists()
        rel, abs_ = self.pars.relative_parameters(), self.pars.absolute_parameters()
        self.pars._check_sip_parameters()
        on_disk = all(image.path is not None for image in inputs.images)
        stream = on_disk and (save if stream is None else stream)
        refcat = None
        if self.pars.abs_refcat and self.pars.abs_refcat.strip():
            refcat = getattr(self.pars, "preloaded_refcat", None)
            refcat = self.pars.read_refcat() if refcat is None else refcat
            for cat in getattr(refcat, "meta", {}).get("catalogs", []):
                log.info("Absolute reference catalog %s: %d sources read, %d after cuts",
                         cat["file"], cat["n_read"], cat["n_after_cuts"])
        catfile_map = (parse_catfile(self.pars.catfile) if self.pars.use_custom_catalogs and self.pars.catfile
                       and self.pars.catfile.strip() else None)
        ignored = ignored_settings(self.pars)
        if ignored:
            log.info("jwst star-finder settings accepted and not used (detection is SEP with the "
                     "CEERS recipe): %s", ", ".join(ignored))

        if copy_inputs is None:
            copy_inputs = self.pars.parent is None
        headers = self._open_inputs(inputs, stream, catalogs, copy_inputs)
        images, unusable_rows, catalog_paths = [], [], []
        detect = []

        def unusable(model, name, key, reason):
            log.error("%s: FAILED: %s; its WCS is left unchanged", name, reason)
            unusable_rows.append(result_row("relative", f"{key.visit_filter}_{key.detector}",
                                            name, f"FAILED: {reason}", self.pars.fitgeometry))
            images.append(AlignImage(name=name, model=model, catalog=None, key=key,
                                     status={"unusable": True}))
            catalog_paths.append(None)

        names = [(model.meta.filename if model is not None else None) or image.name
                 for image, (model, _, _, _) in zip(inputs.images, headers, strict=True)]
        if catalogs is None:
            sources = choose_catalogs(
                [(name, image.member, meta_catalog, image.path)
                 for name, image, (_, _, meta_catalog, _) in zip(names, inputs.images, headers,
                                                                 strict=True)],
                self.pars.use_custom_catalogs, catfile_map, inputs.asn_dir, log=log)
        headers = self._group_keys(headers, inputs)
        for i, (_image, (model, key, _, error)) in enumerate(zip(inputs.images, headers,
                                                                           strict=True)):
            name = names[i]
            if error is None and key.problem:
                error = key.problem  # a header value that cannot name its outputs
            if error is None and catalogs is not None and catalogs[i].error:
                error = catalogs[i].error
            if error is not None:
                unusable(model, name, key, error)
                continue
            try:
                if catalogs is not None:
                    catalog, source = catalogs[i].xy, catalogs[i].catalog_path
                else:
                    source = sources[i]
                    if source:
                        log.info("%s: using user-provided input catalog %s", name, source)
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
        not_run = self._nothing_to_do(images, refcat)
        if not_run:
            for im in images:
                if not im.status.get("unusable"):
                    im.status["not_run"] = not_run
            detect = []
        if detect:
            # Catalog files the run reads or that its inputs name: saved catalogs never replace them.
            named = [p for p in catalog_paths if p] + [
                c for _, _, c, _ in headers if c and str(c).strip()] + [
                str(Path(inputs.asn_dir or ".") / image.member["tweakreg_catalog"])
                for image in inputs.images if image.member.get("tweakreg_catalog")]
            unusable_rows += self._detect_missing(inputs, images, detect, catalog_paths, named)

        rows = list(unusable_rows)
        failed_row = {row["image"]: row for row in unusable_rows}
        by_visit = {}
        for im in images:
            group = by_visit.setdefault(im.key.visit_filter, [])
            if not im.status.get("unusable"):
                group.append(im)
        tables, used_refcats, visit_info = {}, {}, {}
        units = self._fit_units(by_visit, refcat, not_run)
        unit_images = [[im for vf in unit for im in by_visit[vf]] for unit in units]
        unit_refs = []
        for unit, group in zip(units, unit_images, strict=True):
            ref_used = None
            if group and not not_run and refcat is not None:
                ref_used = self._refcat_at_epoch(refcat, group, " + ".join(unit))
                for vf in unit:
                    used_refcats[vf] = ref_used
            unit_refs.append(ref_used)
        shared = (self._shared_offsets(unit_images, unit_refs, abs_)
                  if self.pars.shared_detector_terms and self._joint_possible(refcat) else None)
        for unit, group, ref_used in zip(units, unit_images, unit_refs, strict=True):
            unit_rows, info = [], {}
            if group and not_run:
                unit_rows = [result_row("relative", im.key.visit_filter, im.name,
                                        f"FAILED: {not_run}", self.pars.fitgeometry)
                             for im in group]
            elif group:
                log.info("Aligning %s: %d images", " + ".join(unit), len(group))
                unit_rows = align_visit(group, ref_used, rel, abs_, group_by=self._relative_runs,
                                        runner=self.pars._run_tasks, info=info, shared=shared)
            rows += unit_rows
            filter_of = {im.name: im.key.visit_filter for im in group}
            for visit_filter in unit:
                visit_rows = [r for r in unit_rows
                              if filter_of.get(r["image"], visit_filter) == visit_filter]
                terms = info.get("terms")
                if info.get("channel_terms"):
                    terms = info["channel_terms"].get(by_visit[visit_filter][0].key.filter
                                                      if by_visit[visit_filter] else None)
                visit_info[visit_filter] = {"terms": terms} if terms else {}
                tables[visit_filter] = self._visit_table(
                    visit_filter, images, failed_row, visit_rows, used_refcats.get(visit_filter),
                    terms, unit, shared)

        statuses = self._statuses(images, rows, refcat is not None)
        for im in images:
            # FAILED keeps the input WCS exactly (a fit may have touched it on its way, e.g.
            # older tweakwcs re-applies an identity correction to a relative reference).
            if (statuses[im.name][0] == "FAILED" and im.model is not None
                    and im.original_wcs is not None and im.model.meta.wcs is not im.original_wcs):
                im.set_wcs(im.original_wcs)
        self.pars.results = results_table(rows) if rows else None
        # The results tables are written last, so a folder with them holds a complete run;
        # an earlier run's tables are removed first, so an interrupted rerun has none.
        self._retire_earlier_results(tables)
        failed = [im.name for im in images if im.status.get("unusable")]
        if failed and len(failed) == len(images):
            self._write_reports(tables, images, statuses, rows, used_refcats, visit_info)
            self._write_results(tables)
            raise AllImagesFailedError(
                f"all {len(images)} images failed: "
                + "; ".join(r["image"] + ": " + r["status"] for r in unusable_rows))
        if failed:
            log.warning("%d of %d images FAILED: %s; the others were aligned", len(failed),
                        len(images), ", ".join(failed))
        save_wcs = self.pars.save_wcs if self.pars.save_wcs is not None else bool(save)
        if stream and not save and not save_wcs:
            log.warning("Streaming without saving images: saving the WCS models, or the fit "
                        "would be lost")
            save_wcs = True
        wcs_dir = wcs_dir_path(self.pars.wcs_dir, self.pars.output_dir_path())
        self._save_abs_catalogs(used_refcats, inputs)
        if stream:
            result = self._write_streamed(inputs, images, statuses, catalog_paths, suffix,
                                          wcs_dir if save_wcs else None, save, rows)
            self._write_reports(tables, images, statuses, rows, used_refcats, visit_info)
            self._write_results(tables)
            return result

        readable = [im for im in images if im.model is not None]
        for im in readable:
            status, wcs_name = statuses[im.name]
            finish_aligned_model(im.model, None, wcs_name, status, self.pars._sip(), log=log)
        from ..core.fileio import check_outputs

        # Every output of the run (images saved by stpipe afterwards, WCS models) checked first.
        saved = [im for im in readable if not im.status.get("unusable")] if save_wcs else []
        wcs_paths = [(wcs_model_path(wcs_dir, im.model.meta.filename), im.name) for im in saved]
        image_paths = [(self.pars.image_output_path(im.model.meta.filename, suffix), im.name)
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
        self._write_reports(tables, images, statuses, rows, used_refcats, visit_info)
        self._write_results(tables)

        from ..core.compat import make_library

        return make_library([im.model for im in readable])

    def _group_keys(self, headers, inputs):
        """
        Decide the relative runs (``group_by``; ``auto`` resolved) and, for jwst's
        whole-input runs over several visits or filters, give every image one run key.
        """
        from dataclasses import replace

        keys = [key for _, key, _, _ in headers]
        good = [k for k in keys if not k.problem]
        if len(good) < len(keys) and len({k.visit_filter for k in good}) == 1:
            # An image with an invalid header value fails; its row goes to the run's table.
            visit, filt = good[0].visit, good[0].filter
            headers = [(m, k if not k.problem else replace(k, visit=visit, filter=filt), c, e)
                       for m, k, c, e in headers]
            keys = [key for _, key, _, _ in headers]
        mode = self.pars.group_by
        if mode == "auto":
            known = all(k.visit != "unknown" and k.detector != "unknown" for k in good)
            mode = "detector" if known else "input"
            if not known:
                log.info("Not every image names its visit and detector: aligning the whole input "
                         "together, each exposure as one group (jwst's TweakRegStep)")
        self._relative_runs = "exposure" if mode == "input" else mode
        if mode != "input" or len({k.visit_filter for k in good}) <= 1:
            return headers
        product = ((inputs.asn or {}).get("products") or [{}])[0].get("name") or "input"
        # The association's product name becomes a file-name part: letters, digits, _-+ only.
        name = "".join(c if c.isascii() and (c.isalnum() or c in "-_+") else "_"
                       for c in str(product))[:40] or "input"
        return [(m, replace(k, visit=name, filter="all"), c, e) for m, k, c, e in headers]

    def _visit_table(self, visit_filter, images, failed_row, visit_rows, ref_used, terms, unit,
                     shared):
        """The results table of one visit and filter, with what its fit used in its metadata."""
        failed_here = [failed_row[im.name] for im in images
                       if im.status.get("unusable") and im.key.visit_filter == visit_filter]
        meta = {"visit_filter": visit_filter, "abs_refcat": self.pars.abs_refcat,
                "abs_group": self.pars.abs_group}
        if ref_used is not None:
            meta.update(abs_refcat_catalogs=ref_used.meta.get("catalogs"),
                        abs_refcat_epoch=ref_used.meta.get("epoch"),
                        abs_refcat_sources=len(ref_used))
        if terms:
            meta["fit_terms"] = terms
        if len(unit) > 1:
            meta["fitted_with"] = [vf for vf in unit if vf != visit_filter]
        if shared:
            # In each detector's pixel axes (x, y), mas: the same in every visit.
            meta["shared_detector_offsets"] = {
                det: {"x": 1e3 * float(u[0]), "y": 1e3 * float(u[1]),
                      "err_x": 1e3 * float(np.sqrt(c[0, 0])), "err_y": 1e3 * float(np.sqrt(c[1, 1]))}
                for det, (u, c) in shared.items()}
        table = results_table(failed_here + visit_rows, meta=meta)
        log.info("Results for %s: %s", visit_filter, summary_line(table))
        log.debug("Results for %s:\n%s", visit_filter, format_summary(table))
        return table

    def _joint_possible(self, refcat):
        return refcat is not None and self.pars.abs_group == "joint"

    def _fit_units(self, by_visit, refcat, not_run):
        """
        The visits and filters fitted together: each alone, or with ``joint_channels``
        the filters of one visit that share exposures (NIRCam's SW and LW images of one
        exposure, taken at the same time).
        """
        for flag in ("joint_channels", "shared_detector_terms"):
            if getattr(self.pars, flag) and not self._joint_possible(refcat):
                log.warning("%s needs abs_group = joint and an abs_refcat: each visit and "
                            "filter is fitted alone", flag)
        names = list(by_visit)
        if not (self.pars.joint_channels and self._joint_possible(refcat)) or not_run:
            return [[vf] for vf in names]
        root = {vf: vf for vf in names}

        def find(vf):
            while root[vf] != vf:
                vf = root[vf]
            return vf

        exposures = {vf: {im.key.exposure for im in by_visit[vf]} for vf in names}
        visit = {vf: by_visit[vf][0].key.visit if by_visit[vf] else None for vf in names}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if visit[a] is not None and visit[a] == visit[b] and exposures[a] & exposures[b]:
                    root[find(b)] = find(a)
        units = {}
        for vf in names:
            units.setdefault(find(vf), []).append(vf)
        for unit in units.values():
            if len(unit) > 1:
                log.info("Fitting %s together: they share %d exposures (joint_channels)",
                         " + ".join(unit), len(set.intersection(*(exposures[vf] for vf in unit))))
        return list(units.values())

    def _shared_offsets(self, unit_images, unit_refs, abs_):
        """
        Detector offsets measured once from every visit of the run (`shared_detector_terms`):
        each visit's joint fit with an offset per detector, combined
        (`ceers_steps.fitting.jointfit.combine_detector_offsets`). None (each visit fits its own,
        as without the option) with fewer than two visits measured, or when the combined
        offsets are not significant (``abs_significance``).
        """
        from ..fitting.absolute import detector_offset_estimate
        from ..fitting.jointfit import combine_detector_offsets, offsets_significant

        estimates = []
        for group, ref in zip(unit_images, unit_refs, strict=True):
            if not group or ref is None:
                continue
            try:
                estimate = detector_offset_estimate(group, ref, abs_)
            except Exception as exc:  # noqa: BLE001 - one visit's failure leaves it out only
                names = " + ".join(dict.fromkeys(im.key.visit_filter for im in group))
                log.warning("shared_detector_terms: %s: detector offsets not measured (%s: %s); "
                            "the other visits still share theirs", names, type(exc).__name__, exc)
                continue
            if estimate is not None:
                estimates.append(estimate)
        if len(estimates) < 2:
            log.warning("shared_detector_terms: %d visit(s) measured their detector offsets, "
                        "2 are needed: each visit fits its own", len(estimates))
            return None
        shared = combine_detector_offsets(estimates)
        if not offsets_significant(estimates, abs_.significance):
            log.info("Detector offsets from %d visits are not significant (abs_significance "
                     "%.3g): each visit tests its own", len(estimates), abs_.significance)
            return None
        log.info("Detector offsets shared by %d visits (each detector's pixel axes x, y, mas): %s",
                 len(estimates), ", ".join(
                     f"{det} {1e3 * u[0]:+.2f}±{1e3 * np.sqrt(c[0, 0]):.2f} "
                     f"{1e3 * u[1]:+.2f}±{1e3 * np.sqrt(c[1, 1]):.2f}"
                     for det, (u, c) in shared.items()))
        return shared

    def _nothing_to_do(self, images, refcat):
        """jwst's rule: without a reference catalog, one exposure cannot be aligned."""
        if refcat is not None or self.pars.save_catalogs:
            return None
        usable = [im for im in images if not im.status.get("unusable")]
        if len({im.key.exposure for im in usable}) >= 2:
            return None
        log.warning("At least two exposures are required for image alignment.")
        log.warning("Nothing to do. Skipping 'TweakRegStep'...")
        return "At least two exposures are required for image alignment"

    def _refcat_at_epoch(self, refcat, group, visit_filter):
        """The reference catalog propagated to the mean epoch of a visit's images."""
        from astropy.time import Time

        from ..refcat.refcats import at_epoch, collapse_near_duplicates, image_epoch

        epochs = [image_epoch(im.model) for im in group]
        known = [e for e in epochs if e is not None]
        if isinstance(refcat, str):
            return self._fetch_named(refcat, group, visit_filter, known)
        has_pm = bool(np.any(np.isfinite(refcat["PMRA"])))
        if has_pm and not known:
            log.warning("%s: the images carry no observation time: reference positions are "
                        "used at their catalog epoch, without proper motions", visit_filter)
        epoch = Time(np.mean([e.mjd for e in known]), format="mjd", scale="utc") if known else None
        used = at_epoch(refcat, epoch if has_pm else None, pm_missing=self.pars.abs_pm_missing,
                        pm_dispersion=self.pars.abs_pm_dispersion)
        used, _ = collapse_near_duplicates(used, self.pars.abs_separation,
                                           f"{visit_filter}: reference catalog")
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

    def _fetch_named(self, name, group, visit_filter, epochs):
        """A jwst named catalog around a visit's footprint, at the visit's mean epoch."""
        from ..fitting.images import footprint_centre
        from ..refcat.refcats import at_epoch, fetch_named_catalog

        ra, dec, radius = footprint_centre(group)
        radius += self.pars.abs_searchrad / 3600.0
        epoch = float(np.mean([e.decimalyear for e in epochs])) if epochs else None
        log.info("%s: fetching %s within %.1f arcmin of RA %.6f, Dec %.6f (epoch %s)",
                 visit_filter, name, radius * 60, ra, dec,
                 f"{epoch:.3f}" if epoch else "of the catalog")
        table = fetch_named_catalog(name, ra, dec, radius, epoch=epoch, cuts=self.pars.abs_cuts,
                                    mag_min=self.pars.abs_mag_min, mag_max=self.pars.abs_mag_max)
        return at_epoch(table, None)

    def _save_abs_catalogs(self, used_refcats, inputs):
        if not self.pars.save_abs_catalog or not used_refcats:
            return
        from ..core.fileio import check_outputs, inside_folder, write_ecsv

        out_dir = self.pars.output_dir_path()
        paths = {vf: inside_folder(out_dir / f"{vf}_abs_refcat.ecsv", out_dir)
                 for vf in used_refcats}
        check_outputs([(p, vf) for vf, p in paths.items()],
                      [image.path for image in inputs.images]
                      + ([] if named_catalog(self.pars.abs_refcat) else refcat_paths(self.pars.abs_refcat)))
        for vf, path in paths.items():
            table = used_refcats[vf].copy()
            table.meta = {k: v for k, v in table.meta.items()
                          if k in ("catalogs", "epoch", "max_motion_mas", "source")}
            write_ecsv(table, path)
            log.info("%s: reference catalog used (%d sources) written to %s", vf, len(table), path)

    def _results_paths(self, visit_filter):
        return results_paths(self.pars.output_dir_path(), visit_filter)

    def _retire_earlier_results(self, tables):
        """
        The results files of a visit and filter may hold rows of earlier runs: another
        detector's (CEERS aligned one detector per call) or this run's images'. Rows of
        this run's images are removed now, so an interrupted run leaves none of theirs;
        the other images' rows stay and are kept when this run's rows are added.
        """
        from ..io.results import read_results_table, rows_of_other_images

        self._earlier_results = {}
        if not self.pars.save_fit_results:
            return
        for visit_filter, table in tables.items():
            ecsv_path, txt_path = self._results_paths(visit_filter)
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
            self._earlier_results[visit_filter] = others
            if len(earlier) > n_others:
                write_results_table(others, ecsv_path)
                write_ceers_results(others, txt_path)

    def report_enabled(self):
        """
        ``save_report``; None means on inside a pipeline that says it writes one
        (``writes_alignment_report``: `CeersAlignPipeline`, so ``ceers_align``,
        ``ceers-align``, ``calwebb_image3_ceers``), off otherwise: alone, or swapped
        into jwst's own pipelines, the step writes what jwst's TweakRegStep writes.
        """
        on = getattr(self.pars, "save_report", None)
        if on is None:
            return bool(getattr(self.pars.parent, "writes_alignment_report", False))
        return bool(on)

    def _write_reports(self, tables, images, statuses, rows, used_refcats, visit_info):
        """
        The HTML report and DS9 regions of every visit and filter (`ceers_steps.report.html`).

        A report that cannot be made is logged and the run goes on: it describes the
        alignment, it is not part of it.
        """
        self.pars.report_paths = self.report_paths
        if not self.report_enabled():
            return
        import time

        from ..report.diagnostics import grade_images, visit_residuals
        from ..report.html import final_rows, regions_dir, report_path, write_regions, write_report

        out_dir = self.pars.output_dir_path()
        failures = {im.name: _not_aligned_reason(rows, im.name) for im in images}
        pars = self.pars.get_pars() if hasattr(self.pars, "get_pars") else {}
        for visit_filter, table in tables.items():
            start = time.perf_counter()
            group = [im for im in images if im.key.visit_filter == visit_filter]
            refcat = used_refcats.get(visit_filter)
            tolerance = self.pars.abs_tolerance if refcat is not None else self.pars.tolerance
            searchrad = self.pars.abs_searchrad if refcat is not None else self.pars.searchrad
            try:
                residuals = visit_residuals(group, statuses, refcat, tolerance)
                final = final_rows(table)
                grades = grade_images(residuals, {n: float(r["err_corner"]) for n, r in final.items()},
                                      searchrad=searchrad, failures=failures,
                                      holdout={n: (r["holdout_err"], r["holdout_sigma"],
                                                   r["err_center"], r["holdout_n"])
                                               for n, r in final.items()
                                               if int(r["holdout_n"]) > 0})
                regions = write_regions(regions_dir(out_dir, visit_filter), residuals)
                path = write_report(report_path(out_dir, visit_filter), table, residuals, grades,
                                    terms=visit_info.get(visit_filter, {}).get("terms"),
                                    parameters=pars, regions=regions,
                                    refcat=self.pars.abs_refcat if refcat is not None else None)
            except Exception as exc:  # noqa: BLE001 - the report must never fail the alignment
                log.warning("%s: alignment report not written: %s: %s", visit_filter,
                            type(exc).__name__, exc)
                continue
            self.report_paths[visit_filter] = path
            counts = {g: sum(x.grade == g for x in grades) for g in ("good", "check", "poor")}
            log.info("%s: alignment report %s (%s; %.2f s)", visit_filter, path,
                     ", ".join(f"{n} {g}" for g, n in counts.items()),
                     time.perf_counter() - start)
            # One warning line per visit: the images graded down, grouped by grade and
            # reason (a visit-wide reason, too few reference sources, names its images once).
            same = {}
            for g in grades:
                if g.grade != "good":
                    same.setdefault((g.grade, g.reason), []).append(g.name)
            if same:
                log.warning("%s: %s", visit_filter, "; ".join(
                    f"{', '.join(names)} graded {grade}: {reason}"
                    for (grade, reason), names in same.items()))

    def _write_results(self, tables):
        from ..io.results import merge_results

        if not self.pars.save_fit_results:
            return
        earlier = getattr(self, "_earlier_results", {})
        for visit_filter, table in tables.items():
            ecsv_path, txt_path = self._results_paths(visit_filter)
            merged = merge_results(earlier.get(visit_filter), table)
            ecsv = write_results_table(merged, ecsv_path)
            txt = write_ceers_results(merged, txt_path)
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
            return self.pars._run_tasks(header_task, [(image.path,) for image in inputs.images],
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
            header = read_primary_header(image.path) if image.path is not None else None
            out.append((model, image_key(model, image.name, header=header),
                        getattr(model.meta, "tweakreg_catalog", None), None))
        return out

    def _detect_missing(self, inputs, images, indices, catalog_paths, catalog_inputs=()):
        """
        Images without a catalog get one from our own detection (`_find_sources`
        for models in memory, workers for files), saved only with ``save_catalogs``.
        Returns the FAILED rows of images whose detection failed.
        """
        params = detection_parameters(self.pars)
        planned = {}
        if self.pars.save_catalogs:
            from ..core.fileio import check_outputs

            # Saved catalogs never overwrite an input (image or catalog) or each other.
            planned = {i: self.pars._catalog_output_path(images[i].name) for i in indices}
            check_outputs([(path, images[i].name) for i, path in planned.items()],
                          [image.path for image in inputs.images] + list(catalog_inputs))
        results = {}
        files = [i for i in indices if inputs.images[i].model is None]
        tasks = [(inputs.images[i].path, params, planned.get(i), images[i].name) for i in files]
        for i, res in zip(files, self.pars._run_tasks(detect_task, tasks, "Detection",
                                                 names=[images[i].name for i in files]),
                          strict=True):
            results[i] = (res.error, res.xy, res.catalog_path)
        for i in indices:
            if i in results:
                continue
            im = images[i]
            try:
                catalog = catalog_xy(self.pars._find_sources(im.model), where=im.name)
            except Exception as exc:  # noqa: BLE001 - a failed detection fails only this image
                from .tasks import describe_error

                results[i] = (f"detection failed: {describe_error(exc)}", None, None)
                continue
            path = None
            if i in planned:
                path = self.pars._write_catalog(catalog, im.name)
                im.model.meta.tweakreg_catalog = path
            results[i] = (None, catalog, path)
        failed_rows = []
        for i in indices:
            error, xy, path = results[i]
            im = images[i]
            if error:
                log.error("%s: FAILED: %s; its WCS is left unchanged", im.name, error)
                im.status["unusable"] = True
                failed_rows.append(result_row("relative", f"{im.key.visit_filter}_{im.key.detector}",
                                              im.name, f"FAILED: {error}", self.pars.fitgeometry))
                continue
            im.catalog = xy
            catalog_paths[i] = str(path) if path else None
            log.info("%s: detected %d sources%s", im.name, len(xy),
                     f" -> {path}" if path else "")
        return failed_rows

    def _write_streamed(self, inputs, images, statuses, catalog_paths, suffix, wcs_dir, save, rows):
        """Workers write every aligned image (and WCS model); return a library over them."""
        from ..core.fileio import check_outputs

        # Each output path once: checked against the inputs and each other, then written.
        plan = []
        for image, im, cat in zip(inputs.images, images, catalog_paths, strict=True):
            if im.model is None:
                continue  # an unreadable file has nothing to write
            status, wcs_name = statuses[im.name]
            out_path = self.pars.image_output_path(im.name, suffix) if save else None
            wcs_path = (wcs_model_path(wcs_dir, im.name)
                        if wcs_dir is not None and not im.status.get("unusable") else None)
            plan.append((image, im, cat, status, wcs_name, out_path, wcs_path))
        check_outputs([(path, im.name) for _, im, _, _, _, out_path, wcs_path in plan
                       for path in (out_path, wcs_path) if path is not None],
                      [image.path for image in inputs.images])
        tasks, members = [], []
        for image, im, cat, status, wcs_name, out_path, wcs_path in plan:
            tasks.append((image.path, out_path, im.model.meta.wcs if status == "COMPLETE" else None,
                          wcs_name, status, self.pars._sip(), wcs_path, cat,
                          _not_aligned_reason(rows, im.name) if status != "COMPLETE" else None))
            members.append({"expname": str(out_path), "exptype": "science",
                            "group_id": im.key.exposure})
        self.pars._run_tasks(write_aligned_task, tasks,
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
        Image name -> (``meta.cal_step.tweakreg``, WCS name or None).

        jwst 3.x's meaning: COMPLETE when the step did its work on the image, FAILED
        when it could not. An image is COMPLETE when one of its own fits succeeded
        (``FIT-LVL3-<refcat>`` after an absolute fit, ``FIT-REL`` after a relative
        one); the reference image of a successful relative run is COMPLETE with its
        WCS untouched (WCS name None), as in jwst. Everything else (unreadable, no
        usable catalog, a fit that failed, an image that failed its judgement, a run
        with nothing to align) is FAILED and keeps its input WCS.
        """
        stages = {}
        group_success = set()
        for row in rows:
            stages.setdefault(row["image"], {})[row["stage"]] = row["status"]
            if row["stage"] == "relative" and row["status"] == "SUCCESS":
                group_success.add(row["group"])
        reference_groups = {row["image"]: row["group"] for row in rows
                            if row["status"].startswith("REFERENCE")}
        names = "+".join(refcat_label(self.pars.abs_refcat))
        out = {}
        for im in images:
            if im.status.get("unusable") or im.status.get("rejected") or im.status.get("not_run"):
                out[im.name] = ("FAILED", None)
                continue
            st = stages.get(im.name, {})
            if st.get("absolute") == "SUCCESS":
                out[im.name] = ("COMPLETE", f"FIT-LVL3-{names}")
            elif st.get("relative") == "SUCCESS":
                out[im.name] = ("COMPLETE", "FIT-REL")
            elif not absolute and reference_groups.get(im.name) in group_success:
                out[im.name] = ("COMPLETE", None)
            else:
                out[im.name] = ("FAILED", None)
        return out


def _not_aligned_reason(rows, name):
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
