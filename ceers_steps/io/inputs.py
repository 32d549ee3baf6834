"""Resolve step inputs (files, lists, associations, models, libraries) into a flat list.

Every step accepts one cal file, a list of files or models, an association
(``.json``), a `ModelContainer` or a `ModelLibrary`. Each becomes an
`InputImage` that knows where it came from, so outputs are named after the
input and catalogs named in an association are found relative to it.
"""

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.compat import library_models  # noqa: F401 - part of this module's interface (steps, demo, tests)
from ..core.logs import get_logger

__all__ = [
    "InputImage",
    "InputSet",
    "copy_sharing_pixels",
    "library_models",
    "load_inputs",
    "open_image",
    "trusted_assignment",
    "written_library",
]

log = get_logger(__name__)

_SCIENCE = {"science", None}


@dataclass
class InputImage:
    """One input image: a path and/or an open model, plus its association member."""

    path: Path | None = None
    model: object = None
    member: dict = field(default_factory=dict)

    @property
    def name(self):
        """The image's file name (for messages and output names)."""
        if self.path is not None:
            return self.path.name
        filename = getattr(getattr(self.model, "meta", None), "filename", None)
        return filename or "<in-memory model>"


@dataclass
class InputSet:
    """All input images, and the association they came from (if any)."""

    images: list
    asn_path: Path | None = None
    asn: dict | None = None
    asn_dir: Path | None = None

    def __post_init__(self):
        if self.asn_dir is None and self.asn_path is not None:
            self.asn_dir = self.asn_path.parent

    def __len__(self):
        return len(self.images)


def _read_asn(path):
    try:
        asn = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a valid association (JSON error: {exc})") from None
    try:
        products = asn["products"]
        members = [m for p in products for m in p["members"]]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not an association: no products/members") from None
    images = []
    for member in members:
        if not isinstance(member, dict):
            raise ValueError(f"{path}: association member {member!r} is not an object with "
                             "'expname'")
        if str(member.get("exptype", "science")).lower() not in ("science",):
            continue
        if "expname" not in member:
            raise ValueError(f"{path}: association member without 'expname': {member}")
        for key in ("expname", "tweakreg_catalog"):
            value = member.get(key)
            if key in member and not (isinstance(value, str) and (value.strip() or
                                                                   key != "expname")):
                raise ValueError(f"{path}: association member key {key!r} must be a file name "
                                 f"(a string), not {value!r}")
        member_path = (path.parent / member["expname"]).resolve()
        if not member_path.exists():
            raise FileNotFoundError(f"{path}: member {member['expname']} not found ({member_path})")
        images.append(InputImage(path=member_path, member=dict(member)))
    if not images:
        raise ValueError(f"{path}: association has no science members")
    return images, asn


def _without_duplicates(inputs):
    """
    The same file (or the same in-memory model) listed twice is used once, with a
    warning: fitting one image twice would weight it double and write one output twice.
    """
    seen, images = {}, []
    for image in inputs.images:
        key = ("path", str(image.path)) if image.path is not None else ("model", id(image.model))
        if key in seen:
            log.warning("%s is listed more than once in the input; it is used once",
                        image.path or image.name)
            continue
        seen[key] = image
        images.append(image)
    inputs.images = images
    return inputs


def load_inputs(obj):
    """
    Flatten any supported step input into an `InputSet` (each image once).

    See `_load_inputs`.
    """
    return _without_duplicates(_load_inputs(obj))


def _load_inputs(obj):
    """
    Flatten any supported step input into an `InputSet`.

    Parameters
    ----------
    obj : str, Path, DataModel, list, ModelContainer or ModelLibrary
        The input.

    Returns
    -------
    inputs : `InputSet`

    Raises
    ------
    FileNotFoundError
        A named file does not exist (the message names it).
    TypeError
        The input is of an unsupported kind.
    """
    from ..core.compat import DataModel, is_library

    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.exists():
            raise FileNotFoundError(f"input file not found: {path}")
        if path.suffix.lower() == ".json":
            images, asn = _read_asn(path)
            return InputSet(images=images, asn_path=path.resolve(), asn=asn)
        return InputSet(images=[InputImage(path=path.resolve())])
    if is_library(obj) and hasattr(obj, "borrow"):
        on_disk = bool(getattr(obj, "on_disk", getattr(obj, "_on_disk", False)))
        images = []
        with obj:
            for i in range(len(obj)):
                model = obj.borrow(i)
                member = dict(obj.asn["products"][0]["members"][i])
                # An on-disk library closes what is shelved: keep a copy instead.
                images.append(InputImage(model=model.copy() if on_disk else model, member=member))
                obj.shelve(model, i, modify=False)
        asn_dir = getattr(obj, "asn_dir", None) or getattr(obj, "_asn_dir", None)
        return InputSet(images=images, asn=obj.asn, asn_dir=Path(asn_dir) if asn_dir else None)
    if isinstance(obj, DataModel) and not is_library(obj):
        # (a ModelContainer of jwst < 1.16 is a DataModel too)
        return InputSet(images=[InputImage(model=obj)])
    if isinstance(obj, (list, tuple)) or is_library(obj):
        images = []
        for item in (obj if isinstance(obj, (list, tuple)) else library_models(obj)):
            sub = _load_inputs(item)
            if sub.asn_path is not None:
                raise TypeError("an association cannot be nested in a list of inputs")
            images.extend(sub.images)
        if not images:
            raise ValueError("empty input list")
        return InputSet(images=images)
    raise TypeError(f"unsupported input of type {type(obj).__name__}: {obj!r}")


def written_library(asn, outputs=False):
    """
    The step result over complete files on disk (`compat.written_library_of`): on
    ``ModelLibrary`` stacks models are opened only when borrowed, and stpipe does not
    finalize them (that would load a whole visit into memory).

    Parameters
    ----------
    asn : str, Path or dict
        An association file or dictionary; member ``expname`` and
        ``tweakreg_catalog`` paths are made absolute (relative to the file).
    outputs : bool
        The files are the step's saved outputs (``outputs_written``): saving the
        library again is then skipped.
    """
    from ..core.compat import written_library_of

    if isinstance(asn, (str, Path)):
        base = Path(asn).resolve().parent
        asn = json.loads(Path(asn).read_text(encoding="utf-8-sig"))
    else:
        base = Path.cwd()
    asn = json.loads(json.dumps(asn))
    for product in asn["products"]:
        for member in product["members"]:
            for key in ("expname", "tweakreg_catalog"):
                if member.get(key):
                    member[key] = str((base / member[key]).resolve())
    return written_library_of(asn, outputs=outputs)


def _pixel_arrays(node, found):
    if isinstance(node, np.ndarray):
        if node.size >= 4096:
            found.append(node)
    elif isinstance(node, dict):
        for value in node.values():
            _pixel_arrays(value, found)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _pixel_arrays(value, found)
    return found


def copy_sharing_pixels(model):
    """
    A copy of a data model whose metadata and WCS are independent but whose large
    pixel arrays (SCI, ERR, DQ, variances...) are shared with the original.

    The steps of this package change metadata and WCS only, never pixel values,
    so the caller's model is left untouched while a visit's pixels are not held
    twice in memory.
    """
    arrays = _pixel_arrays(getattr(model, "_instance", {}), [])
    return model.copy(memo={id(a): a for a in arrays})


@contextmanager
def trusted_assignment(model):
    """
    Assign metadata without schema-validating every assignment.

    Validating ``meta.wcs`` walks the whole gwcs through the ASDF schema (~0.2 s
    a time). Use only for values made by gwcs, tweakwcs or jwst themselves; the
    model is still validated in full when it is saved.
    """
    previous = getattr(model, "_validate_on_assignment", None)
    if previous is not None:
        model._validate_on_assignment = False
    try:
        yield model
    finally:
        if previous is not None:
            model._validate_on_assignment = previous


def _open_model(path, validate=True):
    """
    ``datamodels.open`` that raises OSError naming the file, and closes at once
    (quietly) the file handle a failed open leaves behind (a truncated FITS file).

    ``validate=False`` skips asdf's schema validation of the file's ASDF tree, for a
    file an earlier open in the same run has validated (a third of a reopen's time).
    """
    import gc
    import warnings

    import asdf

    from ..core.compat import datamodels

    error = None
    with warnings.catch_warnings(), asdf.config_context() as config:
        warnings.simplefilter("ignore", ResourceWarning)
        if not validate:
            config.validate_on_read = False
        try:
            return datamodels.open(path)
        except Exception as exc:  # noqa: BLE001 - any failure to open is this file's
            error = f"{path}: cannot be opened as a JWST data model: {exc}"
        gc.collect()
    raise OSError(error)


def open_image(image, copy=True, require_wcs=True, validated=False):
    """
    Open an `InputImage` as an `ImageModel`, checking it is a 2-D image with a WCS.

    Parameters
    ----------
    image : InputImage
    copy : bool
        For in-memory inputs, work on a copy (metadata and WCS independent,
        pixels shared) so the caller's model is never modified. Pipelines pass
        False, as jwst 3.x steps do inside a pipeline.
    require_wcs : bool
        Refuse an image without ``meta.wcs`` (not for steps that provide one).
    validated : bool
        The file was opened (so validated) earlier in this run: reopen it without
        validating its ASDF tree again.
    """
    from ..core.compat import datamodels

    if image.model is not None:
        model = copy_sharing_pixels(image.model) if copy else image.model
    else:
        model = _open_model(image.path, validate=not validated)
    if not isinstance(model, datamodels.ImageModel):
        kind = type(model).__name__
        model.close()
        raise TypeError(f"{image.name}: expected a 2-D image (ImageModel), got a {kind}")
    if require_wcs and getattr(model.meta, "wcs", None) is None:
        model.close()
        raise ValueError(f"{image.name}: the image has no WCS (run assign_wcs first)")
    if require_wcs:
        wcsinfo = getattr(model.meta, "wcsinfo", None)
        missing = [k for k in ("v2_ref", "v3_ref", "roll_ref")
                   if not isinstance(getattr(wcsinfo, k, None), (int, float))
                   or not np.isfinite(getattr(wcsinfo, k))]
        if missing:
            model.close()
            raise ValueError(f"{image.name}: meta.wcsinfo lacks {', '.join(missing)} (the "
                             "telescope pointing tweakreg corrects; run assign_wcs first)")
    if image.path is not None and not model.meta.filename:
        model.meta.filename = image.path.name
    return model
