"""Cross-filter consistency: the filters of a visit compared on the sky after alignment."""

import re

import asdf
import numpy as np
import pytest
from astropy.table import Table

from ceers_steps.core.wcs_utils import tangent_plane, world_to_pixel_exact
from ceers_steps.report.crossfilter import (
    cross_filter_offsets,
    match_sources,
    merge_detections,
    robust_offset,
    worst_offsets,
)
from ceers_steps.report.html import MIN_HOLDOUT_SOURCES
from ceers_steps.synthetic.visits import _DITHERS, apply_correction, nircam_like_wcs

SHAPE = (1024, 1024)  # the end-to-end visit's images
FULL = (2048, 2048)  # catalogs alone: the detectors' full fields, SW and LW overlapping
PUSH = 0.005  # arcsec: the push given to one filter's aligned WCS


def _pushed(wcs, wcsinfo, arcsec):
    """``wcs`` moved ``arcsec`` west in the tangent plane at its reference (an alignment off)."""
    ra, dec = wcsinfo["ra_ref"], wcsinfo["dec_ref"]
    return apply_correction(wcs, wcsinfo, np.eye(2), (arcsec, 0.0), tangent_plane(ra, dec))


def _catalogs(filters, seed=3, band_scatter=4.0, centroid_noise=2.0):
    """
    Catalogs of one visit in several filters, each image's detections through its aligned WCS.

    One sky (6000 sources over module A's SW and LW fields, ~500 a SW detector); each
    source's centroid differs between the bands by ``band_scatter`` mas per axis (colour,
    morphology), each detection by ``centroid_noise`` mas. ``filters``: name -> (detectors,
    push in arcsec): the filter's aligned WCS is its true WCS moved by that push.
    """
    rng = np.random.default_rng(seed)
    ra0, dec0 = nircam_like_wcs("nrcalong", shape=FULL)[0](1023.5, 1023.5,
                                                            with_bounding_box=False)
    n = 6000
    ra = ra0 + rng.uniform(-0.03, 0.03, n) / np.cos(np.deg2rad(dec0))
    dec = dec0 + rng.uniform(-0.03, 0.03, n)
    out = []
    for filt, (detectors, push) in filters.items():
        band = rng.normal(0.0, band_scatter, (n, 2)) / 3.6e6  # deg
        for det in detectors:
            for d in range(2):
                true, info = nircam_like_wcs(det, shape=FULL, dither=_DITHERS[d])
                x, y = world_to_pixel_exact(true, ra + band[:, 0] / np.cos(np.deg2rad(dec)),
                                            dec + band[:, 1])
                inside = (x > 5) & (x < FULL[1] - 6) & (y > 5) & (y < FULL[0] - 6)
                scale = 31.0 if "long" not in det else 63.0  # mas per pixel
                noise = rng.normal(0.0, centroid_noise / scale, (int(inside.sum()), 2))
                xy = np.column_stack([x[inside], y[inside]]) + noise
                aligned = _pushed(true, info, push) if push else true
                s_ra, s_dec = aligned(xy[:, 0], xy[:, 1], with_bounding_box=False)
                out.append({"visit": "jw01345001001", "filter": filt, "detector": det,
                            "ra": s_ra, "dec": s_dec})
    return out


@pytest.fixture(scope="module")
def three_filters():
    """F150W (nrca1, nrca2), F200W (the same, pushed 5 mas), F444W (nrcalong); 2 dithers."""
    cats = _catalogs({"f150w": (("nrca1", "nrca2"), 0.0), "f200w": (("nrca1", "nrca2"), PUSH),
                      "f444w": (("nrcalong",), 0.0)})
    return cross_filter_offsets(cats)


def _rows(table, a, b):
    return {str(r["detector"]): r for r in table if r["filter_a"] == a and r["filter_b"] == b}


def test_a_filter_pushed_5_mas_is_found_5_mas_off(three_filters):
    """Every detector of F200W, against F150W and against F444W: 5 +- 1.5 mas, west."""
    for a, b, sign in (("f150w", "f200w", 1.0), ("f200w", "f444w", -1.0)):
        rows = _rows(three_filters, a, b)
        assert set(rows) == {"nrca1", "nrca2", "all"}
        for det, row in rows.items():
            print(a, b, det, f"offset {row['offset_mas']:.2f} +- {row['offset_err_mas']:.2f} "
                  f"mas (east {row['dx_mas']:+.2f}, north {row['dy_mas']:+.2f}), n {row['n']}")
            assert abs(row["offset_mas"] - 5.0) < 1.5, (a, b, det, row)
            # Pushed west: east offset -5 mas for b = F200W, +5 for a = F200W.
            assert abs(row["dx_mas"] + 5.0 * sign) < 3 * row["dx_err_mas"] + 0.5, row
            assert abs(row["dy_mas"]) < 3 * row["dy_err_mas"] + 0.5, row
            assert 0.05 < row["offset_err_mas"] < 1.5 and row["n"] >= 30
    # The SW detectors against the LW detector of their module.
    assert {str(r["detector_b"]) for r in _rows(three_filters, "f200w", "f444w").values()} == {
        "nrcalong"}


def test_unpushed_filters_agree_within_their_uncertainty(three_filters):
    rows = _rows(three_filters, "f150w", "f444w")
    assert set(rows) == {"nrca1", "nrca2", "all"}
    for det, row in rows.items():
        print("f150w f444w", det, f"offset {row['offset_mas']:.2f} +- "
              f"{row['offset_err_mas']:.2f} mas, n {row['n']}")
        assert row["offset_mas"] < 3 * row["offset_err_mas"], row
        assert 0.05 < row["offset_err_mas"] < 1.5


def test_each_image_gets_its_filters_worst_offset(three_filters):
    offset, err, other = worst_offsets(three_filters, "jw01345001001", "f150w", "nrca1")
    assert other == "f200w" and abs(offset - 5.0) < 1.5 and err > 0
    # The LW image: its worst is against the pushed filter, through the SW detectors' rows.
    offset, _, other = worst_offsets(three_filters, "jw01345001001", "f444w", "nrcalong")
    assert other == "f200w" and abs(offset - 5.0) < 1.5
    assert np.isnan(worst_offsets(three_filters, "jw01345001001", "f150w", "nrcb1")[0])


def test_a_source_seen_in_several_dithers_counts_once():
    """The same detections twice (a repeat) change neither n nor the uncertainty."""
    cats = _catalogs({"f150w": (("nrca1",), 0.0), "f200w": (("nrca1",), PUSH)}, seed=4)
    once = cross_filter_offsets(cats)
    twice = cross_filter_offsets(cats + [dict(c) for c in cats])
    assert list(once["n"]) == list(twice["n"])
    np.testing.assert_allclose(once["offset_err_mas"], twice["offset_err_mas"])
    # Two dithers of one detector merged into one position per source.
    xy = np.random.default_rng(0).uniform(0, 60e3, (50, 2))
    assert len(merge_detections([xy, xy + 2.0, xy[:10] + 1e4])) == 60


def test_an_offset_near_the_tolerance_is_not_clipped():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 60e3, (200, 2))
    b = a + (80.0, -30.0) + rng.normal(0, 15.0, a.shape)
    med, err = robust_offset(match_sources(a, b, tolerance=100.0))
    assert np.all(np.abs(med - (80.0, -30.0)) < 3 * err + 0.1), (med, err)
    assert np.all(err > 0)


def test_fewer_sources_than_min_give_no_offset():
    cats = _catalogs({"f150w": (("nrca1",), 0.0), "f200w": (("nrca1",), 0.0)}, seed=5)
    table = cross_filter_offsets(cats, min_sources=10**6)
    assert len(table) and np.all(np.isnan(table["offset_mas"])) and np.all(table["n"] > 0)
    # One filter per visit: nothing to compare, an empty table with its columns.
    table = cross_filter_offsets([c for c in cats if c["filter"] == "f150w"])
    assert len(table) == 0 and "offset_err_mas" in table.colnames


def test_survey_writes_crossfilter_table_summary_and_index(tmp_path, capsys):
    """
    ``ceers-align --all`` on one visit in two filters (1 detector, 2 dithers; each filter its
    own pixel noise): ``survey_crossfilter.ecsv`` with the pair within its uncertainty, each
    image's worst offset in the summary, a section in the index. Then one filter's saved WCS
    models moved 5 mas: the same measure on the run's outputs finds 5 +- 1.5 mas.
    """
    from ceers_steps.cli.commands import align_main
    from ceers_steps.report.crossfilter import write_survey_crossfilter
    from ceers_steps.synthetic import make_visit

    cal = tmp_path / "cal"
    cal.mkdir()
    extra = np.random.default_rng(9)
    for filt, group, shift in (("F150W", "02101", (0.30, 0.20)), ("F200W", "02201", (0.45, -0.25))):
        v = make_visit(detectors=("nrca1",), n_dithers=2, shape=SHAPE, noise=0.02, use_real=False,
                       seed=11, filter_name=filt, group=group, visit_shift=shift)
        for image in v.images:
            # Independent noise per filter: the same sky, not the same pixels.
            image.model.data += extra.normal(0.0, 0.02, SHAPE).astype(np.float32)
            image.model.save(cal / image.model.meta.filename)
        v.refcat.write(tmp_path / "refcat.ecsv", overwrite=True)
    (tmp_path / "no_params").mkdir()
    out = tmp_path / "out"
    assert align_main(["--all", "--input-dir", str(cal), "--output-dir", str(out), "--abs-refcat",
                       str(tmp_path / "refcat.ecsv"), "--params-dir", str(tmp_path / "no_params"),
                       "--n-jobs", "2"]) == 0
    capsys.readouterr()
    table = Table.read(out / "survey_crossfilter.ecsv")
    assert [(r["filter_a"], r["filter_b"], r["detector"]) for r in table] == [
        ("f150w", "f200w", "nrca1"), ("f150w", "f200w", "all")]
    assert table["offset_mas"].unit == "mas"
    row = table[0]
    print(f"unpushed: {row['offset_mas']:.2f} +- {row['offset_err_mas']:.2f} mas, n {row['n']}")
    assert row["n"] >= 20 and row["offset_mas"] < 3 * row["offset_err_mas"]
    summary = Table.read(out / "survey_summary.ecsv")
    assert summary["xfilter_offset"].unit == "mas"
    assert set(summary["xfilter_with"]) == {"f150w", "f200w"}
    np.testing.assert_allclose(summary["xfilter_offset"], row["offset_mas"])
    index = (out / "survey_index.html").read_text()
    assert "Cross-filter consistency" in index and "<table id='crossfilter'>" in index
    # Each report's image rows lead with the validated accuracy (issue 28, point 4).
    for r in summary:
        html = (out / str(r["report"])).read_text()
        row = re.search(rf"<tr data-image='{r['image']}'>(.*?)</tr>", html).group(1)
        first = re.search(r"<td data-col='(\w+)' data-value='([^']+)' data-basis='([^']+)'", row)
        assert re.findall(r"data-col='(\w+)'", row)[0] == first.group(1) == "accuracy"
        basis = "held-out" if r["holdout_n"] >= MIN_HOLDOUT_SOURCES else "model"
        value = r["holdout_err"] if basis == "held-out" else r["err_center"]
        assert first.group(3) == basis and float(first.group(2)) == value
    # One filter's alignment pushed 5 mas (its saved WCS models, which the measure reads).
    for path in (out / "tweakreg_wcs").glob("*_02201_*_tweakreg.asdf"):
        with asdf.open(path) as af:
            tree = dict(af.tree)
            tree["wcs"] = _pushed(af["wcs"], af["wcsinfo"], PUSH)
            tree = {k: v for k, v in tree.items() if k not in ("asdf_library", "history")}
        asdf.AsdfFile(tree).write_to(path)
    images = [(str(r["visit"]), str(r["filter"]), str(r["detector"]), str(r["image"]))
              for r in summary]
    row = write_survey_crossfilter(out, images)[0]
    print(f"pushed 5 mas: {row['offset_mas']:.2f} +- {row['offset_err_mas']:.2f} mas, "
          f"n {row['n']}")
    assert abs(row["offset_mas"] - 5.0) < 1.5
