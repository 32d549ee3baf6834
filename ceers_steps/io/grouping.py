"""Identify images (visit, filter, detector, exposure, epoch) and group them for alignment.

Header values are untrusted input: every one that becomes part of a file name
(visit keys, FILTER, PUPIL, DETECTOR) goes through `name_part`, which allows
letters, digits and ``_-+`` only. An image whose value is anything else is
FAILED with the reason (naming the file and the keyword); the run goes on.
"""

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["GROUP_BY", "ImageKey", "UnsafeNameError", "bandpass_filter", "group_images",
           "image_epoch", "image_key", "name_part", "read_primary_header"]

GROUP_BY = ("detector", "exposure", "all")

_NAME_RE = re.compile(r"^(jw\d{11})_(\d{5})_(\d{5})_([a-z0-9]+?)(?:_|\.|$)", re.IGNORECASE)

#: What a file-name part made from a header value may hold (ASCII only).
SAFE_NAME = re.compile(r"[A-Za-z0-9_+\-]+", re.ASCII)
#: Longest file-name part from one header value (NIRCam's are at most 8 characters;
#: a few parts and a suffix must stay under the 255-byte file-name limit).
MAX_NAME_PART = 40
#: A filter name (F070W, F150W2, F162M, F470N, MIRI's F1000W): a value of the pupil
#: wheel that matches this defines the bandpass (NIRCam F444W+F470N is F470N).
FILTER_NAME = re.compile(r"F\d{3,4}[A-Z]{1,2}\d?", re.ASCII)
_VISIT_KEYS = (("PROGRAM", 5), ("OBSERVTN", 3), ("VISIT", 3))


class UnsafeNameError(ValueError):
    """A header value that cannot be part of a file name (the message names file and keyword)."""


def name_part(value, keyword, source):
    """
    A header value as a file-name part: stripped, letters, digits and ``_-+`` only.

    Parameters
    ----------
    value : object
        The header value (str() of it is checked).
    keyword : str
        The FITS keyword (or tree key) it came from, for the message.
    source : str
        The file it came from, for the message.

    Returns
    -------
    str

    Raises
    ------
    UnsafeNameError
        The value is empty, longer than `MAX_NAME_PART` characters or holds any
        other character (``/``, ``.``, quotes, spaces, non-ASCII...).
    """
    text = str(value).strip()
    if not SAFE_NAME.fullmatch(text) or len(text) > MAX_NAME_PART:
        shown = text if len(text) <= 60 else text[:57] + "..."
        why = (f"longer than {MAX_NAME_PART} characters" if SAFE_NAME.fullmatch(text)
               else "only letters, digits and _-+ may name files")
        raise UnsafeNameError(f"{source}: {keyword} {shown!r} is not a valid value ({why})")
    return text


def bandpass_filter(filter_value, pupil_value, source):
    """
    The filter that defines an image's bandpass, lower case: the pupil-wheel value
    when it is a filter (F444W+F470N -> ``f470n``, F150W2+F162M -> ``f162m``), else
    FILTER (F444W+CLEAR -> ``f444w``). None when FILTER is empty (and PUPIL no filter).

    Raises
    ------
    UnsafeNameError
        FILTER or PUPIL is not a valid value (`name_part`).
    """
    pupil = None
    if pupil_value is not None and str(pupil_value).strip():
        pupil = name_part(pupil_value, "PUPIL", source).upper()
    filt = None
    if filter_value is not None and str(filter_value).strip():
        filt = name_part(filter_value, "FILTER", source).upper()
    if pupil is not None and FILTER_NAME.fullmatch(pupil):
        return pupil.lower()
    return None if filt is None else filt.lower()


def read_primary_header(path):
    """A FITS file's primary header, or None (not FITS, unreadable): identity is read from it."""
    from astropy.io import fits

    try:
        return fits.getheader(path, 0)
    except Exception:  # noqa: BLE001 - the model's metadata (or the name) must do
        return None


@dataclass(frozen=True)
class ImageKey:
    """
    What an image is: visit id, filter, detector and exposure id (jwst's group_id).

    ``problem`` says why the image cannot be aligned when one of its header values is
    not valid (`name_part`); the invalid parts are then ``unknown``.
    """

    visit: str
    filter: str
    detector: str
    exposure: str
    problem: str | None = None

    @property
    def visit_filter(self):
        """``<visit>_<filter>``, e.g. ``jw01345001001_f200w``: the unit of one alignment run."""
        return f"{self.visit}_{self.filter}"


# FITS keyword -> (datamodel node, attribute)
_META = {"PROGRAM": ("observation", "program_number"),
         "OBSERVTN": ("observation", "observation_number"),
         "VISIT": ("observation", "visit_number"),
         "VISITGRP": ("observation", "visit_group"),
         "SEQ_ID": ("observation", "sequence_id"),
         "ACT_ID": ("observation", "activity_id"),
         "EXPOSURE": ("observation", "exposure_number"),
         "DETECTOR": ("instrument", "detector"),
         "FILTER": ("instrument", "filter"),
         "PUPIL": ("instrument", "pupil")}


class _KeyReader:
    """Header and metadata values of one image, collecting what is wrong with them."""

    def __init__(self, model, name, header):
        self.meta = getattr(model, "meta", None)
        self.filename = getattr(self.meta, "filename", None) if self.meta is not None else None
        self.source = name or self.filename or "image"
        self.header = header
        self.problems = []

    def get(self, keyword, from_header=True):
        meta, header = self.meta, self.header
        value = None
        if header is not None and (from_header or meta is None):
            try:
                value = header.get(keyword)
            except Exception as exc:  # noqa: BLE001 - an unparsable card (astropy VerifyError)
                self.problems.append(f"{self.source}: {keyword} cannot be read from the FITS "
                                     f"header ({' '.join(str(exc).split())})")
                return None
        if value is None and meta is not None:
            node, attr = _META[keyword]
            value = getattr(getattr(meta, node, None), attr, None)
        if value is None:
            return None
        text = str(value).strip()
        return text or None

    def checked(self, func, *args):
        try:
            return func(*args)
        except UnsafeNameError as exc:
            self.problems.append(str(exc))
            return None

    def visit_parts(self):
        """PROGRAM, OBSERVTN, VISIT: digits each, else None (and a problem)."""
        parts = []
        for keyword, width in _VISIT_KEYS:
            value = self.get(keyword)
            if value is not None and not re.fullmatch(rf"[0-9]{{1,{width}}}", value, re.ASCII):
                shown = value if len(value) <= 60 else value[:57] + "..."
                self.problems.append(f"{self.source}: {keyword} {shown!r} is not a valid value "
                                     f"(digits, at most {width})")
                value = None
            parts.append(value)
        return parts


def _exposure_id(reader, parts, visit, match, name):
    group_id = getattr(reader.meta, "group_id", None)
    if group_id:
        return group_id
    # Exposure ids name no file: the model's own values, as jwst groups them.
    seq = tuple(reader.get(k, from_header=False)
                for k in ("VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE"))
    if all(parts) and all(seq):
        return f"{visit}_{seq[0]}{seq[1]}{seq[2]}_{seq[3]}"
    if match:
        return f"{match.group(1)}_{match.group(2)}_{match.group(3)}".lower()
    return name or reader.filename or "exposure"


def image_key(model, name=None, header=None):
    """
    The `ImageKey` of a JWST image, from its FITS header, its metadata or its file name.

    Parameters
    ----------
    model : `~stdatamodels.jwst.datamodels.ImageModel` or None
    name : str, optional
        File name used when metadata are incomplete, and in messages.
    header : mapping, optional
        The file's primary FITS header (`read_primary_header`). Its values are used
        rather than the model's: datamodels replaces an invalid FILTER by the one in
        the file's ASDF extension, and that must not decide the group.

    The filter is the bandpass (`bandpass_filter`). A value that is present but not
    valid (`name_part`; visit numbers must be digits) makes ``problem`` say so.
    """
    reader = _KeyReader(model, name, header)
    parts = reader.visit_parts()
    detector = reader.get("DETECTOR")
    detector = reader.checked(name_part, detector, "DETECTOR", reader.source) if detector else None
    detector = detector.lower() if detector else None
    filt = reader.checked(bandpass_filter, reader.get("FILTER"), reader.get("PUPIL"), reader.source)
    match = _NAME_RE.match(name or reader.filename or "")
    if all(parts):
        visit = f"jw{int(parts[0]):05d}{int(parts[1]):03d}{int(parts[2]):03d}"
    elif match:
        visit = match.group(1).lower()
    else:
        visit = "unknown"
    group_id = _exposure_id(reader, parts, visit, match, name)
    if not detector and match:
        detector = match.group(4).lower()
    return ImageKey(visit=visit, filter=filt or "unknown", detector=detector or "unknown",
                    exposure=str(group_id), problem="; ".join(reader.problems) or None)


def group_images(keys, group_by="detector"):
    """
    Relative-alignment runs, and the tweakwcs group of each image within its run.

    Parameters
    ----------
    keys : list of ImageKey
    group_by : {"detector", "exposure", "all"}
        ``detector``: one run per detector of a filter and visit, all its dithers aligned
        to the first (CEERS); ``exposure``: one run per filter and visit in which the
        detectors of one exposure move together as one rigid group (jwst's behaviour);
        ``all``: one run per filter and visit, every image on its own (detectors that do
        not overlap the first image need ``expand_refcat``).

    Returns
    -------
    runs : dict
        Run name (``<visit>_<filter>_<detector>`` or ``<visit>_<filter>``) -> list of
        indices into ``keys``, in input order.
    group_ids : list of str
        For each image, the tweakwcs ``group_id`` (images sharing one are fitted as one).
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, not {group_by!r}")
    runs, group_ids = {}, []
    for i, key in enumerate(keys):
        name = f"{key.visit_filter}_{key.detector}" if group_by == "detector" else key.visit_filter
        runs.setdefault(name, []).append(i)
        group_ids.append(key.exposure if group_by == "exposure" else f"{key.exposure}_{key.detector}")
    return runs, group_ids


def image_epoch(model):
    """
    When an image was taken (`astropy.time.Time`), or None: ``meta.exposure.mid_time``
    (MJD), else ``start_time``, else ``meta.observation.date`` and ``time``.
    """
    from astropy.time import Time

    exposure = getattr(model.meta, "exposure", None)
    for key in ("mid_time", "start_time"):
        value = getattr(exposure, key, None)
        if isinstance(value, (int, float)) and np.isfinite(value) and value > 0:
            return Time(float(value), format="mjd", scale="utc")
    observation = getattr(model.meta, "observation", None)
    date = getattr(observation, "date", None)
    if date:
        try:
            return Time(f"{date}T{getattr(observation, 'time', None) or '00:00:00'}",
                        scale="utc")
        except ValueError:
            return None
    return None
