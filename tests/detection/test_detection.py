"""Detection and windowed centroids against injected truth."""

import logging

import numpy as np
import pytest

from ceers_steps.detection.sources import (
    DEFAULT_KERNEL,
    DetectionParameters,
    detect_sources,
    detection_kernel,
    flat_rms,
)
from ceers_steps.synthetic.visits import render_sources


def _point_sources(n=60, shape=(600, 600), sigma=1.1, flux=30.0, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    # A jittered grid keeps sources isolated (>= 60 px apart).
    gx, gy = np.meshgrid(np.arange(40, shape[1] - 40, 64.0), np.arange(40, shape[0] - 40, 64.0))
    x = gx.ravel()[:n] + rng.uniform(-0.5, 0.5, n)
    y = gy.ravel()[:n] + rng.uniform(-0.5, 0.5, n)
    image = render_sources(shape, x, y, np.full(x.size, flux), np.full(x.size, sigma))
    image += rng.normal(0, noise, shape).astype(np.float32)
    err = np.full(shape, noise, np.float32)
    return image, err, x, y


def _match(cat, x, y):
    d = np.hypot(cat["xcentroid"][:, None] - x[None, :], cat["ycentroid"][:, None] - y[None, :])
    j = d.argmin(axis=1)
    return np.asarray(cat["xcentroid"]) - x[j], np.asarray(cat["ycentroid"]) - y[j]


def test_windowed_centroids_match_injected_truth():
    image, err, x, y = _point_sources()
    cat = detect_sources(image, err)
    assert len(cat) == x.size
    snr = cat["flux"] / cat["flux_err"]
    assert snr.min() > 50
    dx, dy = _match(cat, x, y)
    # Tight: windowed centroids of S/N > 50 point sources are good to < 0.02 px RMS.
    assert np.sqrt(np.mean(dx**2 + dy**2) / 2) < 0.02
    # No 0/1-based or half-pixel offset.
    assert abs(dx.mean()) < 0.005 and abs(dy.mean()) < 0.005


def test_pixel_origin_is_zero_based():
    # One source exactly on pixel (100, 200): its centroid must be (100, 200), not (101, 201).
    image = render_sources((300, 300), np.array([100.0]), np.array([200.0]), np.array([50.0]),
                           np.array([1.2]))
    image += np.random.default_rng(1).normal(0, 0.01, image.shape).astype(np.float32)
    cat = detect_sources(image, np.full(image.shape, 0.01, np.float32))
    assert len(cat) == 1
    assert cat["xcentroid"][0] == pytest.approx(100.0, abs=0.02)
    assert cat["ycentroid"][0] == pytest.approx(200.0, abs=0.02)


def test_flux_is_auto_flux():
    image, err, x, y = _point_sources(flux=30.0)
    cat = detect_sources(image, err)
    # AUTO recovers most of the flux of a point source (Kron 2.5 encloses > 94%).
    assert np.median(cat["flux"]) == pytest.approx(30.0, rel=0.08)


def test_do_not_use_pixels_are_masked():
    image, err, x, y = _point_sources(n=4)
    dq = np.zeros(image.shape, np.uint32)
    # Flag the first source's neighbourhood DO_NOT_USE (bit 0), and put garbage in it.
    xi, yi = int(round(x[0])), int(round(y[0]))
    dq[yi - 10:yi + 11, xi - 10:xi + 11] = 1
    image[yi - 10:yi + 11, xi - 10:xi + 11] = 1e6
    cat = detect_sources(image, err, dq)
    assert len(cat) == 3
    assert np.min(np.hypot(cat["xcentroid"] - x[0], cat["ycentroid"] - y[0])) > 10


@pytest.mark.parametrize("fill", [np.nan, 0.0])
def test_empty_image_gives_empty_catalog(fill):
    image = np.full((256, 256), fill, np.float32)
    err = np.full((256, 256), 0.01, np.float32)
    cat = detect_sources(image, err)
    assert len(cat) == 0
    assert "warning" in cat.meta
    assert {"xcentroid", "ycentroid", "flux"} <= set(cat.colnames)


def test_flat_rms_is_median_of_positive_err():
    err = np.array([[0.0, -1.0, np.nan], [1.0, 2.0, 3.0]])
    assert flat_rms(err) == 2.0
    assert np.isnan(flat_rms(np.zeros((3, 3))))


def test_kernels():
    assert np.array_equal(detection_kernel("default"), DEFAULT_KERNEL)
    assert detection_kernel("none") is None
    g = detection_kernel("gauss_2.0_5x5")
    assert g.shape == (5, 5) and g[2, 2] == g.max()
    assert detection_kernel("tophat_3.0_3x3").shape == (3, 3)
    with pytest.raises(ValueError, match="Unknown detection kernel"):
        detection_kernel("mexhat")


def test_threshold_changes_detections():
    image, err, x, y = _point_sources(flux=0.6, noise=0.01, seed=3)
    low = detect_sources(image, err, params=DetectionParameters(detect_thresh=2.0, detect_minarea=5))
    high = detect_sources(image, err, params=DetectionParameters(detect_thresh=8.0, detect_minarea=5))
    assert len(high) < len(low)


def test_rms_map_mode():
    image, err, x, y = _point_sources(n=9)
    cat = detect_sources(image, err, params=DetectionParameters(rms="map"))
    assert len(cat) == 9
    with pytest.raises(ValueError, match="rms"):
        DetectionParameters(rms="local")


def test_edge_source_does_not_crash_and_centroids_stay_on_image(caplog):
    image, err, x, y = _point_sources(n=4)
    # A source half off the edge may fail its windowed centroid; nothing must crash.
    image += render_sources(image.shape, np.array([0.2]), np.array([300.0]), np.array([30.0]),
                            np.array([1.1]))
    with caplog.at_level(logging.INFO, logger="ceers_steps"):
        cat = detect_sources(image, err)
    assert np.all((cat["xcentroid"] >= -0.5) & (cat["xcentroid"] < image.shape[1] - 0.5))
