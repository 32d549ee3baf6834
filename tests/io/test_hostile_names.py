"""Hostile header values: nothing written outside the output folder, the filter that defines the
bandpass, copies found from their pixels, WCS models that do not belong to their image.

Issue 29 (round 3), findings 1, 6, 8b and 8c, and a fuzz test of header values over every writer.
Header values are untrusted input: an image whose FILTER, PUPIL, DETECTOR or visit keys cannot
name a file is FAILED with the reason (naming the file and the keyword); the run goes on.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import module_tmp, small_hostile_visit

from ceers_steps.cli.commands import align_main, apply_wcs_main
from ceers_steps.io.wcs_models import exposure_base

VISIT, FILTER = "jw01345001001", "f200w"

# What datamodels and astropy say about the values these tests write on purpose: in a user's
# session they are warnings, and the run must behave as it does there.
QUIET = [pytest.mark.filterwarnings("ignore:While validating"),
         pytest.mark.filterwarnings("ignore:non-ASCII characters are present"),
         pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")]


@pytest.fixture(scope="module")
def pristine(request, tmp_path_factory):
    """2 SW detectors x 2 dithers, 1024^2, built-in truth, with its refcat; never modified."""
    return small_hostile_visit(module_tmp(request, tmp_path_factory, "names"), "cal")


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
    from ceers_steps.report.html import final_rows

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
    assert set(st.values()) == {"COMPLETE"}, st
    assert all(p.parent == work["out"] for p in work["out"].glob("*_asn.json"))


def test_output_paths_are_proven_inside_the_output_folder(tmp_path):
    from ceers_steps.core.fileio import inside_folder
    from ceers_steps.io.grouping import UnsafeNameError, name_part
    from ceers_steps.io.results import results_paths

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
def lw_files(request, tmp_path_factory):
    """One LW exposure (nrcalong, 256^2) and one SW exposure (nrca1), header-only edits later."""
    from ceers_steps.synthetic import make_visit

    root = module_tmp(request, tmp_path_factory, "pupil")
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
    from ceers_steps.survey.survey import discover_groups, select_images

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


def test_detection_uses_the_psf_of_the_pupil_filter(lw_files):
    """The cosmic-ray cut's PSF width is that of the bandpass: F162M behind F150W2."""
    from ceers_steps.core.compat import datamodels
    from ceers_steps.detection.artifacts import NIRCAM_PSF_FWHM
    from ceers_steps.detection.catalogs import image_psf_fwhm

    with datamodels.open(lw_files["nrca1"]) as m:
        clear = image_psf_fwhm(m)
        m.meta.instrument.pupil = "F162M"
        ratio = image_psf_fwhm(m) / clear
    assert ratio == pytest.approx(NIRCAM_PSF_FWHM["F162M"] / NIRCAM_PSF_FWHM["F150W2"])


@pytest.mark.filterwarnings("ignore:While validating")
def test_invalid_filter_is_rejected_per_image_not_grouped_raw(work, capsys):
    """
    An invalid FILTER string: datamodels falls back to the filter stored in the file's ASDF
    extension (F200W), so the step aligned the image as f200w; the survey grouped it raw.
    Both now fail that image, naming the file and FILTER, and align the others.
    """
    from ceers_steps import CeersTweakRegStep
    from ceers_steps.core.compat import datamodels
    from ceers_steps.survey.survey import discover_groups

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
    assert st.pop(bad.name).startswith("FAILED") and set(st.values()) == {"COMPLETE"}
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
    from ceers_steps.survey.survey import discover_groups, select_images

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
    from ceers_steps.survey.survey import discover_groups

    for i in (1, 2):
        with fits.open(work["cal"] / work["names"][i], mode="update") as hdul:
            hdul["SCI"].data[:] = 0.0
        set_header(work["cal"] / work["names"][i], VISITGRP=None, SEQ_ID=None, EXPSTART=None)
    groups, problems = discover_groups(work["cal"])
    assert problems == [] and sum(len(g.images) for g in groups) == 4


# --- finding 8c: a saved WCS model must agree with the image's own WCS -------------------------


def _models_of_own_wcs(cal, names, wcs_dir, relabel=None):
    """A WCS model per image from its own WCS; ``relabel=(a, b)``: image a gets b's WCS
    under a's labels (file name, exposure), as a relabelled file would carry them."""
    from ceers_steps.core.compat import datamodels
    from ceers_steps.io.wcs_models import save_wcs_model, wcs_model_path

    models = {}
    for name in names:
        with datamodels.open(cal / name) as m:
            models[name] = (m.meta.wcsinfo.instance, m.meta.wcs)
    for name in names:
        source = relabel[1] if relabel and name == relabel[0] else name
        save_wcs_model(wcs_model_path(wcs_dir, name), name, *models[source])


def test_relabelled_wcs_model_is_refused(work, capsys):
    """
    A WCS model of NRCB4 relabelled NRCA1 (its file name and tree say nrca1) was applied on its
    labels alone: the image moved ~175 arcsec, COMPLETE. The model must now put the image within
    max_offset (2 arcsec by default) of its own WCS, else the image fails with the reason.
    """
    from ceers_steps.core.compat import datamodels
    from ceers_steps.core.wcs_utils import angular_separation_mas

    names = work["names"]
    a1, b4 = names[0], next(n for n in names if "nrcb4" in n)
    wcs_dir = work["root"] / "wcs"
    _models_of_own_wcs(work["cal"], names, wcs_dir, relabel=(a1, b4))
    with datamodels.open(work["cal"] / a1) as ma, datamodels.open(work["cal"] / b4) as mb:
        offset = angular_separation_mas(*ma.meta.wcs(512, 512), *mb.meta.wcs(512, 512)) / 1e3
    assert offset > 100  # arcsec
    argv = ["--all", "--input-dir", str(work["cal"]), "--output-dir", str(work["out"]),
            "--wcs-dir", str(wcs_dir), "--n-jobs", "1"]
    code = apply_wcs_main(argv)
    err = capsys.readouterr().err
    assert code == 1, f"applied {offset:.0f} arcsec off: {err[-500:]}"
    last = err.strip().splitlines()[-1]
    assert a1 in last and "arcsec from its own WCS" in last, last
    assert "max_offset = 2 arcsec" in last, last
    assert not list(work["out"].glob("*.fits")) if work["out"].exists() else True
    # --skip-missing passes it through unchanged and applies the others.
    assert apply_wcs_main([*argv, "--skip-missing"]) == 0
    statuses = {}
    for path in work["out"].glob("*_tweakreg.fits"):
        with datamodels.open(path) as m:
            statuses[exposure_base(path.name)] = m.meta.cal_step.tweakreg
    assert statuses.pop(exposure_base(a1)) == "SKIPPED"
    assert set(statuses.values()) == {"COMPLETE"} and len(statuses) == 3
    # The limit is the user's: a larger one lets the model through.
    capsys.readouterr()
    shutil.rmtree(work["out"])
    code = apply_wcs_main(["--image", str(work["cal"] / a1), "--output-dir", str(work["out"]),
                           "--wcs-dir", str(wcs_dir), "--max-offset", "1000"])
    assert code == 0


def test_wcs_model_offset_limit_is_a_parameter(work):
    from ceers_steps import ApplyWcsStep
    from ceers_steps.core.compat import datamodels
    from ceers_steps.core.wcs_utils import tangent_plane
    from ceers_steps.io.wcs_models import save_wcs_model, wcs_model_path, wcs_offset_arcsec
    from ceers_steps.synthetic.visits import apply_correction

    name = work["names"][0]
    wcs_dir = work["root"] / "wcs"
    with datamodels.open(work["cal"] / name) as m:
        wi = m.meta.wcsinfo
        ra, dec = m.meta.wcs(512.0, 512.0)
        moved = apply_correction(m.meta.wcs, {"v2_ref": wi.v2_ref, "v3_ref": wi.v3_ref,
                                              "roll_ref": wi.roll_ref},
                                 np.eye(2), (1.0, 0.0), tangent_plane(ra, dec))
        assert 0.9 < wcs_offset_arcsec(m.meta.wcs, moved, m.data.shape) < 1.1
        save_wcs_model(wcs_model_path(wcs_dir, name), name, wi.instance, moved)
    result = ApplyWcsStep.call(str(work["cal"] / name), wcs_dir=str(wcs_dir))
    assert result.meta.cal_step.tweakreg == "COMPLETE"
    result.close()
    with pytest.raises(ValueError, match=f"{name}: .*1.0 arcsec from its own WCS.*max_offset = 0.5"):
        ApplyWcsStep.call(str(work["cal"] / name), wcs_dir=str(wcs_dir), max_offset=0.5)
    with pytest.raises(ValueError, match="max_offset must be a positive number"):
        ApplyWcsStep.call(str(work["cal"] / name), wcs_dir=str(wcs_dir), max_offset=-1.0)


# --- fuzz: hostile header values over every writer ---------------------------------------------


def _hostile_values(seed=29):
    """(keyword, value) pairs: paths, quotes, 200 characters, non-ASCII, random bytes."""
    rng = np.random.default_rng(seed)

    def random_bytes(n):
        return bytes(int(b) for b in rng.integers(1, 256, n)).decode("latin-1")

    return [("FILTER", "F200W/../../../../fz"), ("FILTER", "F200W'"), ("FILTER", "F" * 200),
            ("FILTER", random_bytes(12)), ("PUPIL", "../.."), ("PUPIL", 'CLEAR"'),
            ("PUPIL", "F470N\u00e9"), ("DETECTOR", "NRCA1/../../../../dz"),
            ("DETECTOR", "\uff4e\uff52\uff43\uff41\uff11"), ("DETECTOR", random_bytes(8)),
            ("PROGRAM", "01345/.."), ("OBSERVTN", "\uff11"), ("VISIT", "0" * 200),
            ("VISIT", random_bytes(6))]


def _explained(name, err, out_dirs):
    """An image's fate: aligned (COMPLETE in a results table), or FAILED with a reason, in a
    results table or on stderr (left out before the run)."""
    for out in out_dirs:
        status = final_statuses(out, [name])[name]
        if status == "COMPLETE":
            return "aligned"
        if status and status.startswith("FAILED: ") and len(status) > 20:
            return "failed"
    lines = [line for line in err.splitlines() if name in line]
    if any(("FAILED" in line or "left out" in line) and len(line) > len(name) + 30
           for line in lines):
        return "failed"
    return None


@QUIET[0]
@QUIET[1]
@QUIET[2]
def test_fuzzed_header_values_never_write_outside_the_output_folder(work, capsys):
    """
    Hostile values in FILTER, PUPIL, DETECTOR and the visit keys, each in its own copy of a cal
    file beside the four good ones, through every writer: ``ceers-align --all`` and ``VISIT
    FILTER`` (associations, catalogs, results, reports, regions, WCS models, aligned images),
    CeersTweakRegStep with every output on (its catalogs, reference catalog, results, report),
    ``ceers-apply-wcs --all``. Nothing appears outside the output folders; every image is either
    aligned or FAILED with a reason; the good images are aligned.
    """
    from ceers_steps import CeersTweakRegStep

    cal, good = work["cal"], list(work["names"])
    hostile = []
    for k, (keyword, value) in enumerate(_hostile_values()):
        source = good[k % len(good)]
        path = cal / source.replace(source.split("_")[2], f"{k + 10:05d}")
        shutil.copy(cal / source, path)
        set_header(path, **{keyword: value})
        hostile.append(path.name)
    outs = {k: work["root"] / f"out_{k}" for k in ("all", "vf", "step", "apply")}
    before = tree(work["top"], work["root"])
    inputs = {p: p.read_bytes() for p in cal.iterdir()}

    common = ["--input-dir", str(cal), "--abs-refcat", str(work["refcat"]), "--n-jobs", "1",
              "--params-dir", str(work["no_params"]), "--save-results"]
    code_all = align_main(["--all", "--output-dir", str(outs["all"]), *common])
    err_all = capsys.readouterr().err
    code_vf = align_main([VISIT, FILTER, "--output-dir", str(outs["vf"]), *common])
    err_vf = capsys.readouterr().err
    step = CeersTweakRegStep(abs_refcat=str(work["refcat"]), n_jobs=1, save_results=True,
                             save_catalogs=True, save_abs_catalog=True, save_report=True,
                             output_dir=str(outs["step"]))
    step.run([str(cal / n) for n in sorted(good + hostile)])
    code_apply = apply_wcs_main(["--all", "--input-dir", str(cal), "--output-dir",
                                 str(outs["apply"]), "--wcs-dir",
                                 str(outs["step"] / "tweakreg_wcs"), "--skip-missing"])
    err_apply = capsys.readouterr().err

    # Nothing outside the output folders: the tree beside them is unchanged, inputs too.
    root_now = {p for p in work["root"].iterdir()}
    assert root_now <= {cal, *outs.values()}, sorted(map(str, root_now))
    assert tree(work["top"], work["root"]) == before
    assert {p: p.read_bytes() for p in cal.iterdir()} == inputs
    for out in outs.values():
        for path in out.rglob("*"):
            assert path.resolve().is_relative_to(out.resolve()), path
    # Exit status 1 exactly when an image of a group FAILED (0 when every one was aligned).
    summary = Table.read(outs["all"] / "survey_summary.ecsv")
    assert code_all == (0 if set(summary["status"]) == {"COMPLETE"} else 1), err_all[-2000:]
    vf = final_statuses(outs["vf"], [str(n) for n in Table.read(
        outs["vf"] / f"{VISIT}_{FILTER}_tweakreg_results.ecsv")["image"]])
    assert code_vf == (0 if set(vf.values()) == {"COMPLETE"} else 1), err_vf[-2000:]
    # Every image aligned or FAILED with a reason, in every run; the good ones aligned.
    # (VISIT FILTER selects one filter: an image of another, valid, filter is not its business.)
    from ceers_steps.survey.survey import discover_groups

    other = {p.name for g in discover_groups(cal)[0] if g.name != f"{VISIT}_{FILTER}"
             for p in g.images}
    fates = {}
    for run, err, dirs in (("all", err_all, [outs["all"]]), ("vf", err_vf, [outs["vf"]]),
                           ("step", "", [outs["step"]])):
        for name in good + hostile:
            fates[run, name] = _explained(name, err, dirs)
            if run == "vf" and fates[run, name] is None and name in other:
                fates[run, name] = "other filter"
    assert all(fates.values()), {k: v for k, v in fates.items() if not v}
    assert all(fates[run, n] == "aligned" for run in ("all", "vf", "step") for n in good), fates
    # Each hostile value named with its keyword where the survey left it out.
    for (keyword, _), name in zip(_hostile_values(), hostile, strict=True):
        lines = [line for line in err_all.splitlines() if name in line]
        assert lines and any(keyword in line or "copy" in line or "header" in line
                             for line in lines), (name, keyword, lines)
    # Applying stops at an image it cannot open (a header datamodels refuses), naming it and
    # writing nothing; otherwise every image is written (applied, or passed through).
    applied = sorted(p.name for p in outs["apply"].glob("*_tweakreg.fits"))
    if code_apply:
        last = err_apply.strip().splitlines()[-1]
        assert code_apply == 1 and any(n in last for n in hostile) and "Traceback" not in err_apply
        assert applied == [], applied
    else:
        assert len(applied) == len(good) + len(hostile), applied
