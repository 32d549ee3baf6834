"""The generator's injected residual distortion: where sources land, what the truth carries."""

import numpy as np
import pytest

from ceers_steps.core.distortion import DetectorDistortion, has_distortion
from ceers_steps.core.wcs_utils import tangent_plane
from ceers_steps.synthetic import DETECTOR_GEOMETRY, make_visit, random_distortion

DETS = ("nrca1", "nrca3")
SHAPE = (512, 512)


def _visit(distortion=None, seed=4, **kw):
    return make_visit(detectors=DETS, n_dithers=2, shape=SHAPE, use_real=False, seed=seed,
                      distortion=distortion, **kw)


@pytest.fixture(scope="module")
def field():
    # 30 mas rms: ~1 pixel, so that centroids measure it well above their noise.
    return random_distortion(DETS, rms_mas=30.0, seed=7)


@pytest.fixture(scope="module")
def pair(field):
    # Low noise: centroids good to ~1 mas.
    return _visit(noise=0.01), _visit(field, noise=0.01)


def _jacobian(wcs, plane, x=255.5, y=255.5):
    """Tangent-plane arcsec per pixel along x and y (columns) at a pixel."""
    p = np.column_stack(plane.world_to_tanp(*wcs(np.array([x, x + 1.0, x]),
                                                 np.array([y, y, y + 1.0]))))
    return np.column_stack([p[1] - p[0], p[2] - p[0]])


def test_random_distortion_has_the_asked_rms_per_axis():
    dists = random_distortion(("nrca1", "nrca2", "nrcalong"), rms_mas=3.0, seed=2)
    for det, dist in dists.items():
        assert dist.detector == det
        assert dist.pixel_scale == DETECTOR_GEOMETRY[det][3]
        assert np.allclose(dist.rms_mas(), (3.0, 3.0), rtol=1e-9)
        # Over the pixels (cell centres, not a grid with the corners): within 10 %.
        g = np.arange(64) * 32.0 + 15.5
        dx, dy = dist.offset(*(a.ravel() for a in np.meshgrid(g, g)))
        area = 1e3 * dist.pixel_scale * np.sqrt([np.mean(dx**2), np.mean(dy**2)])
        assert np.allclose(area, 3.0, rtol=0.1)
    # A detector's field depends on the seed and its name only.
    alone = random_distortion(("nrca2",), rms_mas=3.0, seed=2)["nrca2"]
    assert np.array_equal(alone.coeffs, dists["nrca2"].coeffs)
    assert not np.allclose(dists["nrca1"].coeffs, dists["nrca2"].coeffs)
    other = random_distortion(("nrca2",), rms_mas=3.0, seed=3)["nrca2"]
    assert not np.allclose(other.coeffs, alone.coeffs)


def test_no_distortion_and_zero_distortion_give_the_same_visit():
    plain = _visit()
    zero = _visit({det: DetectorDistortion.zero(det) for det in DETS})
    assert plain.truth["distortion"] == {} and zero.truth["distortion"] == {}
    for a, b in zip(plain.images, zero.images, strict=True):
        assert np.array_equal(a.model.data, b.model.data, equal_nan=True)
        assert np.array_equal(a.true_sources, b.true_sources)
        assert not has_distortion(b.true_wcs)


def test_distortion_draws_no_random_numbers(pair):
    plain, dist = pair
    assert np.array_equal(np.asarray(plain.refcat["RA"]), np.asarray(dist.refcat["RA"]))
    assert np.array_equal(plain.truth["dither_shift"], dist.truth["dither_shift"])
    assert np.array_equal(plain.truth["intrinsic_offsets"], dist.truth["intrinsic_offsets"])
    x = np.linspace(0, SHAPE[1] - 1, 5)
    for a, b in zip(plain.images, dist.images, strict=True):
        assert np.array_equal(a.model.dq, b.model.dq)
        assert np.array_equal(a.model.err, b.model.err)
        # The assigned WCS lacks the residual: the same as without it.
        assert np.array_equal(np.array(a.model.meta.wcs(x, x)), np.array(b.model.meta.wcs(x, x)))
        # Same noise: far from the sources the pixels are the same.
        same = a.model.data == b.model.data
        assert same.sum() > 0.5 * np.isfinite(a.model.data).sum()
        assert len(a.true_sources) == len(b.true_sources)


def test_sources_move_by_the_injected_field_and_the_truth_carries_it(pair, field):
    plain, dist = pair
    assert set(dist.truth["distortion"]) == set(DETS)
    plane = tangent_plane(*dist.center)
    for a, b in zip(plain.images, dist.images, strict=True):
        assert has_distortion(b.true_wcs) and not has_distortion(a.true_wcs)
        scale_mas = 1e3 * DETECTOR_GEOMETRY[b.detector][3]
        # x + D(x) = x_t, to well under a micro-arcsecond.
        xt, yt = a.true_sources[:, 0], a.true_sources[:, 1]
        x, y = b.true_sources[:, 0], b.true_sources[:, 1]
        dx, dy = field[b.detector].offset(x, y)
        assert np.max(np.hypot(x + dx - xt, y + dy - yt)) * scale_mas < 1e-3
        assert np.sqrt(np.mean(dx**2 + dy**2)) * scale_mas > 10.0
        # Through its true WCS each source is where it is on the sky.
        ra_a, dec_a = a.true_wcs(xt, yt, with_bounding_box=False)
        ra_b, dec_b = b.true_wcs(x, y, with_bounding_box=False)
        d = 1e3 * (np.column_stack(plane.world_to_tanp(ra_b, dec_b))
                   - np.column_stack(plane.world_to_tanp(ra_a, dec_a)))
        assert np.max(np.hypot(*d.T)) < 1e-3  # mas
        # The truth of a pixel moves by the field: a score against it counts the residual.
        gx, gy = (g.ravel() for g in np.meshgrid(np.linspace(0, 511, 6), np.linspace(0, 511, 6)))
        pa = np.column_stack(plane.world_to_tanp(*a.true_wcs(gx, gy)))
        pb = np.column_stack(plane.world_to_tanp(*b.true_wcs(gx, gy)))
        moved = np.linalg.solve(_jacobian(a.true_wcs, plane), (pb - pa).T).T  # pixels
        gdx, gdy = field[b.detector].offset(gx, gy)
        assert np.max(np.hypot(moved[:, 0] - gdx, moved[:, 1] - gdy)) * scale_mas < 0.5


def test_rendered_centroids_follow_the_field(pair, field):
    # The images share their noise: the change of a source's windowed centroid is its shift.
    sep = pytest.importorskip("sep")
    plain, dist = pair
    errors, shifts = [], []
    for a, b in zip(plain.images, dist.images, strict=True):
        keep = a.true_sources[:, 2] > 2.0
        xt, yt = a.true_sources[keep, 0], a.true_sources[keep, 1]
        inside = (xt > 10) & (xt < SHAPE[1] - 11) & (yt > 10) & (yt < SHAPE[0] - 11)
        xt, yt = xt[inside], yt[inside]
        da = np.nan_to_num(a.model.data).astype(float)
        db = np.nan_to_num(b.model.data).astype(float)
        xa, ya, _ = sep.winpos(da, xt, yt, np.full(len(xt), 1.5))
        xb, yb, _ = sep.winpos(db, xt, yt, np.full(len(xt), 1.5))
        dx, dy = field[b.detector].offset(xb, yb)
        scale_mas = 1e3 * DETECTOR_GEOMETRY[b.detector][3]
        errors.append(scale_mas * np.hypot(xb - xa + dx, yb - ya + dy))
        shifts.append(scale_mas * np.hypot(dx, dy))
    errors, shifts = np.concatenate(errors), np.concatenate(shifts)
    assert len(errors) >= 10
    assert np.median(shifts) > 10.0
    assert np.median(errors) < 0.05 * np.median(shifts)


def test_distortion_must_be_a_dict_of_detector_distortions():
    with pytest.raises(TypeError, match="dict detector -> DetectorDistortion"):
        _visit([1, 2])
    with pytest.raises(TypeError, match=r"distortion\['nrca1'\] must be a DetectorDistortion"):
        _visit({"nrca1": np.zeros((2, 7))})
