"""CeersAlignPipeline, ASDF parameter files from the CEERS cfgs, ceers-align and stage 3."""

import configparser
import json
import os
from pathlib import Path

import pytest
from conftest import accuracy, file_digest, models_of, module_tmp, run_cli

ROOT = Path(__file__).resolve().parents[2]
PARAMETER_FILES = ROOT / "parameter_files"
STAGE3 = ROOT / "pipelines" / "calwebb_image3_ceers.asdf"


def _cfg_files(ceers_dir):
    files = sorted((ceers_dir / "tweakreg_cfgs").glob("*/*.cfg"))
    assert len(files) == 28
    return files


def _raw_sections(path):
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    parser.read(path)
    return {s: dict(parser.items(s)) for s in parser.sections()}


def _asdf_steps(path):
    import asdf

    with asdf.open(path) as af:
        return ({s["name"]: dict(s["parameters"]) for s in af.tree["steps"]},
                dict(af.tree["meta"]))


def test_convert_every_real_cfg(ceers_dir, tmp_path):
    """All 28 files, 30 sections: every value under its mapped name, every file loads."""
    from stpipe import Step

    from ceers_steps import CeersAlignPipeline
    from ceers_steps.survey.cfgconvert import CFG_KEYS, UNUSED_KEYS

    files = _cfg_files(ceers_dir)
    proc = run_cli(["ceers-convert-cfg", *map(str, files), "--output-dir", str(tmp_path),
                    "--abs-refcat", "refcat.ecsv"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "30 parameter files written" in proc.stdout
    produced = sorted(tmp_path.glob("*.asdf"))
    assert len(produced) == 30
    n_values = 0
    for cfg in files:
        for visit, raw in _raw_sections(cfg).items():
            path = tmp_path / f"{visit}_{cfg.stem.lower()}.asdf"
            steps, meta = _asdf_steps(path)
            pipe = Step.from_config_file(str(path))
            assert isinstance(pipe, CeersAlignPipeline)
            assert pipe.tweakreg.abs_refcat == "refcat.ecsv"
            for key, value in raw.items():
                if key in UNUSED_KEYS:
                    # reported, never silently dropped
                    assert meta["unused_cfg_keys"][key] == value
                    assert f"{key}={value}" in proc.stdout
                    continue
                step, name, _ = CFG_KEYS[key]
                expected = value if name == "abs_fitgeometry" else float(value)
                assert steps[step][name] == expected, (cfg, visit, key)
                assert getattr(getattr(pipe, step), name) == expected
                n_values += 1
    assert n_values == 30 * 16


def test_committed_parameter_files_are_the_converted_cfgs(ceers_dir):
    from ceers_steps.survey.cfgconvert import parameter_tree, read_cfg

    sections = [s for f in _cfg_files(ceers_dir) for s in read_cfg(f)]
    assert len(sections) == 30
    assert sorted(p.stem for p in PARAMETER_FILES.glob("*.asdf")) == sorted(s.name for s in sections)
    for s in sections:
        steps, meta = _asdf_steps(PARAMETER_FILES / f"{s.name}.asdf")
        tree = parameter_tree(s)
        assert steps == {st["name"]: st["parameters"] for st in tree["steps"]}
        assert meta["unused_cfg_keys"] == s.unused
    # The documentation's table of the committed files says what they hold.
    table = (ROOT / "docs" / "steps" / "align_pipeline.md").read_text()
    for s in sections:
        geom = s.steps["tweakreg"]["abs_fitgeometry"]
        assert f"| {s.visit} | {s.filter} | {geom} |" in table, s.name


@pytest.mark.parametrize("text, message", [
    ("[jw01345001001]\ndetect_thresh = four\n", "detect_thresh = 'four' is not a float"),
    ("[jw01345001001]\nwhat = 3\n", "unknown key 'what'"),
    ("detect_thresh = 4\n", "not a valid CEERS cfg"),
    ("# nothing\n", "no [visit] sections"),
    ("[jw01345001001]\nabs_fitgeom = affine\n", "abs_fitgeom = 'affine'"),
])
def test_malformed_cfg_is_refused_and_nothing_written(tmp_path, text, message):
    good = tmp_path / "f200w.cfg"
    good.write_text("[jw01345002001]\ndetect_thresh = 4\n")
    bad = tmp_path / "f115w.cfg"
    bad.write_text(text)
    out = tmp_path / "out"
    proc = run_cli(["ceers-convert-cfg", str(good), str(bad), "--output-dir", str(out)],
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr and "f115w.cfg" in proc.stderr
    assert not out.exists()


def test_strun_parameter_file_aligns_synthetic_visit(builtin_files, tmp_path):
    """``strun parameter_files/<visit>_<filter>.asdf asn.json`` offline: <= 3 mas against truth."""
    from ceers_steps.core.compat import datamodels

    d = builtin_files
    params = PARAMETER_FILES / "jw01345001001_f200w.asdf"
    if not params.exists():
        pytest.skip("parameter_files/ not present")
    out = tmp_path / "out"
    proc = run_cli(["strun", str(params), str(d["asn"]),
                    f"--steps.tweakreg.abs_refcat={d['refcat']}", f"--output_dir={out}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CRDS" not in proc.stdout + proc.stderr
    visit = d["visit"]
    models = []
    for image in visit.images:
        base = image.model.meta.filename.removesuffix("_cal.fits")
        assert (out / f"{image.model.meta.filename[:-5]}_cat.ecsv").exists()
        assert (out / "tweakreg_wcs" / f"{base}_tweakreg.asdf").exists()
        models.append(datamodels.open(out / f"{base}_tweakreg.fits"))
    assert (out / "jw01345001001_f200w_tweakreg_results.ecsv").exists()
    assert (out / "tweakreg_results_all.jw01345001001_f200w.txt").exists()
    median, worst = accuracy(models, visit)
    assert median <= 3.0, (median, worst)
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in models)
    for p in d["paths"]:
        assert file_digest(p) == d["digests"][p.name]  # inputs untouched


def test_strun_alias_with_command_line_refcat(builtin_files, tmp_path):
    """``strun ceers_align asn.json --steps.tweakreg.abs_refcat=...`` (defaults, serial)."""
    d = builtin_files
    proc = run_cli(["strun", "ceers_align", str(d["asn"]),
                    f"--steps.tweakreg.abs_refcat={d['refcat']}", "--n_jobs=1",
                    f"--output_dir={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CRDS" not in proc.stdout + proc.stderr
    assert len(list(tmp_path.glob("*_tweakreg.fits"))) == len(d["paths"])
    assert len(list((tmp_path / "tweakreg_wcs").glob("*_tweakreg.asdf"))) == len(d["paths"])


def test_pipeline_on_models_in_memory(builtin_visit, tmp_path):
    """In a Python script: a ModelLibrary in, aligned models out, inputs untouched."""
    from conftest import library_of

    from ceers_steps import CeersAlignPipeline

    visit = builtin_visit["visit"]
    library = library_of(visit)
    before = [m.meta.wcs(100.0, 100.0) for m in models_of(library)]
    result = CeersAlignPipeline.call(library, output_dir=str(tmp_path),
                                     steps={"tweakreg": {"abs_refcat": str(builtin_visit["refcat"])}})
    median, _ = accuracy(models_of(result), visit)
    assert median <= 3.0
    assert [m.meta.wcs(100.0, 100.0) for m in models_of(library)] == before
    assert len(list(tmp_path.glob("*_cat.ecsv"))) == len(visit.images)
    assert not list(tmp_path.glob("*.fits"))  # nothing saved unless asked


# --- ceers-align -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_dir(request, tmp_path_factory):
    """Two visits x two filters, 2 detectors x 2 dithers each, in one folder."""
    from ceers_steps.synthetic import make_visit

    d = module_tmp(request, tmp_path_factory, "mixed")
    refcat = None
    for visit_id in ("jw01345001001", "jw01345002001"):
        for filt in ("F115W", "F200W"):
            v = make_visit(detectors=("nrca1", "nrcb4"), n_dithers=2, shape=(512, 512),
                           noise=0.02, use_real=False, seed=5, visit_id=visit_id,
                           filter_name=filt, group="02201" if filt == "F200W" else "02101")
            for image in v.images:
                image.model.save(d / image.model.meta.filename)
            refcat = refcat or v.refcat
    refcat.write(d / "refcat.ecsv")
    return d


def _snapshot(directory):
    return sorted(p.name for p in Path(directory).rglob("*"))


def test_ceers_align_picks_visit_and_filter(mixed_dir, tmp_path):
    from astropy.io import fits

    proc = run_cli(["ceers-align", "jw01345002001", "F200W", "--input-dir", str(mixed_dir),
                    "--output-dir", str(tmp_path), "--abs-refcat", str(mixed_dir / "refcat.ecsv"),
                    "--params-dir", str(tmp_path / "none"), "--n-jobs", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 images on 2 detectors" in proc.stdout
    assert "parameters: defaults" in proc.stdout
    asns = sorted(tmp_path.glob("*_asn.json"))
    assert [a.name for a in asns] == ["jw01345002001_f200w_nrca1_asn.json",
                                      "jw01345002001_f200w_nrcb4_asn.json"]
    for asn_path in asns:
        detector = asn_path.name.split("_")[2]
        members = json.loads(asn_path.read_text())["products"][0]["members"]
        assert len(members) == 2
        for m in members:
            member = (tmp_path / m["expname"]).resolve()
            assert member.exists()
            header = fits.getheader(member)
            assert header["FILTER"] == "F200W" and header["DETECTOR"].lower() == detector
            assert member.name.startswith("jw01345002001_")
    # results, WCS models and the summary; images only with --save-results
    assert (tmp_path / "jw01345002001_f200w_tweakreg_results.ecsv").exists()
    assert len(list((tmp_path / "tweakreg_wcs").glob("jw01345002001_*_tweakreg.asdf"))) == 4
    assert not list(tmp_path.glob("*_tweakreg.fits"))
    assert "absolute" in proc.stdout and "COMPLETE" in proc.stdout


def test_ceers_align_takes_cfg_section_and_saves_images(mixed_dir, ceers_dir, tmp_path):
    cfg = ceers_dir / "tweakreg_cfgs" / "nircam1" / "f200w.cfg"
    proc = run_cli(["ceers-align", "jw01345001001", "f200w", "--input-dir", str(mixed_dir),
                    "--output-dir", str(tmp_path), "--params", str(cfg),
                    "--abs-refcat", str(mixed_dir / "refcat.ecsv"), "--save-results"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"parameters: {cfg} [jw01345001001]" in proc.stdout
    assert len(list(tmp_path.glob("jw01345001001_*_tweakreg.fits"))) == 4


@pytest.mark.parametrize("case", ["missing", "malformed", "other_class", "no_section",
                                  "no_images", "bad_visit"])
def test_ceers_align_errors_write_nothing(mixed_dir, ceers_dir, tmp_path, case):
    out = tmp_path / "out"
    args = ["ceers-align", "jw01345001001", "f200w", "--input-dir", str(mixed_dir),
            "--output-dir", str(out)]
    expect = {
        "missing": "parameter file not found",
        "malformed": "not a readable stpipe parameter file",
        "other_class": "not for ceers_align",
        "no_section": "no section [jw01345001001]",
        "no_images": "no jw01345001001_*_cal.fits with FILTER F444W",
        "bad_visit": "is not a visit id",
    }[case]
    if case == "missing":
        args += ["--params", str(tmp_path / "nope.asdf")]
    elif case == "malformed":
        bad = tmp_path / "bad.asdf"
        bad.write_bytes(b"#ASDF 1.0.0\nnot: [valid\n")
        args += ["--params", str(bad)]
    elif case == "other_class":
        import asdf

        other = tmp_path / "other.asdf"
        asdf.AsdfFile({"class": "ceers_steps.steps.apply_wcs_step.ApplyWcsStep", "name": "apply_wcs",
                       "parameters": {}}).write_to(other)
        args += ["--params", str(other)]
    elif case == "no_section":
        cfg = tmp_path / "f200w.cfg"
        cfg.write_text("[jw01345052001]\ndetect_thresh = 4\n")
        args += ["--params", str(cfg)]
    elif case == "no_images":
        args[2] = "f444w"
    elif case == "bad_visit":
        args[1] = "1345001001"
    before = _snapshot(mixed_dir)
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode != 0
    assert expect in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() or not list(out.iterdir())
    assert _snapshot(mixed_dir) == before


# --- stage 3 -----------------------------------------------------------------------------


def test_stage3_parameter_file_runs_through_skymatch(builtin_files, tmp_path, monkeypatch):
    """``strun pipelines/calwebb_image3_ceers.asdf asn.json`` offline, up to skymatch:
    the models skymatch receives carry the CEERS-aligned WCS."""
    from jwst.skymatch import SkyMatchStep

    try:  # what strun calls (stpipe >= 0.8 moved it)
        from stpipe._cmdline import step_from_cmdline
    except ImportError:
        from stpipe.cmdline import step_from_cmdline

    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "true")  # for jwst's own steps
    for name in list(os.environ):
        if name.startswith("CRDS"):
            monkeypatch.delenv(name)
    seen = {}
    original = SkyMatchStep.process

    def spy(self, input_models):
        seen["models"] = [m.copy() for m in models_of(input_models)]
        return original(self, input_models)

    monkeypatch.setattr(SkyMatchStep, "process", spy)
    d = builtin_files
    step_from_cmdline([
        str(STAGE3), str(d["asn"]),
        f"--steps.tweakreg.steps.tweakreg.abs_refcat={d['refcat']}",
        # 1.16's skymatch cannot intersect these synthetic footprints; 'global' needs none
        "--steps.skymatch.skymethod=global",
        "--steps.outlier_detection.skip=true", "--steps.resample.skip=true",
        "--steps.source_catalog.skip=true", f"--output_dir={tmp_path}",
        "--steps.tweakreg.n_jobs=1",
    ])
    models = seen["models"]
    assert len(models) == len(d["visit"].images)
    assert {m.meta.cal_step.tweakreg for m in models} == {"COMPLETE"}
    assert all(m.meta.wcs.name.startswith("FIT-LVL3-") for m in models)
    median, _ = accuracy(models, d["visit"])
    assert median <= 3.0
    assert (tmp_path / "jw01345001001_f200w_tweakreg_results.ecsv").exists()


def test_parameter_files_are_part_of_the_package():
    """The 30 CEERS files ship inside the package (a wheel has them), where ceers-align looks."""
    from importlib.resources import files

    from ceers_steps.survey.survey import default_parameter_dirs

    folder = files("ceers_steps") / "parameter_files"
    assert len([p for p in folder.iterdir() if p.name.endswith(".asdf")]) == 30
    assert Path(str(folder)).resolve() in [p.resolve() for p in default_parameter_dirs()]
    # The checkout's top-level parameter_files/ (commands in the docs use it) is the same folder.
    assert PARAMETER_FILES.resolve() == Path(str(folder)).resolve()
