"""Hostile inputs, round 3 (issue 29, finding 12): every bad value is named, before any output.

The cases run on the small synthetic visit of `test_hostile` (2 SW detectors x 2 dithers with
NIRCam artifacts), each on a fresh copy; `Work.verify` checks the inputs are untouched.
"""

import math

import pytest
from test_hostile import FILTER, VISIT, Work, pristine  # noqa: F401 - pristine is a fixture


@pytest.fixture
def work(pristine, tmp_path):  # noqa: F811 - the fixture imported above
    return Work(pristine, tmp_path)


def _written(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize(("step", "param", "value"), [
    ("catalog", "detect_thresh", math.nan),
    ("catalog", "sharpness_limit", math.nan),
    ("tweakreg", "abs_significance", math.nan),
    ("tweakreg", "peakmax", math.nan),
    ("tweakreg", "abs_refcat_epoch", "nan"),
    ("tweakreg", "abs_searchrad", math.inf),
])
def test_non_finite_parameters_refused_by_name(work, step, param, value):
    """NaN passes every 'x > 0' rule: refused by name before anything is read or written."""
    from ceers_steps import CeersAlignPipeline

    work.snapshot()
    out = work.root / "out"
    steps = {"tweakreg": {"abs_refcat": str(work.refcat)}}
    steps.setdefault(step, {})[param] = value
    with pytest.raises(ValueError, match=rf"{param}\b.*(finite|nan)"):
        CeersAlignPipeline.call([str(work.path(i)) for i in range(4)], steps=steps,
                                output_dir=str(out), save_results=True, n_jobs=1)
    work.verify(0, 0)
    assert _written(out) == []


def test_bad_tweakreg_parameter_found_before_catalogs_are_written(work):
    """A bad tweakreg value in ceers_align: refused before CatalogStep writes any catalog."""
    from ceers_steps import CeersAlignPipeline

    work.snapshot()
    out = work.root / "out"
    with pytest.raises(ValueError, match="abs_tolerance must be positive"):
        CeersAlignPipeline.call([str(work.path(i)) for i in range(4)],
                                steps={"tweakreg": {"abs_refcat": str(work.refcat),
                                                    "abs_tolerance": -0.1}},
                                output_dir=str(out), save_results=True, n_jobs=1)
    work.verify(0, 0)
    assert _written(out) == []


def test_ceers_align_bad_parameter_writes_nothing(work, capsys):
    """ceers-align VISIT FILTER with a bad tweakreg value: named, no association nor catalog."""
    cfg = work.root / "f200w.cfg"
    cfg.write_text(f"[{VISIT}]\nabs_searchrad = -1\n")
    work.snapshot()
    code = work.align("--params", str(cfg))
    work.verify(code, 1, capsys.readouterr().err, names=["abs_searchrad"])
    assert _written(work.root / "out") == []


@pytest.mark.parametrize(("line", "key"), [("minobj = 1e400", "minobj"),
                                           ("detect_thresh = 1e999", "detect_thresh"),
                                           ("abs_tolerance = -1e400", "abs_tolerance")])
def test_cfg_number_that_overflows_named_by_file_section_key(work, capsys, line, key):
    """1e400 is inf (int(inf) an OverflowError): the message names file, section and key."""
    from ceers_steps.cli.commands import convert_cfg_main

    cfg = work.root / "f200w.cfg"
    cfg.write_text(f"[{VISIT}]\n{line}\n")
    work.snapshot()
    code = work.align("--params", str(cfg))
    work.verify(code, 1, capsys.readouterr().err, names=["f200w.cfg", VISIT, key])
    code = convert_cfg_main([str(cfg), "--output-dir", str(work.root / "pars")])
    work.verify(code, 1, capsys.readouterr().err, names=["f200w.cfg", VISIT, key])
    assert not (work.root / "pars").exists()


def test_cfg_with_a_utf8_byte_order_mark_is_read(tmp_path, capsys):
    """A cfg saved by a Windows editor starts with a BOM: read like any other."""
    from ceers_steps.cli.commands import convert_cfg_main
    from ceers_steps.survey.cfgconvert import read_cfg

    cfg = tmp_path / "f200w.cfg"
    cfg.write_bytes(b"\xef\xbb\xbf" + f"[{VISIT}]\nminobj = 12\nabs_fitgeom = rscale\n".encode())
    (section,) = read_cfg(cfg)
    assert section.visit == VISIT
    assert section.steps["tweakreg"]["minobj"] == 12
    assert section.steps["tweakreg"]["abs_fitgeometry"] == "rscale"
    assert convert_cfg_main([str(cfg), "--output-dir", str(tmp_path / "pars")]) == 0, \
        capsys.readouterr().err
    assert len(list((tmp_path / "pars").glob("*.asdf"))) == 1


def test_association_expname_that_is_not_a_string_named(work):
    """``"expname": 12345`` in an association: the association and the key are named."""
    import json

    from ceers_steps import CeersAlignPipeline

    asn = work.cal / "bad_asn.json"
    members = [{"expname": work.names[0], "exptype": "science"},
               {"expname": 12345, "exptype": "science"}]
    asn.write_text(json.dumps({"asn_id": "x", "products": [{"name": "x", "members": members}]}))
    work.snapshot()
    with pytest.raises(ValueError, match=r"bad_asn.json: association member key 'expname' must "
                       r"be a file name \(a string\), not 12345"):
        CeersAlignPipeline.call(str(asn), output_dir=str(work.root / "out"),
                                steps={"tweakreg": {"abs_refcat": str(work.refcat)}})
    work.verify(0, 0)


def test_wcs_model_filename_that_is_not_a_string_named(work, capsys):
    """``filename: 12345`` in a saved WCS model: ceers-apply-wcs names the model file and key."""
    import asdf

    from ceers_steps.cli.commands import apply_wcs_main
    from ceers_steps.io.wcs_models import exposure_base

    assert work.align() == 0
    wcs_dir = work.root / "out" / "tweakreg_wcs"
    model = wcs_dir / f"{exposure_base(work.names[0])}_tweakreg.asdf"
    with asdf.open(model) as af:
        tree = {k: v for k, v in af.tree.items() if not k.startswith("asdf_")}
        tree["filename"] = 12345
        asdf.AsdfFile(tree).write_to(work.root / "edited.asdf")
    (work.root / "edited.asdf").replace(model)
    work.snapshot()
    capsys.readouterr()
    code = apply_wcs_main(["--image", str(work.path(0)), "--output-dir",
                           str(work.root / "applied"), "--wcs-dir", str(wcs_dir)])
    work.verify(code, 1, capsys.readouterr().err,
                names=[model.name, "'filename'", "must be a string"], out=work.root / "applied")


def test_refcat_with_every_source_listed_twice_nearby_aligns(work, capsys):
    """
    Every reference source listed twice, 30-80 mas apart (two reductions concatenated):
    the confusion rule (abs_separation 0.2") used to drop both rows of every pair, and
    each image failed for want of reference sources. One row of each pair is kept now.
    """
    import numpy as np
    from astropy.table import Table, vstack

    t = Table.read(work.refcat)
    rng = np.random.default_rng(3)
    shifted = t.copy()
    angle = rng.uniform(0, 2 * np.pi, len(t))
    step = rng.uniform(0.03, 0.08, len(t)) / 3600.0
    shifted["RA"] = t["RA"] + step * np.cos(angle) / np.cos(np.deg2rad(t["DEC"]))
    shifted["DEC"] = t["DEC"] + step * np.sin(angle)
    twice = work.root / "refcat_twice.ecsv"
    vstack([t, shifted]).write(twice)
    work.refcat = twice
    work.snapshot()
    code = work.align()
    captured = capsys.readouterr()
    statuses = work.verify(code, 0, captured.err)
    assert len(statuses) == 4 and set(statuses.values()) == {"COMPLETE"}, captured.err[-3000:]


@pytest.mark.parametrize("joint", [False, True])
def test_survey_bad_tweakreg_parameter_writes_no_catalog(work, capsys, joint):
    """
    ``ceers-align --all`` (alone and ``--joint-channels``) with a parameter file whose
    tweakreg value breaks a rule: the group FAILED naming it, before any catalog or
    association is written.
    """
    import asdf

    params = work.root / "pars.asdf"
    asdf.AsdfFile({"class": "ceers_steps.steps.pipeline.CeersAlignPipeline", "name": "ceers_align",
                   "parameters": {},
                   "steps": [{"class": "ceers_steps.steps.tweakreg_step.CeersTweakRegStep",
                              "name": "tweakreg", "parameters": {"abs_tolerance": -0.1}}]}
                  ).write_to(params)
    from ceers_steps.cli.commands import align_main

    work.snapshot()
    out = work.root / "out"
    code = align_main(["--all", "--input-dir", str(work.cal), "--output-dir", str(out),
                       "--abs-refcat", str(work.refcat), "--params", str(params), "--n-jobs", "1",
                       "--params-dir", str(work.no_params),
                       *(["--joint-channels"] if joint else [])])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert "abs_tolerance must be positive" in captured.out + captured.err
    work.verify(0, 0)
    assert not [p for p in _written(out) if p.endswith(("_cat.ecsv", "_asn.json", ".fits"))]


def test_apply_wcs_image_not_found_names_the_path_given(tmp_path, capsys, monkeypatch):
    """A relative --image that exists nowhere is named as the user typed it, then the fallback."""
    from ceers_steps.cli.commands import apply_wcs_main

    monkeypatch.chdir(tmp_path)
    code = apply_wcs_main(["--image", "calibrated/x_cal.fits", "--wcs-dir", "models"])
    err = capsys.readouterr().err
    assert code == 1
    assert "image not found: calibrated/x_cal.fits (nor calibrated/calibrated/x_cal.fits)" in err
    assert not any(tmp_path.iterdir())
