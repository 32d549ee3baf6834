"""The report's images table leads with one accuracy number per image: the validated one."""

import numpy as np
from astropy.table import Table

from ceers_steps.report.html import MIN_HOLDOUT_SOURCES, _accuracy_cell


def _row(**values):
    base = {"err_center": 1.5, "holdout_err": 4.2, "holdout_sigma": 0.8,
            "holdout_n": MIN_HOLDOUT_SOURCES}
    base.update(values)
    return Table(rows=[list(base.values())], names=list(base))[0]


def test_the_held_out_error_leads_when_enough_sources_are_behind_it():
    cell = _accuracy_cell(_row())
    assert "data-value='4.2'" in cell and "data-basis='held-out'" in cell
    assert ">4.20 <span class='basis'>held-out</span></td>" in cell
    assert f"{MIN_HOLDOUT_SOURCES} of its reference sources" in cell


def test_else_the_model_error_marked_model():
    few = _accuracy_cell(_row(holdout_n=MIN_HOLDOUT_SOURCES - 1))
    assert "data-value='1.5'" in few and ">1.50 <span class='basis'>model</span>" in few
    assert f"only {MIN_HOLDOUT_SOURCES - 1} sources held out" in few
    none = _accuracy_cell(_row(holdout_err=np.nan, holdout_n=0))
    assert "data-basis='model'" in none and "no hold-out validation" in none
    # An older results table, without the hold-out columns.
    old = Table(rows=[[2.25]], names=["err_center"])[0]
    assert ">2.25 <span class='basis'>model</span>" in _accuracy_cell(old)
    assert _accuracy_cell(_row(err_center=np.nan, holdout_n=0)) == "<td data-col='accuracy'>-</td>"
