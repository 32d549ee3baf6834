"""The reports' residual-distortion section (issue 32), from a DistortionFit made by hand."""

import re

import numpy as np

from ceers_steps.core.distortion import TERMS, DetectorDistortion
from ceers_steps.fitting.distortion import MAP_CELLS, DistortionFit
from ceers_steps.report.distortion import (
    MIN_CELL_DETECTIONS,
    distortion_figure,
    distortion_section,
)
from ceers_steps.report.html import write_report, write_survey_index


def _fit(status="SUCCESS"):
    """nrca1 with a kept field of ~3 mas and its covariance; nrca2 none kept (too few sources)."""
    k = len(TERMS)
    rng = np.random.default_rng(5)
    coeffs = rng.normal(0.0, 0.1, (2, k))
    cov = np.diag(np.full(2 * k, 0.003**2))
    meta = {"visits": ["jw01345001001", "jw01345002001"], "filters": ["F200W"], "n_visits": 2,
            "n_sources": 412, "n_detections": 2471, "significant": True, "max_degree": 3}
    a1 = DetectorDistortion("nrca1", coeffs, cov=cov, pixel_scale=0.031, meta=meta)
    a2 = DetectorDistortion("nrca2", np.zeros((2, k)), cov=np.zeros((2 * k, 2 * k)),
                            pixel_scale=0.031,
                            meta={**meta, "n_sources": 31, "n_detections": 180,
                                  "significant": False, "max_degree": 0,
                                  "reason": "too few matched reference sources"})
    centres = (np.arange(MAP_CELLS) + 0.5) * 2048 / MAP_CELLS - 0.5
    gx, gy = (g.ravel() for g in np.meshgrid(centres, centres))
    field = 31.0 * np.column_stack(a1.offset(gx, gy))
    n = np.full(MAP_CELLS**2, 40)
    n[:3] = [0, 2, MIN_CELL_DETECTIONS - 1]  # an empty cell and two thin ones
    before = field + rng.normal(0, 0.3, field.shape)
    before[0] = np.nan
    maps = {"nrca1": {"x": gx, "y": gy, "before": before, "after": before - field, "n": n},
            "nrca2": {"x": gx, "y": gy, "before": rng.normal(0, 0.5, (MAP_CELLS**2, 2)),
                      "after": rng.normal(0, 0.5, (MAP_CELLS**2, 2)), "n": n}}
    return DistortionFit(distortions={"nrca1": a1, "nrca2": a2}, maps=maps,
                         iterations=[2.91, 0.21, 0.02], status=status)


def _cells(html, det):
    row = re.search(rf"<tr data-detector='{det}'>(.*?)</tr>", html).group(1)
    return re.findall(r"<td[^>]*>(.*?)</td>", row)


def test_section_table_figure_and_links(tmp_path):
    fit = _fit()
    folder = tmp_path / "distortion"
    paths = {d: folder / f"ceers_distortion_{d}.asdf" for d in fit.distortions}
    html = distortion_section(fit, paths=paths, base=tmp_path, scope="run")
    assert "id='distortion'" in html and "every visit report of the run" in html
    assert "jw01345001001, jw01345002001" in html and "F200W" in html
    (rx, ry), (ex, ey) = fit.distortions["nrca1"].rms_mas(), fit.distortions["nrca1"].rms_error_mas()
    assert 1.5 < rx < 10.0 and 0.0 < ex < 1.0
    cells = _cells(html, "nrca1")
    assert cells[1:3] == [f"{rx:.2f} ± {ex:.2f}", f"{ry:.2f} ± {ey:.2f}"]
    assert cells[3:7] == ["3", "412", "2471", "2"]
    assert "href='distortion/ceers_distortion_nrca1.asdf'" in cells[7]
    assert cells[8] == ""
    cells = _cells(html, "nrca2")
    assert cells[1:4] == ["0", "0", "none"]  # a zero field, not a measured 0.00 +- 0.00
    assert cells[8] == "too few matched reference sources"
    assert "2.910, 0.210, 0.020" in html and "3 rounds" in html
    assert html.count("data:image/png;base64,") == 1
    assert "id='distortion-status'" not in html


def test_failed_fit_says_why_without_table():
    fit = DistortionFit(status="FAILED: no visit with a reference catalog")
    html = distortion_section(fit)
    assert "Not fitted: FAILED: no visit with a reference catalog" in html
    assert "distortion-table" not in html and "base64" not in html
    assert "No distortion file was written" in html
    assert distortion_section(None) == ""


def test_figure_panels_and_reference_arrow():
    fit = _fit()
    fig = distortion_figure(fit.distortions, fit.maps)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert len(titles) == 6
    assert titles[0].startswith("nrca1 before") and titles[2].startswith("nrca1 fitted field")
    assert titles[5] == "nrca2 fitted field\nnone kept"
    # Before the field, nrca1's cells ask for about the field; after it, for noise.
    rms = [float(v) for t in titles[:2] for v in re.findall(r"[\d.]+(?= mas|,)", t)]
    assert min(rms[:2]) > 1.0 and max(rms[2:]) < 1.0
    # Cells with fewer than MIN_CELL_DETECTIONS detections are not drawn, only greyed.
    quiver = [c for c in fig.axes[0].collections if hasattr(c, "U")][0]
    assert len(quiver.U) == MAP_CELLS**2 - 3
    assert len(fig.axes[0].patches) == 2
    from matplotlib.quiver import QuiverKey

    keys = [a.text.get_text() for ax in fig.axes for a in ax.artists if isinstance(a, QuiverKey)]
    assert len(keys) == 6
    assert keys and all(k == keys[0] and k.endswith(" mas") for k in keys)
    # Without maps (the survey index, from the files): the fitted fields only.
    fig = distortion_figure(fit.distortions)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes if ax.axison] == [
        "nrca1 fitted field", "nrca2 fitted field"]


def test_write_report_and_index_carry_the_section_only_when_given(tmp_path):
    from astropy.table import Table

    section = distortion_section(_fit(), scope="run")
    table = Table(names=("image", "stage", "status", "fit_status", "nmatch", "rmse",
                         "err_center", "err_corner", "holdout_err", "holdout_sigma",
                         "holdout_n"),
                  dtype=(str, str, str, str, int, float, float, float, float, float, int))
    table.meta["visit_filter"] = "jw01345001001_f200w"
    for given, name in ((section, "with.html"), (None, "without.html")):
        path = write_report(tmp_path / name, table, [], [], distortion=given)
        text = path.read_text()
        assert ("id='distortion'" in text) == (given is not None)
    summary = Table(names=("visit", "filter", "status", "rmse", "err_corner"),
                    dtype=(str, str, str, float, float))
    index = distortion_section(distortions=_fit().distortions, scope="survey")
    assert "maps before and after are in the visit reports" in index
    for given, name in ((index, "index_with.html"), (None, "index_without.html")):
        text = write_survey_index(tmp_path / name, [], summary, distortion=given).read_text()
        assert ("distortion-table" in text) == (given is not None)
