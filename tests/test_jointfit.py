"""The joint visit fit against injected truth, without images or stpipe."""

import numpy as np
import pytest

from ceers_steps.jointfit import JointParameters, joint_fit, offset_from_2dhist


def _rot(deg, scale=1.0):
    t = np.deg2rad(deg)
    return scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _scene(n_det=4, n_dith=3, n_src=400, noise=0.0, det_sigma=0.0, seed=0, scale=1.0):
    """Reference sources, and per image the detections as seen through a wrong WCS."""
    rng = np.random.default_rng(seed)
    ref = rng.uniform(-150, 150, size=(n_src, 2))
    A, T = _rot(0.02, scale), np.array([0.45, -0.25])
    t = rng.normal(0, 0.02, (n_dith, 2))
    t[0] = 0.0
    u = rng.normal(0, det_sigma, (n_det, 2)) if det_sigma else np.zeros((n_det, 2))
    intrinsic = rng.normal(0, noise, (n_src, 2))
    positions, dithers, detectors = [], [], []
    for k in range(n_det):
        # Each detector sees a quarter of the sky region; dithers see the same sources.
        lo = -150 + k * 300 / n_det
        sel = (ref[:, 0] >= lo) & (ref[:, 0] < lo + 300 / n_det)
        for d in range(n_dith):
            truth = ref[sel] + intrinsic[sel]
            # Truth = A p + T + t_d + u_k  =>  p = A^-1 (truth - shift)
            p = (truth - (T + t[d] + u[k])) @ np.linalg.inv(A).T
            positions.append(p)
            dithers.append(f"d{d}")
            detectors.append(f"k{k}")
    return ref, positions, dithers, detectors, (A, T, t, u)


def test_noise_free_visit_is_recovered_exactly():
    ref, pos, dith, det, (A, T, t, u) = _scene()
    fit = joint_fit(pos, dith, det, ref, JointParameters(fitgeometry="rshift", separation=0.0))
    assert fit.success
    assert np.allclose(fit.matrix, A, atol=1e-9)
    assert np.allclose(fit.shift, T, atol=1e-7)
    for d in range(3):
        assert np.allclose(fit.dither_shift[f"d{d}"], t[d], atol=1e-7)
    assert fit.rotation == pytest.approx(0.02, abs=1e-7)
    assert not any(fit.detector_significant.values())


def test_rscale_recovers_scale():
    ref, pos, dith, det, (A, T, t, u) = _scene(scale=1.0 + 3e-5)
    fit = joint_fit(pos, dith, det, ref, JointParameters(fitgeometry="rscale", separation=0.0))
    assert fit.scale == pytest.approx(1.0 + 3e-5, abs=1e-9)
    assert np.allclose(fit.matrix, A, atol=1e-9)


def test_detector_offsets_are_found_when_real_only():
    # 30 mas detector offsets with 10 mas source scatter: every detector is significant.
    ref, pos, dith, det, (A, T, t, u) = _scene(noise=0.010, det_sigma=0.03, seed=3)
    fit = joint_fit(pos, dith, det, ref, JointParameters(separation=0.0))
    assert all(fit.detector_significant.values())
    # Per-image totals match the truth to the noise floor (~10 mas / sqrt(100 sources)).
    for i, (d, k) in enumerate(zip(dith, det, strict=True)):
        truth = T + t[int(d[1])] + u[int(k[1])]
        assert np.hypot(*(fit.image_shift[i] - truth)) < 0.004
    # Without detector errors no term is kept (no false positives at 3 sigma).
    ref, pos, dith, det, _ = _scene(noise=0.010, seed=4)
    fit = joint_fit(pos, dith, det, ref, JointParameters(separation=0.0))
    assert not any(fit.detector_significant.values())


def test_two_dimensional_histogram_finds_offset():
    rng = np.random.default_rng(1)
    ref = rng.uniform(-100, 100, (300, 2))
    xy = ref[:200] - np.array([0.43, -0.31])
    offset, n = offset_from_2dhist(xy, ref, searchrad=1.0)
    assert np.allclose(offset, [0.43, -0.31], atol=0.005)
    assert n >= 150


def test_too_few_matches_is_a_status_not_an_exception():
    ref, pos, dith, det, _ = _scene(n_src=40)
    fit = joint_fit(pos, dith, det, ref + 50.0, JointParameters(minobj=20, searchrad=1.0))
    assert not fit.success and fit.status.startswith("FAILED")


def test_stacked_corrections_are_exact(ceers_dir):
    """A correction on top of a real (already tweaked) CEERS WCS lands where it is asked to."""
    import asdf

    from ceers_steps.correctors import StackedJWSTWCSCorrector
    from ceers_steps.synthetic import rotation_matrix, tangent_plane
    from ceers_steps.wcs_utils import pixel_grid

    path = ceers_dir / "tweakreg_wcs" / "jw01345001001_02201_00001_nrca1_tweakreg.asdf"
    with asdf.open(path, lazy_load=False) as af:
        wcs, wcsinfo = af["wcs"], dict(af["wcsinfo"])
    ra, dec = wcs(1024, 1024)
    plane = tangent_plane(ra + 0.03, dec)
    matrix, shift = rotation_matrix(0.02), np.array([0.45, -0.25])
    corr = StackedJWSTWCSCorrector(wcs, wcsinfo)
    corr.set_correction(matrix, shift, ref_tpwcs=plane)
    x, y = pixel_grid((2048, 2048), 8)
    p = np.column_stack(plane.world_to_tanp(*wcs(x, y)))
    q = np.column_stack(plane.world_to_tanp(*corr.wcs(x, y)))
    # tweakwcs' own corrector misses by ~0.4 mas here (its existing 0.055 deg rotation x 0.5").
    assert np.abs(q - (p @ matrix.T + shift)).max() < 1e-6  # arcsec = 1e-3 mas
