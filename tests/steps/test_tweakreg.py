"""CeersTweakRegStep: accuracy against truth, CEERS parameters, results, saved WCS, failures."""

import configparser
import json
from pathlib import Path

import asdf
import numpy as np
import pytest
from astropy.table import Table
from conftest import (
    CEERS_F200W,
    CEERS_F444W,
    accuracy,
    assert_goal_or_floor,
    file_digest,
    library_of,
    models_of,
    oracle_floor,
    run_cli,
)

from ceers_steps import CeersTweakRegStep
from ceers_steps.core.wcs_utils import angular_separation_mas, pixel_grid, sky_difference_mas
from ceers_steps.fitting.images import AlignImage
from ceers_steps.fitting.parameters import AbsoluteParameters, RelativeParameters
from ceers_steps.fitting.visit import align_visit
from ceers_steps.io.grouping import image_key
from ceers_steps.io.results import ceers_results_lines, results_table

NO_FILES = dict(save_fit_results=False)


# --- accuracy against injected truth (real CEERS WCS models and HST catalog) ---------------

def test_joint_fit_without_detector_errors(real_sw_visit):
    v = real_sw_visit
    out = models_of(CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]),
                                           **CEERS_F200W, **NO_FILES))
    assert_goal_or_floor(accuracy(out, v["visit"]), oracle_floor(v["visit"]), goal=(1.0, 2.0))
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out)
    assert all(m.meta.wcs.name == "FIT-LVL3-refcat.ecsv" for m in out)


def test_joint_fit_with_detector_errors(real_sw_det_visit):
    v = real_sw_det_visit
    out = models_of(CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]),
                                           **CEERS_F200W, **NO_FILES))
    floor = oracle_floor(v["visit"], detector_terms="all")
    assert_goal_or_floor(accuracy(out, v["visit"]), floor, goal=(2.5, 5.0))


def test_joint_fit_long_wavelength_rscale(real_lw_visit):
    v = real_lw_visit
    out = models_of(CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]),
                                           **CEERS_F444W, **NO_FILES))
    assert_goal_or_floor(accuracy(out, v["visit"]), oracle_floor(v["visit"], "rscale"),
                         goal=(1.5, 3.0))


def test_uncertainty_is_in_the_results_and_honest(real_sw_visit, tmp_path):
    """Each aligned image's 1-sigma uncertainty (mas) is in the ECSV; the true error agrees."""
    v = real_sw_visit
    out = models_of(CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]),
                                           output_dir=str(tmp_path), **CEERS_F200W))
    table = Table.read(tmp_path / "jw01345001001_f200w_tweakreg_results.ecsv")
    assert table["err_center"].unit == "mas" and table["err_corner"].unit == "mas"
    assert len(table) == 48 and set(table["status"]) == {"COMPLETE"}
    # ~10 mas intrinsic offsets over ~400 galaxies: ~0.5-1 mas; corners farther from the centre.
    assert np.all((table["err_center"] > 0.3) & (table["err_center"] < 1.5))
    assert np.all(table["err_corner"] >= table["err_center"])
    errors = []
    for m, im in zip(out, v["visit"].images, strict=True):
        row = table[(table["image"] == m.meta.filename) & (table["stage"] == "absolute")][0]
        true = float(angular_separation_mas(*m.meta.wcs(1023.5, 1023.5),
                                            *im.true_wcs(1023.5, 1023.5)))
        errors.append(true / row["err_center"])
    # One draw: every image shares the common error, so only a loose check (the 95% test over
    # many draws is in test_jointfit.py).
    assert np.median(errors) < 3.0


def test_tweakwcs_modes_leave_the_uncertainty_unset(builtin_visit, tmp_path):
    v = builtin_visit
    CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]), abs_group="detector",
                           output_dir=str(tmp_path))
    table = Table.read(tmp_path / "jw01345001001_f200w_tweakreg_results.ecsv")
    assert np.all(np.isnan(table["err_center"])) and np.all(np.isnan(table["err_corner"]))


def test_relative_only_joint_fit_registers_the_dithers(real_sw_visit, tmp_path):
    """
    Without a reference catalog the joint model ties each exposure to the first through every
    source seen twice: the dithers of each detector agree to <= 0.5 mas (median over pairs).
    """
    from ceers_steps.core.wcs_utils import world_to_pixel_exact

    v = real_sw_visit
    out = models_of(CeersTweakRegStep.call(library_of(v["visit"]), output_dir=str(tmp_path),
                                           **CEERS_F200W))
    images = v["visit"].images
    # The joint model did it: the first exposure is the reference of every detector, and each
    # other image's dither term comes with its uncertainty (tweakwcs' relative fit has none).
    table = Table.read(tmp_path / "jw01345001001_f200w_tweakreg_results.ecsv")
    reference = table["fit_status"] == "REFERENCE"
    assert sorted(table["image"][reference]) == sorted(im.model.meta.filename for im in images
                                                       if im.dither == 0)
    assert set(table["status"][~reference]) == {"COMPLETE"}
    assert np.all((table["err_center"][~reference] > 0) & (table["err_center"][~reference] < 0.3))
    x, y = pixel_grid((2048, 2048), 8)
    pairs = []
    for det in {im.detector for im in images}:
        idx = [i for i, im in enumerate(images) if im.detector == det]
        for a in idx:
            for b in idx:
                if b <= a:
                    continue
                # The same sky points seen in both images: where does each aligned WCS put them?
                ra, dec = images[a].true_wcs(x, y)
                xb, yb = world_to_pixel_exact(images[b].true_wcs, ra, dec)
                inside = (xb > 0) & (xb < 2047) & (yb > 0) & (yb < 2047)
                sep = angular_separation_mas(*out[a].meta.wcs(x[inside], y[inside]),
                                             *out[b].meta.wcs(xb[inside], yb[inside]))
                pairs.append(float(np.sqrt(np.mean(np.asarray(sep) ** 2))))
    before = []
    for det in {im.detector for im in images}:
        idx = [i for i, im in enumerate(images) if im.detector == det]
        ra, dec = images[idx[0]].true_wcs(x, y)
        xb, yb = world_to_pixel_exact(images[idx[1]].true_wcs, ra, dec)
        inside = (xb > 0) & (xb < 2047) & (yb > 0) & (yb < 2047)
        before.append(float(np.median(angular_separation_mas(
            *images[idx[0]].model.meta.wcs(x[inside], y[inside]),
            *images[idx[1]].model.meta.wcs(xb[inside], yb[inside])))))
    assert np.median(before) > 10  # the injected dither errors (~20 mas)
    assert len(pairs) == 24 and np.median(pairs) <= 0.5, pairs  # measured: 0.09 mas
    # The first exposure is the reference: untouched.
    first = [i for i, im in enumerate(images) if im.dither == 0]
    for i in first:
        assert out[i].meta.wcs(10.0, 20.0) == images[i].model.meta.wcs(10.0, 20.0)


def test_visit_mode_cannot_remove_detector_errors(real_sw_det_visit):
    """The jwst-like rigid fit leaves the detector offsets in: the reason for the joint default."""
    v = real_sw_det_visit
    module_a = range(12)  # nrca1-4 x 3 dithers: enough to show it, a quarter of the time
    out = models_of(CeersTweakRegStep.call(library_of(v["visit"], module_a),
                                           abs_refcat=str(v["refcat"]), abs_group="visit",
                                           **CEERS_F200W, **NO_FILES))
    median, worst = accuracy(out, v["visit"], module_a)
    assert median > 10.0


def test_builtin_truth_visit_aligns(builtin_visit):
    """Runs without the real data: built-in NIRCam-like WCS and a random catalog."""
    v = builtin_visit
    out = models_of(CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]),
                                           **NO_FILES))
    median, worst = accuracy(out, v["visit"])
    assert median <= 2.0 and worst <= 4.0, (median, worst)


# --- CEERS mode and the results files --------------------------------------------------------

def _align_images(visit):
    images = []
    for image in visit.images:
        cat = Table.read(image.model.meta.tweakreg_catalog)
        images.append(AlignImage(name=image.model.meta.filename, model=image.model.copy(),
                                 catalog=Table({"x": cat["xcentroid"], "y": cat["ycentroid"]}),
                                 key=image_key(image.model)))
    return images


def test_results_match_fit_info(builtin_visit):
    """CEERS-mode rows, the ECSV table and the CEERS text lines carry tweakwcs' fit_info numbers."""
    v = builtin_visit
    images = _align_images(v["visit"])
    rel = RelativeParameters(tolerance=0.1, separation=0.2, use2dhist=True, minobj=10)
    absp = AbsoluteParameters(group="detector", minobj=10, separation=0.5, tolerance=0.4)
    refcat = Table.read(v["refcat"])
    rows = align_visit(images, refcat, rel, absp)
    table = results_table(rows)
    lines = ceers_results_lines(table)
    checked = 0
    for im in images:
        for stage in ("relative", "absolute"):
            info = im.fit_info.get(stage)
            if not info or info["status"] != "SUCCESS":
                continue
            row = table[(table["stage"] == stage) & (table["image"] == im.name)][0]
            # NMATCH: the sources of the final solution (after clipping), as CEERS recorded.
            assert row["nmatch"] == int(np.sum(info["fitmask"])) <= info["nmatches"]
            assert row["nmatch_all"] == info["nmatches"]
            assert row["rmse"] == pytest.approx(info["rmse"], abs=1e-12)
            assert row["mae"] == pytest.approx(info["mae"], abs=1e-12)
            assert row["xshift"] == pytest.approx(info["shift"][0], abs=1e-12)
            assert row["yshift"] == pytest.approx(info["shift"][1], abs=1e-12)
            assert row["scale"] == pytest.approx(info["<scale>"], abs=1e-12)
            checked += 1
            if stage == "relative":
                line = next(ln for ln in lines if ln.startswith("Relative") and im.name in ln)
                fields = line.split()
                assert int(fields[3]) == int(np.sum(info["fitmask"]))
                assert float(fields[4]) == pytest.approx(info["rmse"], abs=5e-9)
                assert float(fields[6]) == pytest.approx(info["shift"][0], abs=5e-9)
                assert float(fields[7]) == pytest.approx(info["shift"][1], abs=5e-9)
            else:
                line = next(ln for ln in lines if ln.startswith("Absolute") and row["group"] in ln)
                fields = line.split()
                assert float(fields[8]) == pytest.approx(info["proper_rot"], abs=5e-9)
    assert checked >= 12


def test_results_files_in_ceers_layout(builtin_visit, tmp_path):
    v = builtin_visit
    CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]),
                           output_dir=str(tmp_path))
    txt = tmp_path / "tweakreg_results_all.jw01345001001_f200w.txt"
    ecsv = tmp_path / "jw01345001001_f200w_tweakreg_results.ecsv"
    lines = txt.read_text().splitlines()
    assert lines[0].startswith("Absolute/Relative     Filename")
    assert "NMATCH    RMSE(arcsec)  MAE(arcsec)   XSH(arcsec)   YSH(arcsec)   ROT(deg)      SCALE" in lines[0]
    relative = [ln for ln in lines if ln.startswith("Relative alignment:")]
    absolute = [ln for ln in lines if ln.startswith("Absolute alignment:")]
    assert len(relative) == 12 and len(absolute) == 4  # per image; per detector group
    table = Table.read(ecsv)
    assert set(table["stage"]) == {"relative", "absolute"}
    assert table["rmse"].unit == "arcsec" and table["rotation"].unit == "deg"
    # Same numbers in both files.
    row = table[table["stage"] == "absolute"][0]
    line = next(ln for ln in absolute if row["group"] in ln).split()
    assert float(line[4]) == pytest.approx(row["rmse"], abs=5e-9)


@pytest.mark.slow  # all 30 CEERS parameter sets: CI runs it in its own stage (pytest -m slow)
def test_all_30_ceers_parameter_sets_run(ceers_dir, builtin_visit):
    """Every visit section of the real CEERS cfg files runs; none is refused."""
    v = builtin_visit
    keymap = {"abs_fitgeom": "abs_fitgeometry"}
    fit_keys = {"minobj", "searchrad", "separation", "tolerance", "nclip", "sigma", "abs_minobj",
                "abs_searchrad", "abs_separation", "abs_tolerance", "abs_nclip", "abs_sigma",
                "abs_fitgeom"}
    sections = 0
    for cfg_path in sorted((ceers_dir / "tweakreg_cfgs").glob("*/*.cfg")):
        cfg = configparser.ConfigParser()
        cfg.read(cfg_path)
        for section in cfg.sections():
            params = {}
            for key, value in cfg[section].items():
                if key in fit_keys:
                    value = value.split("#")[0].strip()
                    params[keymap.get(key, key)] = value if key == "abs_fitgeom" else float(value)
            for key in ("minobj", "nclip", "abs_minobj", "abs_nclip"):
                params[key] = int(params[key])
            # Fewer sources in the small test visit than in a CEERS image.
            params["minobj"] = params["abs_minobj"] = 8
            subset = library_of(v["visit"], range(6))  # 2 detectors x 3 dithers
            CeersTweakRegStep(**params)  # spec validation: nothing refused
            out = models_of(CeersTweakRegStep.call(subset, abs_refcat=str(v["refcat"]), **params,
                                                   sip_approx=False, **NO_FILES))
            assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out), (cfg_path, section)
            sections += 1
    assert sections == 30


# --- saved WCS models --------------------------------------------------------------------------

def test_saved_wcs_opens_with_plain_asdf_and_matches(builtin_visit, tmp_path):
    v = builtin_visit
    result = CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]),
                                    save_wcs=True, output_dir=str(tmp_path), **NO_FILES)
    out = models_of(result)
    for model in out:
        base = model.meta.filename.replace("_cal.fits", "")
        path = tmp_path / "tweakreg_wcs" / f"{base}_tweakreg.asdf"
        with asdf.open(path) as af:
            assert set(af.tree) >= {"filename", "wcsinfo", "wcs"}
            assert af["filename"] == model.meta.filename
            assert af["wcsinfo"]["v2_ref"] == model.meta.wcsinfo.v2_ref
            x, y = pixel_grid(model.data.shape)
            a = np.array(af["wcs"](x, y))
            b = np.array(model.meta.wcs(x, y))
            # Identical to float round-off (old asdf serialises some parameters via text).
            assert angular_separation_mas(a[0], a[1], b[0], b[1]).max() < 1e-6


def test_aligned_images_saved_with_ceers_names(builtin_visit, tmp_path):
    v = builtin_visit
    CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]),
                           save_results=True, output_dir=str(tmp_path))
    names = sorted(p.name for p in tmp_path.glob("*.fits"))
    assert names == sorted(im.model.meta.filename.replace("_cal.fits", "_tweakreg.fits")
                           for im in v["visit"].images)
    # save_results implies saving the WCS models.
    assert len(list((tmp_path / "tweakreg_wcs").glob("*_tweakreg.asdf"))) == 12
    assert not list(tmp_path.glob(".*part"))


# --- failures are per group ----------------------------------------------------------------------

def _errors(models, visit):
    return [float(np.sqrt(np.mean(sky_difference_mas(m.meta.wcs, im.true_wcs, m.data.shape) ** 2)))
            for m, im in zip(models, visit.images, strict=True)]


def test_group_with_too_few_sources_is_left_unchanged(builtin_visit, tmp_path):
    v = builtin_visit
    lib = library_of(v["visit"])
    models = models_of(lib)
    # Starve one detector: 3 sources per image.
    starved = [m for m in models if "nrcb2" in m.meta.filename]
    for m in starved:
        cat = Table.read(m.meta.tweakreg_catalog)[:3]
        path = tmp_path / Path(m.meta.tweakreg_catalog).name
        cat.write(path)
        m.meta.tweakreg_catalog = str(path)
    step = CeersTweakRegStep(abs_refcat=str(v["refcat"]), abs_group="detector", minobj=8,
                             abs_minobj=8, tolerance=0.1, separation=0.2, use2dhist=True,
                             save_fit_results=False)
    out = models_of(step.run(lib))
    errs = _errors(out, v["visit"])
    for m, e, im in zip(out, errs, v["visit"].images, strict=True):
        if "nrcb2" in m.meta.filename:
            assert m.meta.cal_step.tweakreg == "FAILED"
            # Unchanged: exactly the input WCS.
            x, y = pixel_grid(m.data.shape)
            assert np.array_equal(np.array(m.meta.wcs(x, y)), np.array(im.model.meta.wcs(x, y)))
        else:
            assert m.meta.cal_step.tweakreg == "COMPLETE"
            assert e < 10
    statuses = {r["status"] for r in step.results
                if "nrcb2" in r["image"] and r["stage"] == "absolute"}
    assert statuses and all(s.startswith("FAILED") for s in statuses)


def test_empty_catalog_image_is_reported_and_rest_aligned(builtin_visit, tmp_path):
    v = builtin_visit
    lib = library_of(v["visit"])
    models = models_of(lib)
    empty = tmp_path / "empty_cat.ecsv"
    Table(names=("id", "xcentroid", "ycentroid", "flux"), dtype=("i4", "f8", "f8", "f8")).write(empty)
    models[0].meta.tweakreg_catalog = str(empty)
    before = models[0].meta.wcs(100.0, 200.0)
    step = CeersTweakRegStep(abs_refcat=str(v["refcat"]), save_fit_results=False)
    out = models_of(step.run(lib))
    errs = _errors(out, v["visit"])
    # Nothing of its own confirms the visit's correction for it: not called aligned, WCS as given.
    assert out[0].meta.cal_step.tweakreg == "FAILED"
    assert out[0].meta.wcs(100.0, 200.0) == pytest.approx(before, abs=1e-12)
    rows = [r for r in step.results if r["image"] == out[0].meta.filename]
    assert rows and all("no sources in its catalog" in r["status"] for r in rows)
    assert max(errs[1:]) < 5
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out[1:])


def test_refcat_without_radec_is_a_clear_error(builtin_visit, tmp_path):
    bad = tmp_path / "bad_refcat.ecsv"
    Table({"x": [1.0], "y": [2.0]}).write(bad)
    with pytest.raises(ValueError, match="bad_refcat.ecsv.*RA/DEC"):
        CeersTweakRegStep.call(library_of(builtin_visit["visit"]), abs_refcat=str(bad), **NO_FILES)


def test_refcat_missing_the_field_leaves_wcs_unchanged(builtin_visit, tmp_path):
    v = builtin_visit
    far = Table.read(v["refcat"])
    far["DEC"] -= 2.0
    path = tmp_path / "far_refcat.ecsv"
    far.write(path)
    step = CeersTweakRegStep(abs_refcat=str(path), save_fit_results=False)
    out = models_of(step.run(library_of(v["visit"])))
    for m, im in zip(out, v["visit"].images, strict=True):
        x, y = pixel_grid(m.data.shape)
        assert np.array_equal(np.array(m.meta.wcs(x, y)), np.array(im.model.meta.wcs(x, y)))
        assert m.meta.cal_step.tweakreg == "FAILED"
    assert all("FAILED" in r["status"] for r in step.results)


def test_missing_catalog_file_is_reported_and_rest_aligned(builtin_visit, tmp_path):
    v = builtin_visit
    lib = library_of(v["visit"])
    models = models_of(lib)
    models[4].meta.tweakreg_catalog = str(tmp_path / "does_not_exist_cat.ecsv")
    step = CeersTweakRegStep(abs_refcat=str(v["refcat"]), save_fit_results=False)
    out = models_of(step.run(lib))
    assert out[4].meta.cal_step.tweakreg == "FAILED"
    row = [r for r in step.results if r["image"] == out[4].meta.filename][0]
    assert "does_not_exist_cat.ecsv" in row["status"]
    errs = _errors(out, v["visit"])
    assert max(e for i, e in enumerate(errs) if i != 4) < 5


def test_separation_below_sqrt2_tolerance_warns_but_runs(builtin_visit, caplog):
    v = builtin_visit
    out = models_of(CeersTweakRegStep.call(library_of(v["visit"]), abs_refcat=str(v["refcat"]),
                                           abs_separation=0.5, abs_tolerance=0.4, **NO_FILES))
    assert "matches may be confused" in caplog.text
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out)


def test_models_given_are_not_modified(builtin_visit):
    v = builtin_visit
    models = [im.model for im in v["visit"].images]
    x, y = pixel_grid((1024, 1024), 4)
    before = [np.array(m.meta.wcs(x, y)) for m in models]
    from ceers_steps.core.compat import make_library

    CeersTweakRegStep.call(make_library(models), abs_refcat=str(v["refcat"]), **NO_FILES)
    after = [np.array(m.meta.wcs(x, y)) for m in models]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(m.meta.cal_step.tweakreg is None for m in models)


# --- command line, files, offline ----------------------------------------------------------------

def test_strun_association_offline(small_visit_dir, tmp_path):
    """strun ceers_tweak on an association with catalogs from ceers_catalog; inputs untouched."""
    from ceers_steps import CatalogStep

    d = small_visit_dir
    digests = {p: file_digest(p) for p in d["paths"]}
    CatalogStep.call(str(d["asn"]), output_dir=str(tmp_path / "cats"))
    asn = tmp_path / "cats" / "asn_cat_asn.json"
    proc = run_cli(["strun", "ceers_tweak", str(asn), "--abs_refcat", str(d["refcat"]),
                    "--output_dir", "out", "--minobj", "8", "--abs_minobj", "8"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "CRDS" not in out
    produced = sorted(p.name for p in (tmp_path / "out").glob("*_tweakreg.fits"))
    assert produced == sorted(p.name.replace("_cal.fits", "_tweakreg.fits") for p in d["paths"])
    assert (tmp_path / "out" / "tweakreg_results_all.jw01345001001_f200w.txt").exists()
    assert len(list((tmp_path / "out" / "tweakreg_wcs").glob("*.asdf"))) == 4
    assert "Results for jw01345001001_f200w" in out
    assert {p: file_digest(p) for p in d["paths"]} == digests
    assert "tweakreg_catalog" not in json.loads(d["asn"].read_text())["products"][0]["members"][0]


def test_catfile_and_missing_catalog_in_catfile(small_visit_dir, tmp_path):
    from ceers_steps import CatalogStep

    d = small_visit_dir
    CatalogStep.call(str(d["asn"]), output_dir=str(tmp_path))
    lines = [f"{p.name} {p.name.replace('.fits', '_cat.ecsv')}" for p in d["paths"]]
    (tmp_path / "catfile.txt").write_text("\n".join(lines) + "\n")
    step = CeersTweakRegStep(catfile=str(tmp_path / "catfile.txt"), abs_refcat=str(d["refcat"]),
                             minobj=8, abs_minobj=8, save_fit_results=False)
    out = models_of(step.run(str(d["asn"])))
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        CeersTweakRegStep.call(str(d["asn"]), catfile=str(tmp_path / "nope.txt"))


def _center_offsets(models, visit):
    """Aligned-minus-true sky offset at each image centre, mas (east, north)."""
    out = []
    for m, im in zip(models, visit.images, strict=True):
        ra0, dec0 = im.true_wcs(511.5, 511.5)
        ra1, dec1 = m.meta.wcs(511.5, 511.5)
        out.append([(ra1 - ra0) * np.cos(np.deg2rad(dec0)) * 3.6e6, (dec1 - dec0) * 3.6e6])
    return np.array(out)


def test_relative_only_joint_fit_isolates_a_wrong_catalog(builtin_visit, tmp_path):
    """One image whose catalog belongs elsewhere (3" off) is FAILED alone; the others align."""
    v = builtin_visit
    models = models_of(library_of(v["visit"]))
    bad = models[4]
    from ceers_steps.core.compat import make_library

    assert v["visit"].images[4].dither == 1  # not the reference exposure
    cat = Table.read(bad.meta.tweakreg_catalog)
    xname = next(n for n in ("x", "xcentroid", "x_centroid") if n in cat.colnames)
    yname = xname.replace("x", "y", 1)
    cat[xname] += 48.0  # ~1.8" away: far beyond the tolerance, its sources match nothing
    cat[yname] -= 30.0
    path = tmp_path / "wrong_cat.ecsv"
    cat.write(path)
    bad.meta.tweakreg_catalog = str(path)
    step = CeersTweakRegStep(minobj=8, tolerance=0.1, separation=0.2, save_fit_results=False)
    out = models_of(step.run(make_library(models)))
    status = {m.meta.filename: m.meta.cal_step.tweakreg for m in out}
    assert status.pop(bad.meta.filename) == "FAILED"
    assert set(status.values()) == {"COMPLETE"}
    # Its WCS is its input's; the others are registered (a dither's term is shared by its
    # detectors, so the bad image's neighbours in that exposure are aligned too).
    after = _center_offsets(out, v["visit"])
    for det in ("nrca1", "nrca3", "nrcb2", "nrcb4"):
        idx = [i for i, im in enumerate(v["visit"].images) if im.detector == det and i != 4]
        assert np.ptp(after[idx], axis=0).max() < 5, det


@pytest.mark.parametrize("group_by", ["detector", "exposure"])
def test_relative_only_brings_dithers_together(builtin_visit, group_by):
    """Without abs_refcat: the dithers of each detector end up registered to each other."""
    v = builtin_visit
    before = _center_offsets([im.model for im in v["visit"].images], v["visit"])
    step = CeersTweakRegStep(group_by=group_by, minobj=8, tolerance=0.1, separation=0.2,
                             use2dhist=True, save_fit_results=False)
    out = models_of(step.run(library_of(v["visit"])))
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out)
    # As in jwst, each run's reference image keeps its WCS (and SIP keywords) untouched.
    # detector: one reference per detector run; exposure: the 4 images of the first exposure.
    inputs = [im.model for im in v["visit"].images]
    refs = [m for m in out if m.meta.wcs.name != "FIT-REL"]
    assert len(refs) == 4
    for m in refs:
        m0 = next(i for i in inputs if i.meta.filename == m.meta.filename)
        assert m.meta.wcs(100.0, 200.0) == m0.meta.wcs(100.0, 200.0)
        assert m.meta.wcsinfo.instance == m0.meta.wcsinfo.instance
    after = _center_offsets(out, v["visit"])
    for det in ("nrca1", "nrca3", "nrcb2", "nrcb4"):
        idx = [i for i, im in enumerate(v["visit"].images) if im.detector == det]
        spread_before = np.ptp(before[idx], axis=0).max()
        spread_after = np.ptp(after[idx], axis=0).max()
        # ~20-30 sources per 1024x1024 image: ~1-2 mas per relative fit; a failed fit leaves 20-40.
        assert spread_before > 15 and spread_after < 5, (det, spread_before, spread_after)
