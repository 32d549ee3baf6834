"""
One image to align (`AlignImage`), its result rows, and where images lie on the sky.

The geometry the fits share: footprints, the visit's tangent plane, catalog
positions in it, the reference sources near the images.
"""

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from astropy.table import Table

from ..core.wcs_utils import bbox_limits, pixel_axes

__all__ = [
    "AlignImage",
    "ImageHeader",
    "catalog_problem",
    "footprint_centre",
    "is_long_wavelength",
    "result_row",
    "sky_centre",
    "visit_plane",
]


class ImageHeader:
    """
    The metadata alignment needs from an image, without its pixels (picklable).

    Stands in for the image model in `AlignImage`:
    ``meta.filename``, ``meta.wcs``, ``meta.wcsinfo.v2_ref/v3_ref/roll_ref``,
    ``meta.exposure.mid_time`` (MJD, the epoch for reference proper motions) and
    ``meta.subarray.xstart/ystart`` (1-based full-frame position of the first pixel, None
    for a full frame: where a detector's residual distortion is evaluated).
    """

    def __init__(self, filename, wcs, wcsinfo, mid_time=None, subarray=(None, None)):
        self.meta = SimpleNamespace(filename=filename, wcs=wcs,
                                    wcsinfo=SimpleNamespace(**wcsinfo),
                                    exposure=SimpleNamespace(mid_time=mid_time),
                                    subarray=SimpleNamespace(xstart=subarray[0],
                                                             ystart=subarray[1]))

    @classmethod
    def from_model(cls, model):
        from ..io.grouping import image_epoch

        wi = model.meta.wcsinfo
        epoch = image_epoch(model)
        sub = getattr(model.meta, "subarray", None)
        return cls(model.meta.filename, model.meta.wcs,
                   {"v2_ref": wi.v2_ref, "v3_ref": wi.v3_ref, "roll_ref": wi.roll_ref},
                   mid_time=None if epoch is None else float(epoch.mjd),
                   subarray=(getattr(sub, "xstart", None), getattr(sub, "ystart", None)))


@dataclass
class AlignImage:
    """
    One image to align.

    Attributes
    ----------
    fit_info : dict
        Stage -> tweakwcs ``fit_info`` of the last fit (relative/absolute).
    name : str
        File name (for rows and messages).
    model : ImageModel or ImageHeader
        The model (or, for images on disk, its `ImageHeader`)
        whose ``meta.wcs`` is corrected in place on success.
    catalog : Table
        Sources with 0-based ``x``, ``y`` (and optional ``weight``).
    key : ImageKey
        Visit, filter, detector, exposure.
    original_wcs : gwcs.WCS
        The WCS the fit started from (set by `ceers_steps.fitting.visit.align_visit`).
    input_wcs : gwcs.WCS or None
        The user's input WCS when the run changed it before the fit (a residual distortion
        inserted): what a FAILED image keeps. None: ``original_wcs`` is the input.
    """

    name: str
    model: object
    catalog: Table
    key: object
    status: dict = field(default_factory=dict)
    fit_info: dict = field(default_factory=dict)
    original_wcs: object = None
    input_wcs: object = None

    def wcsinfo(self):
        wi = self.model.meta.wcsinfo
        return {"v2_ref": wi.v2_ref, "v3_ref": wi.v3_ref, "roll_ref": wi.roll_ref}

    def set_wcs(self, wcs):
        """Replace the model's WCS (a gwcs made by tweakwcs: no re-validation)."""
        from ..io.inputs import trusted_assignment

        with trusted_assignment(self.model):
            self.model.meta.wcs = wcs

    def inside_catalog(self):
        """The catalog rows with finite positions inside the WCS bounding box."""
        cat = self.catalog
        if len(cat):
            cat = cat[np.isfinite(cat["x"]) & np.isfinite(cat["y"])]
        limits = bbox_limits(self.model.meta.wcs)
        if limits is not None and len(cat):
            (x0, x1), (y0, y1) = limits
            inside = (cat["x"] > x0) & (cat["x"] < x1) & (cat["y"] > y0) & (cat["y"] < y1)
            cat = cat[inside]
        return cat

    def corrector(self, group_id):
        """A tweakwcs JWST corrector on the current WCS, carrying the in-bounds catalog."""
        # tweakwcs names catalogs (its log, its match calls) as jwst does: the file stem.
        from pathlib import Path

        from .correctors import StackedJWSTWCSCorrector

        catalog = self.inside_catalog()
        catalog.meta["name"] = Path(str(self.name)).stem.strip("_- ")
        return StackedJWSTWCSCorrector(wcs=self.model.meta.wcs, wcsinfo=self.wcsinfo(),
                                       meta={"catalog": catalog, "name": catalog.meta["name"],
                                             "group_id": group_id})


#: More catalog sources than one per this many pixels is no NIRCam catalog (deep fields
#: give one per ~1000-4000 pixels): matching will be confused.
DENSE_PIXELS_PER_SOURCE = 200.0


def catalog_problem(im):
    """
    What is wrong with an image's catalog for alignment, or None.

    Reported per image: a catalog whose sources are all non-finite or off the
    image (a wrong catalog, or 1-based positions of another image), or one far
    denser than any real NIRCam catalog.
    """
    n = len(im.catalog) if im.catalog is not None else 0
    if n == 0:
        return None
    inside = len(im.inside_catalog())
    if inside == 0:
        finite = int(np.sum(np.isfinite(im.catalog["x"]) & np.isfinite(im.catalog["y"])))
        return (f"none of the {n} sources of its catalog lies on the image "
                f"({n - finite} non-finite, {finite} outside it): the wrong catalog?")
    limits = bbox_limits(im.model.meta.wcs)
    if limits is not None:
        (x0, x1), (y0, y1) = limits
        area = max((x1 - x0) * (y1 - y0), 1.0)
        if inside > area / DENSE_PIXELS_PER_SOURCE:
            return (f"its catalog has {inside} sources on the image, one per "
                    f"{area / inside:.0f} pixels: far denser than a NIRCam catalog "
                    "(random rows?); matches may be confused")
    return None


def result_row(stage, group, image, status, fitgeometry, fit_info=None, **values):
    """
    One row of the results table.

    Columns: ``stage`` (relative/absolute), ``group``, ``image``, ``status``,
    ``nmatch`` (sources of the final solution, after clipping: CEERS' NMATCH),
    ``nmatch_all`` (matches before clipping), ``rmse`` and ``mae`` (arcsec),
    ``xshift`` and ``yshift`` (arcsec, in tweakwcs' frame: the tangent plane of
    the fit's first image, V2/V3 axes), ``rotation`` (deg), ``scale``,
    ``fitgeometry``, ``err_center`` and ``err_corner`` (mas, the joint fit's
    uncertainty of the aligned image; NaN where not computed), ``holdout_err``,
    ``holdout_sigma`` (mas) and ``holdout_n`` (the hold-out estimate of its error, that
    estimate's noise per axis and the sources behind it). Numbers come from
    tweakwcs' ``fit_info`` when given, else from ``values``; a failed fit has
    zeros in CEERS' columns (as CEERS wrote).
    """
    row = {"stage": stage, "group": group, "image": image, "status": status,
           "nmatch": 0, "nmatch_all": 0, "rmse": 0.0, "mae": 0.0, "xshift": 0.0, "yshift": 0.0,
           "rotation": 0.0, "scale": 1.0, "fitgeometry": fitgeometry, "err_center": np.nan,
           "err_corner": np.nan, "holdout_err": np.nan, "holdout_sigma": np.nan,
           "holdout_n": 0}
    if fit_info is not None and fit_info.get("status") == "SUCCESS":
        geom = fit_info.get("fitgeom", fitgeometry)
        rot = fit_info["proper_rot"] if geom in ("rshift", "rscale") else fit_info["<rot>"]
        nmatch_all = int(fit_info.get("nmatches", 0))
        # NMATCH as CEERS recorded it: the sources of the final solution, after clipping.
        fitmask = fit_info.get("fitmask")
        nmatch = int(np.sum(fitmask)) if fitmask is not None else nmatch_all
        row.update(nmatch=nmatch, nmatch_all=nmatch_all, rmse=float(fit_info["rmse"]),
                   mae=float(fit_info["mae"]), xshift=float(fit_info["shift"][0]),
                   yshift=float(fit_info["shift"][1]), rotation=float(rot),
                   scale=float(fit_info["<scale>"]), fitgeometry=geom)
    row.update(values)
    return row


def _footprint(wcs):
    ra, dec = wcs.footprint(axis_type="spatial").T
    return np.asarray(ra), np.asarray(dec)


def _correction_size(wcs0, wcs1):
    """Largest on-sky displacement (arcsec) of the image corners from ``wcs0`` to ``wcs1``."""
    from ..core.wcs_utils import angular_separation_mas

    ra0, dec0 = _footprint(wcs0)
    ra1, dec1 = _footprint(wcs1)
    return float(np.max(angular_separation_mas(ra0, dec0, ra1, dec1))) / 1e3


def footprint_centre(images):
    """
    Centre of the images' footprints (mean unit vector of their corners) and the
    angular radius reaching the farthest corner, deg: ``(ra, dec, radius)``.
    """
    ra, dec = (np.concatenate(c) for c in zip(*(_footprint(im.model.meta.wcs) for im in images),
                                              strict=True))
    return sky_centre(ra, dec)


def sky_centre(ra, dec):
    """
    Centre of sky positions (mean unit vector) and the angular radius reaching the
    farthest of them, deg: ``(ra, dec, radius)``.
    """
    from ..core.wcs_utils import angular_separation_mas

    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    vec = np.array([np.cos(np.deg2rad(dec)) * np.cos(np.deg2rad(ra)),
                    np.cos(np.deg2rad(dec)) * np.sin(np.deg2rad(ra)), np.sin(np.deg2rad(dec))])
    x, y, z = vec.mean(axis=1)
    ra0 = float(np.rad2deg(np.arctan2(y, x)) % 360.0)
    dec0 = float(np.rad2deg(np.arctan2(z, np.hypot(x, y))))
    radius = float(np.max(angular_separation_mas(ra0, dec0, ra, dec))) / 3.6e6
    return ra0, dec0, radius


def visit_plane(images):
    """The tangent plane (tweakwcs corrector, arcsec) at the centre of the images' footprints."""
    from ..core.wcs_utils import tangent_plane

    ra0, dec0, _ = footprint_centre(images)
    return tangent_plane(ra0, dec0)


def _refcat_near(refcat, images, plane, margin):
    """Reference sources within the images' footprints plus ``margin`` arcsec, in plane coords."""
    xs, ys = [], []
    for im in images:
        ra, dec = _footprint(im.model.meta.wcs)
        x, y = plane.world_to_tanp(ra, dec)
        xs.append(x)
        ys.append(y)
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    rx, ry = plane.world_to_tanp(np.asarray(refcat["RA"]), np.asarray(refcat["DEC"]))
    keep = ((rx > xs.min() - margin) & (rx < xs.max() + margin)
            & (ry > ys.min() - margin) & (ry < ys.max() + margin))
    return keep, np.column_stack([rx[keep], ry[keep]])


def _plane_positions(im, plane):
    """An image's in-bounds catalog through its current WCS, in ``plane`` (arcsec)."""
    cat = im.inside_catalog()
    if not len(cat):
        return np.zeros((0, 2))
    ra, dec = im.model.meta.wcs(np.asarray(cat["x"]), np.asarray(cat["y"]), with_bounding_box=False)
    x, y = plane.world_to_tanp(ra, dec)
    return np.column_stack([x, y])


def _footprint_centre(im, plane):
    """The centre of an image's footprint through its current WCS, in ``plane`` (arcsec)."""
    ra, dec = _footprint(im.model.meta.wcs)
    return np.column_stack(plane.world_to_tanp(ra, dec)).mean(axis=0)


def is_long_wavelength(detector):
    """Whether a NIRCam detector name is a long-wavelength one (``nrcalong``, ``nrcblong``)."""
    return str(detector).lower().endswith("long")


def _detector_axes(im, plane):
    """
    The orthogonal 2x2 matrix taking an offset along the image's pixel axes to the
    visit plane (the roll and parity of the detector on the sky), at its sources' centre.
    """
    cat = im.inside_catalog()
    cx, cy = (float(np.median(cat["x"])), float(np.median(cat["y"]))) if len(cat) else (0.0, 0.0)
    return pixel_axes(im.model.meta.wcs, plane, cx, cy)
