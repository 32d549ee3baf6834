"""A detector's residual distortion: a smooth polynomial correction in its pixel coordinates.

The pipeline's distortion reference files take a NIRCam detector's pixels to V2/V3 with
polynomials good to a few mas (jwst issue 7749). What is left is a smooth field of a few
mas per detector, the same in every visit: `DetectorDistortion` holds it as the offset
that takes a detected position to the one those polynomials expect,

    x' = x + dx(x, y),    y' = y + dy(x, y),

with ``dx`` and ``dy`` sums of products of Legendre polynomials ``P_i(u) P_j(v)`` of total
degree 2 and 3 (``TERMS``) in the full-frame detector coordinates scaled to [-1, 1]
(``u = (x - 1023.5) / 1023.5``). Over a detector these terms have no mean and no linear
trend: shifts, rotations and scales, which every image's own fit and the detector terms
already take, are not part of the residual.

`insert_distortion` puts the correction in front of an image's detector-to-V2V3 transform,
so that everything downstream (its alignment, resample, the saved WCS models) sees the
corrected pixels. The inserted model is a plain `~astropy.modeling.polynomial.Polynomial2D`
pair (readable by every asdf and jwst version we support) whose leaves are named
``ceers_distortion_x`` and ``ceers_distortion_y``, so a WCS can tell whether it carries one.
"""

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DETECTOR_PIXELS",
    "TERMS",
    "DetectorDistortion",
    "distortion_basis",
    "has_distortion",
    "insert_distortion",
    "subarray_origin",
]

#: Full-frame NIRCam detector size, pixels (x and y).
DETECTOR_PIXELS = 2048

#: (Legendre degree in x, in y) of the residual's terms: total degree 2 and 3.
TERMS = ((2, 0), (1, 1), (0, 2), (3, 0), (2, 1), (1, 2), (0, 3))

_LEAF_NAMES = ("ceers_distortion_x", "ceers_distortion_y")


def _half():
    return (DETECTOR_PIXELS - 1) / 2.0


def distortion_basis(x, y, terms=TERMS):
    """
    The residual's basis at full-frame pixel positions: ``P_i(u) P_j(v)`` per term.

    Parameters
    ----------
    x, y : array_like
        0-based full-frame detector pixel positions.
    terms : sequence of (int, int)
        Legendre degrees in x and in y.

    Returns
    -------
    ndarray (n, n_terms)
    """
    from numpy.polynomial import legendre

    h = _half()
    u = (np.asarray(x, float).ravel() - h) / h
    v = (np.asarray(y, float).ravel() - h) / h
    top = max(max(i, j) for i, j in terms)
    pu = np.stack([legendre.legval(u, np.eye(top + 1)[k]) for k in range(top + 1)])
    pv = np.stack([legendre.legval(v, np.eye(top + 1)[k]) for k in range(top + 1)])
    return np.column_stack([pu[i] * pv[j] for i, j in terms])


def _monomials(coeffs, terms):
    """
    The Legendre coefficients of one axis as monomial coefficients ``c[a, b]`` of
    ``t**a s**b`` in centred pixels (``t = x - 1023.5``, ``s = y - 1023.5``).
    """
    from numpy.polynomial import legendre

    h = _half()
    top = max(max(i, j) for i, j in terms)
    out = np.zeros((top + 1, top + 1))
    for c, (i, j) in zip(coeffs, terms, strict=True):
        # P_i(u) = sum_a p[a] u**a, u = t / h.
        pi = legendre.leg2poly(np.eye(i + 1)[i])
        pj = legendre.leg2poly(np.eye(j + 1)[j])
        for a, ca in enumerate(pi):
            for b, cb in enumerate(pj):
                out[a, b] += c * ca * cb / h ** (a + b)
    return out


def subarray_origin(model):
    """0-based full-frame position of a (subarray) image's first pixel, from ``meta.subarray``."""
    sub = getattr(model.meta, "subarray", None)
    xstart = getattr(sub, "xstart", None) if sub is not None else None
    ystart = getattr(sub, "ystart", None) if sub is not None else None
    return (float(xstart or 1) - 1.0, float(ystart or 1) - 1.0)


@dataclass
class DetectorDistortion:
    """
    One detector's residual distortion.

    Attributes
    ----------
    detector : str
        NIRCam detector (``nrca1`` ... ``nrcblong``).
    coeffs : ndarray (2, n_terms)
        Coefficients of ``dx`` and ``dy`` on `distortion_basis`, pixels.
    cov : ndarray (2 n_terms, 2 n_terms) or None
        Their covariance (``dx``'s terms first), pixels^2.
    terms : tuple of (int, int)
        Legendre degrees of each term (`TERMS`).
    pixel_scale : float
        arcsec per pixel, for figures in mas.
    meta : dict
        Provenance: what the residual was fitted from.
    """

    detector: str
    coeffs: np.ndarray
    cov: np.ndarray = None
    terms: tuple = TERMS
    pixel_scale: float = 0.031
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.coeffs = np.asarray(self.coeffs, float).reshape(2, len(self.terms))
        if self.cov is not None:
            self.cov = np.asarray(self.cov, float)

    @classmethod
    def zero(cls, detector, pixel_scale=0.031):
        return cls(detector, np.zeros((2, len(TERMS))), pixel_scale=pixel_scale)

    @property
    def is_zero(self):
        return not np.any(self.coeffs)

    def offset(self, x, y, origin=(0.0, 0.0)):
        """
        The correction ``(dx, dy)`` at pixel positions, pixels.

        Parameters
        ----------
        x, y : array_like
            0-based pixel positions of the image.
        origin : (float, float)
            Full-frame position of the image's first pixel (`subarray_origin`).
        """
        b = distortion_basis(np.asarray(x, float) + origin[0], np.asarray(y, float) + origin[1],
                             self.terms)
        shape = np.shape(x)
        return (b @ self.coeffs[0]).reshape(shape), (b @ self.coeffs[1]).reshape(shape)

    def grid(self, n=32):
        """An ``n x n`` full-frame grid: ``x, y`` and the correction there (pixels)."""
        g = np.linspace(0.0, DETECTOR_PIXELS - 1.0, n)
        x, y = (a.ravel() for a in np.meshgrid(g, g))
        dx, dy = self.offset(x, y)
        return x, y, dx, dy

    def rms_mas(self, n=32):
        """RMS of the correction over the detector, per axis (x, y), mas."""
        _, _, dx, dy = self.grid(n)
        return (1e3 * self.pixel_scale * float(np.sqrt(np.mean(dx**2))),
                1e3 * self.pixel_scale * float(np.sqrt(np.mean(dy**2))))

    def rms_error_mas(self, n=32):
        """
        The RMS of the correction's own uncertainty over the detector, per axis, mas (NaN
        without a covariance): how well the residual is known, point by point.
        """
        if self.cov is None:
            return (float("nan"), float("nan"))
        x, y, _, _ = self.grid(n)
        b = distortion_basis(x, y, self.terms)
        k = len(self.terms)
        out = []
        for a in (0, 1):
            c = self.cov[a * k:(a + 1) * k, a * k:(a + 1) * k]
            var = np.einsum("ij,jk,ik->i", b, c, b)
            out.append(1e3 * self.pixel_scale * float(np.sqrt(np.mean(np.clip(var, 0, None)))))
        return tuple(out)

    def transform(self, origin=(0.0, 0.0)):
        """
        The correction as an astropy model ``(x, y) -> (x + dx, y + dy)``, with an inverse
        (the correction subtracted at the corrected position: exact to ~1e-6 pixel for
        residuals of a few mas).

        Parameters
        ----------
        origin : (float, float)
            Full-frame position of the image's first pixel (`subarray_origin`).
        """
        return self._model(origin, 1.0) if not self.is_zero else None

    def _model(self, origin, sign, with_inverse=True):
        from astropy.modeling.models import Mapping, Polynomial2D, Shift

        h = _half()
        polys = []
        for a in (0, 1):
            c = sign * _monomials(self.coeffs[a], self.terms)
            top = c.shape[0] - 1
            kw = {f"c{i}_{j}": c[i, j] for i in range(top + 1) for j in range(top + 1 - i)
                  if c[i, j] != 0.0}
            # Identity in the centred coordinates, then the detector centre added back.
            kw[f"c{1 - a}_{a}"] = kw.get(f"c{1 - a}_{a}", 0.0) + 1.0
            kw["c0_0"] = kw.get("c0_0", 0.0) + h - origin[a]
            polys.append(Polynomial2D(top, name=_LEAF_NAMES[a], **kw))
        # Pixel of the image -> centred full-frame pixel.
        to_centre = Shift(origin[0] - h) & Shift(origin[1] - h)
        model = to_centre | Mapping((0, 1, 0, 1)) | polys[0] & polys[1]
        if with_inverse:
            model.inverse = self._model(origin, -sign, with_inverse=False)
        return model


def has_distortion(wcs):
    """Whether a gwcs already carries a residual distortion (`insert_distortion`)."""
    first = wcs.pipeline[0]
    transform = getattr(first, "transform", None)
    if transform is None:
        transform = first[1]
    names = getattr(transform, "submodel_names", None) or (transform.name,)
    return _LEAF_NAMES[0] in names


def insert_distortion(wcs, distortion, origin=(0.0, 0.0)):
    """
    A copy of ``wcs`` with the residual distortion in front of its first transform
    (detector to V2/V3), the bounding box kept.

    Parameters
    ----------
    wcs : `gwcs.WCS`
        An image's WCS (not changed).
    distortion : DetectorDistortion
    origin : (float, float)
        Full-frame position of the image's first pixel (`subarray_origin`).

    Returns
    -------
    `gwcs.WCS`

    Raises
    ------
    ValueError
        When the WCS already carries one (applying two would count the residual twice).
    """
    import copy

    if has_distortion(wcs):
        raise ValueError("its WCS already carries a residual distortion (ceers_distortion); "
                         "a second one would count the residual twice")
    out = copy.deepcopy(wcs)
    correction = distortion.transform(origin)
    if correction is None:
        return out
    bbox = out.bounding_box
    frames = out.available_frames
    first = out.get_transform(frames[0], frames[1])
    out.set_transform(frames[0], frames[1], correction | first)
    if bbox is not None:
        out.bounding_box = bbox
    return out
