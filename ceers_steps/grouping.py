"""Identify images (visit, filter, detector, exposure) and group them for alignment."""

import re
from dataclasses import dataclass

__all__ = ["GROUP_BY", "ImageKey", "group_images", "image_key"]

GROUP_BY = ("detector", "exposure", "all")

_NAME_RE = re.compile(r"^(jw\d{11})_(\d{5})_(\d{5})_([a-z0-9]+?)(?:_|\.|$)", re.IGNORECASE)


@dataclass(frozen=True)
class ImageKey:
    """What an image is: visit id, filter, detector and exposure id (jwst's group_id)."""

    visit: str
    filter: str
    detector: str
    exposure: str

    @property
    def visit_filter(self):
        """``<visit>_<filter>``, e.g. ``jw01345001001_f200w``: the unit of one alignment run."""
        return f"{self.visit}_{self.filter}"


def image_key(model, name=None):
    """
    The `ImageKey` of a JWST image model, from its metadata (or its file name).

    Parameters
    ----------
    model : `~stdatamodels.jwst.datamodels.ImageModel`
    name : str, optional
        File name used when metadata are incomplete.
    """
    meta = model.meta
    obs = meta.observation
    parts = (obs.program_number, obs.observation_number, obs.visit_number)
    detector = (meta.instrument.detector or "").lower()
    filt = (meta.instrument.filter or "").lower()
    match = _NAME_RE.match(name or meta.filename or "")
    if all(parts):
        visit = f"jw{parts[0]}{parts[1]}{parts[2]}"
    elif match:
        visit = match.group(1).lower()
    else:
        visit = "unknown"
    group_id = getattr(meta, "group_id", None)
    if not group_id:
        seq = (obs.visit_group, obs.sequence_id, obs.activity_id, obs.exposure_number)
        if all(parts) and all(seq):
            group_id = f"{visit}_{seq[0]}{seq[1]}{seq[2]}_{seq[3]}"
        elif match:
            group_id = f"{match.group(1)}_{match.group(2)}_{match.group(3)}".lower()
        else:
            group_id = name or meta.filename or "exposure"
    if not detector and match:
        detector = match.group(4).lower()
    return ImageKey(visit=visit, filter=filt or "unknown", detector=detector or "unknown",
                    exposure=str(group_id))


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
