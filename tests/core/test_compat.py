"""What differs between jwst stacks (`ceers_steps.core.compat`), checked on the stack under test."""

import pickle

import numpy as np
import pytest
from conftest import library_of

from ceers_steps import ApplyWcsStep, CatalogStep, CeersTweakRegStep
from ceers_steps.core.compat import HAS_MODEL_LIBRARY, is_library, library_models
from ceers_steps.steps.pipeline import CeersAlignPipeline


@pytest.mark.parametrize("cls", [CatalogStep, CeersTweakRegStep, ApplyWcsStep, CeersAlignPipeline])
def test_every_parameter_default_parses(cls):
    """stpipe < 0.5 reads a ')' in a parameter's comment as part of its check: none may."""
    step = cls()
    spec = cls.load_spec_file()
    for name in spec:
        if isinstance(spec[name], str):
            assert hasattr(step, name), name
    if cls is CatalogStep:
        assert (step.back_size, step.detect_thresh, step.kernel) == (128, 4.0, "default")
    if cls is CeersTweakRegStep:
        assert (step.abs_group, step.abs_fitgeometry, step.searchrad) == ("joint", "rshift", 1.0)


def test_result_is_what_jwst_steps_exchange(builtin_visit):
    """ModelLibrary on jwst >= 1.16, ModelContainer before: what jwst's own TweakRegStep returns."""
    out = CeersTweakRegStep.call(library_of(builtin_visit["visit"]), abs_refcat=str(builtin_visit["refcat"]),
                                 minobj=8, abs_minobj=8, save_fit_results=False)
    assert is_library(out)
    assert type(out).__name__ == ("ModelLibrary" if HAS_MODEL_LIBRARY else "ModelContainer")
    models = library_models(out)
    assert len(models) == len(builtin_visit["visit"].images)
    assert all(m.meta.cal_step.tweakreg == "COMPLETE" for m in models)


def test_wcs_pickles_to_workers_exactly():
    """Workers receive WCSs by pickle; astropy < 5.3 needs our ASDF fallback for that."""
    from ceers_steps.synthetic import nircam_like_wcs

    wcs, _ = nircam_like_wcs("nrcb4", dither=(3.0, -2.0))
    copy = pickle.loads(pickle.dumps(wcs))
    x, y = np.meshgrid(np.linspace(0, 2047, 9), np.linspace(0, 2047, 9))
    ra0, dec0 = wcs(x, y)
    ra1, dec1 = copy(x, y)
    assert np.max(np.abs(ra1 - ra0)) == 0 and np.max(np.abs(dec1 - dec0)) == 0
    xi, yi = copy.invert(ra0, dec0)
    assert np.max(np.hypot(xi - x, yi - y)) < 1e-6
    assert copy.bounding_box.bounding_box() == wcs.bounding_box.bounding_box()
