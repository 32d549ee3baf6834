"""
jwst's own TweakRegStep tests, run against CeersTweakRegStep.

The test modules ship inside the installed ``jwst`` package
(``jwst/tweakreg/tests/``). They are imported here unchanged; the only change
is the class: ``jwst.tweakreg.tweakreg_step.TweakRegStep`` is our step for the
duration of each test. Which of them apply, and why the others do not, is in
the README ("jwst's own tests").

- jwst's ``GAIADR3`` needs the network; ``test_src_confusion_pars`` runs with
  ``REFCAT`` set to a local catalog that, like Gaia for these fake sources,
  matches nothing (the test expects FAILED either way).
- ``test_custom_catalog`` is marked slow by jwst (72 cases): ``pytest -m slow``.
- They encode jwst 3.x statuses (FAILED when the step could not do its work):
  on older jwst they are skipped.
"""

import pytest

jwst = pytest.importorskip("jwst")
from packaging.version import Version  # noqa: E402

if Version(jwst.__version__.split("+")[0]).major < 3:  # 1.x tests expect 1.x statuses
    pytest.skip(f"jwst {jwst.__version__}: its tests encode jwst 1.x statuses (SKIPPED for a "
                "step that could not align); ours follow jwst 3.x", allow_module_level=True)

from jwst.conftest import log_watcher, tmp_cwd  # noqa: E402,F401 - jwst's fixtures
from jwst.tweakreg import tweakreg_step  # noqa: E402
from jwst.tweakreg.tests import test_multichip_jwst as _multichip  # noqa: E402
from jwst.tweakreg.tests import test_tweakreg as _tweakreg  # noqa: E402
from jwst.tweakreg.tests.test_multichip_jwst import (  # noqa: E402,F401
    test_multichip_alignment_step_abs,
    test_multichip_alignment_step_rel,
)
from jwst.tweakreg.tests.test_tweakreg import (  # noqa: E402,F401
    custom_catalog_path,
    example_input,
    example_wcs,
    mock_source_catalog,
    test_custom_catalog,
    test_ngroup_1,
    test_sip_approx,
    test_src_confusion_pars,
    test_tweakreg_step,
    test_write_catalog,
)

from ceers_steps import CeersTweakRegStep  # noqa: E402

assert _multichip  # the module is named for the README table


@pytest.fixture(autouse=True)
def swapped(monkeypatch, tmp_path):
    """jwst's TweakRegStep is ours; GAIADR3 is a local catalog that matches nothing."""
    from astropy.table import Table

    monkeypatch.setattr(tweakreg_step, "TweakRegStep", CeersTweakRegStep)
    far = tmp_path / "far_refcat.ecsv"
    # 40 sources a degree away from the test images (as Gaia has none of the fake stars)
    Table({"RA": [5.63 + 0.001 * i for i in range(40)],
           "DEC": [-72.05 + 0.0007 * i for i in range(40)]}).write(far)
    monkeypatch.setattr(_tweakreg, "REFCAT", str(far))
    monkeypatch.chdir(tmp_path)  # steps write their results tables in the working folder
