"""No output ever overwrites an input, and no two inputs are written to one output."""

import shutil

import pytest
from conftest import file_digest, run_cli

from ceers_steps import ApplyWcsStep, CatalogStep, CeersTweakRegStep


@pytest.fixture
def models_dir(small_visit_dir, tmp_path):
    """Saved WCS models of the small visit in tmp_path/aligned/tweakreg_wcs."""
    CatalogStep.call(str(small_visit_dir["asn"]), output_dir=str(tmp_path / "cats"))
    CeersTweakRegStep.call(str(tmp_path / "cats" / "asn_cat_asn.json"), minobj=8, abs_minobj=8,
                           abs_refcat=str(small_visit_dir["refcat"]), save_wcs=True,
                           output_dir=str(tmp_path / "aligned"))
    return tmp_path / "aligned" / "tweakreg_wcs"


def test_apply_wcs_refuses_to_write_over_its_input(small_visit_dir, models_dir, tmp_path):
    folder = tmp_path / "cal"
    shutil.copytree(small_visit_dir["dir"], folder)
    path = folder / small_visit_dir["paths"][0].name
    before = file_digest(path)
    with pytest.raises(ValueError, match=f"{path.name}: this output would overwrite the input"):
        ApplyWcsStep.call(str(path), wcs_dir=str(models_dir), output_dir=str(folder), suffix="cal",
                          save_results=True)
    assert file_digest(path) == before


def test_ceers_apply_wcs_image_in_place_is_refused(small_visit_dir, models_dir, tmp_path):
    folder = tmp_path / "done"
    folder.mkdir()
    target = folder / small_visit_dir["paths"][0].name.replace("_cal.fits", "_tweakreg.fits")
    shutil.copy(small_visit_dir["paths"][0], target)
    before = file_digest(target)
    proc = run_cli(["ceers-apply-wcs", "--image", str(target), "--output-dir", str(folder),
                    "--wcs-dir", str(models_dir)], cwd=tmp_path)
    assert proc.returncode != 0
    assert "would overwrite the input" in proc.stderr and target.name in proc.stderr
    assert file_digest(target) == before


def test_two_inputs_never_map_to_one_output(small_visit_dir, tmp_path):
    """img_cal.fits and img_rate.fits would both become img_tweakreg.fits: refused, naming both."""
    names = []
    for sub, suffix, src in (("a", "cal", small_visit_dir["paths"][0]),
                             ("b", "rate", small_visit_dir["paths"][1])):
        (tmp_path / sub).mkdir()
        dst = tmp_path / sub / f"img_{suffix}.fits"
        shutil.copy(src, dst)
        names.append(str(dst))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="img_cal.fits and img_rate.fits would both be written to"):
        CeersTweakRegStep.call(names, abs_refcat=str(small_visit_dir["refcat"]), minobj=8,
                               abs_minobj=8, save_results=True, output_dir=str(out))
    assert not list(out.glob("*.fits")) and not list(out.rglob("*.asdf"))


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


def test_non_jwst_name_with_the_output_suffix_is_refused_in_place(small_visit_dir, tmp_path):
    """img_tweakreg.fits loses its known suffix: its output in its own folder would be itself."""
    a = _copy(small_visit_dir["paths"][0], tmp_path / "img_tweakreg.fits")
    b = _copy(small_visit_dir["paths"][2], tmp_path / "other.fits")
    digests = {p: file_digest(p) for p in (a, b)}
    with pytest.raises(ValueError, match="img_tweakreg.fits: this output would overwrite the input"):
        CeersTweakRegStep.call([str(a), str(b)], minobj=8, abs_minobj=8, save_results=True,
                               abs_refcat=str(small_visit_dir["refcat"]), output_dir=str(tmp_path))
    assert {p: file_digest(p) for p in (a, b)} == digests


def test_saved_catalogs_never_collide_or_replace_a_catalog(small_visit_dir, tmp_path):
    """save_catalogs: two inputs with one catalog name, or a catalog the inputs name, refused
    before any catalog is written."""
    a = _copy(small_visit_dir["paths"][0], tmp_path / "a" / "img.fits")
    b = _copy(small_visit_dir["paths"][2], tmp_path / "b" / "img.fits")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="img.fits and img.fits would both be written to"):
        CeersTweakRegStep.call([str(a), str(b)], save_catalogs=True, use_custom_catalogs=False,
                               minobj=8, output_dir=str(out), save_fit_results=False)
    assert not list(out.glob("*_cat.*"))
    # The user's catalog of an image, where this run would save the one it detects.
    CatalogStep.call(str(small_visit_dir["asn"]), output_dir=str(tmp_path / "cats"))
    asn = tmp_path / "cats" / "asn_cat_asn.json"
    user_cat = tmp_path / "cats" / small_visit_dir["paths"][0].name.replace(".fits", "_cat.ecsv")
    before = file_digest(user_cat)
    with pytest.raises(ValueError, match=f"{user_cat.name}: this output would overwrite the input"):
        CeersTweakRegStep.call(str(asn), save_catalogs=True, use_custom_catalogs=False, minobj=8,
                               output_dir=str(tmp_path / "cats"), save_fit_results=False)
    assert file_digest(user_cat) == before


def test_own_detection_of_files_uses_the_jwst_parameters(small_visit_dir, tmp_path):
    """Files detected in workers get the step's star-finder settings (brightest here)."""
    from astropy.table import Table

    out = tmp_path / "out"
    CeersTweakRegStep.call(str(small_visit_dir["asn"]), save_catalogs=True, brightest=12,
                           minobj=8, output_dir=str(out), save_fit_results=False)
    saved = sorted(out.glob("*_cat.ecsv"))
    assert len(saved) == 4
    assert [len(Table.read(p)) for p in saved] == [12] * 4


def test_preloaded_reference_catalog_is_not_read_again(builtin_visit, monkeypatch):
    """The pipeline reads abs_refcat once and hands it to the step: the step does not reread."""
    from astropy.table import Table
    from conftest import library_of, models_of

    from ceers_steps.steps import tweakreg_step

    step = CeersTweakRegStep(abs_refcat=str(builtin_visit["refcat"]), minobj=8, abs_minobj=8,
                             save_fit_results=False)
    step.preloaded_refcat = step.read_refcat()

    def reread(*args, **kwargs):
        raise AssertionError("abs_refcat read a second time")

    monkeypatch.setattr(tweakreg_step, "read_reference_catalogs", reread)
    out = models_of(step.run(library_of(builtin_visit["visit"])))
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in out)
    assert isinstance(step.preloaded_refcat, Table)
