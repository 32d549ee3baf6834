"""CeersTweakRegStep ``distortion_file`` and ``ceers-align --distortion-file``: a residual
distortion inserted into every input WCS before the fit, scored against injected truth."""

import pickle

import numpy as np
import pytest
from astropy.table import Table
from conftest import file_digest, library_of, models_of

from ceers_steps import ApplyWcsStep, CeersTweakRegStep
from ceers_steps.core.distortion import has_distortion, insert_distortion
from ceers_steps.core.wcs_utils import pixel_grid, sky_difference_mas
from ceers_steps.io.distortion_files import distortion_file_name, write_distortion_file

DETECTORS = ("nrca1", "nrcb4")


@pytest.fixture(scope="module")
def distorted(tmp_path_factory):
    """
    2 SW detectors x 3 dithers (1024x1024, built-in truth) with an injected residual of
    10 mas rms per axis over each full detector; its catalogs, refcat and distortion files
    (``both/`` for both detectors, ``only_a1/`` for NRCA1 alone).
    """
    from ceers_steps.detection.catalogs import build_catalog, write_catalog
    from ceers_steps.synthetic import make_visit, random_distortion

    dist = random_distortion(DETECTORS, rms_mas=10.0, seed=3)
    visit = make_visit(detectors=DETECTORS, n_dithers=3, shape=(1024, 1024), noise=0.03,
                       use_real=False, seed=4, distortion=dist)
    root = tmp_path_factory.mktemp("distorted")
    for image in visit.images:
        path = root / image.model.meta.filename.replace(".fits", "_cat.ecsv")
        write_catalog(build_catalog(image.model), path)
        image.model.meta.tweakreg_catalog = str(path)
    refcat = root / "refcat.ecsv"
    visit.refcat.write(refcat)
    for det in DETECTORS:
        write_distortion_file(root / "both" / distortion_file_name(det), dist[det])
    write_distortion_file(root / "only_a1" / distortion_file_name("nrca1"), dist["nrca1"])
    return {"visit": visit, "refcat": refcat, "root": root, "dist": dist}


def _errors(models, visit):
    """Per image: RMS distance (mas) between its WCS and the true one over a pixel grid."""
    return np.array([float(np.sqrt(np.mean(sky_difference_mas(m.meta.wcs, im.true_wcs,
                                                                m.data.shape) ** 2)))
                     for m, im in zip(models, visit.images, strict=True)])


def test_distortion_file_removes_the_residual_from_the_alignment(distorted, caplog):
    """Without the files the residual stays (NRCA1 11-12 mas from the truth); with both files
    every image is at the floor (< 4 mas) and carries it; with NRCA1's alone NRCB4 keeps its
    residual, has none inserted and the log says so. The files and the inputs are unchanged."""
    visit = distorted["visit"]
    files = sorted((distorted["root"] / "both").iterdir())
    digests = {p: file_digest(p) for p in files}
    x, y = pixel_grid((1024, 1024), 4)
    inputs_before = [np.array(im.model.meta.wcs(x, y)) for im in visit.images]
    common = dict(abs_refcat=str(distorted["refcat"]), save_fit_results=False)
    plain = _errors(models_of(CeersTweakRegStep.call(library_of(visit), **common)), visit)
    both = models_of(CeersTweakRegStep.call(library_of(visit), **common,
                                            distortion_file=str(distorted["root"] / "both")))
    with_both = _errors(both, visit)
    is_a1 = np.array([im.detector == "nrca1" for im in visit.images])
    assert np.all(plain[is_a1] > 9.0) and np.all(plain[~is_a1] > 15.0)
    assert np.all(with_both < 4.0)
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" and has_distortion(m.meta.wcs)
               for m in both)
    caplog.clear()
    only = models_of(CeersTweakRegStep.call(library_of(visit), **common,
                                            distortion_file=str(distorted["root"] / "only_a1")))
    with_a1 = _errors(only, visit)
    assert np.all(with_a1[is_a1] < 4.5) and np.all(with_a1[~is_a1] > 15.0)
    assert [has_distortion(m.meta.wcs) for m in only] == list(is_a1)
    assert "no file for nrcb4: no residual distortion inserted" in caplog.text
    assert {p: file_digest(p) for p in files} == digests
    assert all(np.array_equal(np.array(im.model.meta.wcs(x, y)), before)
               for im, before in zip(visit.images, inputs_before, strict=True))


def test_failed_image_keeps_its_input_wcs(distorted, tmp_path):
    """An image the fit does not align (empty catalog) keeps its input WCS exactly: the
    residual inserted before the fit is taken out again."""
    visit = distorted["visit"]
    lib = library_of(visit)
    models = models_of(lib)
    empty = tmp_path / "empty_cat.ecsv"
    Table(names=("id", "xcentroid", "ycentroid", "flux"),
          dtype=("i4", "f8", "f8", "f8")).write(empty)
    models[0].meta.tweakreg_catalog = str(empty)
    assert visit.images[0].detector == "nrca1"
    out = models_of(CeersTweakRegStep.call(lib, abs_refcat=str(distorted["refcat"]),
                                           save_fit_results=False,
                                           distortion_file=str(distorted["root"] / "both")))
    assert out[0].meta.cal_step.tweakreg == "FAILED" and not has_distortion(out[0].meta.wcs)
    x, y = pixel_grid((1024, 1024))
    assert np.array_equal(np.array(out[0].meta.wcs(x, y)),
                          np.array(visit.images[0].model.meta.wcs(x, y)))
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" and has_distortion(m.meta.wcs)
               for m in out[1:])


def test_input_that_carries_a_residual_already_fails_alone(distorted):
    """An input whose WCS already carries a residual is not given a second: it FAILS, naming
    why, with its WCS as given; the others are aligned."""
    visit = distorted["visit"]
    lib = library_of(visit)
    models = models_of(lib)
    given = insert_distortion(models[1].meta.wcs, distorted["dist"]["nrca1"])
    models[1].meta.wcs = given
    step = CeersTweakRegStep(abs_refcat=str(distorted["refcat"]), save_fit_results=False,
                             distortion_file=str(distorted["root"] / "both"))
    out = models_of(step.run(lib))
    assert out[1].meta.cal_step.tweakreg == "FAILED"
    x, y = pixel_grid((1024, 1024), 4)
    assert np.array_equal(np.array(out[1].meta.wcs(x, y)), np.array(given(x, y)))
    rows = [r for r in step.results if r["image"] == out[1].meta.filename]
    assert rows and "already carries a residual distortion" in rows[0]["status"]
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for i, m in enumerate(out) if i != 1)


def test_bad_distortion_file_is_refused_before_anything(distorted, tmp_path):
    bad = tmp_path / "ceers_distortion_nrca1.asdf"
    write_distortion_file(bad, distorted["dist"]["nrcb4"].__class__(
        "nrca1", distorted["dist"]["nrcb4"].coeffs))
    dup = f"{bad},{distorted['root'] / 'both'}"
    with pytest.raises(ValueError, match="both hold the residual distortion of detector NRCA1"):
        CeersTweakRegStep.call(library_of(distorted["visit"]), output_dir=str(tmp_path / "out"),
                               abs_refcat=str(distorted["refcat"]), distortion_file=dup)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="distortion file not found"):
        CeersTweakRegStep.call(library_of(distorted["visit"]), abs_refcat=str(distorted["refcat"]),
                               save_fit_results=False, distortion_file=str(tmp_path / "no.asdf"))
    # Fitting a new field on inputs given one would count it twice: refused up front.
    with pytest.raises(ValueError, match="fit_distortion and distortion_file: give one of them"):
        CeersTweakRegStep.call(library_of(distorted["visit"]), output_dir=str(tmp_path / "out2"),
                               abs_refcat=str(distorted["refcat"]), fit_distortion=True,
                               distortion_file=str(distorted["root"] / "both"))
    assert not (tmp_path / "out2").exists()


def test_streamed_outputs_and_saved_models_carry_it(small_visit_dir, distorted, tmp_path):
    """Files on disk (streamed: headers only in the fit, subarray origin from them): the written
    images and WCS models carry the residual where a file was given, and applying the file
    again to those models is refused."""
    from ceers_steps import CatalogStep
    from ceers_steps.core.compat import datamodels
    from ceers_steps.io.wcs_models import read_wcs_model

    d = small_visit_dir
    digests = {p: file_digest(p) for p in d["paths"]}
    only_a1 = distorted["root"] / "only_a1"
    CatalogStep.call(str(d["asn"]), output_dir=str(tmp_path / "cats"))
    CeersTweakRegStep.call(str(tmp_path / "cats" / "asn_cat_asn.json"),
                           abs_refcat=str(d["refcat"]), minobj=8, abs_minobj=8,
                           save_results=True, output_dir=str(tmp_path / "tweak"),
                           distortion_file=str(only_a1))
    assert {p: file_digest(p) for p in d["paths"]} == digests
    written = sorted((tmp_path / "tweak").glob("*_tweakreg.fits"))
    models = sorted((tmp_path / "tweak" / "tweakreg_wcs").glob("*_tweakreg.asdf"))
    assert len(written) == len(models) == len(d["paths"])
    for image, model_file in zip(written, models, strict=True):
        a1 = "_nrca1_" in image.name
        with datamodels.open(image) as m:
            assert m.meta.cal_step.tweakreg == "COMPLETE"
            assert has_distortion(m.meta.wcs) == a1
        assert has_distortion(read_wcs_model(model_file)[2]) == a1
    a1_input = [p for p in d["paths"] if "_nrca1_" in p.name][0]
    with pytest.raises(ValueError, match="already carries a residual distortion"):
        ApplyWcsStep.call(str(a1_input), wcs_dir=str(tmp_path / "tweak" / "tweakreg_wcs"),
                          distortion_file=str(only_a1))


def test_ceers_align_distortion_file(distorted, tmp_path, capsys):
    """``ceers-align VISIT FILTER --distortion-file`` passes the files to the fit (the WCS
    models carry them); a missing file stops the run before anything is written."""
    from ceers_steps.cli.commands import align_main
    from ceers_steps.io.wcs_models import read_wcs_model

    cal = tmp_path / "calibrated"
    cal.mkdir()
    for image in distorted["visit"].images:
        model = image.model.copy()
        model.meta.tweakreg_catalog = None
        model.save(cal / model.meta.filename)
    (tmp_path / "no_params").mkdir()
    args = ["jw01345001001", "f200w", "--input-dir", str(cal), "--abs-refcat",
            str(distorted["refcat"]), "--params-dir", str(tmp_path / "no_params"), "--n-jobs", "1",
            "--no-report"]
    missing = tmp_path / "nowhere"
    assert align_main([*args, "--output-dir", str(tmp_path / "bad"),
                       "--distortion-file", str(missing)]) == 1
    assert f"distortion file not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").rglob("*.asdf"))
    out = tmp_path / "out"
    code = align_main([*args, "--output-dir", str(out), "--distortion-file",
                       str(distorted["root"] / "only_a1")])
    assert code == 0, capsys.readouterr()
    models = sorted((out / "tweakreg_wcs").glob("*_tweakreg.asdf"))
    assert len(models) == 6
    assert [has_distortion(read_wcs_model(p)[2]) for p in models] == [
        "_nrca1_" in p.name for p in models]


def test_image_header_keeps_the_subarray_origin(distorted):
    """Streamed images are headers in the fit: they keep where a subarray starts, so its
    residual is evaluated at the right place of the detector."""
    from ceers_steps.core.distortion import subarray_origin
    from ceers_steps.fitting.images import ImageHeader

    model = distorted["visit"].images[0].model.copy()
    assert subarray_origin(ImageHeader.from_model(model)) == (0.0, 0.0)
    model.meta.subarray.xstart, model.meta.subarray.ystart = 1025, 513
    header = ImageHeader.from_model(model)
    assert subarray_origin(header) == (1024.0, 512.0)
    assert subarray_origin(pickle.loads(pickle.dumps(header))) == (1024.0, 512.0)
