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
