"""CatalogStep as users run it: Step.call, strun, associations, bad input."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from conftest import file_digest, run_cli

from ceers_steps import CatalogStep
from ceers_steps.core.compat import datamodels
from ceers_steps.core.logs import AllImagesFailedError
from ceers_steps.core.wcs_utils import world_to_pixel_exact


def test_call_writes_catalog_into_output_dir(small_visit_dir, tmp_path):
    path = small_visit_dir["paths"][0]
    before = file_digest(path)
    result = CatalogStep.call(str(path), output_dir=str(tmp_path))
    catalog_path = tmp_path / path.name.replace(".fits", "_cat.ecsv")
    assert catalog_path.exists()
    assert Path(result.meta.tweakreg_catalog) == catalog_path.resolve()
    # Nothing written next to the input, and the input is unchanged.
    assert not any(p.name.endswith("_cat.ecsv") for p in path.parent.iterdir())
    assert file_digest(path) == before

    cat = Table.read(catalog_path)
    assert {"id", "xcentroid", "ycentroid", "flux", "ra", "dec", "flags"} <= set(cat.colnames)
    assert len(cat) > 20
    assert cat.meta["image"] == path.name
    assert cat.meta["detection_parameters"]["detect_thresh"] == 4.0
    # ra/dec are the image WCS at the 0-based centroids.
    x, y = world_to_pixel_exact(result.meta.wcs, cat["ra"], cat["dec"])
    assert np.allclose(x, cat["xcentroid"], atol=1e-6)
    assert np.allclose(y, cat["ycentroid"], atol=1e-6)


def test_catalog_positions_match_truth(small_visit_dir, tmp_path):
    """Catalog centroids land on the true pixel positions of the rendered sources."""
    visit = small_visit_dir["visit"]
    image = visit.images[0]
    result = CatalogStep.call(image.model, output_dir=str(tmp_path))
    cat = Table.read(result.meta.tweakreg_catalog)
    ref = visit.refcat
    x, y = world_to_pixel_exact(image.true_wcs, ref["RA"], ref["DEC"])
    d = np.hypot(cat["xcentroid"][:, None] - x[None, :], cat["ycentroid"][:, None] - y[None, :])
    nearest = d.min(axis=1)
    # Galaxy intrinsic offsets are ~10 mas = 0.3 px rms per axis.
    assert np.median(nearest) < 0.6


def test_parameters_are_used(small_visit_dir, tmp_path):
    path = small_visit_dir["paths"][0]
    a = CatalogStep.call(str(path), output_dir=str(tmp_path / "a"))
    b = CatalogStep.call(str(path), output_dir=str(tmp_path / "b"), detect_thresh=20.0)
    assert len(Table.read(b.meta.tweakreg_catalog)) < len(Table.read(a.meta.tweakreg_catalog))


def test_association_copy_carries_catalogs(small_visit_dir, tmp_path):
    result = CatalogStep.call(str(small_visit_dir["asn"]), output_dir=str(tmp_path))
    assert len(result) == len(small_visit_dir["paths"])
    asn_copy = tmp_path / "asn_cat_asn.json"
    asn = json.loads(asn_copy.read_text())
    members = asn["products"][0]["members"]
    assert len(members) == 4
    for member in members:
        # expname is relative to the copy; the catalog path absolute (jwst reads it from any
        # working directory); both name existing files.
        assert (tmp_path / member["expname"]).exists()
        cat = Path(member["tweakreg_catalog"])
        assert cat.is_absolute() and cat.exists() and len(Table.read(cat)) > 10
    # The input association is untouched.
    original = json.loads(small_visit_dir["asn"].read_text())
    assert "tweakreg_catalog" not in original["products"][0]["members"][0]


def test_model_input_is_not_modified(small_visit_dir, tmp_path):
    model = small_visit_dir["visit"].images[1].model
    data = model.data.copy()
    result = CatalogStep.call(model, output_dir=str(tmp_path))
    assert result is not model
    assert model.meta.tweakreg_catalog is None
    assert np.array_equal(model.data, data, equal_nan=True)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope_cal.fits"):
        CatalogStep.call(str(tmp_path / "nope_cal.fits"), output_dir=str(tmp_path))


def test_image_without_wcs_is_named(tmp_path):
    model = datamodels.ImageModel(np.ones((64, 64), np.float32))
    model.meta.filename = "nowcs_cal.fits"
    path = tmp_path / "nowcs_cal.fits"
    model.save(path)
    # The only image failed, so the run fails, naming the file and the problem.
    with pytest.raises(AllImagesFailedError, match="nowcs_cal.fits.*no WCS"):
        CatalogStep.call(str(path), output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_non_image_model_is_named(tmp_path):
    cube = datamodels.CubeModel(np.ones((2, 16, 16), np.float32))
    path = tmp_path / "cube_rateints.fits"
    cube.save(path)
    with pytest.raises(AllImagesFailedError, match="cube_rateints.fits.*ImageModel"):
        CatalogStep.call(str(path), output_dir=str(tmp_path))


def test_all_nan_image_gives_empty_catalog_and_warning(small_visit_dir, tmp_path, caplog):
    model = small_visit_dir["visit"].images[0].model.copy()
    model.data[:] = np.nan
    model.meta.filename = "allnan_cal.fits"
    with caplog.at_level(logging.WARNING, logger="ceers_steps"):
        result = CatalogStep.call(model, output_dir=str(tmp_path))
    cat = Table.read(result.meta.tweakreg_catalog)
    assert len(cat) == 0
    assert "allnan_cal.fits" in caplog.text and "empty catalog" in caplog.text


def test_stpipe_list_shows_steps(tmp_path):
    proc = run_cli(["stpipe", "list"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ceers_steps.steps.catalog_step.CatalogStep (ceers_catalog)" in proc.stdout


def test_strun_offline_with_empty_environment(small_visit_dir, tmp_path):
    """strun works with no CRDS_*/STPIPE_* variables and never contacts CRDS."""
    path = small_visit_dir["paths"][0]
    proc = run_cli(["strun", "ceers_catalog", str(path), "--output_dir", "out"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert (tmp_path / "out" / path.name.replace(".fits", "_cat.ecsv")).exists()
    assert "CRDS" not in out
    # Our own log lines are shown.
    assert "sources (rms" in out
    # The image itself is not saved unless asked (the product is the catalog).
    assert not list((tmp_path / "out").glob("*.fits"))
