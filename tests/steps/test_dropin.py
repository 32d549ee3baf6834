"""CeersTweakRegStep as a drop-in for jwst's TweakRegStep: parameters, catalogs, statuses,
CEERS' own call, results in tweakwcs' frame, named catalogs."""

import json
import shutil

import numpy as np
import pytest
from astropy.table import Table
from conftest import accuracy, library_of, models_of

from ceers_steps import CatalogStep, CeersTweakRegStep
from ceers_steps.core.logs import AllImagesFailedError
from ceers_steps.stages.jwstpars import IGNORED, MAPPED, choose_catalogs, detection_parameters

VISIT_FILTER = "jw01345001001_f200w"


def _gaia_name():
    from ceers_steps.core.compat import named_refcats

    names = named_refcats(["GAIADR3"])
    return "GAIADR3" if "GAIADR3" in names else names[0]


#: The newest Gaia release the running jwst fetches by name (GAIADR2 before jwst 1.10).
GAIA_NAME = _gaia_name()


# --- parameters ------------------------------------------------------------------------------

def test_every_jwst_parameter_is_accepted_with_jwst_values():
    """A jwst TweakRegStep parameter set (all of them, jwst's defaults) configures our step."""
    from jwst.tweakreg.tweakreg_step import TweakRegStep

    pars = TweakRegStep().get_pars()
    step = CeersTweakRegStep(**pars)
    for name, value in pars.items():
        assert getattr(step, name) == value, name
    # Every jwst star-finder parameter is either mapped onto SEP or documented as ignored.
    finder = {"starfinder", "snr_threshold", "kernel_fwhm", "bkg_boxsize", "minsep_fwhm",
              "sigma_radius", "sharplo", "sharphi", "roundlo", "roundhi", "brightest", "peakmax",
              "npixels", "connectivity", "nlevels", "contrast", "multithresh_mode",
              "localbkg_width", "apermask_method", "kron_params", "deblend"}
    assert finder <= set(MAPPED) | set(IGNORED)


def test_star_finder_parameters_set_our_detection():
    step = CeersTweakRegStep(snr_threshold=7.5, kernel_fwhm=2.5, bkg_boxsize=64, npixels=9,
                             nlevels=16, contrast=0.01, brightest=50, peakmax=1e4)
    p = detection_parameters(step)
    assert (p.detect_thresh, p.kernel, p.back_size, p.detect_minarea) == (7.5, "gauss_2.5_5x5", 64, 9)
    assert (p.deblend_nthresh, p.deblend_cont, p.brightest, p.peak_max) == (16, 0.01, 50, 1e4)
    assert detection_parameters(CeersTweakRegStep(deblend=False)).deblend_cont == 1.0
    # Left unset: the CEERS recipe.
    ceers = detection_parameters(CeersTweakRegStep())
    assert (ceers.detect_thresh, ceers.kernel, ceers.back_size) == (4.0, "default", 128)


def test_brightest_keeps_the_brightest(builtin_visit):
    model = builtin_visit["visit"].images[0].model
    step = CeersTweakRegStep()
    everything = step._find_sources(model)
    step.brightest = 10
    ten = step._find_sources(model)
    assert len(everything) > 20 and len(ten) == 10
    assert np.min(ten["flux"]) >= np.sort(everything["flux"])[-10] - 1e-9


# --- catalog precedence (jwst 3.x, exactly) ----------------------------------------------------

@pytest.mark.parametrize("custom", [True, False])
@pytest.mark.parametrize("meta", ["no_meta", "cat_in_meta", "empty_meta"])
@pytest.mark.parametrize("asn", ["no_cat_in_asn", "cat_in_asn", "empty_asn_entry"])
@pytest.mark.parametrize("catfile", ["no_catfile", "valid_catfile", "invalid_catfile",
                                     "empty_catfile_row"])
def test_catalog_precedence_is_jwsts(catfile, asn, meta, custom, tmp_path):
    """The 72 combinations of jwst's own custom-catalog test, checked on the catalog chosen
    for the first image (jwst's test can only see the second one's)."""
    from ceers_steps.stages.jwstpars import parse_catfile

    cat = str(tmp_path / "custom.ecsv")
    member = {"expname": "a.fits"}
    if asn == "cat_in_asn":
        member["tweakreg_catalog"] = "custom.ecsv"
    elif asn == "empty_asn_entry":
        member["tweakreg_catalog"] = ""
    meta_cat = {"no_meta": None, "cat_in_meta": cat, "empty_meta": ""}[meta]
    catfile_map = None
    if catfile != "no_catfile":
        path = tmp_path / "catfile.txt"
        path.write_text({"valid_catfile": "a.fits custom.ecsv", "invalid_catfile": "",
                         "empty_catfile_row": "a.fits"}[catfile])
        catfile_map = parse_catfile(path)
    chosen = choose_catalogs([("a.fits", member, meta_cat, None), ("b.fits", {"expname": "b.fits"},
                                                                   None, None)],
                             custom, catfile_map, asn_dir=tmp_path)
    expect_custom = custom and (catfile == "valid_catfile" or (catfile == "no_catfile" and (
        asn == "cat_in_asn" or (asn == "no_cat_in_asn" and meta == "cat_in_meta"))))
    assert chosen[0] == (cat if expect_custom else None)
    assert chosen[1] is None


def test_use_custom_catalogs_false_detects(small_visit_dir, tmp_path):
    """jwst's switch: with it off, the association's catalogs are not read."""
    CatalogStep.call(str(small_visit_dir["asn"]), output_dir=str(tmp_path / "cats"))
    asn = tmp_path / "cats" / "asn_cat_asn.json"
    data = json.loads(asn.read_text())
    for member in data["products"][0]["members"]:
        member["tweakreg_catalog"] = "does_not_exist.ecsv"
    asn.write_text(json.dumps(data))
    with pytest.raises(AllImagesFailedError, match="does_not_exist"):
        CeersTweakRegStep.call(str(asn), minobj=8, save_fit_results=False, n_jobs=1)
    out = models_of(CeersTweakRegStep.call(str(asn), use_custom_catalogs=False, minobj=8,
                                           save_fit_results=False, n_jobs=1))
    assert [m.meta.cal_step.tweakreg for m in out] == ["COMPLETE"] * 4


# --- statuses ---------------------------------------------------------------------------------

def test_one_exposure_without_refcat_is_failed_as_in_jwst(builtin_visit, caplog):
    v = builtin_visit["visit"]
    first = [i for i, im in enumerate(v.images) if im.model.meta.observation.exposure_number
             == v.images[0].model.meta.observation.exposure_number]
    out = models_of(CeersTweakRegStep.call(library_of(v, first), save_fit_results=False))
    assert "At least two exposures are required for image alignment" in caplog.text
    assert [m.meta.cal_step.tweakreg for m in out] == ["FAILED"] * len(first)
    for m, i in zip(out, first, strict=True):
        assert m.meta.wcs(10.0, 20.0) == v.images[i].model.meta.wcs(10.0, 20.0)


# --- CEERS' run_tweakreg.py, class swapped ---------------------------------------------------

# CEERS' nircam1 f200w section, except minobj (20 -> 8: these frames are 1024^2, a quarter of
# NIRCam's) and the absolute fit geometry of SW visits (rshift).
CEERS_CFG = dict(kernel_fwhm=1.5, snr_threshold=2.5, minobj=8, searchrad=1.0, separation=0.1,
                 tolerance=0.05, nclip=1, sigma=0.6, abs_minobj=8, abs_searchrad=1.0,
                 abs_separation=0.5, abs_tolerance=0.4, abs_fitgeometry="rshift", abs_nclip=1,
                 abs_sigma=0.6)


def test_ceers_run_tweakreg_call_per_detector(small_visit_dir, tmp_path, monkeypatch):
    """CEERS' call, once per detector association, as run_tweakreg.py made it; the visit's
    results files end up with every detector's rows."""
    from jwst.tweakreg import tweakreg_step

    d = small_visit_dir
    work = tmp_path / "run"
    work.mkdir()
    cats = tmp_path / "cats"
    CatalogStep.call(str(d["asn"]), output_dir=str(cats))
    by_detector = {}
    for path in d["paths"]:
        shutil.copy(path, work / path.name)
        det = path.name.split("_")[3]
        by_detector.setdefault(det, []).append(path.name)
    (work / "tweakreg_log.cfg").write_text("[*]\nlevel = INFO\nhandler = stderr\n")
    monkeypatch.chdir(work)
    monkeypatch.setattr(tweakreg_step, "TweakRegStep", CeersTweakRegStep)  # the swap
    for det, names in by_detector.items():
        asn = work / f"{VISIT_FILTER}_{det}_asn.json"
        members = [{"expname": n, "exptype": "science",
                    "tweakreg_catalog": str(cats / n.replace(".fits", "_cat.ecsv"))}
                   for n in names]
        asn.write_text(json.dumps({"asn_type": "image3", "asn_id": "a3001", "asn_pool": "ceers",
                                   "products": [{"name": f"{VISIT_FILTER}_{det}",
                                                 "members": members}]}))
        # run_tweakreg.py, keyword for keyword (values from the cfg section).
        tweakreg_step.TweakRegStep.call(
            str(asn), save_catalogs=False, use_custom_catalogs=True, catalog_format="ecsv",
            kernel_fwhm=CEERS_CFG["kernel_fwhm"], snr_threshold=CEERS_CFG["snr_threshold"],
            enforce_user_order=True, expand_refcat=False, minobj=CEERS_CFG["minobj"],
            searchrad=CEERS_CFG["searchrad"], use2dhist=False,
            separation=CEERS_CFG["separation"], tolerance=CEERS_CFG["tolerance"],
            fitgeometry="shift", nclip=CEERS_CFG["nclip"], sigma=CEERS_CFG["sigma"],
            abs_refcat=str(d["refcat"]), abs_minobj=CEERS_CFG["abs_minobj"],
            abs_searchrad=CEERS_CFG["abs_searchrad"], abs_use2dhist=True,
            abs_separation=CEERS_CFG["abs_separation"], abs_tolerance=CEERS_CFG["abs_tolerance"],
            abs_fitgeometry=CEERS_CFG["abs_fitgeometry"], abs_nclip=CEERS_CFG["abs_nclip"],
            abs_sigma=CEERS_CFG["abs_sigma"], save_abs_catalog=False, save_results=True,
            logcfg="tweakreg_log.cfg")
    table = Table.read(work / f"{VISIT_FILTER}_tweakreg_results.ecsv")
    names = sorted(p.name for p in d["paths"])
    assert sorted(set(table["image"])) == names
    assert set(table[table["stage"] == "absolute"]["status"]) == {"COMPLETE"}
    text = (work / f"tweakreg_results_all.{VISIT_FILTER}.txt").read_text()
    for det in by_detector:
        assert f"{VISIT_FILTER}_{det}" in text  # each detector's absolute line
    assert text.count("Relative alignment:") == 4
    from ceers_steps.core.compat import datamodels

    out = [datamodels.open(work / p.name.replace("_cal", "_tweakreg")) for p in sorted(d["paths"])]
    visit = d["visit"]
    order = [sorted(p.name for p in d["paths"]).index(im.model.meta.filename)
             for im in visit.images]
    median, worst = accuracy([out[k] for k in order], visit)
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out)
    assert median < 10 and worst < 25, (median, worst)
    # The input files are untouched and nothing else was written beside them.
    assert sorted(p.name for p in work.glob("*_cal.fits")) == names


# --- results: NMATCH and shifts as tweakwcs reports them ------------------------------------

def test_joint_results_are_in_tweakwcs_frame(builtin_visit):
    """Joint-mode rows reproduce each image's correction in tweakwcs' frame, and agree with a
    tweakwcs (CEERS-mode) fit of the same visit, whose rows are tweakwcs' fit_info."""
    from ceers_steps.fitting.frames import correction_in_frame
    from ceers_steps.fitting.images import AlignImage
    from ceers_steps.fitting.parameters import AbsoluteParameters, RelativeParameters
    from ceers_steps.fitting.visit import align_visit
    from ceers_steps.io.grouping import image_key

    v = builtin_visit
    refcat = Table.read(v["refcat"])

    def images():
        out = []
        for im in v["visit"].images:
            m = im.model.copy()
            cat = Table.read(m.meta.tweakreg_catalog)
            out.append(AlignImage(name=m.meta.filename, model=m, key=image_key(m),
                                  catalog=Table({"x": cat["xcentroid"], "y": cat["ycentroid"]})))
        return out

    rel = RelativeParameters(tolerance=0.1, separation=0.2, use2dhist=True, minobj=10)
    joint = images()
    start = {im.name: im.model.meta.wcs for im in joint}
    rows = align_visit(joint, refcat, rel, AbsoluteParameters(minobj=10, fitgeometry="shift"))
    ceers = images()
    crows = align_visit(ceers, refcat, rel, AbsoluteParameters(group="detector", minobj=10,
                                                               fitgeometry="shift"))
    checked = 0
    for det in ("nrca1", "nrca3", "nrcb2", "nrcb4"):
        first = next(im for im in joint if im.key.detector == det)
        absolute = next(r for r in rows if r["stage"] == "absolute" and r["image"] == first.name)
        dither = next(r for r in rows if r["stage"] == "relative" and r["image"] == first.name)
        total = correction_in_frame(first, start[first.name], first.model.meta.wcs, "shift")
        # absolute (common + detector) + dither = the whole correction of the first image, to
        # 0.002 mas (the terms compose through a rotation of a few mdeg)
        assert absolute["xshift"] + dither["xshift"] == pytest.approx(total["xshift"], abs=2e-6)
        assert absolute["yshift"] + dither["yshift"] == pytest.approx(total["yshift"], abs=2e-6)
        # CEERS mode: the relative reference (first dither) carries the group's absolute fit.
        cabs = next(r for r in crows if r["stage"] == "absolute" and r["image"] == first.name)
        assert cabs["status"] == "SUCCESS"
        assert abs(cabs["xshift"] - total["xshift"]) < 0.01  # arcsec; shifts are ~0.1-0.5"
        assert abs(cabs["yshift"] - total["yshift"]) < 0.01
        assert np.hypot(total["xshift"], total["yshift"]) > 0.05
        checked += 1
    assert checked == 4


# --- named catalogs ---------------------------------------------------------------------------

def test_named_catalog_offline_is_a_clear_error(builtin_visit, monkeypatch):
    import requests

    from ceers_steps.core.compat import catalog_service

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Could not connect to the VO API server.")

    monkeypatch.setattr(catalog_service(), "get_catalog", offline)
    name = GAIA_NAME
    with pytest.raises(OSError, match=f"{name}.*could not be fetched.*catalog file"):
        CeersTweakRegStep.call(library_of(builtin_visit["visit"]), abs_refcat=name.lower(),
                               minobj=8, save_fit_results=False)


def test_named_catalog_is_fetched_around_the_visit(builtin_visit, monkeypatch):
    """GAIADR3 (jwst < 1.10: GAIADR2) goes to jwst's get_catalog, around the visit, at its epoch."""
    from ceers_steps.core.compat import catalog_service

    ref = Table.read(builtin_visit["refcat"])
    calls = []

    def service(ra, dec, epoch=None, search_radius=None, catalog=None, timeout=None):
        calls.append((ra, dec, epoch, search_radius, catalog))
        return Table({"ra": ref["RA"], "dec": ref["DEC"], "mag": np.full(len(ref), 20.0)})

    monkeypatch.setattr(catalog_service(), "get_catalog", service)
    v = builtin_visit["visit"]
    out = models_of(CeersTweakRegStep.call(library_of(v), abs_refcat=GAIA_NAME, minobj=8,
                                           abs_minobj=8, save_fit_results=False))
    assert len(calls) == 1 and calls[0][4] == GAIA_NAME
    ra, dec = v.images[0].model.meta.wcs(511.5, 511.5)
    assert abs(calls[0][0] - ra) < 0.1 and abs(calls[0][1] - dec) < 0.1
    assert 0.02 < calls[0][3] < 0.2 and calls[0][2] > 2020
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out)
    assert all(m.meta.wcs.name == f"FIT-LVL3-{GAIA_NAME}" for m in out)
    median, _ = accuracy(out, v)
    assert median < 10


# --- our own detection on realistic frames, in memory: one image's failure is its own --------

def test_in_memory_detection_failures_stay_per_image(tmp_path):
    """Models without catalogs are detected through `_find_sources` (realistic frames: hot
    pixels, cosmic rays, snowballs, 1/f, saturated stars, NaN borders); an all-NaN frame and a
    detection that raises fail only their own image."""
    from ceers_steps.synthetic import make_visit

    v = make_visit(detectors=("nrca1", "nrca3"), n_dithers=3, shape=(1024, 1024), noise=0.03,
                   use_real=False, seed=4, artifacts=True)
    refcat = tmp_path / "refcat.ecsv"
    v.refcat.write(refcat)
    models = [im.model.copy() for im in v.images]
    models[1].data[:] = np.nan
    broken = models[4].meta.filename

    class Step(CeersTweakRegStep):
        def _find_sources(self, image_model):
            if image_model.meta.filename == broken:
                raise RuntimeError("SEP extraction failed: internal pixel buffer full")
            return super()._find_sources(image_model)

    from ceers_steps.core.compat import make_library

    out = models_of(Step.call(make_library(models), abs_refcat=str(refcat), minobj=8,
                              abs_minobj=8, save_fit_results=False, use_custom_catalogs=False))
    status = {m.meta.filename: m.meta.cal_step.tweakreg for m in out}
    assert status.pop(models[1].meta.filename) == "FAILED"
    assert status.pop(broken) == "FAILED"
    assert set(status.values()) == {"COMPLETE"}
    good = [i for i, m in enumerate(out) if m.meta.cal_step.tweakreg == "COMPLETE"]
    median, worst = accuracy([out[i] for i in good], v, subset=good)
    assert median < 5 and worst < 15, (median, worst)
