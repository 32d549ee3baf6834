"""Finding a survey's groups (a visit in one filter) among cal files, by their FITS headers.

Files are identified by header values (`ceers_steps.io.grouping.image_key`); a file whose
header cannot be read or holds an invalid value, or a copy of a file found before it,
is left out with the reason.
"""

import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VISIT_ID", "Group", "discover_groups", "select_images"]

VISIT_ID = re.compile(r"jw\d{11}")


def select_images(input_dir, visit, filter_name, suffix="cal"):
    """
    The ``<visit>_*_<suffix>.fits`` images in ``input_dir`` whose filter is ``filter_name``.

    The filter is the one that defines the bandpass (`ceers_steps.io.grouping.bandpass_filter`:
    PUPIL when it holds a filter, as F470N behind F444W, else FILTER), read from the FITS
    header itself. A file whose header cannot be read, or whose FILTER, PUPIL, DETECTOR or
    visit keys are not valid values (they name output files), is reported on stderr as
    FAILED with the reason and left out; so is a copy of a file selected before it
    (`_copy_of`: the same exposure keys, exposure start, time and pointing, or pixels).

    Returns
    -------
    selected : dict
        Detector -> sorted list of paths.
    other_filters : set of str
        Filters of that visit's images that were not selected (for messages).
    """
    from astropy.io import fits

    from ..io.grouping import image_key

    selected, others, seen = {}, set(), {}
    for path in sorted(Path(input_dir).glob(f"{visit}_*_{suffix}.fits")):
        try:
            header = fits.getheader(path, 0)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the run
            print(f"ceers-align: {path}: FAILED: cannot read its FITS header ({exc}); "
                  "left out", file=sys.stderr)
            continue
        key = image_key(None, path.name, header=header)
        if key.problem:
            print(f"ceers-align: {path}: FAILED: {_after_name(key.problem, path)}; left out",
                  file=sys.stderr)
            continue
        if key.filter != filter_name:
            others.add(key.filter if key.filter != "unknown" else "<no FILTER>")
            continue
        copy = _copy_of(seen, path, header, visit, key.filter, key.detector)
        if copy:
            print(f"ceers-align: {path}: left out: {copy}", file=sys.stderr)
            continue
        selected.setdefault(key.detector, []).append(path)
    return selected, others


def _after_name(problem, path):
    """A problem message without the file name it starts with (the caller names the path)."""
    return "; ".join(p.removeprefix(f"{path.name}: ") for p in problem.split("; "))


def _exposure_fingerprints(path, header, visit, filt, detector):
    """
    What identifies the exposure and detector a file holds, each with its name for messages:
    its header keys (VISITGRP, SEQ_ID, ACT_ID, EXPOSURE); its exposure start, exposure time
    and pointing (EXPSTART, EFFEXPTM, the SCI header's RA_REF and DEC_REF); its pixels (a
    digest of every 32nd-or-so row of SCI, read through a memory map: ~0.5 MB a file).

    A copy whose header keys were removed still has the same start, time and pointing, or the
    same pixels. Frames without varying finite pixels (blank, all NaN) have no pixel print.
    """
    import hashlib

    import numpy as np
    from astropy.io import fits

    def value(key):
        try:
            return str(header.get(key, "")).strip()
        except Exception:  # noqa: BLE001 - an unparsable card identifies nothing
            return ""

    prints = []
    exposure = tuple(value(k) for k in ("VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE"))
    if any(exposure):
        prints.append((("keys", visit, filt, detector, exposure), "the same exposure and detector"))
    try:
        with fits.open(path, memmap=True) as hdul:
            sci = hdul["SCI"]
            timing = [header.get("EXPSTART"), header.get("EFFEXPTM"), sci.header.get("RA_REF"),
                      sci.header.get("DEC_REF")]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                   for v in timing):
                prints.append((("timing", visit, filt, *(round(float(v), 7) for v in timing)),
                               "the same exposure start, exposure time and pointing (EXPSTART, "
                               "EFFEXPTM, RA_REF, DEC_REF)"))
            data = sci.data
            if data is not None and data.ndim == 2:
                sample = np.ascontiguousarray(data[:: max(1, data.shape[0] // 64)], dtype=">f4")
                finite = sample[np.isfinite(sample)]
                if finite.size and finite.min() != finite.max():
                    digest = hashlib.sha256(sample.tobytes()).hexdigest()
                    prints.append((("pixels", visit, filt, data.shape, digest),
                                   "the same pixels (SCI)"))
            del data
    except Exception:  # noqa: BLE001 - a file whose pixels cannot be read fails in the fit
        pass
    return prints


def _copy_of(seen, path, header, visit, filt, detector):
    """
    Why ``path`` is a copy of a file seen before (its exposure, timing or pixels), naming
    that file; None when it is not. ``seen`` collects the fingerprints of kept files.

    A copy of a cal file under another name would enter its visit's fit twice: every source
    linked to itself at zero residual, the centroid scatter (and so the reported
    uncertainties) underestimated, the true error larger.
    """
    prints = _exposure_fingerprints(path, header, visit, filt, detector)
    for fingerprint, what in prints:
        first = seen.get(fingerprint)
        if first is not None and first != path:
            return (f"{what} as {first.name} (a copy?), which is used: no source may "
                    "count twice")
    for fingerprint, _ in prints:
        seen[fingerprint] = path
    return None


@dataclass
class Group:
    """One visit in one filter: its images by detector."""

    visit: str
    filter: str
    selected: dict  # detector -> sorted list of Path

    @property
    def name(self):
        return f"{self.visit}_{self.filter}"

    @property
    def images(self):
        return [p for det in sorted(self.selected) for p in self.selected[det]]


def _visit_of(key, path):
    """The `image_key` visit (header, else file name), else the file name's first field."""
    visit = key.visit if key.visit != "unknown" else path.name.split("_")[0].lower()
    return visit if VISIT_ID.fullmatch(visit) else None


def discover_groups(input_dir, suffix="cal"):
    """
    Every visit and filter among the ``*_<suffix>.fits`` of ``input_dir``, by header.

    The visit is PROGRAM, OBSERVTN and VISIT (``jw01345001001``; the file name's
    first field when they are missing), the filter the one that defines the bandpass
    (PUPIL when it holds a filter, else FILTER), the detector DETECTOR. These values
    name output files: an image with an invalid one (`ceers_steps.io.grouping.name_part`)
    is left out as FAILED with the reason.

    Returns
    -------
    groups : list of Group
        Sorted by visit and filter.
    problems : list of (Path, str)
        Files left out and why (unreadable header, invalid header values, no visit id, no
        FILTER, a copy of a file found before it: `_copy_of`).
    """
    from astropy.io import fits

    from ..io.grouping import image_key

    found, problems = {}, []
    # Of a file and its copy (`_copy_of`), the first in this order is kept: files named
    # as the archive names them (jw...) first, then by name.
    seen = {}
    paths = sorted(Path(input_dir).glob(f"*_{suffix}.fits"),
                   key=lambda p: (not p.name.startswith("jw"), p.name))
    for path in paths:
        try:
            header = fits.getheader(path, 0)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the survey
            problems.append((path, f"cannot read its FITS header ({exc})"))
            continue
        key = image_key(None, path.name, header=header)
        if key.problem:
            # Header values name output files: an invalid one fails the image, not the survey.
            problems.append((path, f"FAILED: {_after_name(key.problem, path)}"))
            continue
        visit, filt, detector = _visit_of(key, path), key.filter, key.detector
        if visit is None or filt == "unknown":
            problems.append((path, "no visit id (PROGRAM/OBSERVTN/VISIT) or no FILTER in its header"))
            continue
        copy = _copy_of(seen, path, header, visit, filt, detector)
        if copy:
            problems.append((path, copy))
            continue
        found.setdefault((visit, filt), {}).setdefault(detector, []).append(path)
    groups = [Group(v, f, {d: sorted(p) for d, p in sel.items()})
              for (v, f), sel in sorted(found.items())]
    return groups, problems
