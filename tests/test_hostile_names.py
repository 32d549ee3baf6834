"""Hostile header values: nothing written outside the output folder, the filter that defines the
bandpass, copies found from their pixels, WCS models that do not belong to their image.

Issue 29 (round 3), findings 1, 6, 8b and 8c, and a fuzz test of header values over every writer.
Header values are untrusted input: an image whose FILTER, PUPIL, DETECTOR or visit keys cannot
name a file is FAILED with the reason (naming the file and the keyword); the run goes on.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from ceers_steps.cli import align_main, apply_wcs_main
from ceers_steps.wcs_io import exposure_base

VISIT, FILTER = "jw01345001001", "f200w"

# What datamodels and astropy say about the values these tests write on purpose: in a user's
# session they are warnings, and the run must behave as it does there.
QUIET = [pytest.mark.filterwarnings("ignore:While validating"),
         pytest.mark.filterwarnings("ignore:non-ASCII characters are present"),
         pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """2 SW detectors x 2 dithers, 1024^2, built-in truth, with its refcat; never modified."""
    from ceers_steps.synthetic import make_visit, write_visit

    visit = make_visit(detectors=("nrca1", "nrcb4"), n_dithers=2, shape=(1024, 1024),
                       noise=0.02, use_real=False, seed=11)
    root = tmp_path_factory.mktemp("names")
    _, refcat, paths = write_visit(visit, root / "cal")
    (root / "cal" / "asn.json").unlink()
    (root / "no_params").mkdir()
    return {"cal": root / "cal", "refcat": refcat, "names": [p.name for p in paths],
            "no_params": root / "no_params"}


@pytest.fixture
def work(pristine, tmp_path):
    """A fresh copy of the visit two folders down, so that ``..`` values have room to climb."""
    root = tmp_path / "a" / "b"
    cal = root / "cal"
    shutil.copytree(pristine["cal"], cal)
    return {"top": tmp_path, "root": root, "cal": cal, "out": root / "out",
            "refcat": cal / "refcat.ecsv", "names": pristine["names"],
            "no_params": pristine["no_params"]}


def set_header(path, **values):
    """Write primary-header values; a str with non-ASCII or control characters is patched in
    as raw bytes (astropy refuses to write them, a hostile file need not)."""
    raw = {}
    with fits.open(path, mode="update") as hdul:
        for key, value in values.items():
            if value is None:
                hdul[0].header.remove(key, ignore_missing=True)
            elif isinstance(value, str) and not all(32 <= ord(c) < 127 for c in value):
                marker = f"Q{len(raw)}" * 30
                hdul[0].header[key] = marker[: min(len(value.encode("utf-8")), 60)]
                raw[hdul[0].header[key]] = value.encode("utf-8")[:60]
            else:
                hdul[0].header[key] = value
    if raw:
        data = bytearray(Path(path).read_bytes())
        for marker, value in raw.items():
            i = data.index(marker.encode())
            data[i:i + len(marker)] = value.ljust(len(marker), b" ")
        Path(path).write_bytes(bytes(data))


def tree(top, skip):
    """Every path under ``top`` except those under ``skip``."""
    return {p for p in Path(top).rglob("*") if skip not in p.parents and p != skip}


def align(work, *args, visit=VISIT, filt=FILTER):
    common = ["--input-dir", str(work["cal"]), "--output-dir", str(work["out"]), "--abs-refcat",
              str(work["refcat"]), "--n-jobs", "1", "--params-dir", str(work["no_params"])]
    return align_main([*(["--all"] if "--all" in args else [visit, filt]), *common,
                       *[a for a in args if a != "--all"]])


def final_statuses(out, names):
    """Image -> its final status in the results tables of ``out`` (absolute row, else relative)."""
    from ceers_steps.report import final_rows

    found = {}
    for path in Path(out).glob("*_tweakreg_results.ecsv"):
        for name, row in final_rows(Table.read(path, format="ascii.ecsv")).items():
            found[str(name)] = str(row["status"])
    return {n: found.get(n) for n in names}


# --- finding 1: header values in file names ---------------------------------------------------


@pytest.mark.parametrize("mode", ["--all", "visit-filter"])
@QUIET[0]
def test_dotdot_in_header_values_writes_nothing_outside_the_output_folder(work, capsys, mode):
    """
    DETECTOR (and, for --all, FILTER) values holding ``/..`` went into association names
    unchecked: folders and ``*_asn.json`` appeared outside --output-dir, exit 0. Now each such
    image is FAILED with the reason naming the file and keyword; the others are aligned.
    """
    bad_det, bad_filt = work["names"][0], work["names"][3]
    set_header(work["cal"] / bad_det, DETECTOR="NRCA1/../../../escaped")
    if mode == "--all":
        set_header(work["cal"] / bad_filt, FILTER="F200W/../../../../x")
    before = tree(work["top"], work["out"])
    code = align(work, *(["--all"] if mode == "--all" else []))
    err = capsys.readouterr().err
    assert tree(work["top"], work["out"]) == before, "files written outside the output folder"
    assert code == 0, err[-2000:]
    lines = err.splitlines()
    assert any(bad_det in line and "FAILED" in line and "DETECTOR" in line for line in lines), err
    bad = [bad_det] + ([bad_filt] if mode == "--all" else [])
    if mode == "--all":
        assert any(bad_filt in line and "FAILED" in line and "FILTER" in line for line in lines)
    st = final_statuses(work["out"], [n for n in work["names"] if n not in bad])
    assert set(st.values()) == {"SUCCESS"}, st
    assert all(p.parent == work["out"] for p in work["out"].glob("*_asn.json"))


def test_output_paths_are_proven_inside_the_output_folder(tmp_path):
    from ceers_steps.fileio import inside_folder
    from ceers_steps.grouping import UnsafeNameError, name_part
    from ceers_steps.results import results_paths

    assert inside_folder(tmp_path / "x" / "y.ecsv", tmp_path) == tmp_path / "x" / "y.ecsv"
    with pytest.raises(ValueError, match="outside the output folder"):
        inside_folder(tmp_path / "x" / ".." / ".." / "y.ecsv", tmp_path)
    with pytest.raises(ValueError, match="outside the output folder"):
        results_paths(tmp_path, "jw01345001001_f200w/../../../z")
    for value in ("F200W/..", "..", "f200w ", "F200W'", "é", "a" * 41, "", "F200W;rm"):
        if value.strip() and value.strip() != value:
            assert name_part(value, "FILTER", "x.fits") == value.strip()
            continue
        with pytest.raises(UnsafeNameError, match=r"x\.fits: FILTER"):
            name_part(value, "FILTER", "x.fits")
    assert name_part("F150W2+F162M", "FILTER", "x") == "F150W2+F162M"


# --- finding 6: the filter that defines the bandpass ------------------------------------------


@pytest.fixture(scope="module")
def lw_files(tmp_path_factory):
    """One LW exposure (nrcalong, 256^2) and one SW exposure (nrca1), header-only edits later."""
    from ceers_steps.synthetic import make_visit

    root = tmp_path_factory.mktemp("pupil")
    out = {}
    for det, filt, group in (("nrcalong", "F444W", "02101"), ("nrca1", "F150W2", "02201")):
        v = make_visit(detectors=(det,), n_dithers=1, shape=(256, 256), use_real=False, seed=3,
                       filter_name=filt, group=group)
        path = root / v.images[0].model.meta.filename
        v.images[0].model.save(path)
        out[det] = path
    return out


def test_pupil_filter_defines_the_group(lw_files, tmp_path, capsys):
    """F444W+F470N is f470n, F444W+CLEAR f444w, F150W2+F162M f162m: three groups, each found
    by ``ceers-align VISIT <filter>`` (before: one f444w group; 'that visit has: f444w')."""
    from ceers_steps.survey import discover_groups, select_images

    cal = tmp_path / "cal"
    cal.mkdir()
    lw, sw = lw_files["nrcalong"], lw_files["nrca1"]
    for dither, pupil in ((1, "F470N"), (2, "CLEAR")):
        path = cal / lw.name.replace("_00001_", f"_{dither:05d}_")
        shutil.copy(lw, path)
        set_header(path, PUPIL=pupil, EXPOSURE=f"{dither:05d}")
    shutil.copy(sw, cal / sw.name)
    set_header(cal / sw.name, PUPIL="F162M")
    groups, problems = discover_groups(cal)
    assert problems == []
    assert [(g.filter, [p.name for p in g.images]) for g in groups] == [
        ("f162m", [sw.name]),
        ("f444w", [lw.name.replace("_00001_", "_00002_")]),
        ("f470n", [lw.name.replace("_00001_", "_00001_")])]
    selected, others = select_images(cal, VISIT, "f470n")
    assert {d: [p.name for p in ps] for d, ps in selected.items()} == {"nrcalong": [lw.name]}
    assert others == {"f444w", "f162m"}
    # The command says which filters the visit has, by bandpass.
    code = align_main([VISIT, "f405n", "--input-dir", str(cal), "--output-dir",
                       str(tmp_path / "out"), "--params-dir", str(tmp_path)])
    assert code == 1
    assert "that visit has: f162m, f444w, f470n" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:While validating")
def test_invalid_filter_is_rejected_per_image_not_grouped_raw(work, capsys):
    """
    An invalid FILTER string: datamodels falls back to the filter stored in the file's ASDF
    extension (F200W), so the step aligned the image as f200w; the survey grouped it raw.
    Both now fail that image, naming the file and FILTER, and align the others.
    """
    from ceers_steps import CeersTweakRegStep
    from ceers_steps.compat import datamodels
    from ceers_steps.survey import discover_groups

    bad = work["cal"] / work["names"][1]
    set_header(bad, FILTER="F200W'; rm -rf")
    with datamodels.open(bad) as m:
        assert m.meta.instrument.filter == "F200W"  # what datamodels says
    groups, problems = discover_groups(work["cal"])
    assert [(g.name, len(g.images)) for g in groups] == [(f"{VISIT}_{FILTER}", 3)]
    assert [(p.name, "FILTER" in why and "FAILED" in why) for p, why in problems] == [
        (bad.name, True)]
    step = CeersTweakRegStep(abs_refcat=str(work["refcat"]), n_jobs=1, save_results=True,
                             output_dir=str(work["out"]))
    step.run([str(work["cal"] / n) for n in work["names"]])
    st = final_statuses(work["out"], work["names"])
    assert st.pop(bad.name).startswith("FAILED") and set(st.values()) == {"SUCCESS"}
    reasons = [r["status"] for r in step.results if r["image"] == bad.name]
    assert reasons and all("FILTER" in r and bad.name in r for r in reasons), reasons
    assert sorted(p.name for p in work["out"].glob("*_results.ecsv")) == [
        f"{VISIT}_{FILTER}_tweakreg_results.ecsv"]


# --- finding 8b: copies found from the data, not only from header keys -------------------------


@pytest.mark.parametrize("strip", ["exposure keys", "exposure keys and timing"])
def test_copy_without_exposure_keys_is_left_out(work, capsys, strip):
    """
    A copy of a cal file without VISITGRP/SEQ_ID/ACT_ID/EXPOSURE entered the fit as an extra
    dither (every source matched to itself: uncertainties fall, the true error grows). It is
    now found by its exposure start, time and pointing, or (those changed too) by its pixels,
    and left out by both ``ceers-align --all`` and ``ceers-align VISIT FILTER``, naming both files.
    """
    from ceers_steps.survey import discover_groups, select_images

    original = work["cal"] / work["names"][0]
    # Named as the archive would name another dither, so that VISIT FILTER's glob finds it too.
    copy = work["cal"] / original.name.replace("_00001_", "_00009_")
    shutil.copy(original, copy)
    values = dict.fromkeys(("VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE"))
    if strip != "exposure keys":
        values.update(EXPSTART=59800.5, EFFEXPTM=100.0)
    set_header(copy, **values)
    groups, problems = discover_groups(work["cal"])
    assert [(g.name, len(g.images)) for g in groups] == [(f"{VISIT}_{FILTER}", 4)]
    assert [p.name for p, _ in problems] == [copy.name]
    why = problems[0][1]
    assert original.name in why and "copy" in why
    assert ("pixels" in why) == (strip != "exposure keys"), why
    selected, _ = select_images(work["cal"], VISIT, FILTER)
    assert sorted(p.name for ps in selected.values() for p in ps) == sorted(work["names"])
    err = capsys.readouterr().err
    assert copy.name in err and original.name in err and "left out" in err


def test_different_exposures_are_not_copies(work):
    """Blank frames (no pixel print) and the four real dithers and detectors stay apart."""
    from ceers_steps.survey import discover_groups

    for i in (1, 2):
        with fits.open(work["cal"] / work["names"][i], mode="update") as hdul:
            hdul["SCI"].data[:] = 0.0
        set_header(work["cal"] / work["names"][i], VISITGRP=None, SEQ_ID=None, EXPSTART=None)
    groups, problems = discover_groups(work["cal"])
    assert problems == [] and sum(len(g.images) for g in groups) == 4
