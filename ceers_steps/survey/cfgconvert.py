"""Convert CEERS ``.cfg`` files (one section per visit) into ASDF pipeline parameter files.

A CEERS file ``nircamN/<filter>.cfg`` holds one INI section per visit, e.g.
``[jw01345001001]``. Each section becomes ``<visit>_<filter>.asdf``, a
parameter file for `CeersAlignPipeline` that ``strun`` and
``Step.from_config_file`` read. Every value is carried over under the name the
steps use (`CFG_KEYS`); keys only meaningful to jwst's internal star finder
(`UNUSED_KEYS`) are recorded in the file's ``meta.unused_cfg_keys`` and
reported, never silently dropped; any other key is an error.
"""

import configparser
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.fileio import atomic_output

__all__ = [
    "CFG_KEYS",
    "PIPELINE_CLASS",
    "UNUSED_KEYS",
    "CfgSection",
    "convert_cfg",
    "parameter_tree",
    "read_cfg",
    "write_parameter_file",
]

PIPELINE_CLASS = "ceers_steps.steps.pipeline.CeersAlignPipeline"
STEP_CLASSES = {
    "catalog": "ceers_steps.steps.catalog_step.CatalogStep",
    "tweakreg": "ceers_steps.steps.tweakreg_step.CeersTweakRegStep",
}

#: cfg key -> (sub-step, parameter name, type)
CFG_KEYS = {
    "detect_thresh": ("catalog", "detect_thresh", float),
    "detect_minarea": ("catalog", "detect_minarea", int),
    "deblend": ("catalog", "deblend_nthresh", int),
    "minobj": ("tweakreg", "minobj", int),
    "searchrad": ("tweakreg", "searchrad", float),
    "separation": ("tweakreg", "separation", float),
    "tolerance": ("tweakreg", "tolerance", float),
    "nclip": ("tweakreg", "nclip", int),
    "sigma": ("tweakreg", "sigma", float),
    "abs_minobj": ("tweakreg", "abs_minobj", int),
    "abs_searchrad": ("tweakreg", "abs_searchrad", float),
    "abs_separation": ("tweakreg", "abs_separation", float),
    "abs_tolerance": ("tweakreg", "abs_tolerance", float),
    "abs_nclip": ("tweakreg", "abs_nclip", int),
    "abs_sigma": ("tweakreg", "abs_sigma", float),
    "abs_fitgeom": ("tweakreg", "abs_fitgeometry", str),
}

#: Keys of jwst's internal star finder (the CEERS catalogs came from Source Extractor).
UNUSED_KEYS = ("kernel_fwhm", "kernel_nsigma", "snr_threshold", "bkg_boxsize")

_FITGEOMETRIES = ("shift", "rshift", "rscale", "general")


@dataclass
class CfgSection:
    """One visit section of a CEERS cfg file, converted."""

    source: Path
    visit: str
    filter: str
    steps: dict  # sub-step name -> {parameter: value}
    unused: dict = field(default_factory=dict)

    @property
    def name(self):
        """``<visit>_<filter>``: the parameter file's stem."""
        return f"{self.visit}_{self.filter}"


def _convert_value(path, section, key, raw, kind):
    try:
        if kind in (int, float):
            value = float(raw)
            if not math.isfinite(value):
                # 1e400 overflows to inf (and int(inf) would raise OverflowError)
                raise ValueError(f"{path} [{section}]: {key} = {raw!r} is not a finite number")
        if kind is int:
            if value != int(value):
                raise ValueError
            return int(value)
        if kind is float:
            return value
    except (ValueError, OverflowError) as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path} [{section}]: {key} = {raw!r} is not a {kind.__name__}") from None
    value = raw.strip().lower()
    if key == "abs_fitgeom" and value not in _FITGEOMETRIES:
        raise ValueError(f"{path} [{section}]: abs_fitgeom = {raw!r}: expected one of "
                         f"{', '.join(_FITGEOMETRIES)}")
    return value


def _check_values(path, section, steps):
    """The values must make sense to the steps (positive tolerances...): checked by their rules."""
    from ..detection.sources import DetectionParameters
    from ..fitting.parameters import AbsoluteParameters, RelativeParameters

    tw = steps["tweakreg"]
    rel = {k: v for k, v in tw.items() if not k.startswith("abs_")}
    abs_ = {k[4:]: v for k, v in tw.items() if k.startswith("abs_")}
    try:
        RelativeParameters(**rel)
        AbsoluteParameters(**abs_)
        DetectionParameters(**steps["catalog"])
    except ValueError as exc:
        raise ValueError(f"{path} [{section}]: {exc}") from None


def read_cfg(path):
    """
    Read a CEERS cfg file.

    Parameters
    ----------
    path : str or Path
        ``.../<filter>.cfg``; the filter is the file name, lower case.

    Returns
    -------
    list of CfgSection
        One per visit section, in file order.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file; unreadable INI, no sections, a value of the wrong type or an
        unknown key (the message names file, section and key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CEERS cfg file not found: {path}")
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
    try:
        # utf-8-sig: a cfg saved by a Windows editor starts with a byte-order mark
        parser.read_string(path.read_text(encoding="utf-8-sig"), source=str(path))
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid CEERS cfg (INI) file: {exc}") from None
    if not parser.sections():
        raise ValueError(f"{path}: no [visit] sections found")
    filt = path.stem.lower()
    if not re.fullmatch(r"f\d{3}[a-z]\d?", filt):
        raise ValueError(f"{path}: the file name must be the filter (e.g. f200w.cfg), "
                         f"not {path.name!r}")
    sections = []
    for visit in parser.sections():
        # The section name becomes a file name: only visit ids, never a path.
        if not re.fullmatch(r"jw\d{11}", visit.strip().lower()):
            raise ValueError(f"{path} [{visit}]: section names must be visit ids like "
                             "jw01345001001")
        steps = {"catalog": {}, "tweakreg": {}}
        unused = {}
        for key, raw in parser.items(visit):
            if key in CFG_KEYS:
                step, name, kind = CFG_KEYS[key]
                steps[step][name] = _convert_value(path, visit, key, raw, kind)
            elif key in UNUSED_KEYS:
                unused[key] = raw.strip()
            else:
                raise ValueError(f"{path} [{visit}]: unknown key {key!r} (known: "
                                 f"{', '.join([*CFG_KEYS, *UNUSED_KEYS])})")
        _check_values(path, visit, steps)
        sections.append(CfgSection(source=path, visit=visit.strip().lower(), filter=filt,
                                   steps=steps, unused=unused))
    return sections


def parameter_tree(section, abs_refcat=None):
    """The ASDF tree of a `CeersAlignPipeline` parameter file for one cfg section."""
    steps = {name: dict(pars) for name, pars in section.steps.items()}
    if abs_refcat:
        steps["tweakreg"]["abs_refcat"] = str(abs_refcat)
    unused_note = (f" Not used (jwst star-finder keys): {', '.join(section.unused)}."
                   if section.unused else "")
    return {
        "class": PIPELINE_CLASS,
        "name": "ceers_align",
        "meta": {
            "description": (f"CEERS alignment parameters for visit {section.visit}, filter "
                            f"{section.filter}, converted from {section.source.parent.name}/"
                            f"{section.source.name} [{section.visit}].{unused_note}"),
            "source_file": f"{section.source.parent.name}/{section.source.name}",
            "section": section.visit,
            "visit": section.visit,
            "filter": section.filter,
            "unused_cfg_keys": dict(section.unused),
        },
        "parameters": {},
        "steps": [{"class": STEP_CLASSES[name], "name": name, "parameters": pars}
                  for name, pars in steps.items()],
    }


def write_parameter_file(tree, path):
    """Write a parameter tree as ASDF, completely or not at all."""
    import asdf

    with atomic_output(path) as tmp:
        # ASDF standard 1.5: readable by every asdf the supported jwst versions use.
        asdf.AsdfFile(tree, version="1.5.0").write_to(tmp)
    return Path(path)


def convert_cfg(paths, output_dir, abs_refcat=None, overwrite=True):
    """
    Convert CEERS cfg files into ``<output_dir>/<visit>_<filter>.asdf``.

    All files are read and checked before anything is written.

    Parameters
    ----------
    paths : list of str or Path
    output_dir : str or Path
    abs_refcat : str, optional
        Written as ``steps.tweakreg.abs_refcat``.
    overwrite : bool
        Replace existing parameter files.

    Returns
    -------
    list of (Path, CfgSection)
    """
    output_dir = Path(output_dir)
    sections = [s for p in paths for s in read_cfg(p)]
    seen = {}
    for s in sections:
        if s.name in seen:
            raise ValueError(f"visit {s.visit} filter {s.filter} appears in both "
                             f"{seen[s.name]} and {s.source}")
        seen[s.name] = s.source
        out = output_dir / f"{s.name}.asdf"
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists (use overwrite)")
    written = []
    for s in sections:
        out = write_parameter_file(parameter_tree(s, abs_refcat), output_dir / f"{s.name}.asdf")
        written.append((out, s))
    return written
