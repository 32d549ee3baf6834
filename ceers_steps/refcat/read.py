"""Reading reference catalogs: columns in any case and unit, cuts, several files in priority order.

The columns read are listed in `ceers_steps.refcat`.
"""

import operator
import re
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from ..core.logs import get_logger
from .epoch import julian_year
from .merge import _merge_by_priority, merge_duplicates

__all__ = ["DUPLICATE_RADIUS_MAS", "parse_cuts", "read_refcat", "read_refcat_file",
           "read_reference_catalogs", "refcat_paths"]

# One logger for the subpackage: log lines name "ceers_steps.refcat", as before the split.
log = get_logger(__package__)

#: Rows of one catalog closer than this are one source listed twice.
DUPLICATE_RADIUS_MAS = 1.0
#: Stars move at most ~10"/yr (Barnard's star 10.4"/yr); catalogs of stars move at least
#: ~0.1 mas/yr somewhere. Proper motions outside this range are in the wrong unit.
_PM_PLAUSIBLE = (1e-3, 2e4)
#: Measured proper motions in mas/yr: even a source that does not move (a quasar) is
#: measured at ~0.2-1 mas/yr per axis by Gaia at the magnitudes of a NIRCam field, and
#: field stars move 2-50 mas/yr. A median |pm| below this, in columns without a unit,
#: is a catalog in arcsec/yr (or deg/yr), whose motion would be ignored ~1000-fold.
PM_MEDIAN_MIN = 0.1
#: ... judged from at least this many sources with a proper motion.
PM_MIN_SOURCES = 3

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
        "==": operator.eq, "!=": operator.ne}
_CUT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")


def refcat_paths(spec):
    """The files of an ``abs_refcat`` value: one path, or several separated by commas."""
    if isinstance(spec, (list, tuple)):
        return [Path(p) for p in spec]
    return [Path(p.strip()) for p in str(spec).split(",") if p.strip()]


def parse_cuts(text):
    """
    ``"phot_g_mean_mag < 20; ruwe <= 1.4"`` -> ``[("phot_g_mean_mag", "<", 20.0), ...]``.

    Cuts are separated by ``;`` or ``,``; operators ``< <= > >= == !=``; values are numbers.
    """
    cuts = []
    for part in re.split(r"[;,]", text or ""):
        if not part.strip():
            continue
        match = _CUT_RE.match(part)
        if not match:
            raise ValueError(f"abs_cuts: cannot read {part.strip()!r} (expected e.g. "
                             "'phot_g_mean_mag < 20; ruwe <= 1.4')")
        name, op, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"abs_cuts: {part.strip()!r}: {value!r} is not a number") from None
        cuts.append((name, op, number))
    return cuts


def _read_table(path):
    if not path.exists():
        raise FileNotFoundError(f"reference catalog not found: {path}")
    try:
        if path.suffix == ".ecsv":
            return Table.read(path, format="ascii.ecsv")
        if path.suffix in (".csv", ".txt", ".dat", ".cat"):
            return Table.read(path, format="ascii")
        return Table.read(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a table: {exc}") from exc


def _radec_columns(path, ra_col, dec_col):
    """RA/DEC in degrees from numbers (deg) or sexagesimal strings (RA in hours)."""
    if ra_col.dtype.kind in "fiu" and dec_col.dtype.kind in "fiu":
        ra = np.ma.filled(np.ma.asarray(ra_col, dtype=float), np.nan)
        dec = np.ma.filled(np.ma.asarray(dec_col, dtype=float), np.nan)
        return np.asarray(ra), np.asarray(dec)
    try:
        return np.asarray(ra_col, dtype=float), np.asarray(dec_col, dtype=float)
    except (TypeError, ValueError):
        pass
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra_s, dec_s = [str(v).strip() for v in ra_col], [str(v).strip() for v in dec_col]
    try:
        coords = SkyCoord(ra_s, dec_s, unit=(u.hourangle, u.deg))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: RA/DEC are neither numbers in degrees nor sexagesimal "
                         f"'hh:mm:ss' / 'dd:mm:ss' (first row: RA {ra_s[0]!r}, DEC {dec_s[0]!r}): "
                         f"{exc}") from None
    return coords.ra.deg, coords.dec.deg


def _float_column(path, table, name, unit):
    """A column as floats in ``unit`` (converted when it has a unit), NaN where masked."""
    from astropy import units as u

    col = table[name]
    try:
        values = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: column {name!r} is not numeric") from None
    if getattr(col, "unit", None) is not None:
        try:
            values = (values * col.unit).to_value(unit)
        except u.UnitConversionError:
            raise ValueError(f"{path}: column {name!r} is in {col.unit}, which cannot be "
                             f"converted to {unit}") from None
    return np.asarray(values, float)


def _check_proper_motions(path, table, names, out):
    """
    Refuse proper motions in the wrong unit; find rows whose own motion is absurd.

    - Columns without a unit whose median |pm| (over sources with one) is below
      `PM_MEDIAN_MIN` mas/yr: arcsec/yr or deg/yr taken for mas/yr (refused, naming
      the file and columns: give the columns a unit or convert them).
    - Any unit: a catalog whose median |pm| is beyond 20 arcsec/yr is refused (no star
      moves that fast); single rows beyond it (corrupt entries) are dropped with a warning.

    Returns
    -------
    absurd : ndarray of bool
        The rows to drop.
    """
    pm = np.hypot(out["PMRA"], out["PMDEC"])
    known = np.isfinite(pm) & (pm > 0)
    cols = f"{names['pmra']}/{names['pmdec']}"
    unitless = all(getattr(table[names[k]], "unit", None) is None for k in ("pmra", "pmdec"))
    absurd = np.isfinite(pm) & (pm > _PM_PLAUSIBLE[1])
    if not known.any():
        return absurd
    median = float(np.median(pm[known]))
    if (np.max(pm[known]) < _PM_PLAUSIBLE[0] or median > _PM_PLAUSIBLE[1]
            or (unitless and known.sum() >= PM_MIN_SOURCES and median < PM_MEDIAN_MIN)):
        raise ValueError(
            f"{path}: proper motions {cols} (no unit, read as mas/yr) have a median |pm| of "
            f"{median:.3g} mas/yr over {int(known.sum())} sources (range "
            f"{np.min(pm[known]):.3g}-{np.max(pm[known]):.3g}): implausible for stars in "
            "mas/yr (measured stars move 1-50 mas/yr; are they arcsec/yr or deg/yr?); give "
            "them in mas/yr or with a unit (e.g. an ECSV column unit 'mas / yr')"
            if unitless else
            f"{path}: proper motions {cols} have a median |pm| of {median:.3g} mas/yr: "
            "implausible for stars in mas/yr (is the column unit right?)")
    if absurd.any():
        log.warning("%s: %d of %d rows have proper motions %s beyond %g mas/yr (no star moves "
                    "that fast; up to %.3g): those rows are dropped", path, int(absurd.sum()),
                    len(out), cols, _PM_PLAUSIBLE[1], float(np.max(pm[absurd])))
    return absurd


def _epoch_years(path, table, names, epoch):
    """Epoch of each row as a Julian year: a ``ref_epoch``/``epoch`` column, else ``epoch``."""
    from astropy.time import Time

    col = names.get("ref_epoch") or names.get("epoch")
    n = len(table)
    if col is None:
        if epoch is None or (isinstance(epoch, str) and not epoch.strip()):
            return np.full(n, np.nan)
        return np.full(n, julian_year(epoch, f"{path}: abs_refcat_epoch"))
    values = table[col]
    if values.dtype.kind in "fiu":
        years = np.ma.filled(np.ma.asarray(values, dtype=float), np.nan)
        bad = np.isfinite(years) & ((years < 1900) | (years > 2200))
        if bad.any():
            raise ValueError(f"{path}: column {col!r} has epochs like {years[bad][0]!r}: "
                             "expected Julian years (e.g. 2016.0)")
        return np.asarray(years, float)
    try:
        return np.asarray(Time([str(v).strip() for v in values]).jyear, float)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column {col!r}: cannot read epochs like {str(values[0])!r} "
                         f"({exc})") from None



def _positions(path, table, names):
    """RA/DEC in degrees from ``ra``/``dec`` (any case) or a ``sky_centroid`` column."""
    if "ra" in names and "dec" in names:
        return _radec_columns(path, table[names["ra"]], table[names["dec"]])
    if "sky_centroid" in names:
        sky = table[names["sky_centroid"]]
        return sky.ra.deg, sky.dec.deg
    raise ValueError(
        f"{path}: reference catalog has no RA/DEC columns (any case) or sky_centroid "
        f"column; found {', '.join(table.colnames) or 'none'}")


def _add_magnitude(path, table, names, mag_column, out):
    mag_name = names.get((mag_column or "mag").lower())
    if mag_name is not None:
        try:
            out["MAG"] = np.asarray(np.ma.filled(np.ma.asarray(table[mag_name], dtype=float),
                                                 np.nan))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: magnitude column {mag_name!r} is not numeric") from None
    elif mag_column is not None:
        raise ValueError(f"{path}: no magnitude column {mag_column!r}")


def _add_motions(path, table, names, epoch, out):
    """PMRA, PMDEC, PARALLAX, the errors, EPOCH; returns (has_pm, rows with absurd motions)."""
    has_pm = "pmra" in names or "pmdec" in names
    if has_pm and not ("pmra" in names and "pmdec" in names):
        raise ValueError(f"{path}: proper motions need both pmra and pmdec columns (mas/yr)")
    nan = np.full(len(table), np.nan)
    out["PMRA"] = _float_column(path, table, names["pmra"], "mas/yr") if has_pm else nan
    out["PMDEC"] = _float_column(path, table, names["pmdec"], "mas/yr") if has_pm else nan
    pm_absurd = _check_proper_motions(path, table, names, out) if has_pm else None
    out["PARALLAX"] = _float_column(path, table, names["parallax"], "mas") \
        if "parallax" in names else nan
    for key, unit, col in (("ra_error", "mas", "RA_ERR"), ("dec_error", "mas", "DEC_ERR"),
                           ("pmra_error", "mas/yr", "PMRA_ERR"),
                           ("pmdec_error", "mas/yr", "PMDEC_ERR")):
        out[col] = _float_column(path, table, names[key], unit) if key in names else nan
    out["EPOCH"] = _epoch_years(path, table, names, epoch)
    if has_pm and not np.isfinite(out["EPOCH"]).any():
        raise ValueError(f"{path}: proper motions but no epoch: give a ref_epoch column or "
                         "abs_refcat_epoch (e.g. 2016.0)")
    return has_pm, pm_absurd


def _rows_to_keep(path, table, names, out, cuts, mag_min, mag_max):
    """Rows with finite positions that pass the column cuts and magnitude limits."""
    keep = np.isfinite(out["RA"]) & np.isfinite(out["DEC"])
    if len(table) and not keep.any():
        raise ValueError(f"{path}: no reference source has a finite RA and DEC")
    if (np.abs(out["DEC"][keep]) > 90).any():
        raise ValueError(f"{path}: DEC values beyond +-90 deg: not declinations in degrees")
    for name, op, value in cuts:
        col = names.get(name.lower())
        if col is None:
            continue  # checked over all catalogs by the caller
        values = np.ma.filled(np.ma.asarray(table[col], dtype=float), np.nan)
        with np.errstate(invalid="ignore"):
            keep &= _OPS[op](values, value)
    if mag_min is not None or mag_max is not None:
        if "MAG" not in out.colnames:
            raise ValueError(f"{path}: magnitude limits given but the catalog has no MAG column")
        if mag_min is not None:
            keep &= out["MAG"] >= mag_min
        if mag_max is not None:
            keep &= out["MAG"] <= mag_max
    return keep


def read_refcat_file(path, epoch=None, cuts=(), mag_column=None, mag_min=None, mag_max=None):
    """
    Read one reference catalog into the common layout.

    Returns
    -------
    Table
        ``RA``, ``DEC`` (deg), ``MAG`` (when a magnitude column exists), ``PMRA``,
        ``PMDEC`` (mas/yr, NaN where unknown), ``PARALLAX`` (mas), ``EPOCH``
        (Julian year), ``RA_ERR``, ``DEC_ERR`` (mas), ``PMRA_ERR``, ``PMDEC_ERR``
        (mas/yr), ``PM_CATALOG`` (the catalog has proper motions), ``CATALOG``
        (file name). ``meta``: ``n_read``, ``n_after_cuts``, ``n_duplicates_merged``.
    """
    path = Path(path)
    table = _read_table(path)
    names = {n.lower(): n for n in table.colnames}
    n_read = len(table)
    ra, dec = _positions(path, table, names)
    out = Table({"RA": np.asarray(ra, float), "DEC": np.asarray(dec, float)})
    _add_magnitude(path, table, names, mag_column, out)
    has_pm, pm_absurd = _add_motions(path, table, names, epoch, out)
    out["PM_CATALOG"] = np.full(len(out), has_pm)
    out["CATALOG"] = np.full(len(out), path.name)

    keep = _rows_to_keep(path, table, names, out, cuts, mag_min, mag_max)
    if pm_absurd is not None:
        keep &= ~pm_absurd
    out = out[keep]
    out, n_dup = merge_duplicates(out, DUPLICATE_RADIUS_MAS / 1e3)
    if n_dup:
        log.warning("%s: %d duplicate rows (within %g mas of another) merged; %d sources "
                    "remain", path, n_dup, DUPLICATE_RADIUS_MAS, len(out))
    out.meta.update(n_read=n_read, n_after_cuts=int(keep.sum()), n_duplicates_merged=int(n_dup),
                    source=str(path), columns=sorted(names))
    return out


def read_reference_catalogs(spec, epoch=None, cuts="", mag_column=None, mag_min=None,
                            mag_max=None, merge_radius=0.1):
    """
    Read the reference catalogs of ``abs_refcat`` (one path, or several in priority order).

    Parameters
    ----------
    spec : str or list
        A path, or paths separated by commas (first = highest priority).
    epoch : float or str, optional
        Epoch of catalogs without an epoch column (Julian year or a date).
    cuts : str
        Cuts on any named column, see `parse_cuts`; a cut applies to the catalogs
        that have its column, and a column no catalog has is an error.
    mag_column, mag_min, mag_max
        Magnitude limits (``MAG`` column, any case).
    merge_radius : float
        Sources of different catalogs closer than this are one source, arcsec.

    Returns
    -------
    Table
        As `read_refcat_file`, with ``PRIORITY`` (the catalog's place in the list);
        ``meta["catalogs"]``: per file, its name and the sources read and kept after
        cuts. Several catalogs are merged by `at_epoch`, at the images' epoch (a star
        of a 2016 catalog and of a 2022 one is one source only once both are moved to
        the same epoch), or here already when none has proper motions.
    """
    paths = refcat_paths(spec)
    if not paths:
        raise ValueError("abs_refcat: no reference catalog given")
    parsed = parse_cuts(cuts) if isinstance(cuts, str) else list(cuts)
    tables = [read_refcat_file(p, epoch=epoch, cuts=parsed, mag_column=mag_column,
                               mag_min=mag_min, mag_max=mag_max) for p in paths]
    for name, _, _ in parsed:
        if not any(name.lower() in t.meta["columns"] for t in tables):
            raise ValueError(f"abs_cuts: no column {name!r} in "
                             f"{', '.join(str(p) for p in paths)}")
    for k, table in enumerate(tables):
        table["PRIORITY"] = np.full(len(table), k)
    stacked = tables[0] if len(tables) == 1 else vstack(tables, metadata_conflicts="silent")
    if not len(stacked):
        what = f" with cuts {cuts!r}" if parsed else ""
        what += f" and magnitudes {mag_min}..{mag_max}" if (mag_min, mag_max) != (None, None) else ""
        raise ValueError(f"{', '.join(str(p) for p in paths)}: no reference source left{what}")
    stacked.meta = {
        "catalogs": [{"file": str(p), "n_read": t.meta["n_read"],
                      "n_after_cuts": t.meta["n_after_cuts"]}
                     for p, t in zip(paths, tables, strict=True)],
        "source": ", ".join(str(p) for p in paths), "merge_radius": float(merge_radius),
        "n_duplicates_merged": sum(t.meta["n_duplicates_merged"] for t in tables)}
    if len(tables) > 1 and not np.any(np.isfinite(stacked["PMRA"])):
        # Nothing moves: merge now, so the counts are known before any image is seen.
        return _merge_by_priority(stacked, "POS_ERR")
    return stacked


def read_refcat(path, mag_column=None, mag_min=None, mag_max=None):
    """
    Read an absolute reference catalog and return ``RA``, ``DEC`` (deg) [+ ``MAG``].

    Positions as given in the file (no epoch propagation); see
    `read_reference_catalogs` for proper motions, several
    catalogs and cuts.

    Parameters
    ----------
    path : str or Path
        Any format `astropy.table.Table.read` understands (ECSV, FITS, CSV...).
    mag_column : str, optional
        Magnitude column for the optional limits; by default ``mag`` in any case.
    mag_min, mag_max : float, optional
        Keep only sources with ``mag_min <= mag <= mag_max``.
    """
    full = read_reference_catalogs([path], mag_column=mag_column, mag_min=mag_min,
                                   mag_max=mag_max)
    out = Table({"RA": full["RA"], "DEC": full["DEC"]})
    if "MAG" in full.colnames:
        out["MAG"] = full["MAG"]
    out.meta["source"] = str(path)
    out.meta["n_duplicates_merged"] = full.meta.get("n_duplicates_merged", 0)
    return out
