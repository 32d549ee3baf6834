#!/usr/bin/env python3
"""
Are two output folders of the same command on the same inputs the same?

    python tools/compare_outputs.py DIR_A DIR_B [--tolerance-mas 1e-6] [--rtol 1e-9] [--quiet]

Walks both folders (``ceers-align``'s, or ``tools/refactor_check.py run``'s, one folder per
case) and compares file by file; a file in one folder and not the other is a difference.

- FITS images (``*_tweakreg.fits``, ``*_cal.fits``, any ``*.fits``): the gwcs of the image
  (stdatamodels) evaluated on a 16 x 16 grid over the image's pixels, the largest on-sky
  separation in mas (a difference above ``--tolerance-mas``); the arrays of every HDU
  (NaN-equal); every header card (numbers to 1e-12 relative) except the file's own date and
  software versions. The ASDF extension is compared through the model's WCS and headers.
- ASDF files with a ``wcs`` (saved WCS models, ``tweakreg_wcs/*.asdf``): the same grid, over
  the matching ``<exposure>_tweakreg.fits``'s shape when the folder has it (else the WCS's
  bounding box); the rest of the tree as data (history, library and software ignored).
- ``*.ecsv`` (results tables, survey summaries, catalogs): the same columns in the same order,
  the same number of rows, strings and integers equal, floats to ``--rtol`` (NaN equal), units
  equal; the table's meta as data.
- ``*.json`` (manifests, associations, run records): as data.
- ``*.html`` (reports, survey index), ``*.log``, ``*.console.txt``: presence only (they carry
  times, durations and folders).
- Other files (DS9 regions, ``tweakreg_results_all.*.txt``): text, token by token, numbers
  to ``--rtol``.

"As data": dictionaries key by key and lists item by item; keys that legitimately vary are
skipped (dates and times of writing, durations, software versions, host, process and file
modification times); a string that looks like a path (contains ``/`` and no blank) is
compared by its last part only, as the output folders, the inputs and the code's checkout
lie in different places in the two runs.

Prints one line per compared file (``--quiet``: the differing ones only) and a summary;
exit status 0 when identical, 1 otherwise. Needs astropy, asdf, gwcs, stdatamodels; imports
nothing from ceers_steps.
"""

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

GRID = 16
#: Keys (JSON, ASDF trees, table meta) whose values legitimately differ between two runs.
VOLATILE_KEY = re.compile(
    r"(?i)^(date|written|created|modified|time|timestamp|started|finished|ended|elapsed|"
    r"duration|durations|seconds|wall_seconds|cpu_seconds|version|versions|software|"
    r"ceers_steps|jwst|asdf_library|history|host|hostname|user|pid|mtime|mtime_ns|"
    r"log|log_file|logfile)$")
#: FITS header cards that legitimately differ (date of writing, software and CRDS versions).
VOLATILE_CARDS = {"DATE", "IRAF-TLM", "CAL_VER", "CAL_VCS", "CRDS_VER", "CRDS_CTX", "SDP_VER",
                  "ASDF_VER", "CHECKSUM", "DATASUM"}
#: Files compared by presence only.
PRESENCE_ONLY = (".html", ".log", ".console.txt")
HEADER_RTOL = 1e-12
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _pathlike(value):
    return isinstance(value, str) and "/" in value and not re.search(r"\s", value)


def _norm(value):
    """A string that looks like a path: its last part; anything else unchanged."""
    return value.rstrip("/").rsplit("/", 1)[-1] if _pathlike(value) else value


def _close(a, b, rtol, atol=0.0):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def compare_data(a, b, rtol, where="", out=None):
    """Differences between two JSON/YAML-like values, as 'where: what' strings."""
    out = [] if out is None else out
    if isinstance(a, dict) and isinstance(b, dict):
        keys_a = {k for k in a if not VOLATILE_KEY.match(str(k))}
        keys_b = {k for k in b if not VOLATILE_KEY.match(str(k))}
        for k in sorted(keys_a ^ keys_b, key=str):
            out.append(f"{where}/{k}: only in {'A' if k in keys_a else 'B'}")
        for k in sorted(keys_a & keys_b, key=str):
            compare_data(a[k], b[k], rtol, f"{where}/{k}", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            compare_data(x, y, rtol, f"{where}[{i}]", out)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        if x.shape != y.shape or not _arrays_equal(x, y, rtol):
            out.append(f"{where}: arrays differ")
    elif isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        if a is not b and a != b:
            out.append(f"{where}: {a!r} vs {b!r}")
    elif isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        if not _close(float(a), float(b), rtol):
            out.append(f"{where}: {a!r} vs {b!r}")
    elif isinstance(a, str) and isinstance(b, str):
        if _norm(a) != _norm(b):
            out.append(f"{where}: {a!r} vs {b!r}")
    elif type(a) is not type(b):
        out.append(f"{where}: {type(a).__name__} vs {type(b).__name__}")
    elif a != b:
        out.append(f"{where}: {a!r} vs {b!r}")
    return out


def _arrays_equal(x, y, rtol):
    if x.dtype.kind in "fc" or y.dtype.kind in "fc":
        return bool(np.allclose(x, y, rtol=rtol, atol=0.0, equal_nan=True))
    return bool(np.array_equal(x, y))


# --- WCS ------------------------------------------------------------------------------------

def grid(shape):
    ny, nx = shape
    y, x = np.mgrid[0:ny - 1:GRID * 1j, 0:nx - 1:GRID * 1j]
    return x.ravel(), y.ravel()


def separation_mas(wcs_a, wcs_b, shape):
    """Largest on-sky separation (mas) of two gwcs over a GRID x GRID grid of ``shape``."""
    x, y = grid(shape)
    ra1, dec1 = (np.asarray(v, float) for v in wcs_a(x, y, with_bounding_box=False))
    ra2, dec2 = (np.asarray(v, float) for v in wcs_b(x, y, with_bounding_box=False))
    ra1, dec1, ra2, dec2 = (np.deg2rad(v) for v in (ra1, dec1, ra2, dec2))
    # Haversine: accurate at micro-arcsecond separations.
    h = (np.sin((dec2 - dec1) / 2) ** 2
         + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2)
    sep = 2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
    if not np.all(np.isfinite(sep)):
        return math.inf
    return float(np.rad2deg(sep.max()) * 3.6e6)


def _image_wcs(path):
    """The gwcs of a FITS datamodel and its image shape; (None, None) for other FITS files."""
    from astropy.io import fits
    from jwst import datamodels  # on every jwst (1.7.2's stdatamodels has no .jwst)

    with fits.open(path) as h:
        if "ASDF" not in h:
            return None, None
    with datamodels.open(str(path)) as model:
        wcs = getattr(model.meta, "wcs", None)
        data = getattr(model, "data", None)
        shape = data.shape[-2:] if data is not None and data.ndim >= 2 else None
    return wcs, shape


def _wcs_shape(wcs):
    box = getattr(wcs, "bounding_box", None)
    if box is None:
        return (2048, 2048)
    (x0, x1), (y0, y1) = (tuple(iv) for iv in box.bounding_box(order="F"))
    return (int(round(y1 - y0)), int(round(x1 - x0)))


# --- file kinds -----------------------------------------------------------------------------

class Result:
    def __init__(self, kind, problems=None, mas=None):
        self.kind, self.problems, self.mas = kind, problems or [], mas


def compare_fits(a, b, opts):
    from astropy.io import fits

    problems, mas = [], None
    wa, shape = _image_wcs(a)
    wb, _ = _image_wcs(b)
    if wa is not None and wb is not None and shape is not None:
        mas = separation_mas(wa, wb, shape)
        if not mas <= opts.tolerance_mas:
            problems.append(f"WCS differs by {mas:.3g} mas")
    elif (wa is None) != (wb is None):
        problems.append("gwcs in one file only")
    with fits.open(a) as ha, fits.open(b) as hb:
        names_a = [h.name for h in ha]
        names_b = [h.name for h in hb]
        if names_a != names_b:
            problems.append(f"HDUs {names_a} vs {names_b}")
        for x, y in zip(ha, hb, strict=False):
            if x.name == "ASDF":
                continue
            problems += [f"{x.name} {p}" for p in _header_diffs(x.header, y.header)]
            if x.is_image and x.data is not None and y.data is not None:
                if x.data.shape != y.data.shape or not _arrays_equal(x.data, y.data, 0.0):
                    problems.append(f"{x.name} data differ")
            elif isinstance(x, fits.BinTableHDU) and not _tables_hdu_equal(x, y):
                problems.append(f"{x.name} table differs")
    return Result("fits", problems, mas)


def _tables_hdu_equal(x, y):
    if x.data is None or y.data is None:
        return x.data is None and y.data is None
    if x.columns.names != y.columns.names or len(x.data) != len(y.data):
        return False
    return all(_arrays_equal(np.asarray(x.data[n]), np.asarray(y.data[n]), 0.0)
               for n in x.columns.names)


def _header_diffs(ha, hb):
    out = []
    keys_a = [k for k in ha if k and k not in VOLATILE_CARDS]
    keys_b = [k for k in hb if k and k not in VOLATILE_CARDS]
    for k in sorted(set(keys_a) ^ set(keys_b)):
        out.append(f"{k}: only in {'A' if k in keys_a else 'B'}")
    for k in sorted(set(keys_a) & set(keys_b)):
        if k in ("COMMENT", "HISTORY"):
            continue
        va, vb = ha[k], hb[k]
        if isinstance(va, float) or isinstance(vb, float):
            same = (isinstance(va, (int, float)) and isinstance(vb, (int, float))
                    and _close(float(va), float(vb), HEADER_RTOL))
        elif isinstance(va, str) and isinstance(vb, str):
            same = _norm(va.strip()) == _norm(vb.strip())
        else:
            same = va == vb
        if not same:
            out.append(f"{k}: {va!r} vs {vb!r}")
    return out


def compare_asdf(a, b, opts, shapes):
    import asdf

    problems, mas = [], None
    with asdf.open(a, lazy_load=False) as fa, asdf.open(b, lazy_load=False) as fb:
        ta, tb = dict(fa.tree), dict(fb.tree)
        wa, wb = ta.pop("wcs", None), tb.pop("wcs", None)
        if wa is not None and wb is not None:
            shape = shapes.get(_exposure(a.name)) or _wcs_shape(wa)
            mas = separation_mas(wa, wb, shape)
            if not mas <= opts.tolerance_mas:
                problems.append(f"WCS differs by {mas:.3g} mas")
        elif (wa is None) != (wb is None):
            problems.append("wcs in one file only")
        problems += compare_data(_plain(ta), _plain(tb), opts.rtol)
    return Result("asdf", problems, mas)


def _plain(tree):
    """An ASDF tree as plain data: dicts, lists, arrays, scalars; other objects by repr."""
    if isinstance(tree, dict):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    if isinstance(tree, (str, int, float, bool, np.number, np.ndarray)) or tree is None:
        return tree
    if hasattr(tree, "__array__"):
        return np.asarray(tree)
    return repr(tree)


def _exposure(name):
    """``jw..._nrca1`` from ``jw..._nrca1_tweakreg.fits`` / ``..._tweakreg.asdf`` / ``_cal``."""
    return re.sub(r"_(tweakreg|cal|i2d|crf)(\.fits|\.asdf)$", "", name)


def compare_ecsv(a, b, opts):
    from astropy.table import Table

    ta, tb = Table.read(a, format="ascii.ecsv"), Table.read(b, format="ascii.ecsv")
    problems = []
    if ta.colnames != tb.colnames:
        problems.append(f"columns {ta.colnames} vs {tb.colnames}")
    if len(ta) != len(tb):
        problems.append(f"{len(ta)} rows vs {len(tb)}")
    for name in ta.colnames:
        if name not in tb.colnames or len(ta) != len(tb):
            continue
        ca, cb = ta[name], tb[name]
        if str(ca.unit) != str(cb.unit):
            problems.append(f"{name}: unit {ca.unit} vs {cb.unit}")
        x, y = np.asarray(ca), np.asarray(cb)
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            try:
                bad = ~np.isclose(x.astype(float), y.astype(float), rtol=opts.rtol, atol=0.0,
                                  equal_nan=True)
            except (TypeError, ValueError):
                bad = np.ones(len(x), bool)
        elif (x.dtype.kind in "OUS" or y.dtype.kind in "OUS") and x.ndim == 1:
            bad = np.array([_norm(str(p)) != _norm(str(q)) for p, q in zip(x, y, strict=True)],
                           bool)
        else:
            bad = ~(x == y) if x.shape == y.shape else np.ones(len(x), bool)
        bad = np.asarray(bad).reshape(len(x), -1).any(axis=1) if len(x) else bad
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            problems.append(f"{name}: {int(bad.sum())} rows differ, first row {i}: "
                            f"{x[i]!r} vs {y[i]!r}")
    problems += [f"meta{p}" for p in compare_data(_plain(dict(ta.meta)), _plain(dict(tb.meta)),
                                                  opts.rtol)]
    return Result("table", problems)


def compare_json(a, b, opts):
    try:
        da, db = json.loads(a.read_text()), json.loads(b.read_text())
    except ValueError as exc:
        return Result("json", [f"unreadable JSON: {exc}"])
    return Result("json", compare_data(da, db, opts.rtol))


def compare_text(a, b, opts):
    la = a.read_text(errors="replace").splitlines()
    lb = b.read_text(errors="replace").splitlines()
    problems = []
    if len(la) != len(lb):
        problems.append(f"{len(la)} lines vs {len(lb)}")
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        if x == y:
            continue
        tx, ty = x.split(), y.split()
        same = len(tx) == len(ty) and all(_token_same(p, q, opts.rtol)
                                          for p, q in zip(tx, ty, strict=True))
        if not same:
            problems.append(f"line {i + 1}: {x.strip()[:60]!r} vs {y.strip()[:60]!r}")
            break
    return Result("text", problems)


def _token_same(p, q, rtol):
    if p == q or _norm(p) == _norm(q):
        return True
    # Numbers inside a token, e.g. DS9's circle(83.078,54.723,6): compare them numerically.
    sp, sq = re.split(r"([(),={}:])", p), re.split(r"([(),={}:])", q)
    if len(sp) != len(sq):
        return False
    for u, v in zip(sp, sq, strict=True):
        if u == v:
            continue
        if _NUMBER.match(u) and _NUMBER.match(v) and _close(float(u), float(v), rtol):
            continue
        return False
    return True


# --- walking --------------------------------------------------------------------------------

def files(root):
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def compare_folders(dir_a, dir_b, opts):
    """[(relative path, Result)] for the union of both folders' files."""
    fa, fb = files(dir_a), files(dir_b)
    # Image shapes by (folder, exposure), for the saved WCS models next to them.
    shapes = {}
    for p in fa.values():
        if p.name.endswith(".fits"):
            shape = _sci_shape(p)
            if shape:
                shapes[(str(p.parent), _exposure(p.name))] = shape
    rows = []
    for rel in sorted(set(fa) | set(fb)):
        if rel not in fb:
            rows.append((rel, Result("file", ["only in A"])))
            continue
        if rel not in fa:
            rows.append((rel, Result("file", ["only in B"])))
            continue
        a, b = fa[rel], fb[rel]
        name = a.name
        try:
            if name.endswith(PRESENCE_ONLY):
                result = Result("present")
            elif name.endswith((".fits", ".fits.gz")):
                result = compare_fits(a, b, opts)
            elif name.endswith(".asdf"):
                folder_shapes = {k[1]: v for k, v in shapes.items()
                                 if k[0] == str(a.parent.parent) or k[0] == str(a.parent)}
                result = compare_asdf(a, b, opts, folder_shapes)
            elif name.endswith(".ecsv"):
                result = compare_ecsv(a, b, opts)
            elif name.endswith(".json"):
                result = compare_json(a, b, opts)
            else:
                result = compare_text(a, b, opts)
        except Exception as exc:  # noqa: BLE001 - a file that cannot be read is a difference
            result = Result("error", [f"{type(exc).__name__}: {exc}"])
        rows.append((rel, result))
    return rows


def _sci_shape(path):
    """The data shape of a FITS image's SCI extension (None when it has none)."""
    from astropy.io import fits

    try:
        with fits.open(path) as h:
            hdu = h["SCI"] if "SCI" in h else h[0]
            return tuple(hdu.shape[-2:]) if len(hdu.shape) >= 2 else None
    except (OSError, KeyError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("dir_a")
    parser.add_argument("dir_b")
    parser.add_argument("--tolerance-mas", type=float, default=1e-6,
                        help="largest WCS difference on the grid that counts as equal (1e-6)")
    parser.add_argument("--rtol", type=float, default=1e-9,
                        help="relative tolerance of floats in tables, JSON and text (1e-9)")
    parser.add_argument("--quiet", action="store_true", help="print only the differing files")
    opts = parser.parse_args(argv)
    dir_a, dir_b = Path(opts.dir_a), Path(opts.dir_b)
    for d in (dir_a, dir_b):
        if not d.is_dir():
            parser.error(f"{d} is not a folder")
    import warnings

    warnings.simplefilter("ignore")
    rows = compare_folders(dir_a, dir_b, opts)
    width = max([len(r) for r, _ in rows] + [4])
    print(f"A: {dir_a}\nB: {dir_b}")
    print(f"{'file':<{width}} {'kind':<7} {'max mas':>9} result")
    n_diff, worst = 0, 0.0
    for rel, res in rows:
        if res.mas is not None:
            worst = max(worst, res.mas)
        differs = bool(res.problems)
        n_diff += differs
        if opts.quiet and not differs:
            continue
        mas = f"{res.mas:9.2e}" if res.mas is not None else f"{'':>9}"
        what = "DIFFERENT: " + "; ".join(res.problems[:3]) if differs else "same"
        if len(res.problems) > 3:
            what += f"; ... ({len(res.problems)} differences)"
        print(f"{rel:<{width}} {res.kind:<7} {mas} {what}")
    n_wcs = sum(1 for _, r in rows if r.mas is not None)
    print(f"{len(rows)} files, {n_wcs} WCS compared (largest difference {worst:.3g} mas, "
          f"tolerance {opts.tolerance_mas:g} mas): "
          + ("IDENTICAL" if n_diff == 0 else f"{n_diff} DIFFERENT"))
    return 0 if n_diff == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
