"""
What a run says and what it refuses (issues 29 and 31): one status vocabulary, group
outcomes and exit statuses, results that keep long names, ``--resume`` judged from a
manifest, no overwriting of files this run did not make, one run per output folder.
"""

import os
import shutil
from pathlib import Path

import pytest
from astropy.table import Table
from conftest import file_digest, module_tmp, shift_wcs, small_hostile_visit

from ceers_steps.cli.commands import align_main, apply_wcs_main

VISIT, FILTER = "jw01345001001", "f200w"
NAME = f"{VISIT}_{FILTER}"


@pytest.fixture(scope="module")
def pristine(request, tmp_path_factory):
    """2 SW detectors x 2 dithers, 1024^2, built-in truth; never modified."""
    return small_hostile_visit(module_tmp(request, tmp_path_factory, "outcomes"), "calibrated")


@pytest.fixture
def cal(pristine, tmp_path):
    """A fresh copy of the visit's cal files (and refcat) in tmp_path/calibrated."""
    dest = tmp_path / "calibrated"
    shutil.copytree(pristine["cal"], dest)
    return dest


def _align(pristine, cal, out, *extra, refcat=True, all_groups=False):
    args = (["--all"] if all_groups else [VISIT, FILTER])
    args += ["--input-dir", str(cal), "--output-dir", str(out), "--n-jobs", "1",
             "--params-dir", str(pristine["no_params"]), *extra]
    if refcat:
        args += ["--abs-refcat", str(cal / "refcat.ecsv")]
    return align_main(args)


def _summary_line(printed, name):
    return next(ln for ln in printed.splitlines() if ln.startswith(name))


# --- one vocabulary; group outcomes and exit statuses (issue 31; issue 29 findings 4, 5) -------


def test_status_words_are_jwst_ones_everywhere(pristine, cal, tmp_path, capsys):
    """COMPLETE / FAILED in the results table, the report, the summary and the console;
    tweakwcs' words only in ``fit_status``."""
    out = tmp_path / "out"
    assert _align(pristine, cal, out, all_groups=True) == 0
    printed = capsys.readouterr().out
    table = Table.read(out / f"{NAME}_tweakreg_results.ecsv")
    assert set(table["status"]) == {"COMPLETE"}
    assert set(table["fit_status"]) <= {"SUCCESS", "REFERENCE"}
    assert "SUCCESS" not in printed.replace("fit_status", "")
    report = (out / f"{NAME}_alignment_report.html").read_text()
    assert "data-col='status'>COMPLETE" in report and ">SUCCESS<" not in report
    summary = Table.read(out / "survey_summary.ecsv")
    assert set(summary["status"]) == {"COMPLETE"} and set(summary["group_status"]) == {"COMPLETE"}
    line = _summary_line(printed, NAME).split()
    assert line[1:4] == ["4", "4", "0"] and line[5] == "COMPLETE"
    assert "ceers-align: 4 images COMPLETE, 0 FAILED" in printed


def test_relative_reference_says_not_moved(pristine, cal, tmp_path, capsys):
    """Without a refcat, the reference image of each relative fit is COMPLETE and the console
    says in words that it was not moved (not 'REFERENCE', not 'not aligned')."""
    out = tmp_path / "out"
    assert _align(pristine, cal, out, refcat=False) == 0
    captured = capsys.readouterr()
    table = Table.read(out / f"{NAME}_tweakreg_results.ecsv")
    reference = table["fit_status"] == "REFERENCE"
    assert reference.sum() == 2  # one per detector's relative fit
    assert set(table["status"]) == {"COMPLETE"}
    assert "not moved, the others were aligned to it" in captured.out
    assert "not aligned" not in captured.out + captured.err


def test_some_images_failed_exit_1_and_named(pristine, cal, tmp_path, capsys):
    """One image 10' off: the others are aligned, the group is not COMPLETE, the exit status
    is 1 and the image is named on stderr with its reason."""
    bad = pristine["names"][1]
    shift_wcs(cal / bad, 600.0)
    out = tmp_path / "out"
    assert _align(pristine, cal, out, all_groups=True) == 1
    captured = capsys.readouterr()
    line = _summary_line(captured.out, NAME)
    assert line.split()[1:4] == ["4", "3", "1"] and "FAILED: 1 of 4 images not aligned" in line
    assert "parameters: defaults" in line
    assert any(bad in ln and "FAILED" in ln and "reference catalog" in ln
               for ln in captured.err.splitlines())
    summary = Table.read(out / "survey_summary.ecsv")
    assert list(summary["group_status"]) == ["FAILED"] * 4
    assert (summary["status"] == "COMPLETE").sum() == 3


@pytest.mark.parametrize("case", ["single_image_no_refcat", "all_10_arcmin_off"])
def test_group_with_no_image_aligned_is_failed(pristine, cal, tmp_path, capsys, case):
    """Issue 29 finding 4: nothing aligned is FAILED with exit 1, for one group and --all."""
    if case == "single_image_no_refcat":
        for name in pristine["names"][1:]:
            (cal / name).unlink()
    else:
        for name in pristine["names"]:
            shift_wcs(cal / name, 600.0)
    refcat = case != "single_image_no_refcat"
    assert _align(pristine, cal, tmp_path / "one", refcat=refcat) == 1
    line = _summary_line(capsys.readouterr().out, NAME)
    assert " FAILED: no image aligned" in line and " COMPLETE" not in line
    assert _align(pristine, cal, tmp_path / "all", refcat=refcat, all_groups=True) == 1
    line = _summary_line(capsys.readouterr().out, NAME)
    assert " FAILED: no image aligned" in line
    summary = Table.read(tmp_path / "all" / "survey_summary.ecsv")
    assert set(summary["group_status"]) == {"FAILED"}
    assert not any(s.startswith("COMPLETE") for s in summary["status"])


def test_long_file_names_are_not_cut(pristine, cal, tmp_path, capsys):
    """Issue 29 finding 5: names over 64 characters stay whole; the images are COMPLETE in the
    results, the summary and the index, and --resume leaves the group alone."""
    long_names = []
    for name in pristine["names"]:
        new = name.replace("_cal.fits", "_reprocessed_2026_with_a_long_descriptive_tag_cal.fits")
        (cal / name).rename(cal / new)
        long_names.append(new)
    assert min(len(n) for n in long_names) > 64
    out = tmp_path / "out"
    assert _align(pristine, cal, out, all_groups=True) == 0
    table = Table.read(out / f"{NAME}_tweakreg_results.ecsv")
    assert set(table["image"]) == set(long_names)
    summary = Table.read(out / "survey_summary.ecsv")
    assert sorted(summary["image"]) == sorted(long_names)
    assert set(summary["status"]) == {"COMPLETE"}
    assert "<td data-col='aligned'>4</td>" in (out / "survey_index.html").read_text()
    capsys.readouterr()
    assert _align(pristine, cal, out, "--resume", all_groups=True) == 0
    assert "SKIPPED" in _summary_line(capsys.readouterr().out, NAME)


# --- no command writes over files it did not make (issue 29 finding 2) -----------------------


def _digests(folder, pattern="*"):
    return {p.name: file_digest(p) for p in sorted(Path(folder).glob(pattern)) if p.is_file()}


def test_apply_wcs_never_replaces_existing_cal_files(pristine, cal, tmp_path, capsys):
    """``--input-suffix tweakreg --output-suffix cal`` into a folder of cal files: refused,
    naming a cal file; every cal file unchanged; nothing else written."""
    out = tmp_path / "out"
    assert _align(pristine, cal, out) == 0
    for name in pristine["names"]:
        shutil.copyfile(cal / name, cal / name.replace("_cal.fits", "_tweakreg.fits"))
    before = _digests(cal)
    capsys.readouterr()
    code = apply_wcs_main(["--all", "--input-dir", str(cal), "--output-dir", str(cal),
                           "--input-suffix", "tweakreg", "--output-suffix", "cal",
                           "--wcs-dir", str(out / "tweakreg_wcs"), "--n-jobs", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert "_cal.fits exists already" in last and "--overwrite" in last
    assert _digests(cal) == before
    assert not [p for p in cal.rglob("*") if ".part" in p.name or p.name.startswith(".ceers")]


def test_rerun_into_the_same_folder_is_refused_unless_asked(pristine, cal, tmp_path, capsys):
    """The same command twice into one folder: the second names the existing file and the
    flag and writes nothing; with --overwrite (or --resume for --all) it runs."""
    out = tmp_path / "out"
    assert _align(pristine, cal, out) == 0
    before = _digests(out, "*.*")
    capsys.readouterr()
    assert _align(pristine, cal, out) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(out) in last and "exists already" in last and "--overwrite" in last
    assert _digests(out, "*.*") == before
    assert _align(pristine, cal, out, "--overwrite") == 0

    survey = tmp_path / "survey"
    assert _align(pristine, cal, survey, all_groups=True) == 0
    capsys.readouterr()
    assert _align(pristine, cal, survey, all_groups=True) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "exists already" in last and "--overwrite" in last and "--resume" in last
    assert _align(pristine, cal, survey, "--resume", all_groups=True) == 0

    applied = tmp_path / "applied"
    args = ["--all", "--input-dir", str(cal), "--output-dir", str(applied),
            "--wcs-dir", str(out / "tweakreg_wcs"), "--n-jobs", "1"]
    assert apply_wcs_main(args) == 0
    before = _digests(applied)
    capsys.readouterr()
    assert apply_wcs_main(args) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "_tweakreg.fits exists already" in last and "--overwrite" in last
    assert _digests(applied) == before
    assert apply_wcs_main([*args, "--overwrite"]) == 0


# --- --resume judged from a manifest (issue 29 finding 3) ------------------------------------


def test_resume_redoes_a_failed_group_once_its_files_are_fixed(pristine, cal, tmp_path, capsys):
    bad = pristine["names"][1]
    shift_wcs(cal / bad, 600.0)
    out = tmp_path / "out"
    assert _align(pristine, cal, out, all_groups=True) == 1
    manifest = json_load(out / f"{NAME}_manifest.json")
    assert manifest["status"] == "FAILED" and manifest["failed"] == 1
    shutil.copyfile(pristine["cal"] / bad, cal / bad)  # the broken file replaced
    capsys.readouterr()
    assert _align(pristine, cal, out, "--resume", all_groups=True) == 0
    assert "SKIPPED" not in _summary_line(capsys.readouterr().out, NAME)
    summary = Table.read(out / "survey_summary.ecsv")
    assert set(summary["status"]) == {"COMPLETE"} and len(summary) == 4
    assert _align(pristine, cal, out, "--resume", all_groups=True) == 0
    assert "SKIPPED" in _summary_line(capsys.readouterr().out, NAME)


def test_resume_redoes_a_group_whose_parameters_changed(pristine, cal, tmp_path, capsys):
    """A relative-only run resumed with --abs-refcat is redone (absolute rows appear)."""
    out = tmp_path / "out"
    assert _align(pristine, cal, out, refcat=False, all_groups=True) == 0
    capsys.readouterr()
    assert _align(pristine, cal, out, "--resume", all_groups=True) == 0
    assert "SKIPPED" not in _summary_line(capsys.readouterr().out, NAME)
    table = Table.read(out / f"{NAME}_tweakreg_results.ecsv")
    assert set(table["stage"]) == {"relative", "absolute"}
    assert _align(pristine, cal, out, "--resume", all_groups=True) == 0
    assert "SKIPPED" in _summary_line(capsys.readouterr().out, NAME)
    os.utime(cal / "refcat.ecsv", ns=(1, 1))  # the reference catalog is an input too
    assert _align(pristine, cal, out, "--resume", all_groups=True) == 0
    assert "SKIPPED" not in _summary_line(capsys.readouterr().out, NAME)


def test_resume_cleans_half_written_files_of_a_killed_run(pristine, cal, tmp_path, capsys):
    out = tmp_path / "out"
    assert _align(pristine, cal, out, all_groups=True) == 0
    part = out / "tweakreg_wcs" / f".{pristine['names'][0]}.x1y2.part"
    part.mkdir()
    (part / pristine["names"][0]).write_bytes(b"half")
    assert _align(pristine, cal, out, "--resume", all_groups=True) == 0
    assert not part.exists()
    assert not [p for p in out.rglob("*") if ".part" in p.name]


def json_load(path):
    import json

    return json.loads(Path(path).read_text())


# --- one run per output folder (issue 29 finding 9) ------------------------------------------


def _write_lock(folder, pid):
    import json
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".ceers-steps.lock").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "command": "ceers-align --all (test)",
         "started": "2026-01-01T00:00:00Z"}))


def test_second_run_into_a_folder_in_use_is_refused(pristine, cal, tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(out, holder.pid)
        assert _align(pristine, cal, out, all_groups=True) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"output folder {out} is in use" in last and f"pid {holder.pid}" in last
        assert _align(pristine, cal, out) == 1
        applied = apply_wcs_main(["--all", "--input-dir", str(cal), "--output-dir", str(out),
                                  "--wcs-dir", str(out), "--n-jobs", "1"])
        assert applied == 1
        assert sorted(p.name for p in out.iterdir()) == [".ceers-steps.lock"]
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale, removed, and the run goes on.
    assert _align(pristine, cal, out, all_groups=True) == 0
    assert not (out / ".ceers-steps.lock").exists()


def test_two_surveys_into_one_folder_at_once(pristine, cal, tmp_path, capsys):
    """A real first run holds the folder while it works; the second refuses at once."""
    import subprocess
    import sys
    import time

    from conftest import clean_env

    out = tmp_path / "out"
    exe = os.path.join(os.path.dirname(sys.executable), "ceers-align")
    with (tmp_path / "first.err").open("w") as err:
        first = subprocess.Popen([exe, "--all", "--input-dir", str(cal), "--output-dir",
                                  str(out), "--n-jobs", "1", "--params-dir",
                                  str(pristine["no_params"]), "--abs-refcat",
                                  str(cal / "refcat.ecsv")],
                                 env=clean_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 60
        while not (out / ".ceers-steps.lock").exists() and first.poll() is None:
            assert time.time() < deadline
            time.sleep(0.02)
        assert first.poll() is None, (tmp_path / "first.err").read_text()
        assert _align(pristine, cal, out, all_groups=True) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"pid {first.pid}" in last
    finally:
        assert first.wait(timeout=300) == 0, (tmp_path / "first.err").read_text()
    assert set(Table.read(out / "survey_summary.ecsv")["status"]) == {"COMPLETE"}
