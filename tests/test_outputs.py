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
