"""Residual-distortion files: round trip, bad files, folders and lists, insertion into images."""

import warnings
from pathlib import Path

import asdf
import numpy as np
import pytest

from ceers_steps.core.compat import datamodels
from ceers_steps.core.distortion import DetectorDistortion, has_distortion
from ceers_steps.core.wcs_utils import angular_separation_mas
from ceers_steps.io.distortion_files import (
    TREE_KEY,
    apply_distortion,
    distortion_file_name,
    read_distortion_file,
    read_distortion_files,
    write_distortion_file,
)
from ceers_steps.synthetic import nircam_like_wcs

#: Written by jwst 3.x (asdf 5) with `_fixture_distortion`; read here by every supported stack.
FIXTURE = Path(__file__).parent / "data" / "ceers_distortion_nrca1.asdf"


def _fixture_distortion(detector="nrca1", seed=3):
    rng = np.random.default_rng(seed)
    coeffs = rng.normal(0.0, 0.05, (2, 7))
    a = rng.normal(0.0, 0.004, (14, 14))
    return DetectorDistortion(detector, coeffs, cov=a @ a.T,
                              meta={"n_sources": np.int64(412), "visits": ("jw01345001001",),
                                    "filters": ["F200W"], "significant": np.array([True] * 7)})


def _image(detector="nrca1", shape=(64, 80), xstart=None, ystart=None):
    wcs, wcsinfo = nircam_like_wcs(detector, shape=shape)
    model = datamodels.ImageModel(np.zeros(shape, np.float32))
    model.meta.filename = f"jw01345001001_02201_00001_{detector}_cal.fits"
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = detector.upper()
    if xstart is not None:
        model.meta.subarray.xstart = xstart
        model.meta.subarray.ystart = ystart
    model.meta.wcs = wcs
    return model


def test_file_name():
    assert distortion_file_name("NRCA1") == "ceers_distortion_nrca1.asdf"
    with pytest.raises(ValueError, match="not a detector name"):
        distortion_file_name("../nrca1")


def test_round_trip(tmp_path):
    dist = _fixture_distortion()
    path = write_distortion_file(tmp_path / distortion_file_name("nrca1"), dist)
    back = read_distortion_file(path)
    assert back.detector == "nrca1" and back.terms == dist.terms
    assert np.max(np.abs(back.coeffs - dist.coeffs)) < 1e-12
    assert np.max(np.abs(back.cov - dist.cov)) < 1e-12
    assert back.pixel_scale == dist.pixel_scale
    assert back.meta["n_sources"] == 412 and back.meta["visits"] == ["jw01345001001"]
    assert back.meta["software"].startswith("ceers_steps ")
    assert back.meta["date"].endswith("Z") and back.meta["file"] == str(path)
    # What other tools read: the stated convention, the figures in mas and the transform.
    with asdf.open(path) as af:
        node = af[TREE_KEY]
        assert "before the detector-to-V2V3 transform" in node["convention"]
        assert np.allclose(node["rms_mas"], dist.rms_mas(), rtol=1e-12)
        assert np.allclose(node["rms_error_mas"], dist.rms_error_mas(), rtol=1e-12)
        x, y = np.array([0.0, 700.0, 2047.0]), np.array([5.0, 1900.0, 1024.0])
        dx, dy = dist.offset(x, y)
        xt, yt = node["transform"](x, y)
        assert np.max(np.abs(xt - (x + dx))) < 1e-9 and np.max(np.abs(yt - (y + dy))) < 1e-9


def test_zero_residual_and_no_covariance_round_trip(tmp_path):
    path = write_distortion_file(tmp_path / "z.asdf", DetectorDistortion.zero("nrcb4"))
    back = read_distortion_file(path)
    assert back.is_zero and back.cov is None and back.detector == "nrcb4"


def test_written_completely_or_not_at_all(tmp_path):
    path = tmp_path / distortion_file_name("nrca1")
    write_distortion_file(path, _fixture_distortion())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="exists already"):
        write_distortion_file(path, _fixture_distortion(seed=4))
    assert path.read_bytes() == before
    bad = _fixture_distortion()
    bad.coeffs[0, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_distortion_file(path, bad, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no partial file
    write_distortion_file(path, _fixture_distortion(seed=4), overwrite=True)
    assert read_distortion_file(path).coeffs[0, 0] == _fixture_distortion(seed=4).coeffs[0, 0]


def _write_tree(path, node):
    asdf.AsdfFile({TREE_KEY: node} if node is not None else {"other": 1}).write_to(path)
    return path


@pytest.mark.parametrize(("node", "message"), [
    (None, "no 'ceers_distortion' in the ASDF tree"),
    ({"detector": "nrca1", "terms": [[2, 0]]}, "has no 'coeffs'"),
    ({"detector": "nrca1", "terms": [[2, 0], [1, 1]], "coeffs": np.zeros((2, 3))},
     r"'coeffs' has shape \(2, 3\); 2 terms need \(2, 2\)"),
    ({"detector": "nrca1", "terms": [[2, 0]], "coeffs": np.zeros((2, 1)),
      "cov": np.zeros((3, 3))}, r"'cov' has shape \(3, 3\)"),
    ({"detector": "nrca1", "terms": [[2, 0]], "coeffs": np.array([[np.inf], [0.0]])},
     "'coeffs' holds non-finite values"),
    ({"detector": "nrca1", "terms": [[2, 0]], "coeffs": np.zeros((2, 1)),
      "cov": np.full((2, 2), np.nan)}, "'cov' holds non-finite values"),
    ({"detector": "nrca1", "terms": [[2, 0]], "coeffs": np.zeros((2, 1)), "pixel_scale": -1},
     "'pixel_scale' must be a positive number"),
    ({"detector": 3, "terms": [[2, 0]], "coeffs": np.zeros((2, 1))}, "'detector' must be"),
    ({"detector": "nrca2", "terms": [[2, 0]], "coeffs": np.zeros((2, 1))},
     "holds detector NRCA2, but its name says NRCA1"),
])
def test_bad_files_are_named_with_their_problem(tmp_path, node, message):
    path = _write_tree(tmp_path / "ceers_distortion_nrca1.asdf", node)
    with pytest.raises(ValueError, match=message) as info:
        read_distortion_file(path)
    assert str(path) in str(info.value)


def test_not_asdf_and_missing(tmp_path):
    path = tmp_path / "ceers_distortion_nrca1.asdf"
    path.write_text("SIMPLE = T\n")
    with pytest.raises(ValueError, match="cannot be read as an ASDF file") as info:
        read_distortion_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="distortion file not found"):
        read_distortion_file(tmp_path / "nothing.asdf")


def test_folder_list_and_duplicate(tmp_path):
    folder = tmp_path / "distortion"
    for det, seed in (("nrca1", 1), ("nrca2", 2), ("nrcb1", 3)):
        write_distortion_file(folder / distortion_file_name(det), _fixture_distortion(det, seed))
    (folder / "notes.asdf").write_text("not read: not a distortion file name")
    got = read_distortion_files(str(folder))
    assert sorted(got) == ["nrca1", "nrca2", "nrcb1"]
    assert np.array_equal(got["nrca2"].coeffs, _fixture_distortion("nrca2", 2).coeffs)
    # A comma-separated list of files (spaces allowed), and nothing for an empty string.
    listed = read_distortion_files(f"{folder / 'ceers_distortion_nrca1.asdf'}, "
                                   f"{folder / 'ceers_distortion_nrcb1.asdf'}")
    assert sorted(listed) == ["nrca1", "nrcb1"]
    assert read_distortion_files("") == {}
    # The same detector twice: both files named.
    other = write_distortion_file(tmp_path / "copy.asdf", _fixture_distortion("nrca2", 5))
    with pytest.raises(ValueError, match="both hold the residual distortion of detector "
                                         "NRCA2") as info:
        read_distortion_files(f"{folder},{other}")
    assert str(other) in str(info.value)
    assert str(folder / "ceers_distortion_nrca2.asdf") in str(info.value)
    # None found.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no distortion file"):
        read_distortion_files(str(empty))
    with pytest.raises(FileNotFoundError, match="distortion file not found"):
        read_distortion_files(f"{folder},{tmp_path / 'missing.asdf'}")


def test_apply_distortion_moves_sky_by_the_residual_and_refuses_a_second():
    dist = _fixture_distortion()
    model = _image()
    before = model.meta.wcs
    y, x = np.mgrid[0:64:9, 0:80:11].astype(float)
    assert apply_distortion(model, {"nrca1": dist}) == "applied"
    assert has_distortion(model.meta.wcs) and not has_distortion(before)
    dx, dy = dist.offset(x, y)
    ra0, dec0 = before(x + dx, y + dy)
    ra1, dec1 = model.meta.wcs(x, y)
    assert angular_separation_mas(ra0, dec0, ra1, dec1).max() < 1e-6
    moved = angular_separation_mas(*before(x, y), ra1, dec1)
    shift = 31.0 * np.hypot(dx, dy)  # mas, at ~31 mas/pixel
    assert np.max(np.abs(moved - shift)) < 0.05 * shift.max()
    with pytest.raises(ValueError, match="jw01345001001_02201_00001_nrca1_cal.fits: its WCS "
                                         "already carries a residual distortion"):
        apply_distortion(model, {"nrca1": dist})


def test_apply_distortion_other_detector_and_subarray():
    dist = _fixture_distortion()
    model = _image("nrcb2")
    wcs = model.meta.wcs
    assert apply_distortion(model, {"nrca1": dist}) == "no file for nrcb2"
    assert model.meta.wcs is wcs and not has_distortion(model.meta.wcs)
    # A subarray whose first pixel is full-frame (201, 1001), 1-based: the field there.
    sub = _image(xstart=201, ystart=1001)
    own = sub.meta.wcs
    assert apply_distortion(sub, {"nrca1": dist}) == "applied"
    x, y = np.array([0.0, 40.0, 79.0]), np.array([0.0, 30.0, 63.0])
    dx, dy = dist.offset(x + 200.0, y + 1000.0)
    assert angular_separation_mas(*own(x + dx, y + dy), *sub.meta.wcs(x, y)).max() < 1e-6


def test_a_file_written_by_jwst_3_reads_the_same_everywhere():
    """The fixture was written by jwst 3.0 / asdf 5.4; the suite also runs on jwst 1.7.2 and
    1.12.5 (CI), where this reads it and inserts it."""
    dist = _fixture_distortion()
    back = read_distortion_file(FIXTURE)
    assert np.max(np.abs(back.coeffs - dist.coeffs)) < 1e-12
    assert np.max(np.abs(back.cov - dist.cov)) < 1e-12
    model = _image()
    own = model.meta.wcs
    assert apply_distortion(model, {"nrca1": back}) == "applied"
    x, y = np.array([0.0, 40.0, 79.0]), np.array([0.0, 30.0, 63.0])
    dx, dy = dist.offset(x, y)
    assert angular_separation_mas(*own(x + dx, y + dy), *model.meta.wcs(x, y)).max() < 1e-6
    with warnings.catch_warnings():  # asdf-astropy older than the writer's (jwst 1.7.2) warns
        warnings.filterwarnings("ignore", message=".*was created with extension",
                                category=asdf.exceptions.AsdfWarning)
        af = asdf.open(FIXTURE)
    with af:
        xt, yt = af[TREE_KEY]["transform"](x, y)
    assert np.max(np.abs(xt - (x + dx))) < 1e-9 and np.max(np.abs(yt - (y + dy))) < 1e-9
