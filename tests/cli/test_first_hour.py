"""What a new user meets first: versions, paths that mean one thing, runs that say what they are."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import clean_env, models_of, run_cli

from ceers_steps import ApplyWcsStep, CatalogStep, CeersTweakRegStep
from ceers_steps.core.engine import _Progress


@pytest.mark.parametrize("command", ["ceers-demo", "ceers-align", "ceers-apply-wcs",
                                     "ceers-convert-cfg"])
def test_version_on_every_console_command(command, tmp_path):
    from ceers_steps import __version__

    proc = run_cli([command, "--version"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{command} (ceers-steps {__version__}, jwst " in proc.stdout


def test_progress_estimates_time_left_only_from_enough_tasks(caplog):
    with caplog.at_level(logging.INFO, logger="ceers_steps"):
        progress = _Progress("Work", 12, interval=0.0)
        for _ in range(12):
            progress.step()
    # stpipe < 0.5 hands each record to the root logger twice (its delegation handler):
    # the same record object, captured twice, is one log line.
    records = list({id(r): r for r in caplog.records}.values())
    lines = [r.getMessage() for r in records if r.getMessage().startswith("Work:")]
    assert len(lines) == 12
    assert "left" not in lines[0] and "left" in lines[5] and "left" not in lines[-1]
    assert all(re.search(r"\d+/12 done, [\d.]+ s elapsed", line) for line in lines)


@pytest.fixture
def catalogued(small_visit_dir, tmp_path):
    CatalogStep.call(str(small_visit_dir["asn"]), output_dir=str(tmp_path / "cats"))
    return tmp_path / "cats" / "asn_cat_asn.json"


def test_jwst_reads_our_catalog_association_from_any_directory(small_visit_dir, catalogued,
                                                                tmp_path):
    """jwst's own TweakRegStep, run from another folder, finds every catalog we wrote."""
    from jwst.tweakreg.tweakreg_step import TweakRegStep

    if "use_custom_catalogs" not in TweakRegStep.spec:
        pytest.skip("this jwst's TweakRegStep takes no user catalogs (use_custom_catalogs came "
                    "later; CEERS patched jwst for it, ceers_tweak takes them on every version)")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "jwst_out").mkdir()  # jwst 1.16's stpipe does not create it
    env = clean_env()
    env["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    cmd = [str(Path(sys.executable).parent / "strun"), "tweakreg",
           os.path.relpath(catalogued, elsewhere), "--use_custom_catalogs=true",
           f"--abs_refcat={small_visit_dir['refcat']}", "--abs_separation=0.5",
           "--abs_tolerance=0.3", f"--output_dir={tmp_path / 'jwst_out'}"]
    proc = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("Using user-provided input catalog") == len(small_visit_dir["paths"])


def test_wcs_dir_means_the_same_in_both_steps(small_visit_dir, catalogued, tmp_path,
                                              monkeypatch):
    """ceers_tweak writes <output_dir>/tweakreg_wcs, apply_wcs reads it there, from any cwd."""
    out = tmp_path / "aligned"
    aligned = models_of(CeersTweakRegStep.call(str(catalogued), abs_refcat=str(small_visit_dir["refcat"]),
                                               minobj=8, abs_minobj=8, save_wcs=True,
                                               output_dir=str(out)))
    assert len(list((out / "tweakreg_wcs").glob("*_tweakreg.asdf"))) == 4
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    applied = models_of(ApplyWcsStep.call([str(p) for p in small_visit_dir["paths"]],
                                          output_dir=str(out)))
    grid = np.meshgrid(np.linspace(0, 1023, 5), np.linspace(0, 1023, 5))
    by_name = {m.meta.filename: m for m in aligned}
    for m in applied:
        np.testing.assert_allclose(m.meta.wcs(*grid), by_name[m.meta.filename].meta.wcs(*grid),
                                   rtol=0, atol=1e-10)


def test_results_come_last_and_a_rerun_says_so(small_visit_dir, catalogued, tmp_path, caplog):
    out = tmp_path / "aligned"
    kwargs = dict(abs_refcat=str(small_visit_dir["refcat"]), minobj=8, abs_minobj=8,
                  save_results=True, output_dir=str(out))
    CeersTweakRegStep.call(str(catalogued), **kwargs)
    results = out / "jw01345001001_f200w_tweakreg_results.ecsv"
    written = list(out.glob("*_tweakreg.fits")) + list((out / "tweakreg_wcs").glob("*.asdf"))
    assert len(written) == 8
    # The results tables are the last thing a run writes: their presence means a complete run.
    assert all(p.stat().st_mtime_ns <= results.stat().st_mtime_ns for p in written)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ceers_steps"):
        CeersTweakRegStep.call(str(catalogued), **kwargs)
    assert "holds results of an earlier run of 4 of these images" in caplog.text
    assert results.exists()


def test_failed_ceers_align_leaves_no_empty_folder(small_visit_dir, tmp_path):
    out = tmp_path / "never"
    proc = run_cli(["ceers-align", "jw01345001001", "f200w", "--input-dir",
                    str(small_visit_dir["dir"]), "--output-dir", str(out), "--abs-refcat",
                    str(tmp_path / "missing_refcat.ecsv")], cwd=tmp_path)
    assert proc.returncode == 1
    assert "missing_refcat.ecsv" in proc.stderr
    assert not out.exists()


def test_ceers_align_prints_the_table_once(small_visit_dir, tmp_path):
    proc = run_cli(["ceers-align", "jw01345001001", "f200w", "--input-dir",
                    str(small_visit_dir["dir"]), "--output-dir", str(tmp_path / "out"),
                    "--abs-refcat", str(small_visit_dir["refcat"])], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    both = proc.stdout + proc.stderr
    assert both.count("(rmse and shifts in mas)") == 1
    # The console has the summary; the full log is in the output folder.
    assert " - INFO - " not in both
    log = (tmp_path / "out" / "jw01345001001_f200w_ceers-align.log").read_text()
    assert f"ceers-align: log {tmp_path / 'out' / 'jw01345001001_f200w_ceers-align.log'}" in both
    assert "Results for jw01345001001_f200w: 4 images" in log
    # No record twice: one handler writes each (no second root handler). Python warnings of
    # third-party code, which older stpipe logs at each occurrence, are not our events.
    records = [line.split(" - ", 1)[1] for line in log.splitlines()
               if re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - ", line)
               and "site-packages" not in line]
    assert len(records) > 10 and len(records) == len(set(records))


def test_ceers_apply_wcs_logs_each_line_once(small_visit_dir, catalogued, tmp_path):
    CeersTweakRegStep.call(str(catalogued), abs_refcat=str(small_visit_dir["refcat"]), minobj=8,
                           abs_minobj=8, save_wcs=True, output_dir=str(tmp_path / "aligned"))
    proc = run_cli(["ceers-apply-wcs", "--all", "--input-dir", str(small_visit_dir["dir"]),
                    "--output-dir", str(tmp_path / "applied"), "--wcs-dir",
                    os.path.join("aligned", "tweakreg_wcs")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "applied").glob("*_tweakreg.fits"))) == 4
    log = (tmp_path / "applied" / "ceers-apply-wcs.log").read_text()
    lines = [line for line in log.splitlines() if " applied " in line]
    assert len(lines) == 4 and len(set(lines)) == 4
    assert " - INFO - " not in proc.stderr + proc.stdout
    assert proc.stdout.startswith("ceers-apply-wcs: wrote 4 images (<base>_tweakreg.fits) in ")


def test_failed_strun_leaves_no_empty_output_folder(small_visit_dir, tmp_path):
    """stpipe creates --output_dir when a run starts; a run that fails before writing removes it."""
    proc = run_cli(["strun", "ceers_align", str(small_visit_dir["asn"]), "--output_dir=new",
                    f"--steps.tweakreg.abs_refcat={tmp_path / 'missing.ecsv'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "reference catalog not found" in proc.stderr + proc.stdout
    assert not (tmp_path / "new").exists()
