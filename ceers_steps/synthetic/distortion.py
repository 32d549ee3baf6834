"""Residual distortions to inject into synthetic visits: a smooth field per detector."""

import zlib

import numpy as np

from ..core.distortion import TERMS, DetectorDistortion
from .scene import DETECTOR_GEOMETRY

__all__ = ["random_distortion"]


def random_distortion(detectors, rms_mas=3.0, seed=0, terms=TERMS):
    """
    A random residual distortion per detector, of a given RMS over the full frame.

    Each detector's coefficients on `ceers_steps.core.distortion.TERMS` (Legendre terms
    of degree 2 and 3: no shift, rotation or scale) are drawn from a normal distribution
    and scaled so that the correction's RMS over the full frame is ``rms_mas`` along each
    pixel axis, as `~ceers_steps.core.distortion.DetectorDistortion.rms_mas` measures it
    (what the reports show). A detector's field depends only on ``seed`` and its name, not on the
    other detectors asked for.

    Parameters
    ----------
    detectors : sequence of str
        NIRCam detectors (their pixel scales from `DETECTOR_GEOMETRY`).
    rms_mas : float
        RMS of the correction over the detector per axis, mas.
    seed : int
        Random seed.
    terms : tuple of (int, int)
        Legendre degrees of the terms.

    Returns
    -------
    dict
        detector -> `~ceers_steps.core.distortion.DetectorDistortion`.
    """
    out = {}
    for det in detectors:
        scale = DETECTOR_GEOMETRY[det][3]
        # Its own stream per detector (a name's CRC, not Python's salted hash).
        rng = np.random.default_rng([int(seed), zlib.crc32(det.encode())])
        coeffs = rng.normal(0.0, 1.0, (2, len(terms)))
        dist = DetectorDistortion(det, coeffs, terms=tuple(terms), pixel_scale=scale,
                                  meta={"origin": "random_distortion", "seed": int(seed),
                                        "rms_mas": float(rms_mas)})
        rms = np.asarray(dist.rms_mas())
        dist.coeffs = dist.coeffs * (float(rms_mas) / rms)[:, None]
        out[det] = dist
    return out
