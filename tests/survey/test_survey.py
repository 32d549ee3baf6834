"""``ceers-align --all``: every visit and filter of a folder, the survey summary, ``--resume``."""

import os
import signal
import subprocess
import sys
import time

import asdf
import numpy as np
import pytest
from astropy.table import Table
from conftest import clean_env, module_tmp

from ceers_steps.cli.commands import align_main
from ceers_steps.core.wcs_utils import angular_separation_mas
from ceers_steps.survey.survey import discover_groups, group_complete

# Two visits x two filters, 2 detectors x 2 dithers each (1024x1024, built-in truth): 16 images.
GROUPS = [("jw01345001001", "F200W", "02201", (0.45, -0.25)),
          ("jw01345001001", "F150W", "02101", (0.30, 0.20)),
          ("jw01345002001", "F200W", "02201", (-0.35, 0.15)),
          ("jw01345002001", "F150W", "02101", (0.10, -0.40))]


@pytest.fixture(scope="module")
def survey(request, tmp_path_factory):
    from ceers_steps.synthetic import make_visit

    root = module_tmp(request, tmp_path_factory, "survey")
    cal = root / "calibrated"
    cal.mkdir()
    truth = {}
    for visit_id, filt, group, shift in GROUPS:
        # One seed: the same sky and reference catalog for every group, each its own WCS error.
        v = make_visit(detectors=("nrca1", "nrcb4"), n_dithers=2, shape=(1024, 1024), noise=0.02,
                       use_real=False, seed=11, visit_id=visit_id, filter_name=filt, group=group,
                       visit_shift=shift)
        for image in v.images:
            image.model.save(cal / image.model.meta.filename)
            truth[image.model.meta.filename] = image.true_wcs
        refcat = root / "refcat.ecsv"
        v.refcat.write(refcat, overwrite=True)
    (root / "no_params").mkdir()
    return {"root": root, "cal": cal, "refcat": refcat, "truth": truth}


def _args(survey, out, *extra):
    return ["--all", "--input-dir", str(survey["cal"]), "--output-dir", str(out), "--abs-refcat",
            str(survey["refcat"]), "--params-dir", str(survey["root"] / "no_params"), *extra]


def test_groups_found_by_header(survey):
    groups, problems = discover_groups(survey["cal"])
    assert problems == []
    assert [(g.visit, g.filter, len(g.images)) for g in groups] == [
        ("jw01345001001", "f150w", 4), ("jw01345001001", "f200w", 4),
        ("jw01345002001", "f150w", 4), ("jw01345002001", "f200w", 4)]


def test_a_copy_of_a_cal_file_is_left_out(survey, tmp_path):
    """The same exposure and detector under a second name enters no fit twice."""
    for path in survey["cal"].glob("*_cal.fits"):
        (tmp_path / path.name).symlink_to(path)
    original = sorted(survey["cal"].glob("jw01345001001_*_cal.fits"))[0]
    (tmp_path / f"copy_{original.name}").symlink_to(original)
    groups, problems = discover_groups(tmp_path)
    assert [(p.name, why.split(" (")[0]) for p, why in problems] == [
        (f"copy_{original.name}", f"the same exposure and detector as {original.name}")]
    assert sum(len(g.images) for g in groups) == 16
    assert tmp_path / original.name in [p for g in groups for p in g.images]


def test_all_aligns_every_visit_and_filter(survey, tmp_path, capsys):
    out = tmp_path / "out"
    assert align_main(_args(survey, out, "--n-jobs", "2")) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == (f"ceers-align: survey index {out / 'survey_index.html'} (links every "
                           "report; open it in a browser)")
    summary = Table.read(out / "survey_summary.ecsv")
    assert len(summary) == 16 and set(summary["status"]) == {"COMPLETE"}
    assert summary["rmse"].unit == "mas"
    index = (out / "survey_index.html").read_text()
    for visit_id, filt, _, _ in GROUPS:
        name = f"{visit_id}_{filt.lower()}"
        assert (out / f"{name}_tweakreg_results.ecsv").exists()
        assert f"<a href='{name}_alignment_report.html'>report</a>" in index
        assert (out / f"{name}_alignment_report.html").exists()
    # Every image aligned to its truth (the saved WCS models), whatever group it was in.
    for name, true_wcs in survey["truth"].items():
        with asdf.open(out / "tweakreg_wcs" / name.replace("_cal.fits", "_tweakreg.asdf")) as af:
            wcs = af["wcs"]
            err = angular_separation_mas(*wcs(511.5, 511.5), *true_wcs(511.5, 511.5))
        assert err < 10.0, (name, err)


def test_one_bad_group_does_not_stop_the_survey(survey, tmp_path, capsys):
    """A group whose parameter file is broken is FAILED with the reason; the others run."""
    params = tmp_path / "params"
    params.mkdir()
    (params / "jw01345002001_f150w.asdf").write_text("not an asdf file")
    out = tmp_path / "out"
    args = _args(survey, out, "--n-jobs", "1")
    args[args.index("--params-dir") + 1] = str(params)
    assert align_main(args) == 1
    captured = capsys.readouterr()
    assert "jw01345002001_f150w" in captured.err and "not a readable stpipe parameter" in captured.err
    summary = Table.read(out / "survey_summary.ecsv")
    bad = summary["filter"] == "f150w"
    bad &= summary["visit"] == "jw01345002001"
    assert all(s.startswith("FAILED") for s in summary["status"][bad])
    assert set(summary["status"][~bad]) == {"COMPLETE"} and (~bad).sum() == 12


def test_resume_after_a_kill_redoes_only_unfinished_groups(survey, tmp_path, capsys):
    out = tmp_path / "out"
    exe = os.path.join(os.path.dirname(sys.executable), "ceers-align")
    proc = subprocess.Popen([exe, *_args(survey, out, "--n-jobs", "1")], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    groups, _ = discover_groups(survey["cal"])
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(group_complete(out, g) for g in groups):
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [g for g in groups if group_complete(out, g)]
    assert 1 <= len(done) < len(groups), "the kill did not land mid-survey"
    stamps = {g.name: (out / f"{g.name}_tweakreg_results.ecsv").stat().st_mtime_ns for g in done}

    assert align_main(_args(survey, out, "--n-jobs", "2", "--resume")) == 0
    printed = capsys.readouterr().out
    for g in groups:
        line = next(ln for ln in printed.splitlines() if ln.startswith(g.name))
        assert ("SKIPPED" in line) == (g.name in stamps), line
    for name, stamp in stamps.items():
        assert (out / f"{name}_tweakreg_results.ecsv").stat().st_mtime_ns == stamp
    summary = Table.read(out / "survey_summary.ecsv")
    assert len(summary) == 16 and set(summary["status"]) == {"COMPLETE"}
    assert np.all(np.isfinite(summary["rmse"]))


def _two_channel_visits(tmp_path):
    """
    Two visits, each with SW (F200W, nrca1 + nrcb1) and LW (F444W) images of the same
    exposures (2 dithers), 1024 x 1024: the same pointing and dither errors in both
    channels, and the same 25 mas detector placement errors (in each detector's pixel
    axes) in both visits. Returns the cal folder, the reference catalog, the detector
    errors and the true WCS per file name.
    """
    from ceers_steps.synthetic import make_visit

    cal = tmp_path / "cal"
    cal.mkdir()
    rng = np.random.default_rng(5)
    offsets = {det: rng.normal(0, 0.025, 2) for det in ("nrca1", "nrcb1", "nrcalong", "nrcblong")}
    truth = {}
    for visit_id, shift in (("jw01345001001", (0.45, -0.25)), ("jw01345002001", (-0.30, 0.35))):
        # One seed: the same sky and reference catalog in every visit and channel; each
        # visit its own pointing and dither errors, shared by its two channels.
        dithers = rng.normal(0, 0.02, (2, 2))
        sw = make_visit(detectors=("nrca1", "nrcb1"), n_dithers=2, shape=(1024, 1024), noise=0.02,
                        use_real=False, seed=21, visit_id=visit_id, filter_name="F200W",
                        visit_shift=shift, dither_shift=dithers, detector_offsets_pixel=offsets)
        lw = make_visit(detectors=("nrcalong", "nrcblong"), n_dithers=2, shape=(1024, 1024),
                        noise=0.02, use_real=False, seed=21, visit_id=visit_id,
                        filter_name="F444W", visit_shift=shift, center=sw.center,
                        dither_shift=dithers, detector_offsets_pixel=offsets)
        for image in sw.images + lw.images:
            image.model.save(cal / image.model.meta.filename)
            truth[image.model.meta.filename] = image.true_wcs
        refcat = tmp_path / "refcat.ecsv"
        sw.refcat.write(refcat, overwrite=True)
    (tmp_path / "no_params").mkdir()
    return cal, refcat, offsets, truth


def _joint_survey(cal, refcat, out, params_dir, capsys, expect_code=0):
    """
    ``ceers-align --all --joint-channels --shared-detector-terms``; its survey summary.
    (Exit status 1 when any image FAILED.)
    """
    code = align_main(["--all", "--input-dir", str(cal), "--output-dir", str(out), "--abs-refcat",
                       str(refcat), "--params-dir", str(params_dir), "--n-jobs", "2",
                       "--joint-channels", "--shared-detector-terms", "--no-report"])
    printed = capsys.readouterr().out
    assert code == expect_code, printed
    return Table.read(out / "survey_summary.ecsv")


def test_joint_channels_with_shared_detector_terms(tmp_path, capsys):
    """
    Two visits, each with SW (F200W) and LW (F444W) images of the same exposures: the
    same pointing and dither errors in both channels, and the same 25 mas detector
    placement errors (in each detector's pixel axes) in both visits. ``--joint-channels
    --shared-detector-terms``: one run; each visit's two filters fitted together, the
    detector offsets measured once from both visits; results per visit and filter.
    """
    cal, refcat, offsets, truth = _two_channel_visits(tmp_path)
    out = tmp_path / "out"
    summary = _joint_survey(cal, refcat, out, tmp_path / "no_params", capsys)
    assert len(summary) == 16 and set(summary["status"]) == {"COMPLETE"}
    for visit_id in ("jw01345001001", "jw01345002001"):
        for filt, other in (("f200w", "f444w"), ("f444w", "f200w")):
            table = Table.read(out / f"{visit_id}_{filt}_tweakreg_results.ecsv")
            assert table.meta["fitted_with"] == [f"{visit_id}_{other}"]
            shared = table.meta["shared_detector_offsets"]
            # Corrections summing to zero over the detectors (each visit's common shift takes
            # the mean): minus the injected errors about their mean, within 4 sigma + 1 mas.
            mean = np.mean(list(offsets.values()), axis=0)
            for det, value in offsets.items():
                got = shared[det]
                for axis, name in enumerate(("x", "y")):
                    err = got[f"err_{name}"]
                    assert abs(got[name] + 1e3 * (value - mean)[axis]) < 4 * err + 1.0
    for name, true_wcs in truth.items():
        with asdf.open(out / "tweakreg_wcs" / name.replace("_cal.fits", "_tweakreg.asdf")) as af:
            err = angular_separation_mas(*af["wcs"](511.5, 511.5), *true_wcs(511.5, 511.5))
        assert err < 6.0, (name, err)
    # --resume: a unit is fitted as a whole, so it is redone unless all its groups are
    # complete (here the unit is the whole run: shared detector terms).
    args = ["--all", "--input-dir", str(cal), "--output-dir", str(out), "--abs-refcat", str(refcat),
            "--params-dir", str(tmp_path / "no_params"), "--n-jobs", "2", "--joint-channels",
            "--shared-detector-terms", "--no-report", "--resume"]
    results = sorted(out.glob("*_tweakreg_results.ecsv"))
    stamps = {p: p.stat().st_mtime_ns for p in results}
    assert align_main(args) == 0
    assert "SKIPPED" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    (out / "jw01345002001_f444w_tweakreg_results.ecsv").unlink()
    assert align_main(args) == 0
    assert all(p.exists() and p.stat().st_mtime_ns != stamps[p] for p in results)
    # A unit's aligned images written into the input folder: new files, inputs untouched.
    before = {p.name: p.read_bytes() for p in cal.glob("*_cal.fits")}
    assert align_main(["--all", "--input-dir", str(cal), "--output-dir", str(cal),
                       "--abs-refcat", str(refcat), "--params-dir", str(tmp_path / "no_params"),
                       "--n-jobs", "2", "--joint-channels", "--no-report", "--save-results"]) == 0
    assert {p.name: p.read_bytes() for p in cal.glob("*_cal.fits")} == before
    assert len(list(cal.glob("*_tweakreg.fits"))) == len(before)


def test_a_ruined_channel_fails_alone(tmp_path, capsys):
    """
    Visit 1's LW images ruined (nrcalong blank: no source; nrcblong's frames rolled
    by 300 x 200 pixels: sources matching the reference only by chance), with
    ``--joint-channels --shared-detector-terms``: those four images FAILED with their
    reasons, every other image COMPLETE within 6 mas of the truth. Before, the blank
    channel stopped the whole survey (a NaN covariance in the shared-offsets estimate)
    and the rolled one failed every SW image of its visit.
    """
    from ceers_steps.core.compat import datamodels

    cal, refcat, _, truth = _two_channel_visits(tmp_path)
    ruined = sorted(cal.glob("jw01345001001_*long_cal.fits"))
    for path in ruined:
        with datamodels.open(path) as m:
            m.data = (np.zeros_like(m.data) if "nrcalong" in path.name
                      else np.roll(m.data, (300, 200), axis=(0, 1)))
            m.save(path)
    out = tmp_path / "out"
    summary = _joint_survey(cal, refcat, out, tmp_path / "no_params", capsys, expect_code=1)
    status = dict(zip(summary["image"], summary["status"], strict=True))
    for path in ruined:
        reason = status.pop(path.name)
        assert reason.startswith("FAILED"), reason
        assert ("no sources in its catalog" in reason if "nrcalong" in path.name
                else "matches the reference catalog at no offset" in reason), reason
    assert len(status) == 12 and set(status.values()) == {"COMPLETE"}, status
    for name in status:
        with asdf.open(out / "tweakreg_wcs" / name.replace("_cal.fits", "_tweakreg.asdf")) as af:
            err = angular_separation_mas(*af["wcs"](511.5, 511.5), *truth[name](511.5, 511.5))
        assert err < 6.0, (name, err)


def test_joint_units_write_a_report_per_group(tmp_path, capsys):
    """
    Groups fitted together (``--joint-channels``, ``--shared-detector-terms``: one
    `align_unit` run) get the alignment report and DS9 regions a group alone gets.
    """
    cal, refcat, _, _ = _two_channel_visits(tmp_path)
    out = tmp_path / "out"
    code = align_main(["--all", "--input-dir", str(cal), "--output-dir", str(out), "--abs-refcat",
                       str(refcat), "--params-dir", str(tmp_path / "no_params"), "--n-jobs", "2",
                       "--joint-channels", "--shared-detector-terms"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = Table.read(out / "survey_summary.ecsv")
    names = [f"{v}_{f}" for v in ("jw01345001001", "jw01345002001") for f in ("f200w", "f444w")]
    report_of = {}
    for row in summary:
        report_of.setdefault(f"{row['visit']}_{row['filter']}", set()).add(str(row["report"]))
    for name in names:
        report = out / f"{name}_alignment_report.html"
        assert report.is_file(), f"no report for {name}: {sorted(p.name for p in out.iterdir())}"
        assert name in report.read_text()
        assert list((out / f"{name}_regions").glob("*.reg"))
        assert report_of[name] == {report.name}
    index = (out / "survey_index.html").read_text()
    assert all(f"{name}_alignment_report.html" in index for name in names)


def test_fit_distortion_survey(tmp_path, capsys):
    """
    ``ceers-align --all --fit-distortion``: three visits of two SW detectors (3 dithers, full
    frames, one sky: the same galaxies in every visit) whose detectors carry a 3 mas residual
    distortion. One file per detector in OUT/distortion with the fitted field, every saved WCS
    model carries it, and the aligned images are closer to the truth than the field.
    """
    from ceers_steps.core.distortion import has_distortion
    from ceers_steps.io.distortion_files import read_distortion_file
    from ceers_steps.synthetic import make_visit, random_distortion

    field = random_distortion(("nrca1", "nrca2"), rms_mas=3.0, seed=3)
    cal = tmp_path / "cal"
    cal.mkdir()
    truth = {}
    for visit_id, shift in (("jw01345001001", (0.45, -0.25)), ("jw01345002001", (-0.30, 0.35)),
                            ("jw01345003001", (0.10, 0.40))):
        v = make_visit(detectors=("nrca1", "nrca2"), n_dithers=3, shape=(2048, 2048), noise=0.05,
                       use_real=False, seed=31, visit_id=visit_id, visit_shift=shift,
                       distortion=field)
        for image in v.images:
            image.model.save(cal / image.model.meta.filename)
            truth[image.model.meta.filename] = image.true_wcs
    refcat = tmp_path / "refcat.ecsv"
    v.refcat.write(refcat)
    (tmp_path / "no_params").mkdir()
    out = tmp_path / "out"
    code = align_main(["--all", "--input-dir", str(cal), "--output-dir", str(out), "--abs-refcat",
                       str(refcat), "--params-dir", str(tmp_path / "no_params"), "--n-jobs", "2",
                       "--fit-distortion"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    # The console says what was fitted and where the files are.
    assert "ceers-align: residual distortion per detector (rms x / y): nrca1 " in printed
    assert f"files in {out / 'distortion'}" in printed
    # The index and every visit report show the run's field per detector, linking its file;
    # the reports with the maps before and after, the summary with the RMS in its meta.
    index = (out / "survey_index.html").read_text()
    section = index[index.index("id='distortion'"):]
    assert "<a href='distortion'>distortion</a>/" in section
    for det in ("nrca1", "nrca2"):
        assert f"<tr data-detector='{det}'>" in section
        assert f"href='distortion/ceers_distortion_{det}.asdf'" in section
    reports = sorted(out.glob("*_alignment_report.html"))
    assert len(reports) == 3
    sections = {r.read_text().split("id='distortion'")[1].split("<h2")[0] for r in reports}
    assert len(sections) == 1 and "cells with fewer than" in sections.pop()
    meta = Table.read(out / "survey_summary.ecsv").meta["distortion"]
    assert set(meta) == {"nrca1", "nrca2"} and all(m["rms_x"] > 1.0 for m in meta.values())
    for det in ("nrca1", "nrca2"):
        got = read_distortion_file(out / "distortion" / f"ceers_distortion_{det}.asdf")
        assert got.meta["significant"] and got.meta["n_visits"] == 3
        _, _, gx, gy = got.grid(32)
        _, _, tx, ty = field[det].grid(32)
        diff = 31.0 * np.sqrt(np.mean((gx - tx) ** 2 + (gy - ty) ** 2) / 2)
        assert diff < 1.5, (det, diff, got.rms_error_mas())
    errors = []
    for name, true_wcs in truth.items():
        with asdf.open(out / "tweakreg_wcs" / name.replace("_cal.fits", "_tweakreg.asdf")) as af:
            assert has_distortion(af["wcs"])
            gx, gy = np.meshgrid(np.linspace(0, 2047, 8), np.linspace(0, 2047, 8))
            d = angular_separation_mas(*af["wcs"](gx.ravel(), gy.ravel()),
                                       *true_wcs(gx.ravel(), gy.ravel()))
        errors.append(np.sqrt(np.mean(d**2)))
    assert np.median(errors) < 2.5, errors
