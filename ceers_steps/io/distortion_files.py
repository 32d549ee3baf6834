"""Residual-distortion files: one ASDF file per detector, and their insertion into images.

A file ``ceers_distortion_<detector>.asdf`` holds one detector's residual distortion
(`~ceers_steps.core.distortion.DetectorDistortion`) under the tree key
``ceers_distortion``:

``detector``
    the NIRCam detector (``nrca1`` ... ``nrcblong``);
``terms``
    the Legendre degrees (in x, in y) of each term;
``coeffs``
    (2, n_terms) coefficients of ``dx`` and ``dy``, pixels;
``cov``
    (2 n_terms, 2 n_terms) their covariance, pixels^2, or absent;
``pixel_scale``
    arcsec per pixel (for figures in mas);
``convention``
    how to apply it, in words: ``x' = x + dx(x, y)``, ``y' = y + dy(x, y)`` in full-frame
    0-based detector pixels, applied before the detector-to-V2V3 transform;
``rms_mas``, ``rms_error_mas``
    the correction's RMS over the detector and the RMS of its uncertainty, per axis, mas;
``meta``
    the provenance of the fit, with ``software`` (package version) and ``date`` (UTC);
``transform``
    the correction as an astropy model ``(x, y) -> (x', y')`` in full-frame pixels (absent
    for a zero residual), so that other tools can apply it without this package.
"""

import math
import re
import warnings
from pathlib import Path

import numpy as np

from ..core.distortion import (
    DetectorDistortion,
    has_distortion,
    insert_distortion,
    subarray_origin,
)
from ..core.fileio import atomic_output

__all__ = [
    "CONVENTION",
    "TREE_KEY",
    "apply_distortion",
    "distorted_wcs",
    "distortion_file_name",
    "distortion_paths",
    "image_detector",
    "read_distortion_file",
    "read_distortion_files",
    "write_distortion_file",
]

#: The ASDF tree key of a distortion file.
TREE_KEY = "ceers_distortion"

#: How the residual is applied, stored in every file.
CONVENTION = ("x' = x + dx(x, y), y' = y + dy(x, y) in full-frame 0-based detector pixels "
              "(a subarray's pixel x is full-frame x + xstart - 1), applied before the "
              "detector-to-V2V3 transform; dx, dy = sum_k coeffs[axis, k] P_i(u) P_j(v) over "
              "terms (i, j), P Legendre polynomials, u = (x - 1023.5) / 1023.5, "
              "v = (y - 1023.5) / 1023.5; coeffs in pixels")

_NAME_RE = re.compile(r"^ceers_distortion_(.+)\.asdf$", re.IGNORECASE)
_DETECTOR_RE = re.compile(r"^[a-z0-9]+$")


def distortion_file_name(detector):
    """
    The file name of a detector's residual distortion.

    Parameters
    ----------
    detector : str
        NIRCam detector, any case (``NRCA1``).

    Returns
    -------
    str
        ``ceers_distortion_<detector>.asdf``, detector lower case.

    Raises
    ------
    ValueError
        A detector name that is not letters and digits (it becomes part of a path).
    """
    det = str(detector).strip().lower()
    if not _DETECTOR_RE.match(det):
        raise ValueError(f"{detector!r} is not a detector name (letters and digits)")
    return f"ceers_distortion_{det}.asdf"


def _plain(value):
    """Provenance as plain YAML values (numpy scalars and arrays, tuples and paths converted)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_distortion_file(path, distortion, overwrite=False):
    """
    Write a detector's residual distortion as ASDF, completely or not at all.

    Parameters
    ----------
    path : str or Path
        Output file (`distortion_file_name` is the usual name).
    distortion : DetectorDistortion
    overwrite : bool
        Whether to replace an existing file.

    Returns
    -------
    Path

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    ValueError
        Non-finite coefficients or covariance (such a file could never be applied).
    """
    import datetime

    import asdf

    from .. import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists already: not written over (overwrite=True "
                              "replaces it)")
    _check(path, distortion.detector, distortion.terms, distortion.coeffs, distortion.cov,
           distortion.pixel_scale)
    meta = _plain(dict(distortion.meta or {}))
    meta["software"] = f"ceers_steps {__version__}"
    meta["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    node = {
        "detector": str(distortion.detector).lower(),
        "terms": [[int(i), int(j)] for i, j in distortion.terms],
        "coeffs": np.array(distortion.coeffs, dtype=float),
        "pixel_scale": float(distortion.pixel_scale),
        "units": {"coeffs": "pixel", "cov": "pixel**2", "pixel_scale": "arcsec/pixel",
                  "rms_mas": "mas", "rms_error_mas": "mas"},
        "convention": CONVENTION,
        "rms_mas": [float(v) for v in distortion.rms_mas()],
        "rms_error_mas": [float(v) for v in distortion.rms_error_mas()],
        "meta": meta,
    }
    if distortion.cov is not None:
        node["cov"] = np.array(distortion.cov, dtype=float)
    transform = distortion.transform()
    if transform is not None:
        node["transform"] = transform
    with atomic_output(path) as tmp:
        # ASDF standard 1.5.0: the newest the oldest supported stack (jwst 1.7.2, asdf 2.14)
        # reads without a warning about the core extension.
        asdf.AsdfFile({TREE_KEY: node}, version="1.5.0").write_to(tmp)
    return path


def _check(path, detector, terms, coeffs, cov, pixel_scale):
    """Raise ValueError naming ``path`` for a residual that cannot be applied."""
    if not isinstance(detector, str) or not _DETECTOR_RE.match(detector.lower()):
        raise ValueError(f"{path}: 'detector' must be a detector name (letters and digits), "
                         f"not {detector!r}")
    try:
        terms = [(int(i), int(j)) for i, j in terms]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: 'terms' must be a list of (degree in x, degree in y) "
                         f"pairs, not {terms!r}") from None
    if not terms or any(i < 0 or j < 0 for i, j in terms):
        raise ValueError(f"{path}: 'terms' must be non-negative (degree in x, degree in y) "
                         f"pairs, not {terms!r}")
    k = len(terms)
    coeffs = np.asarray(coeffs)
    if coeffs.shape != (2, k):
        raise ValueError(f"{path}: 'coeffs' has shape {coeffs.shape}; {len(terms)} terms "
                         f"need (2, {k})")
    if not np.issubdtype(coeffs.dtype, np.number) or not np.all(np.isfinite(coeffs)):
        raise ValueError(f"{path}: 'coeffs' holds non-finite values")
    if cov is not None:
        cov = np.asarray(cov)
        if cov.shape != (2 * k, 2 * k):
            raise ValueError(f"{path}: 'cov' has shape {cov.shape}; {k} terms need "
                             f"({2 * k}, {2 * k})")
        if not np.issubdtype(cov.dtype, np.number) or not np.all(np.isfinite(cov)):
            raise ValueError(f"{path}: 'cov' holds non-finite values")
    try:
        scale = float(pixel_scale)
    except (TypeError, ValueError):
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{path}: 'pixel_scale' must be a positive number (arcsec/pixel), "
                         f"not {pixel_scale!r}")
    return terms


def read_distortion_file(path):
    """
    Read a detector's residual distortion file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    DetectorDistortion
        Its ``meta`` is the file's provenance, with ``file`` (the path read).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Naming the file and the problem: not ASDF, no ``ceers_distortion`` in its tree,
        arrays of the wrong shape, non-finite values, or a detector other than the one
        its name says.
    """
    import asdf

    from ..core.compat import open_asdf_in_memory

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"distortion file not found: {path}")
    try:
        with asdf.config_context() as config:
            # The tree is checked below, field by field; the schema check adds nothing here.
            config.validate_on_read = False
            with warnings.catch_warnings():
                # A file written by a newer asdf-astropy: only the transform (for other tools)
                # uses its tags, and the residual is rebuilt from the coefficients.
                warnings.filterwarnings("ignore", message=".*was created with extension",
                                        category=asdf.exceptions.AsdfWarning)
                af = open_asdf_in_memory(path)
            with af:
                node = af.tree.get(TREE_KEY)
                node = None if node is None else {k: node[k] for k in node}
                for key in ("coeffs", "cov"):
                    if node is not None and node.get(key) is not None:
                        node[key] = np.array(node[key])
    except Exception as exc:  # noqa: BLE001 - whatever asdf raises, the file is unreadable
        raise ValueError(f"{path}: cannot be read as an ASDF file: {exc}") from exc
    if not isinstance(node, dict):
        raise ValueError(f"{path}: no '{TREE_KEY}' in the ASDF tree: not a residual-distortion "
                         "file")
    missing = [k for k in ("detector", "terms", "coeffs") if k not in node]
    if missing:
        raise ValueError(f"{path}: '{TREE_KEY}' has no " + ", ".join(repr(k) for k in missing))
    detector = node["detector"]
    terms = _check(path, detector, node["terms"], node["coeffs"], node.get("cov"),
                   node.get("pixel_scale", 0.031))
    detector = detector.lower()
    named = _NAME_RE.match(path.name)
    if named and named.group(1).lower() != detector:
        raise ValueError(f"{path}: the file holds detector {detector.upper()}, but its name "
                         f"says {named.group(1).upper()}; rename it "
                         f"{distortion_file_name(detector)}")
    meta = node.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["file"] = str(path)
    return DetectorDistortion(detector, np.array(node["coeffs"], dtype=float),
                              cov=(None if node.get("cov") is None
                                   else np.array(node["cov"], dtype=float)),
                              terms=tuple(terms),
                              pixel_scale=float(node.get("pixel_scale", 0.031)), meta=meta)


def _spec_paths(spec):
    if isinstance(spec, (str, Path)):
        parts = [p.strip() for p in str(spec).split(",")] if isinstance(spec, str) else [spec]
    else:
        parts = [str(p).strip() for p in spec]
    return [Path(p).expanduser() for p in parts if str(p)]


def distortion_paths(spec):
    """
    The files a ``distortion_file`` value names: each file, and every
    ``ceers_distortion_*.asdf`` of each folder (sorted).

    Parameters
    ----------
    spec : str, Path or list
        A file, files separated by commas, or a folder; a list of any of these. An empty
        string names nothing.

    Returns
    -------
    list of Path

    Raises
    ------
    FileNotFoundError
        A named file or folder does not exist, or a folder holds no distortion file.
    """
    out = []
    for entry in _spec_paths(spec):
        if entry.is_dir():
            files = sorted(entry.glob("ceers_distortion_*.asdf"))
            if not files:
                raise FileNotFoundError(f"{entry}: no distortion file (ceers_distortion_*.asdf) "
                                        "in this folder")
            out += files
        elif entry.exists():
            out.append(entry)
        else:
            raise FileNotFoundError(f"distortion file not found: {entry}")
    return out


def read_distortion_files(spec):
    """
    Read residual-distortion files: one, a comma-separated list, or a folder of them.

    Parameters
    ----------
    spec : str, Path or list
        A file, files separated by commas, or a folder (every ``ceers_distortion_*.asdf``
        in it); a list of any of these (`distortion_paths`). An empty string reads nothing.

    Returns
    -------
    dict
        Detector (lower case) -> DetectorDistortion.

    Raises
    ------
    FileNotFoundError
        A named file or folder does not exist, or a folder holds no distortion file.
    ValueError
        A file cannot be read (`read_distortion_file`), or two files give the same
        detector (both named).
    """
    out = {}
    for path in distortion_paths(spec):
        dist = read_distortion_file(path)
        if dist.detector in out:
            raise ValueError(f"{out[dist.detector].meta['file']} and {path} both hold the "
                             f"residual distortion of detector {dist.detector.upper()}: "
                             "give one")
        out[dist.detector] = dist
    return out


def image_detector(model):
    """
    An image's detector, lower case, from ``meta.instrument.detector`` (else its file name),
    or None.
    """
    from .wcs_models import detector_from_name

    inst = getattr(model.meta, "instrument", None)
    det = getattr(inst, "detector", None) if inst is not None else None
    if det:
        return str(det).lower()
    name = getattr(model.meta, "filename", None)
    return detector_from_name(name) if name else None


def distorted_wcs(wcs, detector, distortions, origin=(0.0, 0.0), image_name="image"):
    """
    An image's WCS with its detector's residual distortion inserted.

    Parameters
    ----------
    wcs : `gwcs.WCS` or None
        The image's WCS (not changed).
    detector : str or None
        The image's detector, lower case (`image_detector`).
    distortions : dict
        Detector -> DetectorDistortion (`read_distortion_files`).
    origin : (float, float)
        Full-frame position of the image's first pixel
        (`~ceers_steps.core.distortion.subarray_origin`).
    image_name : str
        Name of the image in messages.

    Returns
    -------
    wcs : `gwcs.WCS`
        A copy with the correction in front of the detector-to-V2V3 transform; ``wcs``
        itself when there is no file for the detector.
    status : str
        ``"applied"``, or ``"no file for <detector>"``.

    Raises
    ------
    ValueError
        Naming the image: it has no WCS, or its WCS already carries a residual distortion
        (a second would count the residual twice).
    """
    dist = distortions.get(detector) if detector else None
    if dist is None:
        return wcs, f"no file for {detector or 'an unknown detector'}"
    if wcs is None:
        raise ValueError(f"{image_name}: no WCS to insert the residual distortion into")
    if has_distortion(wcs):
        raise ValueError(f"{image_name}: its WCS already carries a residual distortion "
                         "(ceers_distortion, e.g. from a --fit-distortion run); a second one "
                         "would count the residual twice")
    return insert_distortion(wcs, dist, origin), "applied"


def apply_distortion(model, distortions, image_name=None):
    """
    Insert its detector's residual distortion into an image's WCS (``meta.wcs``).

    Parameters
    ----------
    model : ImageModel
        Changed in place: ``meta.wcs`` becomes a copy with the correction in front of
        its detector-to-V2V3 transform (`distorted_wcs`, origin
        `~ceers_steps.core.distortion.subarray_origin`). The FITS keywords of
        ``meta.wcsinfo`` (the SIP approximation) are not refitted.
    distortions : dict
        Detector -> DetectorDistortion (`read_distortion_files`).
    image_name : str, optional
        Name of the image in messages (default ``meta.filename``).

    Returns
    -------
    str
        ``"applied"``, or ``"no file for <detector>"`` (the image is left unchanged).

    Raises
    ------
    ValueError
        Naming the image: it has no WCS, or its WCS already carries a residual distortion.
    """
    from .inputs import trusted_assignment

    name = image_name or getattr(model.meta, "filename", None) or "image"
    wcs, status = distorted_wcs(getattr(model.meta, "wcs", None), image_detector(model),
                                distortions, subarray_origin(model), name)
    if status == "applied":
        with trusted_assignment(model):
            model.meta.wcs = wcs
    return status
