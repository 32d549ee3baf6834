"""The alignment report: grades, fitted terms, DS9 regions, and the page in a real browser."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from conftest import _visit_with_catalogs, library_of, models_of

from ceers_steps import CeersTweakRegStep
from ceers_steps.core.compat import make_library
from ceers_steps.core.wcs_utils import alignment_accuracy
from ceers_steps.report.html import final_rows

VF = "jw01345001001_f200w"
ARTIFACTS = Path(os.environ.get("CEERS_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))


def _rows(html):
    """Image -> {column: (text, data-value)} of the report's image table."""
    out = {}
    for m in re.finditer(r"<tr data-image='([^']+)'>(.*?)</tr>", html, re.S):
        cells = {}
        for c in re.finditer(r"<td[^>]*data-col='(\w+)'(?: data-value='([^']*)')?[^>]*>(.*?)</td>",
                             m.group(2).replace('"', "'")):
            cells[c.group(1)] = (c.group(3), c.group(2))
        out[m.group(1)] = cells
    return out


def _grades(html):
    return {name: cells["grade"][0] for name, cells in _rows(html).items()}


def _run(visit, refcat, out, **kwargs):
    step = CeersTweakRegStep(abs_refcat=str(refcat), output_dir=str(out), **kwargs)
    step.run(library_of(visit))
    return step


def test_misaligned_image_is_graded_poor_the_others_good(builtin_visit, tmp_path):
    """
    One image's catalog shifted 50 mas: that image is poor, every other image good.

    (Only a model whose dither terms are shared by the detectors can tell: a per-detector
    relative fit, as in ``abs_group`` visit or detector, takes the shift for a dither error.)
    """
    v = builtin_visit
    bad = v["visit"].images[4]
    cat = Table.read(bad.model.meta.tweakreg_catalog)
    cat["xcentroid"] += 0.050 / 0.031  # 50 mas along x (SW pixels are 31 mas)
    path = tmp_path / "shifted_cat.ecsv"
    cat.write(path)
    models = models_of(library_of(v["visit"]))
    models[4].meta.tweakreg_catalog = str(path)
    step = CeersTweakRegStep(abs_refcat=str(v["refcat"]), output_dir=str(tmp_path),
                             save_report=True)
    step.run(make_library(models))
    html = (tmp_path / f"{VF}_alignment_report.html").read_text()
    grades = _grades(html)
    assert len(grades) == 12
    assert grades.pop(bad.model.meta.filename) == "poor"
    assert set(grades.values()) == {"good"}, grades


@pytest.fixture(scope="module")
def detector_offset_visit(tmp_path_factory):
    """The builtin geometry with 40 mas rms detector placement errors."""
    return _visit_with_catalogs(tmp_path_factory, "detector_offsets",
                                detectors=("nrca1", "nrca3", "nrcb2", "nrcb4"), n_dithers=3,
                                shape=(1024, 1024), noise=0.03, use_real=False, seed=4,
                                detector_error=0.04)


def test_detector_offsets_show_in_the_detector_terms(detector_offset_visit, tmp_path):
    """The report's detector terms (and the ECSV's fit_terms) recover the injected offsets."""
    v = detector_offset_visit
    _run(v["visit"], v["refcat"], tmp_path, save_report=True)
    table = Table.read(tmp_path / f"{VF}_tweakreg_results.ecsv")
    terms = {t["id"]: t for t in table.meta["fit_terms"]["detectors"]}
    error = v["visit"].truth["detector_shift"]  # injected WCS errors, arcsec (x west, y north)
    mean = np.mean(list(error.values()), axis=0)
    html = (tmp_path / f"{VF}_alignment_report.html").read_text()
    section = html[html.index("id='detectors-terms'"):]
    for det, e in error.items():
        t = terms[det]
        assert t["fitted"]
        # The correction undoes the error: east = -(x correction) = x error; north = -(y error).
        want_east, want_north = 1e3 * (e[0] - mean[0]), -1e3 * (e[1] - mean[1])
        assert abs(t["east"] - want_east) < 4 * t["err_east"] + 1.0, (det, t, want_east)
        assert abs(t["north"] - want_north) < 4 * t["err_north"] + 1.0, (det, t, want_north)
        assert 1 < t["err_east"] < 10
        row = re.search(rf"<td class='text'>{det}</td><td data-col=\"east\" data-value=\"([^\"]+)\"",
                        section)
        assert row and float(row.group(1)) == t["east"]
    assert "<td>yes</td>" in section


@pytest.fixture(scope="module")
def turned_module_visit(tmp_path_factory):
    """The builtin geometry with NIRCam's modules turned against each other by 120 arcsec."""
    turn = {"nrca1": 60.0, "nrca3": 60.0, "nrcb2": -60.0, "nrcb4": -60.0}
    return _visit_with_catalogs(tmp_path_factory, "turned_modules", detectors=tuple(turn),
                                n_dithers=3, use_real=False, seed=5, detector_rotation=turn)


def test_turned_modules_show_in_the_detector_terms(turned_module_visit, tmp_path):
    """Each detector's own rotation is found, undone, and shown with its uncertainty."""
    v = turned_module_visit
    step = CeersTweakRegStep(abs_refcat=str(v["refcat"]), output_dir=str(tmp_path),
                             save_report=True)
    models = models_of(step.run(library_of(v["visit"])))
    median, worst = alignment_accuracy(models, [im.true_wcs for im in v["visit"].images])
    # Measured: 2.3 / 4.2 mas; one common rotation (the fit without the detectors' own
    # terms) leaves 8.2 / 15.4 mas.
    assert median < 3.5 and worst < 6.5, (median, worst)
    table = Table.read(tmp_path / f"{VF}_tweakreg_results.ecsv")
    terms = {t["id"]: t for t in table.meta["fit_terms"]["detectors"]}
    for det, turn in v["visit"].truth["detector_rotation"].items():
        t = terms[det]
        assert t["rotated"] and t["fitted"]
        # The correction undoes the error (the turns sum to zero here).
        assert abs(t["rotation"] + turn) < 4 * t["err_rotation"] + 2.0, (det, t)
        assert 0.5 < t["err_rotation"] < 15
    html = (tmp_path / f"{VF}_alignment_report.html").read_text()
    section = html[html.index("id='detectors-terms'"):]
    assert "own rotation (arcsec)" in section[:section.index("</tr>")]
    # Switched off, the model is the common one: the turns stay in the images.
    off = tmp_path / "off"
    step = CeersTweakRegStep(abs_refcat=str(v["refcat"]), output_dir=str(off),
                             abs_detector_rotations=False)
    models = models_of(step.run(library_of(v["visit"])))
    assert alignment_accuracy(models, [im.true_wcs for im in v["visit"].images])[1] > 10.0
    table = Table.read(off / f"{VF}_tweakreg_results.ecsv")
    assert not any(t["rotated"] for t in table.meta["fit_terms"]["detectors"])


def test_report_off_writes_nothing(builtin_visit, tmp_path):
    """The bare step writes no report by default (as jwst's step), nor with save_report off."""
    v = builtin_visit
    for out, kwargs in ((tmp_path / "default", {}), (tmp_path / "off", {"save_report": False})):
        step = _run(v["visit"], v["refcat"], out, **kwargs)
        assert step.report_paths == {}
        assert sorted(p.name for p in out.iterdir()) == [
            f"{VF}_tweakreg_results.ecsv", f"tweakreg_results_all.{VF}.txt"]


def test_ds9_regions_mark_each_source(builtin_visit, tmp_path):
    """One region file per image, 1-based image coordinates, one entry per catalog source."""
    v = builtin_visit
    _run(v["visit"], v["refcat"], tmp_path, save_report=True)
    html = (tmp_path / f"{VF}_alignment_report.html").read_text()
    rows = _rows(html)
    for im in v["visit"].images:
        name = im.model.meta.filename
        reg = tmp_path / f"{VF}_regions" / name.replace(".fits", ".reg")
        assert f"href='{VF}_regions/{reg.name}'" in html
        lines = reg.read_text().splitlines()
        assert lines[0] == "# Region file format: DS9 version 4.1" and lines[3] == "image"
        shapes = lines[4:]
        cat = Table.read(im.model.meta.tweakreg_catalog)
        on = ((cat["xcentroid"] > -0.5) & (cat["xcentroid"] < 1023.5)
              & (cat["ycentroid"] > -0.5) & (cat["ycentroid"] < 1023.5))
        assert len(shapes) == int(on.sum())
        xy = np.array([[float(a) for a in re.match(r"\w+\(([^,]+),([^,)]+)", s).groups()]
                       for s in shapes])
        # DS9 counts pixels from 1: the first pixel's centre is (1, 1).
        np.testing.assert_allclose(xy - 1.0, np.column_stack([cat["xcentroid"][on],
                                                              cat["ycentroid"][on]]), atol=1e-3)
        matched = sum("tag={matched}" in s for s in shapes)
        assert matched == int(rows[name]["own_matches"][0])
        assert matched >= 5


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1100,1400"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_report_in_a_real_browser(small_visit_dir, tmp_path, capsys):
    """
    ``ceers-align`` ends its console summary with the report; the page opens offline in
    headless Chromium, every figure loads, and its numbers are the results ECSV's.
    A screenshot is saved as a test artifact.
    """
    from selenium.webdriver.common.by import By

    from ceers_steps.cli.commands import align_main

    v = small_visit_dir
    out = tmp_path / "out"
    code = align_main([VF.split("_")[0], "f200w", "--input-dir", str(v["dir"]), "--output-dir",
                       str(out), "--abs-refcat", str(v["refcat"]), "--n-jobs", "1"])
    assert code == 0
    report = out / f"{VF}_alignment_report.html"
    lines = capsys.readouterr().out.strip().splitlines()
    # The report is named on the console; the run's summary table follows it.
    assert f"ceers-align: report {report} (open it in a browser)" in lines
    table = Table.read(out / f"{VF}_tweakreg_results.ecsv")
    final = final_rows(table)

    driver = _browser()
    try:
        driver.get(report.as_uri())
        assert driver.title == f"{VF} alignment report"
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 5
        for img in images:
            assert driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 300", img), \
                img.get_attribute("alt")
        assert driver.find_element(By.ID, "n-images").text == str(len(final))
        ok = [1e3 * r["rmse"] for r in final.values() if r["fit_status"] == "SUCCESS"]
        median = driver.find_element(By.ID, "median-rmse")
        assert float(median.get_attribute("data-value")) == pytest.approx(np.median(ok), abs=1e-9)
        assert median.text == f"{np.median(ok):.2f} mas"
        shown = driver.find_elements(By.CSS_SELECTOR, "tr[data-image]")
        assert {r.get_attribute("data-image") for r in shown} == set(final)
        for r in shown:
            row = final[r.get_attribute("data-image")]

            def cell(col, r=r):
                return r.find_element(By.CSS_SELECTOR, f"td[data-col='{col}']")

            assert cell("status").text == row["status"]
            assert cell("nmatch").text == str(row["nmatch"])
            for col, value in (("rmse", 1e3 * row["rmse"]), ("err_center", row["err_center"]),
                               ("err_corner", row["err_corner"])):
                assert cell(col).text == f"{value:.2f}"
                assert float(cell(col).get_attribute("data-value")) == value
            assert cell("grade").text in ("good", "check", "poor")
        # jwst's star-finder parameters that did nothing are not in the parameters table.
        listed = {r.find_elements(By.TAG_NAME, "td")[0].text
                  for r in driver.find_elements(By.CSS_SELECTOR, "#parameters tr")}
        assert "minobj" in listed and not listed & {"starfinder", "sharplo", "roundhi"}
        assert "sharplo" in driver.find_element(By.ID, "parameters-not-used").text
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1100, height)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "alignment_report.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 50_000

        # 800 px wide: the page does not run off the window, and every column of every
        # table can be brought into view (wide tables scroll sideways inside the page).
        driver.set_window_size(800, 1000)
        width = driver.execute_script("return window.innerWidth")
        assert width <= 800
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width
        for table in driver.find_elements(By.TAG_NAME, "table"):
            for th in table.find_elements(By.CSS_SELECTOR, "tr:first-child > *"):
                left, right = driver.execute_script(
                    "const c = arguments[0];"
                    "c.scrollIntoView({block: 'nearest', inline: 'nearest'});"
                    "const r = c.getBoundingClientRect(); return [r.left, r.right];", th)
                assert left >= -0.5 and right <= width + 0.5, (table.get_attribute("id"), th.text,
                                                               left, right, width)
            driver.execute_script("arguments[0].scrollLeft = 0", table)
        assert driver.execute_script("return window.scrollX") == 0
        driver.execute_script("window.scrollTo(0, 0)")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(800, height)
        shot = ARTIFACTS / "alignment_report_800px.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 50_000
    finally:
        driver.quit()


def test_terms_not_fitted_and_idle_parameters_are_said_so():
    """Terms the fit left out read "not fitted" (not 0.00); jwst finder parameters that did
    nothing are named below the parameters table, not listed in it."""
    from ceers_steps.report.html import _parameters_html, _terms_html

    zero = {"east": 0.0, "north": 0.0, "err_east": 0.0, "err_north": 0.0}
    terms = {"common": {"east": 3.2, "north": -1.1, "err_east": 0.4, "err_north": 0.4,
                        "rotation": 1e-4, "err_rotation": 2e-5, "scale": 1.0, "err_scale": 0.0},
             "dithers": [{"id": "jw01345001001_02201_00001", **zero}],
             "detectors": [{"id": "nrca1", **zero, "fitted": False},
                           {"id": "nrca3", "east": 1.5, "north": -0.7, "err_east": 0.3,
                            "err_north": 0.3, "fitted": True}]}
    html = _terms_html(terms)
    rows = {m.group(1): m.group(2) for m in re.finditer(r"<tr><td class='text'>([^<]+)</td>(.*?)</tr>",
                                                        html)}
    assert "not fitted" in rows["scale"] and "not fitted" not in rows["rotation (deg)"]
    assert "not fitted" in rows["nrca1"] and "0.00" not in rows["nrca1"]
    assert "not fitted" not in rows["nrca3"] and "1.50" in rows["nrca3"]
    pars = {"minobj": 20, "starfinder": "iraf", "sharplo": 0.5, "roundhi": 0.5,
            "snr_threshold": None, "kernel_fwhm": 2.0}
    html = _parameters_html(pars)
    table, note = html.split("</table>")
    assert "minobj" in table and "kernel_fwhm" in table
    assert "starfinder" not in table and "sharplo" not in table and "snr_threshold" not in table
    assert "roundhi</td><td class='text'>0.5 (not used" in table  # set away from jwst's 0.2
    assert "starfinder, sharplo, snr_threshold" in note


def test_relative_only_report(builtin_visit, tmp_path):
    """Without a reference: residuals against the other exposures' sources, the dither terms."""
    v = builtin_visit
    step = CeersTweakRegStep(output_dir=str(tmp_path), save_report=True, minobj=8,
                             tolerance=0.1, separation=0.2)
    step.run(library_of(v["visit"]))
    html = (tmp_path / f"{VF}_alignment_report.html").read_text()
    assert "none: relative alignment" in html
    assert "id='common-terms'" not in html and "id='dithers-terms'" in html
    grades = _grades(html)
    assert len(grades) == 12 and set(grades.values()) == {"good"}, grades
    # Dithers registered to each other: image-to-image residuals of ~1 mas, not ~10.
    after = [float(c["rms_after"][1]) for c in _rows(html).values()]
    assert np.median(after) < 3.0


def test_nothing_aligned_still_reported(builtin_visit, tmp_path):
    """A reference catalog off the field: every image poor, with the reason; no crash."""
    v = builtin_visit
    far = Table.read(v["refcat"])
    far["DEC"] -= 2.0
    far.write(tmp_path / "far.ecsv")
    _run(v["visit"], tmp_path / "far.ecsv", tmp_path / "out", save_report=True)
    html = (tmp_path / "out" / f"{VF}_alignment_report.html").read_text()
    rows = _rows(html)
    assert len(rows) == 12
    assert {c["grade"][0] for c in rows.values()} == {"poor"}
    assert all("not aligned" in re.search(r"class='reason'>([^<]*)", html[html.index(name):])
               .group(1) for name in rows)


def test_rms_bars_of_200_images_have_readable_labels():
    """200 images: every bar keeps its label, and rotated labels never overlap the next."""
    from types import SimpleNamespace

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ceers_steps.report.html import _png, _rms_bars, _short

    names = [f"jw01345001001_02201_{d:05d}_{det}_cal.fits" for d in range(1, 26)
             for det in ("nrca1", "nrca2", "nrca3", "nrca4", "nrcb1", "nrcb2", "nrcb3", "nrcb4")]
    assert len(names) == 200
    residuals = [SimpleNamespace(name=n, rms=lambda which, k=k: 5.0 + k % 7 if which == "after"
                                 else 40.0) for k, n in enumerate(names)]
    grades = [SimpleNamespace(grade=("good", "check", "poor")[k % 3]) for k in range(200)]
    fig = _rms_bars(residuals, grades)
    FigureCanvasAgg(fig).draw()
    labels = []
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticklabels() if t.get_text()]
        labels += [t.get_text() for t in ticks]
        x = ax.transData.transform([(tick, 0) for tick in ax.get_xticks()[: len(ticks)]])[:, 0]
        height_px = ticks[0].get_fontsize() * fig.dpi / 72.0
        rotation = np.deg2rad(ticks[0].get_rotation())
        # the distance between the baselines of two neighbouring rotated labels
        assert np.min(np.diff(x)) * np.sin(rotation) >= 1.2 * height_px, \
            f"labels {np.min(np.diff(x)):.1f} px apart overlap"
    assert labels == [_short(n) for n in names]
    assert fig.get_size_inches()[1] < 20  # rows, not a poster
    _png(fig)


def _residuals(name, refs, rng, offset=(0.0, 0.0)):
    """An aligned image's matched residuals (mas) to the reference sources ``refs``."""
    from ceers_steps.report.diagnostics import ImageResiduals

    n = len(refs)
    after = rng.normal(0, 10, (n, 2)) + np.asarray(offset)
    return ImageResiduals(name=name, detector="nrca1", exposure="1", status="COMPLETE",
                          ref=np.asarray(refs), before=after + 300.0, after=after,
                          flag=np.full(n, "matched"))


def test_grades_need_the_holdout_and_enough_reference_sources():
    """
    Good needs both: an image whose held-out error is beyond 2.5x its err_center is
    check (the reason says so); a visit whose uncertainty rests on fewer than 30
    reference sources is check; otherwise good.
    """
    from ceers_steps.report.diagnostics import grade_images

    rng = np.random.default_rng(3)
    many = [_residuals(f"im{i}", np.arange(40) + 40 * i, rng) for i in range(3)]
    held = {"im0": (0.9, 2.0, 0.8, 40), "im1": (4.0, 2.0, 0.8, 40), "im2": (1.9, 2.0, 0.8, 40)}
    grades = {g.name: g for g in grade_images(many, holdout=held)}
    assert grades["im0"].grade == "good" and grades["im2"].grade == "good"
    assert grades["im1"].grade == "check"
    assert "held-out error 4.0 mas (40 of its sources held out), 5.0x the model's 0.8 mas" in \
        grades["im1"].reason
    few = [_residuals(f"im{i}", np.arange(8) + 4 * i, rng) for i in range(3)]  # 16 sources
    grades = grade_images(few, holdout={f"im{i}": (0.9, 2.0, 0.8, 8) for i in range(3)})
    assert {g.grade for g in grades} == {"check"}
    assert all("uncertainty from only 16 reference sources" in g.reason for g in grades)
    # Without a joint fit's hold-out (tweakwcs modes) the count does not apply.
    assert {g.grade for g in grade_images(few)} == {"good"}
