"""tools/compare_outputs.py on tiny output folders: what it calls identical and what it catches."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "compare_outputs.py"
RA, DEC = 214.9, 52.9


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_outputs", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_wcs(east_mas=0.0):
    """A 0.031"/pixel TAN gwcs centred on (RA, DEC), moved ``east_mas`` east."""
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs.wcs import WCS

    scale = 0.031 / 3600
    ra = RA + east_mas / 3.6e6 / np.cos(np.deg2rad(DEC))
    transform = ((models.Shift(-16) & models.Shift(-16)) | (models.Scale(scale) & models.Scale(scale))
                 | models.Pix2Sky_TAN() | models.RotateNative2Celestial(ra, DEC, 180))
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    return WCS([(detector, transform), (sky, None)])


def write_image(path, east_mas=0.0):
    from jwst.datamodels import ImageModel  # on every jwst (1.7.2's stdatamodels has no .jwst)

    with ImageModel(data=np.arange(32 * 32, dtype=np.float32).reshape(32, 32)) as model:
        model.meta.wcs = tiny_wcs(east_mas)
        model.meta.filename = path.name
        model.save(path)


def write_model(path, east_mas=0.0, when="2026-01-01T00:00:00Z"):
    import asdf

    asdf.AsdfFile({"wcs": tiny_wcs(east_mas), "status": "COMPLETE", "written": when}).write_to(path)


def write_results(path, status="COMPLETE", rmse=12.345678901234):
    from astropy.table import Table

    table = Table({"image": ["a_cal.fits", "b_cal.fits"], "status": ["COMPLETE", status],
                   "nmatch": [31, 29], "rmse": [11.0, rmse]})
    table.meta["abs_refcat"] = str(path.parent / "refcat.ecsv")
    table.write(path, format="ascii.ecsv", overwrite=True)


def make_output(folder, when="2026-01-01T00:00:00Z"):
    (folder / "tweakreg_wcs").mkdir(parents=True)
    write_image(folder / "a_tweakreg.fits")
    write_model(folder / "tweakreg_wcs" / "a_tweakreg.asdf", when=when)
    write_results(folder / "v_f200w_tweakreg_results.ecsv")
    (folder / "v_f200w_manifest.json").write_text(json.dumps(
        {"status": "COMPLETE", "written": when, "complete": 2,
         "inputs": [{"path": str(folder / "cal" / "a_cal.fits"), "size": 100}]}))
    (folder / "v_f200w_alignment_report.html").write_text(f"<p>{when}</p>")
    return folder


@pytest.fixture
def pair(tmp_path):
    """Two output folders of 'the same run' at different places and times."""
    return (make_output(tmp_path / "a"),
            make_output(tmp_path / "b", when="2026-02-02T11:11:11Z"))


def run(tool, a, b, capsys):
    code = tool.main([str(a), str(b)])
    return code, capsys.readouterr().out


def test_same_run_elsewhere_and_later_is_identical(tool, pair, capsys):
    code, out = run(tool, *pair, capsys)
    assert code == 0, out
    assert "5 files, 2 WCS compared (largest difference 0 mas" in out
    assert "IDENTICAL" in out


def test_wcs_moved_1e_3_mas_is_caught_in_image_and_model(tool, pair, capsys):
    a, b = pair
    write_image(b / "a_tweakreg.fits", east_mas=1e-3)
    write_model(b / "tweakreg_wcs" / "a_tweakreg.asdf", east_mas=1e-3)
    code, out = run(tool, a, b, capsys)
    assert code == 1
    lines = [line for line in out.splitlines() if "WCS differs by" in line]
    assert len(lines) == 2, out
    for line in lines:
        assert float(line.split()[2]) == pytest.approx(1e-3, rel=1e-3)


def test_status_float_and_missing_file_are_caught(tool, pair, capsys):
    a, b = pair
    write_results(b / "v_f200w_tweakreg_results.ecsv", status="FAILED")
    code, out = run(tool, a, b, capsys)
    assert code == 1 and "status: 1 rows differ" in out

    write_results(b / "v_f200w_tweakreg_results.ecsv", rmse=12.345678901234 * (1 + 1e-7))
    code, out = run(tool, a, b, capsys)
    assert code == 1 and "rmse: 1 rows differ" in out
    # Below the tables' relative tolerance (1e-9): the same.
    write_results(b / "v_f200w_tweakreg_results.ecsv", rmse=12.345678901234 * (1 + 1e-12))
    assert run(tool, a, b, capsys)[0] == 0

    manifest = json.loads((b / "v_f200w_manifest.json").read_text())
    manifest["status"] = "FAILED"
    (b / "v_f200w_manifest.json").write_text(json.dumps(manifest))
    code, out = run(tool, a, b, capsys)
    assert code == 1 and "/status: 'COMPLETE' vs 'FAILED'" in out

    shutil.copy(a / "v_f200w_manifest.json", b / "v_f200w_manifest.json")
    (b / "v_f200w_alignment_report.html").unlink()
    code, out = run(tool, a, b, capsys)
    assert code == 1 and "only in A" in out
