"""ApplyWcsStep and ceers-apply-wcs: the 690 real CEERS models, round trip, errors."""

import os
import shutil
from pathlib import Path

import asdf
import numpy as np
import pytest
from conftest import file_digest, models_of, run_cli

from ceers_steps import ApplyWcsStep, CeersTweakRegStep
from ceers_steps.core.compat import datamodels
from ceers_steps.core.wcs_utils import angular_separation_mas, pixel_grid
from ceers_steps.io.wcs_models import exposure_base


def _blank_cal(base):
    """A cal-like image of the right detector; zeros are allocated lazily, so this is cheap."""
    model = datamodels.ImageModel(np.zeros((2048, 2048), np.float32))
    model.meta.filename = f"{base}_cal.fits"
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = base.rsplit("_", 1)[1].upper()
    return model


@pytest.mark.slow  # all 690 real models: CI runs it in its own stage (pytest -m slow)
def test_every_real_ceers_model_applies_exactly(ceers_dir):
    """All 690 real models; ``CEERS_APPLY_SAMPLE=1`` (CI's second, older stack) checks one
    model per visit and detector (50) to keep CI within its time budget."""
    wcs_dir = ceers_dir / "tweakreg_wcs"
    files = sorted(wcs_dir.glob("*_tweakreg.asdf"))
    assert len(files) == 690
    expected = 690
    if os.environ.get("CEERS_APPLY_SAMPLE"):
        first = {}
        for f in files:
            parts = f.name.split("_")
            first.setdefault((parts[0], parts[3]), f)
        files = sorted(first.values())
        expected = 50
    assert len(files) == expected
    x, y = pixel_grid((2048, 2048))
    checked = 0
    for start in range(0, len(files), 30):
        chunk = files[start:start + 30]
        bases = [f.name.removesuffix("_tweakreg.asdf") for f in chunk]
        result = models_of(ApplyWcsStep.call([_blank_cal(b) for b in bases], wcs_dir=str(wcs_dir)))
        for path, model in zip(chunk, result, strict=True):
            with asdf.config_context() as config:  # plain asdf, not our reader
                config.validate_on_read = False
                with asdf.open(path) as af:
                    ra0, dec0 = af["wcs"](x, y)
                    v2_ref = af["wcsinfo"]["v2_ref"]
            ra1, dec1 = model.meta.wcs(x, y)
            assert angular_separation_mas(ra0, dec0, ra1, dec1).max() < 1e-6, path.name
            assert model.meta.wcsinfo.v2_ref == v2_ref
            assert model.meta.cal_step.tweakreg == "COMPLETE"
            checked += 1
    assert checked == expected


def test_round_trip_with_tweakreg(small_visit_dir, tmp_path):
    """Saved WCS models re-applied to the untouched inputs give the aligned WCS."""
    from ceers_steps import CatalogStep

    d = small_visit_dir
    digests = {p: file_digest(p) for p in d["paths"]}
    CatalogStep.call(str(d["asn"]), output_dir=str(tmp_path / "cats"))
    aligned = models_of(CeersTweakRegStep.call(str(tmp_path / "cats" / "asn_cat_asn.json"),
                                               abs_refcat=str(d["refcat"]), minobj=8, abs_minobj=8,
                                               save_wcs=True, output_dir=str(tmp_path / "tweak")))
    reapplied = models_of(ApplyWcsStep.call([str(p) for p in d["paths"]],
                                            wcs_dir=str(tmp_path / "tweak" / "tweakreg_wcs")))
    x, y = pixel_grid((1024, 1024))
    for a, b in zip(aligned, reapplied, strict=True):
        assert a.meta.filename == b.meta.filename
        ra0, dec0 = a.meta.wcs(x, y)
        ra1, dec1 = b.meta.wcs(x, y)
        assert angular_separation_mas(ra0, dec0, ra1, dec1).max() < 1e-6
    assert {p: file_digest(p) for p in d["paths"]} == digests


@pytest.fixture
def saved_models(small_visit_dir, tmp_path):
    """WCS models for the small visit (its current WCS), and a work folder."""
    from ceers_steps.io.wcs_models import save_wcs_model

    wcs_dir = tmp_path / "wcs"
    for image in small_visit_dir["visit"].images:
        m = image.model
        save_wcs_model(wcs_dir / f"{exposure_base(m.meta.filename)}_tweakreg.asdf",
                       m.meta.filename, m.meta.wcsinfo, m.meta.wcs)
    return wcs_dir


def test_missing_model_names_image_and_path(small_visit_dir, saved_models, tmp_path):
    path = small_visit_dir["paths"][1]
    (saved_models / f"{exposure_base(path.name)}_tweakreg.asdf").unlink()
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=rf"{path.name}.*{exposure_base(path.name)}_tweakreg.asdf"):
        ApplyWcsStep.call([str(p) for p in small_visit_dir["paths"]], wcs_dir=str(saved_models),
                          output_dir=str(out), save_results=True)
    assert not out.exists() or not list(out.glob("*.fits"))


def test_skip_missing_passes_image_through(small_visit_dir, saved_models, caplog):
    path = small_visit_dir["paths"][1]
    (saved_models / f"{exposure_base(path.name)}_tweakreg.asdf").unlink()
    result = models_of(ApplyWcsStep.call([str(p) for p in small_visit_dir["paths"]],
                                         wcs_dir=str(saved_models), skip_missing=True))
    assert "passed through unchanged" in caplog.text
    assert result[1].meta.cal_step.tweakreg == "SKIPPED"
    assert result[0].meta.cal_step.tweakreg == "COMPLETE"


def test_model_of_another_detector_is_refused(small_visit_dir, saved_models, tmp_path):
    a1 = small_visit_dir["paths"][0]  # nrca1
    b4 = small_visit_dir["paths"][2]  # nrcb4
    # Copy the nrca1 model over the nrcb4 one: the name fits, the content does not.
    shutil.copy(saved_models / f"{exposure_base(a1.name)}_tweakreg.asdf",
                saved_models / f"{exposure_base(b4.name)}_tweakreg.asdf")
    with pytest.raises(ValueError, match=rf"{b4.name}: detector NRCB4 does not match.*NRCA1"):
        ApplyWcsStep.call(str(b4), wcs_dir=str(saved_models), output_dir=str(tmp_path),
                          save_results=True)
    assert not list(tmp_path.glob("*_tweakreg.fits"))


def test_corrupt_asdf_names_image_and_file(small_visit_dir, saved_models, tmp_path):
    path = small_visit_dir["paths"][0]
    model_file = saved_models / f"{exposure_base(path.name)}_tweakreg.asdf"
    model_file.write_bytes(b"#ASDF 1.0.0\nthis is not an asdf file\n")
    with pytest.raises(ValueError, match=rf"{path.name}.*{model_file.name}"):
        ApplyWcsStep.call(str(path), wcs_dir=str(saved_models), output_dir=str(tmp_path),
                          save_results=True)
    assert not list(tmp_path.glob("*_tweakreg.fits"))


def test_bounding_box_must_fit(saved_models, small_visit_dir):
    path = small_visit_dir["paths"][0]
    model = datamodels.ImageModel(np.zeros((100, 100), np.float32))
    model.meta.filename = path.name
    model.meta.instrument.detector = "NRCA1"
    with pytest.raises(ValueError, match="does not fit the image"):
        ApplyWcsStep.call(model, wcs_dir=str(saved_models))


def test_any_suffix_finds_the_model(small_visit_dir, saved_models, tmp_path):
    src = small_visit_dir["paths"][0]
    renamed = tmp_path / src.name.replace("_cal.fits", "_bkgsub.fits")
    shutil.copy(src, renamed)
    result = ApplyWcsStep.call(str(renamed), wcs_dir=str(saved_models), output_dir=str(tmp_path),
                               save_results=True)
    assert result.meta.cal_step.tweakreg == "COMPLETE"
    assert (tmp_path / src.name.replace("_cal.fits", "_tweakreg.fits")).exists()


def test_cli_all_and_image(small_visit_dir, saved_models, tmp_path):
    inputs = tmp_path / "calibrated"
    inputs.mkdir()
    for p in small_visit_dir["paths"]:
        shutil.copy(p, inputs / p.name)
    digests = {p: file_digest(p) for p in inputs.iterdir()}
    proc = run_cli(["ceers-apply-wcs", "--all", "--input-dir", "calibrated", "--output-dir",
                    "calibrated", "--wcs-dir", str(saved_models)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs = sorted(p.name for p in inputs.glob("*_tweakreg.fits"))
    assert outs == sorted(p.name.replace("_cal.fits", "_tweakreg.fits") for p in digests)
    assert {p: file_digest(p) for p in digests} == digests
    one = small_visit_dir["paths"][0].name
    proc = run_cli(["ceers-apply-wcs", "--image", one, "--input-dir", "calibrated", "--output-dir",
                    "single", "--wcs-dir", str(saved_models), "--output-suffix", "wcsfix"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in (tmp_path / "single").glob("*.fits")] == [
        one.replace("_cal.fits", "_wcsfix.fits")]
    proc = run_cli(["ceers-apply-wcs", "--image", "nope_cal.fits", "--wcs-dir", str(saved_models)],
                   cwd=tmp_path)
    assert proc.returncode == 1 and "nope_cal.fits" in proc.stderr


def test_strun_apply_wcs_offline(small_visit_dir, saved_models, tmp_path):
    path = small_visit_dir["paths"][0]
    proc = run_cli(["strun", "apply_wcs", str(path), "--wcs_dir", str(saved_models),
                    "--output_dir", "out"], cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert "CRDS" not in proc.stdout + proc.stderr
    out = tmp_path / "out" / path.name.replace("_cal.fits", "_tweakreg.fits")
    model = datamodels.open(out)
    assert model.meta.cal_step.tweakreg == "COMPLETE"
    assert Path(model.meta.filename).name == out.name


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_streamed_files_written_like_in_memory(small_visit_dir, tmp_path, n_jobs):
    """
    Several files with save_results are streamed through workers (outputs published at the
    end): the written files carry the same WCS as the in-memory path gives, the inputs are
    untouched, and the result is a library over the written files.
    """
    from ceers_steps.io.wcs_models import save_wcs_model

    d = small_visit_dir
    wcs_dir = tmp_path / "wcs"
    shifted = {}
    for image in d["visit"].images:
        m = image.model.copy()
        # A visibly different WCS (the true one), so "applied" is not "unchanged".
        m.meta.wcs = image.true_wcs
        save_wcs_model(wcs_dir / f"{exposure_base(m.meta.filename)}_tweakreg.asdf",
                       m.meta.filename, m.meta.wcsinfo, m.meta.wcs)
        shifted[m.meta.filename] = image.true_wcs
    digests = {p: file_digest(p) for p in d["paths"]}
    out = tmp_path / "out"
    result = ApplyWcsStep.call([str(p) for p in d["paths"]], wcs_dir=str(wcs_dir),
                               output_dir=str(out), save_results=True, n_jobs=n_jobs)
    assert {p: file_digest(p) for p in d["paths"]} == digests
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name.replace("_cal.fits", "_tweakreg.fits") for p in d["paths"])
    x, y = pixel_grid((1024, 1024))
    for path in d["paths"]:
        with datamodels.open(out / path.name.replace("_cal.fits", "_tweakreg.fits")) as m:
            assert m.meta.cal_step.tweakreg == "COMPLETE"
            err = angular_separation_mas(*m.meta.wcs(x, y), *shifted[path.name](x, y))
            assert err.max() < 1e-6
    assert len(result) == len(d["paths"])


def test_streamed_skip_missing_writes_the_image_unchanged(small_visit_dir, saved_models,
                                                          tmp_path, caplog):
    path = small_visit_dir["paths"][1]
    (saved_models / f"{exposure_base(path.name)}_tweakreg.asdf").unlink()
    out = tmp_path / "out"
    ApplyWcsStep.call([str(p) for p in small_visit_dir["paths"]], wcs_dir=str(saved_models),
                      output_dir=str(out), save_results=True, skip_missing=True, n_jobs=2)
    assert "passed through unchanged" in caplog.text
    with datamodels.open(out / path.name.replace("_cal.fits", "_tweakreg.fits")) as m:
        assert m.meta.cal_step.tweakreg == "SKIPPED"
    assert len(list(out.glob("*_tweakreg.fits"))) == len(small_visit_dir["paths"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_streamed_outputs_never_overwrite_inputs(small_visit_dir, saved_models, tmp_path):
    """Several files written as ``*_cal.fits`` into their own folder: refused, nothing written."""
    folder = tmp_path / "calibrated"
    folder.mkdir()
    paths = [Path(shutil.copy(p, folder / p.name)) for p in small_visit_dir["paths"]]
    digests = {p: file_digest(p) for p in paths}
    with pytest.raises(ValueError, match="would overwrite the input"):
        ApplyWcsStep.call([str(p) for p in paths], wcs_dir=str(saved_models),
                          output_dir=str(folder), suffix="cal", save_results=True, n_jobs=2)
    assert {p: file_digest(p) for p in paths} == digests
    assert sorted(folder.iterdir()) == sorted(paths)  # no temporary folder left either


def _nrca1_distortion(folder):
    """A residual of ~3 mas rms for NRCA1 only, written as its file; (distortion, path)."""
    from ceers_steps.core.distortion import DetectorDistortion
    from ceers_steps.io.distortion_files import distortion_file_name, write_distortion_file

    rng = np.random.default_rng(7)
    dist = DetectorDistortion("nrca1", rng.normal(0.0, 0.1, (2, 7)))
    return dist, write_distortion_file(Path(folder) / distortion_file_name("nrca1"), dist)


def test_distortion_file_moves_sky_by_the_residual(small_visit_dir, saved_models, tmp_path,
                                                   caplog):
    """The residual is inserted after the saved model: NRCA1's sky positions move by it (mas),
    NRCB4 (no file) keeps the saved model's and says so; no input or file is changed."""
    from ceers_steps.core.distortion import has_distortion
    from ceers_steps.io.wcs_models import read_wcs_model

    dist, dist_path = _nrca1_distortion(tmp_path / "distortion")
    digests = {p: file_digest(p) for p in [*small_visit_dir["paths"], dist_path]}
    result = models_of(ApplyWcsStep.call([str(p) for p in small_visit_dir["paths"]],
                                         wcs_dir=str(saved_models),
                                         distortion_file=str(dist_path.parent)))
    assert {p: file_digest(p) for p in digests} == digests
    x, y = pixel_grid((1024, 1024))
    dx, dy = dist.offset(x, y)
    moved_mas = 31.0 * np.hypot(dx, dy)
    assert 1.0 < np.sqrt(np.mean(moved_mas**2)) < 20.0  # a residual of a few mas
    for model in result:
        saved = read_wcs_model(saved_models / f"{exposure_base(model.meta.filename)}"
                                              "_tweakreg.asdf")[2]
        got = model.meta.wcs(x, y)
        assert model.meta.cal_step.tweakreg == "COMPLETE"
        if model.meta.instrument.detector == "NRCA1":
            assert has_distortion(model.meta.wcs)
            assert angular_separation_mas(*saved(x + dx, y + dy), *got).max() < 1e-6
            shift = angular_separation_mas(*saved(x, y), *got)
            assert np.max(np.abs(shift - moved_mas)) < 0.05 * moved_mas.max()
        else:
            assert not has_distortion(model.meta.wcs)
            assert angular_separation_mas(*saved(x, y), *got).max() < 1e-6
    assert "no file for nrcb4: no residual distortion inserted" in caplog.text
    assert "residual distortion inserted" in caplog.text


def test_distortion_is_never_applied_twice(small_visit_dir, tmp_path, caplog):
    """A saved model carrying a residual (a fit_distortion run) and a distortion file: refused,
    naming the image, nothing written; skip_missing passes the image through unchanged."""
    from ceers_steps.core.distortion import has_distortion, insert_distortion
    from ceers_steps.io.wcs_models import save_wcs_model

    dist, dist_path = _nrca1_distortion(tmp_path)
    path = small_visit_dir["paths"][0]
    image = small_visit_dir["visit"].images[0].model
    assert image.meta.instrument.detector == "NRCA1"
    wcs_dir = tmp_path / "wcs"
    fitted = insert_distortion(image.meta.wcs, dist)
    save_wcs_model(wcs_dir / f"{exposure_base(path.name)}_tweakreg.asdf", path.name,
                   image.meta.wcsinfo, fitted)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{path.name}: its WCS already carries a residual "
                                         "distortion"):
        ApplyWcsStep.call(str(path), wcs_dir=str(wcs_dir), distortion_file=str(dist_path),
                          output_dir=str(out), save_results=True)
    assert not out.exists() or not list(out.glob("*.fits"))
    # Without the file the saved model (with its residual) applies as it is.
    plain = ApplyWcsStep.call(str(path), wcs_dir=str(wcs_dir))
    assert has_distortion(plain.meta.wcs)
    passed = ApplyWcsStep.call(str(path), wcs_dir=str(wcs_dir), distortion_file=str(dist_path),
                               skip_missing=True)
    assert "image passed through unchanged" in caplog.text
    assert passed.meta.cal_step.tweakreg == "SKIPPED"
    x, y = pixel_grid((1024, 1024))
    assert angular_separation_mas(*passed.meta.wcs(x, y), *image.meta.wcs(x, y)).max() < 1e-6


def test_distortion_on_own_wcs_when_skip_missing(small_visit_dir, tmp_path, caplog):
    """No saved model and skip_missing: the image's own WCS gets the residual."""
    dist, dist_path = _nrca1_distortion(tmp_path)
    path = small_visit_dir["paths"][0]
    own = small_visit_dir["visit"].images[0].model.meta.wcs
    result = ApplyWcsStep.call(str(path), wcs_dir=str(tmp_path / "none"), skip_missing=True,
                               distortion_file=str(dist_path))
    assert "image keeps its own WCS, with the residual distortion" in caplog.text
    x, y = pixel_grid((1024, 1024))
    dx, dy = dist.offset(x, y)
    assert angular_separation_mas(*own(x + dx, y + dy), *result.meta.wcs(x, y)).max() < 1e-6


def test_bad_distortion_file_stops_the_run(small_visit_dir, saved_models, tmp_path):
    bad = tmp_path / "ceers_distortion_nrca1.asdf"
    bad.write_text("not asdf")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{bad}: cannot be read as an ASDF file"):
        ApplyWcsStep.call([str(p) for p in small_visit_dir["paths"]], wcs_dir=str(saved_models),
                          distortion_file=str(bad), output_dir=str(out), save_results=True)
    assert not out.exists()


def test_cli_distortion_file_streamed(small_visit_dir, saved_models, tmp_path):
    """``ceers-apply-wcs --all --distortion-file`` (a path relative to the working directory):
    the streamed outputs of NRCA1 carry the residual, NRCB4's do not; the file is unchanged."""
    from ceers_steps.core.distortion import has_distortion

    dist, dist_path = _nrca1_distortion(tmp_path / "dist")
    digest = file_digest(dist_path)
    inputs = tmp_path / "calibrated"
    inputs.mkdir()
    for p in small_visit_dir["paths"]:
        shutil.copy(p, inputs / p.name)
    proc = run_cli(["ceers-apply-wcs", "--all", "--output-dir", "out", "--wcs-dir",
                    str(saved_models), "--distortion-file", "dist/ceers_distortion_nrca1.asdf",
                    "--n-jobs", "1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert file_digest(dist_path) == digest
    carried = {}
    for out in sorted((tmp_path / "out").glob("*_tweakreg.fits")):
        with datamodels.open(out) as m:
            carried[m.meta.instrument.detector] = carried.get(m.meta.instrument.detector, []) + [
                has_distortion(m.meta.wcs)]
    assert carried == {"NRCA1": [True, True], "NRCB4": [False, False]}
    log = (tmp_path / "out" / "ceers-apply-wcs.log").read_text()
    assert "no file for nrcb4" in log and "residual distortion inserted" in log
