"""The write stage's residual-distortion files: this run's fields, never an earlier run's."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ceers_steps.core.distortion import DetectorDistortion
from ceers_steps.fitting.distortion import DistortionFit
from ceers_steps.io.distortion_files import read_distortion_file, write_distortion_file
from ceers_steps.stages.write import write_distortion_files


def _pars(out, fit=True):
    return SimpleNamespace(output_dir_path=lambda: Path(out), fit_distortion=fit)


def test_files_of_an_earlier_run_never_pass_for_this_one(tmp_path, caplog):
    folder = tmp_path / "distortion"
    folder.mkdir()
    old = DetectorDistortion("nrcalong", np.full((2, 7), 0.02), pixel_scale=0.063)
    write_distortion_file(folder / "ceers_distortion_nrcalong.asdf", old)
    new = DetectorDistortion("nrca1", np.full((2, 7), 0.01))
    paths = write_distortion_files(_pars(tmp_path), DistortionFit(distortions={"nrca1": new}))
    # This run's detector written, the earlier run's other detector gone.
    assert sorted(p.name for p in folder.iterdir()) == ["ceers_distortion_nrca1.asdf"]
    assert np.array_equal(read_distortion_file(paths["nrca1"]).coeffs, new.coeffs)
    # A run whose fit failed leaves no field at all, and says so.
    assert write_distortion_files(_pars(tmp_path), DistortionFit(status="FAILED: x")) == {}
    assert list(folder.iterdir()) == []
    assert "were removed" in caplog.text
    # Without fit_distortion the folder is not this run's business.
    write_distortion_file(folder / "ceers_distortion_nrca1.asdf", new)
    assert write_distortion_files(_pars(tmp_path, fit=False), None) == {}
    assert [p.name for p in folder.iterdir()] == ["ceers_distortion_nrca1.asdf"]
