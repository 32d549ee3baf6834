"""The class paths that parameter files written before the subpackages name still load our steps."""

from importlib.resources import files

import asdf
import pytest
from stpipe import Step
from stpipe.utilities import import_class

from ceers_steps.steps.apply_wcs_step import ApplyWcsStep
from ceers_steps.steps.catalog_step import CatalogStep
from ceers_steps.steps.pipeline import CeersAlignPipeline
from ceers_steps.steps.stage3 import CeersImage3Pipeline
from ceers_steps.steps.tweakreg_step import CeersTweakRegStep


@pytest.mark.parametrize("old_path, cls", [
    ("ceers_steps.catalog_step.CatalogStep", CatalogStep),
    ("ceers_steps.tweakreg_step.CeersTweakRegStep", CeersTweakRegStep),
    ("ceers_steps.apply_wcs_step.ApplyWcsStep", ApplyWcsStep),
    ("ceers_steps.pipeline.CeersAlignPipeline", CeersAlignPipeline),
    ("ceers_steps.stage3.CeersImage3Pipeline", CeersImage3Pipeline),
])
def test_old_class_path_is_the_new_class(old_path, cls):
    assert import_class(old_path) is cls


def test_step_parameter_file_naming_the_old_path(tmp_path):
    path = tmp_path / "tweakreg.asdf"
    asdf.AsdfFile({"class": "ceers_steps.tweakreg_step.CeersTweakRegStep", "name": "tweakreg",
                   "parameters": {"separation": 0.3, "abs_minobj": 7}}).write_to(path)
    step = Step.from_config_file(str(path))
    assert type(step) is CeersTweakRegStep
    assert (step.separation, step.abs_minobj) == (0.3, 7)


def test_committed_ceers_parameter_file_loads_the_new_classes():
    path = files("ceers_steps") / "parameter_files" / "jw01345001001_f200w.asdf"
    with asdf.open(str(path)) as af:  # written with the old paths
        assert af.tree["class"] == "ceers_steps.pipeline.CeersAlignPipeline"
        assert [s["class"] for s in af.tree["steps"]] == [
            "ceers_steps.catalog_step.CatalogStep", "ceers_steps.tweakreg_step.CeersTweakRegStep"]
        values = {s["name"]: dict(s["parameters"]) for s in af.tree["steps"]}
    pipeline = Step.from_config_file(str(path))
    assert type(pipeline) is CeersAlignPipeline
    assert type(pipeline.catalog) is CatalogStep
    assert type(pipeline.tweakreg) is CeersTweakRegStep
    # every value of the file reaches its step (0.5 arcsec, not the default 0.2, among them)
    assert values["tweakreg"]["abs_separation"] == 0.5
    for name, params in values.items():
        step = getattr(pipeline, name)
        assert {k: getattr(step, k) for k in params} == params
