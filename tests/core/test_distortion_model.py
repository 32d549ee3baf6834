"""The residual-distortion model: its basis, its insertion into a gwcs, its inverse."""

import io

import asdf
import numpy as np
import pytest

from ceers_steps.core.distortion import (
    DetectorDistortion,
    distortion_basis,
    has_distortion,
    insert_distortion,
)
from ceers_steps.synthetic import nircam_like_wcs


def _wcs():
    wcs = nircam_like_wcs("nrca1")
    return wcs[0] if isinstance(wcs, tuple) else wcs


@pytest.fixture
def distortion():
    rng = np.random.default_rng(3)
    return DetectorDistortion("nrca1", rng.normal(0.0, 0.05, (2, 7)))


def test_basis_has_no_shift_rotation_or_scale():
    # Over the full frame the terms have no mean and no linear trend (pixel centres of 16-pixel
    # cells: a uniform sampling).
    g = np.arange(128) * 16.0 + 7.5
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    b = distortion_basis(x, y)
    linear = np.column_stack([np.ones_like(x), (x - 1023.5) / 1023.5, (y - 1023.5) / 1023.5])
    proj = np.linalg.lstsq(linear, b, rcond=None)[0]
    assert np.max(np.abs(proj)) < 2e-3  # u spans pixel centres, not edges


def test_inserted_distortion_moves_sky_positions_by_the_correction(distortion):
    wcs = _wcs()
    moved = insert_distortion(wcs, distortion)
    assert has_distortion(moved) and not has_distortion(wcs)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 2047, (2, 200))
    dx, dy = distortion.offset(x, y)
    expected = np.array(wcs(x + dx, y + dy))
    got = np.array(moved(x, y))
    assert np.max(np.abs(got - expected)) * 3.6e6 < 1e-6  # mas
    # The bounding box stays, the input WCS is untouched.
    assert moved.bounding_box is not None
    assert np.allclose(np.array(wcs(x, y)), np.array(_wcs()(x, y)), rtol=0, atol=1e-12)


def test_inverse_and_subarray_origin(distortion):
    t = distortion.transform()
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 2047, (2, 100))
    xi, yi = t.inverse(*t(x, y))
    assert np.max(np.abs(xi - x)) < 1e-3 and np.max(np.abs(yi - y)) < 1e-3
    # A subarray starting at full-frame (100, 200) sees the detector's field there.
    xs, ys = distortion.transform((100.0, 200.0))(x, y)
    dx, dy = distortion.offset(x + 100.0, y + 200.0)
    assert np.allclose(xs - x, dx, atol=1e-9) and np.allclose(ys - y, dy, atol=1e-9)


def test_second_insertion_is_refused(distortion):
    moved = insert_distortion(_wcs(), distortion)
    with pytest.raises(ValueError, match="already carries a residual distortion"):
        insert_distortion(moved, distortion)


def test_survives_asdf(distortion):
    moved = insert_distortion(_wcs(), distortion)
    buf = io.BytesIO()
    asdf.AsdfFile({"wcs": moved}).write_to(buf)
    buf.seek(0)
    x, y = np.array([10.0, 1000.0, 2000.0]), np.array([30.0, 1500.0, 7.0])
    with asdf.open(buf) as af:
        back = af["wcs"]
        assert has_distortion(back)
        assert np.max(np.abs(np.array(back(x, y)) - np.array(moved(x, y)))) * 3.6e6 < 1e-6


def test_rms_in_mas(distortion):
    rms = distortion.rms_mas()
    _, _, dx, dy = distortion.grid(32)
    assert rms[0] == pytest.approx(31.0 * np.sqrt(np.mean(dx**2)))
    assert DetectorDistortion.zero("nrca1").rms_mas() == (0.0, 0.0)
