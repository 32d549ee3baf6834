"""The README's embedded example: ceers-demo runs the whole chain, and stage 3 runs offline on it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env, module_tmp, run_cli

ROOT = Path(__file__).resolve().parents[2]


def _jwst_version():
    from importlib.metadata import version

    return tuple(int(p) for p in version("jwst").split(".")[:2])


@pytest.fixture(scope="module")
def demo(request, tmp_path_factory):
    """``ceers-demo`` as a user runs it (a console command): its folder and its stdout."""
    out = module_tmp(request, tmp_path_factory, "demo") / "demo_output"
    proc = run_cli(["ceers-demo", "--output-dir", str(out)], cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, proc.stdout + proc.stderr


def test_demo_aligns_to_truth(demo):
    out, text, _ = demo
    rows = {name: (float(a), float(b)) for name, a, b in
            re.findall(r"^\s+(as assigned \(injected error\)|after ceers_tweak|after apply_wcs)"
                       r"\s+([\d.]+)\s+([\d.]+)$", text, re.M)}
    assert rows["as assigned (injected error)"][0] > 300
    # ~40 reference matches (2 detectors x 3 dithers of 1024x1024) with 10 mas intrinsic offsets:
    # the fit reports 2.4-3.1 mas (1 sigma) per image; measured 5.25 mas on this draw (seeds 2-6
    # of the demo: 1.5-3.5 mas). Aligned means far below the ~500 mas injected error.
    assert rows["after ceers_tweak"][0] < 8
    assert rows["after apply_wcs"] == rows["after ceers_tweak"]
    assert (out / "aligned" / "tweakreg_results_all.jw01345001001_f200w.txt").exists()


def test_demo_is_small_and_says_what_it_wrote(demo):
    out, text, _ = demo
    files = [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    assert size < 150 * 2**20
    match = re.search(r"^Wrote (\d+) files, ([\d.]+) MiB, in .* \(([\d.]+) s\)$", text, re.M)
    assert match and int(match.group(1)) == len(files)
    assert float(match.group(2)) == pytest.approx(size / 2**20, abs=0.1)


def test_demo_log_has_each_line_once(demo):
    """Every log record appears once, in demo.log; the console shows the summary only."""
    out, text, _ = demo
    log = (out / "demo.log").read_text()
    records = [line.split(" - ", 1)[1] for line in log.splitlines()
               if re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - ", line)]
    assert len(records) > 20
    # Each of the demo's three step runs logs every event once (jwst's closing 'Results used
    # jwst version' line comes once per run, so runs are compared separately).
    runs, current = [], []
    for record in records:
        if " running with args " in record and current:
            runs.append(current)
            current = []
        current.append(record)
    runs.append(current)
    assert len(runs) >= 3
    for run in runs:
        assert len(run) == len(set(run)), [r for r in run if run.count(r) > 1][:5]
    assert "stpipe" not in text and " - INFO - " not in text


def test_stage3_readme_command_runs_offline_to_a_mosaic(demo):
    """The README's stage-3 command, as written, with no CRDS variables and no network."""
    from jwst.resample import ResampleStep

    from ceers_steps.core.compat import datamodels

    if "drizpars" in ResampleStep.reference_file_types:
        pytest.skip("this jwst's resample asks CRDS for a drizpars reference file (and for the "
                    "CRDS context even when it is overridden): stage 3 needs CRDS here")

    out, _, _ = demo
    env = clean_env()
    env.pop("CRDS_PATH", None)
    env.pop("CRDS_SERVER_URL", None)
    env["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    strun = Path(sys.executable).parent / "strun"
    cmd = [str(strun), str(ROOT / "pipelines" / "calwebb_image3_ceers.asdf"),
           str(out / "calibrated" / "asn.json"),
           f"--steps.tweakreg.steps.tweakreg.abs_refcat={out / 'calibrated' / 'refcat.ecsv'}",
           "--steps.source_catalog.skip=true", f"--output_dir={out / 'stage3'}"]
    if _jwst_version() < (1, 17):
        # jwst 1.16's skymatch 'match' fails on these synthetic footprints ("cannot convert
        # float NaN to integer"; with jwst's own tweakreg too): the README says to use this.
        cmd.append("--steps.skymatch.skymethod=global")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CRDS" not in proc.stderr.replace("CRDS_", "")
    mosaic = out / "stage3" / "synthetic_visit_i2d.fits"
    assert mosaic.exists()
    with datamodels.open(mosaic) as i2d:
        assert i2d.meta.cal_step.resample == "COMPLETE"
        assert i2d.meta.cal_step.outlier_detection == "COMPLETE"
        assert i2d.meta.cal_step.tweakreg == "COMPLETE"
        assert (i2d.data[i2d.data == i2d.data] != 0).any()
    assert len(list((out / "stage3").glob("*_crf.fits"))) == 6


# --- The console: warnings and a summary; the full log in the output folder ---------------------

def _console_lines(text):
    return [line for line in text.splitlines() if line.strip()]


def test_demo_console_is_short(demo):
    """``ceers-demo``: <= 25 lines, no log records on the console; the log file has them."""
    out, _, console = demo
    assert len(_console_lines(console)) <= 25, console
    assert " - INFO - " not in console and "parameters are" not in console
    log = (out / "demo.log").read_text()
    assert "CatalogStep parameters are" in log or "Step CatalogStep running" in log


@pytest.fixture(scope="module")
def demo_files(request, demo, tmp_path_factory):
    """A copy of the demo's cal files and reference catalog, with its saved WCS models."""
    import shutil

    out, _, _ = demo
    work = module_tmp(request, tmp_path_factory, "console")
    shutil.copytree(out / "calibrated", work / "cal")
    return work, work / "cal", out / "aligned" / "tweakreg_wcs"


@pytest.mark.parametrize("args", [["jw01345001001", "f200w"], ["--all"]], ids=["group", "all"])
def test_ceers_align_console_is_short(demo_files, args):
    """
    ``ceers-align VISIT FILTER`` and ``--all`` on the demo's files: <= 25 lines (the issue's
    limit; one of them the warning naming the images graded check: the demo's uncertainty rests
    on ~20 reference sources), a log file.
    """
    work, cal, _ = demo_files
    out = work / f"align_{args[0]}"
    proc = run_cli(["ceers-align", *args, "--input-dir", str(cal), "--output-dir", str(out),
                    "--abs-refcat", str(cal / "refcat.ecsv")], cwd=work)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    assert len(_console_lines(console)) <= 25, console
    assert " - INFO - " not in console
    logs = list(out.glob("*.log"))
    assert len(logs) == 1 and f"ceers-align: log {logs[0]}" in proc.stdout
    assert " - INFO - " in logs[0].read_text()


def test_ceers_apply_wcs_writes_beside_the_input_and_says_so(demo_files, tmp_path):
    """``--image`` from another folder: the output goes beside the input (no ./calibrated)."""
    _, cal, wcs_dir = demo_files
    image = sorted(cal.glob("*_cal.fits"))[0]
    proc = run_cli(["ceers-apply-wcs", "--image", str(image), "--wcs-dir", str(wcs_dir)],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = cal / image.name.replace("_cal.fits", "_tweakreg.fits")
    assert written.exists() and not (tmp_path / "calibrated").exists()
    assert proc.stdout.splitlines() == [
        f"ceers-apply-wcs: wrote 1 image ({written.name}) in {cal}; WCS models from {wcs_dir}; "
        f"log {cal / 'ceers-apply-wcs.log'}"]
    assert proc.stderr == ""
    # --all: one summary line; --verbose: the log on the console too.
    proc = run_cli(["ceers-apply-wcs", "--all", "--input-dir", str(cal), "--output-dir",
                    str(tmp_path / "all"), "--wcs-dir", str(wcs_dir)], cwd=tmp_path)
    assert proc.returncode == 0 and len(_console_lines(proc.stdout + proc.stderr)) == 1
    assert len(list((tmp_path / "all").glob("*_tweakreg.fits"))) == 6
    proc = run_cli(["ceers-apply-wcs", "--image", str(image), "--output-dir",
                    str(tmp_path / "verbose"), "--wcs-dir", str(wcs_dir), "--verbose"],
                   cwd=tmp_path)
    assert proc.returncode == 0 and " - INFO - " in proc.stderr


def test_failures_are_named_on_the_quiet_console(demo_files, tmp_path):
    """Each failed image is named on the console with its reason (the log is not needed)."""
    import shutil

    _, cal, wcs_dir = demo_files
    bad_cal = tmp_path / "cal"
    shutil.copytree(cal, bad_cal, ignore=shutil.ignore_patterns("*_tweakreg.fits", "*.log"))
    images = sorted(bad_cal.glob("*_cal.fits"))
    data = images[1].read_bytes()
    images[1].write_bytes(data[: len(data) // 2])
    proc = run_cli(["ceers-align", "--all", "--input-dir", str(bad_cal), "--output-dir",
                    str(tmp_path / "out"), "--abs-refcat", str(bad_cal / "refcat.ecsv")],
                   cwd=tmp_path)
    console = proc.stdout + proc.stderr
    named = [line for line in console.splitlines() if images[1].name in line]
    assert named and any("cannot be read" in line for line in named), console
    # A missing WCS model: the image and the missing file named.
    models = tmp_path / "models"
    shutil.copytree(wcs_dir, models)
    missing = sorted(models.glob("*.asdf"))[0]
    missing.unlink()
    proc = run_cli(["ceers-apply-wcs", "--all", "--input-dir", str(cal), "--output-dir",
                    str(tmp_path / "applied"), "--wcs-dir", str(models)], cwd=tmp_path)
    assert proc.returncode == 1 and missing.name in proc.stderr, proc.stderr
    proc = run_cli(["ceers-apply-wcs", "--all", "--input-dir", str(cal), "--output-dir",
                    str(tmp_path / "applied"), "--wcs-dir", str(models), "--skip-missing"],
                   cwd=tmp_path)
    assert proc.returncode == 0
    assert any(missing.name in line and "unchanged" in line for line in proc.stderr.splitlines())


def test_demo_grades_no_image_good_beyond_its_uncertainty(demo):
    """
    No image of the demo is graded good whose true error at its centre exceeds 2.45x
    its reported err_center (the 2-D 95% radius). The demo's ~17 reference sources
    put nrca1's three images 7.5-7.9 mas from the truth; before issue 28 they were
    graded good with err_center 2.4-2.6 mas (3 sigma).
    """
    import asdf
    from astropy.table import Table

    from ceers_steps.core.wcs_utils import angular_separation_mas
    from ceers_steps.synthetic import make_visit

    out, _, _ = demo
    visit = make_visit(detectors=("nrca1", "nrca3"), n_dithers=3, shape=(1024, 1024),
                       use_real=False, seed=1)  # the demo's own visit (its defaults)
    table = Table.read(out / "aligned" / "jw01345001001_f200w_tweakreg_results.ecsv")
    err_center = {str(r["image"]): float(r["err_center"]) for r in table
                  if r["stage"] == "absolute"}
    html = (out / "aligned" / "jw01345001001_f200w_alignment_report.html").read_text()
    grade = dict(re.findall(r"<tr data-image='([^']+)'>.*?data-col='grade'>(\w+)<", html, re.S))
    assert len(grade) == len(visit.images) == len(err_center)
    c = 511.5
    for image in visit.images:
        name = image.model.meta.filename
        wcs_file = out / "aligned" / "tweakreg_wcs" / name.replace("_cal.fits", "_tweakreg.asdf")
        with asdf.open(wcs_file) as af:
            aligned = af["wcs"]
            true_error = float(angular_separation_mas(*aligned(c, c), *image.true_wcs(c, c)))
        if grade[name] == "good":
            assert true_error < 2.45 * err_center[name], (name, true_error, err_center[name])
