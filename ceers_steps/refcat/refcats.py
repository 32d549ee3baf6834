"""Absolute reference catalogs: read one or several, cut, merge, propagate to the images' epoch.

A reference catalog is any table `astropy.table.Table.read` reads with RA/Dec
(any case; degrees or sexagesimal) or a ``sky_centroid`` column. Gaia-like
columns are used when present (any case):

=================================  ==============================================
``pmra``, ``pmdec``                proper motion, mas/yr (``pmra`` is mu_alpha*
                                   cos(dec), Gaia's convention); converted when the
                                   column carries a unit
``parallax``                       mas (only used to place the source in space)
``ref_epoch`` or ``epoch``         epoch of the positions: Julian year (2016.0) or
                                   any string `astropy.time.Time` reads; else the
                                   ``epoch`` argument (step: ``abs_refcat_epoch``)
``ra_error``, ``dec_error``        position errors, mas (Gaia: ra_error is of
                                   alpha*)
``pmra_error``, ``pmdec_error``    proper-motion errors, mas/yr
=================================  ==============================================

`read_reference_catalogs` reads a list of files in priority order, applies
magnitude and quality cuts on any named column, merges sources found in more
than one catalog (closer than ``merge_radius``: the row with the smaller
position error is kept, else the one of the earlier catalog) and reports how
many sources each catalog gave. `at_epoch` moves every source with a proper
motion to an epoch with `astropy.coordinates.SkyCoord.apply_space_motion` and
gives each source its position error at that epoch (``ERR``, mas per axis:
position and proper-motion errors propagated linearly, without correlations).
Sources of a catalog with proper motions whose own proper motion is missing
(Gaia's two-parameter solutions) are kept with an error grown by an assumed
proper-motion dispersion times the epoch difference (``pm_missing="keep"``,
the default: such sources are usually faint, distant stars and galaxies) or
dropped (``"drop"``). Catalogs without proper-motion columns (galaxy
catalogs such as CEERS' HST F160W one) are taken as fixed.
"""

import math
import operator
import re
import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from ..core.logs import get_logger

__all__ = [
    "DUPLICATE_RADIUS_MAS",
    "NAMED_CATALOGS",
    "RefcatUnavailableError",
    "at_epoch",
    "collapse_near_duplicates",
    "fetch_named_catalog",
    "image_epoch",
    "merge_catalogs",
    "parse_cuts",
    "read_reference_catalogs",
    "named_catalog",
    "read_refcat_file",
    "refcat_label",
    "refcat_paths",
]

log = get_logger(__name__)

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
        return np.full(n, _julian_year(epoch, f"{path}: abs_refcat_epoch"))
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


def _julian_year(value, what):
    from astropy.time import Time

    try:
        year = float(value)
    except (TypeError, ValueError):
        pass
    else:
        if not math.isfinite(year):
            raise ValueError(f"{what}: the epoch must be a finite Julian year (like 2016.0), "
                             f"not {value!r}")
        return year
    text = str(value).strip()
    try:
        if text[:1] in "JjBb":
            return float(Time(text.upper()).jyear)
        return float(Time(text).jyear)
    except (ValueError, TypeError):
        raise ValueError(f"{what}: cannot read the epoch {value!r} (expected a Julian year "
                         "like 2016.0, 'J2016.0' or a date like '2016-01-01')") from None


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
    if "ra" in names and "dec" in names:
        ra, dec = _radec_columns(path, table[names["ra"]], table[names["dec"]])
    elif "sky_centroid" in names:
        sky = table[names["sky_centroid"]]
        ra, dec = sky.ra.deg, sky.dec.deg
    else:
        raise ValueError(
            f"{path}: reference catalog has no RA/DEC columns (any case) or sky_centroid "
            f"column; found {', '.join(table.colnames) or 'none'}")
    out = Table({"RA": np.asarray(ra, float), "DEC": np.asarray(dec, float)})
    mag_name = names.get((mag_column or "mag").lower())
    if mag_name is not None:
        try:
            out["MAG"] = np.asarray(np.ma.filled(np.ma.asarray(table[mag_name], dtype=float),
                                                 np.nan))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: magnitude column {mag_name!r} is not numeric") from None
    elif mag_column is not None:
        raise ValueError(f"{path}: no magnitude column {mag_column!r}")

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
    out["PM_CATALOG"] = np.full(len(out), has_pm)
    out["CATALOG"] = np.full(len(out), path.name)

    keep = np.isfinite(out["RA"]) & np.isfinite(out["DEC"])
    if n_read and not keep.any():
        raise ValueError(f"{path}: no reference source has a finite RA and DEC")
    if (np.abs(out["DEC"][keep]) > 90).any():
        raise ValueError(f"{path}: DEC values beyond +-90 deg: not declinations in degrees")
    if pm_absurd is not None:
        keep &= ~pm_absurd
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
    out = out[keep]
    out, n_dup = merge_duplicates(out, DUPLICATE_RADIUS_MAS / 1e3)
    if n_dup:
        log.warning("%s: %d duplicate rows (within %g mas of another) merged; %d sources "
                    "remain", path, n_dup, DUPLICATE_RADIUS_MAS, len(out))
    out.meta.update(n_read=n_read, n_after_cuts=int(keep.sum()), n_duplicates_merged=int(n_dup),
                    source=str(path), columns=sorted(names))
    return out


def _unit_vectors(table):
    ra, dec = np.deg2rad(table["RA"]), np.deg2rad(table["DEC"])
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _position_error(table):
    """One number per row for 'better position': the mean of the RA/DEC errors (NaN: unknown)."""
    return np.sqrt((np.asarray(table["RA_ERR"]) ** 2 + np.asarray(table["DEC_ERR"]) ** 2) / 2)


def merge_duplicates(table, radius_arcsec):
    """
    One row per group of rows closer than ``radius_arcsec`` (the better-measured, else
    the first). Returns the table and the number of rows removed.
    """
    from scipy.spatial import cKDTree

    if len(table) < 2:
        return table, 0
    pairs = cKDTree(_unit_vectors(table)).query_pairs(np.deg2rad(radius_arcsec / 3600.0),
                                                      output_type="ndarray")
    if not len(pairs):
        return table, 0
    err = _position_error(table) if "RA_ERR" in table.colnames else np.full(len(table), np.nan)
    drop = np.zeros(len(table), bool)
    for i, j in sorted(map(tuple, np.sort(pairs, axis=1))):
        if drop[i] or drop[j]:
            continue
        # The later row goes unless it is known to be better measured.
        drop[i if (np.isfinite(err[j]) and (not np.isfinite(err[i]) or err[j] < err[i]))
             else j] = True
    return table[~drop], int(drop.sum())


#: A reference catalog in which more than this fraction of the sources has another within
#: the confusion separation is a catalog of near-duplicate rows, not a crowded field.
NEAR_DUPLICATE_FRACTION = 0.5


def collapse_near_duplicates(table, separation_arcsec, what="reference catalog"):
    """
    One row per group of near-duplicate rows, when most rows have one.

    The matching's confusion rule drops *both* sources of any pair closer than the
    separation (``abs_separation``): right for the few real close pairs of a field, but
    a catalog listing most sources twice (two reductions concatenated, positions a few
    tens of mas apart) then loses every source and each image fails for want of
    matches. When more than `NEAR_DUPLICATE_FRACTION` of the rows have another
    within the separation, the better-measured row of each group is kept (a warning
    says so); otherwise the table is returned unchanged.

    Returns
    -------
    table : Table
    n_removed : int
    """
    from scipy.spatial import cKDTree

    if len(table) < 2 or not separation_arcsec or separation_arcsec <= 0:
        return table, 0
    pairs = cKDTree(_unit_vectors(table)).query_pairs(np.deg2rad(separation_arcsec / 3600.0),
                                                      output_type="ndarray")
    paired = np.unique(pairs) if len(pairs) else np.zeros(0, int)
    if len(paired) <= NEAR_DUPLICATE_FRACTION * len(table):
        return table, 0
    out, n = merge_duplicates(table, separation_arcsec)
    log.warning("%s: %d of %d sources have another within abs_separation %g arcsec "
                "(near-duplicate rows?): the confusion rule would drop them all, so the "
                "better-measured row of each group is kept (%d sources left)", what,
                len(paired), len(table), separation_arcsec, len(out))
    return out, n


def merge_catalogs(tables, radius_arcsec, error=None):
    """
    Merge catalogs given in priority order: a source closer than ``radius_arcsec`` to one
    already taken is the same source; the better-measured row is kept (``error``, a
    column of errors, or the RA/DEC errors), else the earlier catalog's.

    Returns
    -------
    merged : Table
    used : list of int
        Sources each catalog contributes to the merged catalog.
    """
    from scipy.spatial import cKDTree

    merged = None
    for k, table in enumerate(tables):
        table = table.copy()
        table["_SRC"] = k
        if merged is None or not len(merged) or not len(table):
            merged = table if merged is None else vstack([merged, table],
                                                         metadata_conflicts="silent")
            continue
        tree = cKDTree(_unit_vectors(merged))
        dist, idx = tree.query(_unit_vectors(table),
                               distance_upper_bound=np.deg2rad(radius_arcsec / 3600.0))
        matched = np.isfinite(dist)
        if error is None:
            err_new, err_old = _position_error(table), _position_error(merged)
        else:
            err_new = np.asarray(table[error], float)
            err_old = np.asarray(merged[error], float)
        drop_old = np.zeros(len(merged), bool)
        take_new = []
        for row in np.flatnonzero(matched):
            old = idx[row]
            if drop_old[old]:
                continue
            if np.isfinite(err_new[row]) and (not np.isfinite(err_old[old])
                                              or err_new[row] < err_old[old]):
                drop_old[old] = True  # the new catalog measured this source better
                take_new.append(row)
        merged = vstack([merged[~drop_old], table[np.array(take_new, int)], table[~matched]],
                        metadata_conflicts="silent")
    used = [int(np.sum(merged["_SRC"] == k)) for k in range(len(tables))]
    merged.remove_column("_SRC")
    return merged, used


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


def _merge_by_priority(stacked, error):
    """Merge the catalogs of a stacked table (``PRIORITY``), recording what each one gave."""
    n_cat = len(stacked.meta["catalogs"])
    if error == "POS_ERR":
        stacked = stacked.copy()
        stacked["POS_ERR"] = _position_error(stacked)
    parts = [stacked[stacked["PRIORITY"] == k] for k in range(n_cat)]
    merged, used = merge_catalogs(parts, stacked.meta["merge_radius"], error=error)
    if error == "POS_ERR":
        merged.remove_column("POS_ERR")
    merged.meta = {**stacked.meta, "merged": True,
                   "catalogs": [{**c, "n_used": n}
                                for c, n in zip(stacked.meta["catalogs"], used, strict=True)]}
    return merged


def at_epoch(refcat, epoch, pm_missing="keep", pm_dispersion=5.0):
    """
    The reference catalog at ``epoch``: positions moved by their proper motions, errors grown.

    Parameters
    ----------
    refcat : Table
        From `read_reference_catalogs`.
    epoch : `astropy.time.Time` or None
        The images' epoch; None leaves positions as they are.
    pm_missing : {"keep", "drop"}
        Sources of catalogs with proper motions that have none of their own.
    pm_dispersion : float
        Proper-motion dispersion assumed for them, mas/yr (per axis).

    Returns
    -------
    Table
        ``RA``, ``DEC`` at ``epoch``, ``ERR`` (mas per axis, 0 when unknown), ``MAG``,
        ``CATALOG``; ``meta["max_motion_mas"]``, the largest position change.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.time import Time
    from erfa import ErfaWarning

    if pm_missing not in ("keep", "drop"):
        raise ValueError(f"abs_pm_missing must be 'keep' or 'drop', not {pm_missing!r}")
    ra = np.array(refcat["RA"], float)
    dec = np.array(refcat["DEC"], float)
    pos_err2 = np.nan_to_num((np.asarray(refcat["RA_ERR"]) ** 2
                              + np.asarray(refcat["DEC_ERR"]) ** 2) / 2.0)
    err2 = pos_err2.copy()
    keep = np.ones(len(refcat), bool)
    moved = 0.0
    if epoch is not None and len(refcat):
        year = Time(epoch).jyear
        dt = year - np.asarray(refcat["EPOCH"], float)
        pm_known = np.isfinite(refcat["PMRA"]) & np.isfinite(refcat["PMDEC"]) & np.isfinite(dt)
        if pm_known.any():
            sel = np.flatnonzero(pm_known)
            plx = np.asarray(refcat["PARALLAX"], float)[sel]
            coords = SkyCoord(
                ra=ra[sel] * u.deg, dec=dec[sel] * u.deg,
                pm_ra_cosdec=np.asarray(refcat["PMRA"], float)[sel] * u.mas / u.yr,
                pm_dec=np.asarray(refcat["PMDEC"], float)[sel] * u.mas / u.yr,
                distance=(1e3 / np.where(np.isfinite(plx) & (plx > 0), plx, 1e-6)) * u.pc,
                obstime=Time(np.asarray(refcat["EPOCH"], float)[sel], format="jyear"))
            with warnings.catch_warnings():
                # No parallax: ERFA places the star far away ("distance overridden"); the
                # transverse motion, all that matters here, is unchanged.
                warnings.filterwarnings("ignore", message=".*distance overridden",
                                        category=ErfaWarning)
                new = coords.apply_space_motion(new_obstime=Time(epoch))
            moved = float(np.max(coords.separation(new).to_value(u.mas)))
            ra[sel], dec[sel] = new.ra.deg, new.dec.deg
            pm_err2 = np.nan_to_num((np.asarray(refcat["PMRA_ERR"])[sel] ** 2
                                     + np.asarray(refcat["PMDEC_ERR"])[sel] ** 2) / 2.0)
            err2[sel] += pm_err2 * dt[sel] ** 2
        missing = np.asarray(refcat["PM_CATALOG"], bool) & ~pm_known
        if missing.any():
            if pm_missing == "drop":
                keep &= ~missing
            else:
                span = np.where(np.isfinite(dt), dt, 0.0)[missing]
                err2[missing] += (pm_dispersion * span) ** 2
    out = Table({"RA": ra, "DEC": dec, "ERR": np.sqrt(err2)})
    for col in ("MAG", "CATALOG", "PRIORITY"):
        if col in refcat.colnames:
            out[col] = refcat[col]
    out = out[keep]
    out.meta.update(refcat.meta)
    n_cat = len(refcat.meta.get("catalogs", []))
    if n_cat > 1 and not refcat.meta.get("merged"):
        # Unknown errors (catalogs without them) rank after known ones.
        out = _merge_at_epoch(out)
    elif n_cat:
        out.meta["catalogs"] = [{**c, "n_used": c.get("n_used", len(out))}
                                for c in refcat.meta["catalogs"]]
    out["RA"].unit = out["DEC"].unit = "deg"
    out["ERR"].unit = "mas"
    out.meta["epoch"] = None if epoch is None else float(Time(epoch).jyear)
    out.meta["max_motion_mas"] = moved
    if not len(out):
        raise ValueError(f"{refcat.meta.get('source', 'reference catalog')}: no reference source "
                         "left after dropping those without proper motions (abs_pm_missing=drop)")
    return out


def _merge_at_epoch(table):
    """Merge propagated catalogs; a source's error at the epoch decides which row is kept."""
    known = np.asarray(table["ERR"], float) > 0
    table = table.copy()
    table["ERR_RANK"] = np.where(known, table["ERR"], np.nan)  # 0 = unknown, not perfect
    merged = _merge_by_priority(table, "ERR_RANK")
    merged.remove_column("ERR_RANK")
    return merged


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


#: jwst's named reference catalogs (STScI's catalog service), as stcal lists them.
NAMED_CATALOGS = ("GAIAREFCAT", "GAIADR3", "GAIADR2", "GAIADR1")


class RefcatUnavailableError(OSError):
    """A named reference catalog could not be fetched (no network, service down)."""


def named_catalog(spec):
    """The jwst catalog name ``abs_refcat`` names (``GAIADR3``, ...), or None for files."""
    from ..core.compat import named_refcats

    names = named_refcats(NAMED_CATALOGS)
    entries = [str(p) for p in refcat_paths(spec)]
    hits = [e.upper() for e in entries if e.upper() in names and not Path(e).exists()]
    if hits and len(entries) > 1:
        raise ValueError(f"abs_refcat: {hits[0]} is fetched alone; it cannot be combined with "
                         "other catalogs (give a file of it instead)")
    return hits[0] if hits else None


def refcat_label(spec):
    """Names of the ``abs_refcat`` catalogs for ``FIT-LVL3-<names>`` WCS names."""
    name = named_catalog(spec)
    return [name] if name else [p.name for p in refcat_paths(spec)]


def fetch_named_catalog(name, ra, dec, radius, epoch=None, cuts="", mag_min=None, mag_max=None,
                        timeout=30.0):
    """
    Fetch a named catalog around (ra, dec) the way jwst does: stcal's ``get_catalog``.

    The one network path of the package, used only when ``abs_refcat`` names a
    catalog. Positions come back at ``epoch`` (the service applies proper motions).

    Parameters
    ----------
    name : str
        ``GAIADR3``, ``GAIADR2``, ``GAIADR1`` or ``GAIAREFCAT``.
    ra, dec : float
        Centre of the field, deg.
    radius : float
        Search radius, deg.
    epoch : float, optional
        Decimal year of the observations.

    Returns
    -------
    Table
        As `read_reference_catalogs` (``RA``, ``DEC``, ``MAG``...), positions at ``epoch``.

    Raises
    ------
    RefcatUnavailableError
        The service cannot be reached (offline) or answers with an error.
    """
    import tempfile

    from ..core.compat import fetch_catalog

    try:
        table = fetch_catalog(ra, dec, epoch, radius, name, timeout)
    except Exception as exc:  # noqa: BLE001 - requests' errors, service answers that are no table
        raise RefcatUnavailableError(
            f"abs_refcat {name}: the catalog could not be fetched from STScI's catalog service "
            f"({type(exc).__name__}: {exc}). Named catalogs need the network; offline, give a "
            "catalog file (e.g. a Gaia DR3 ECSV) as abs_refcat instead") from exc
    if len(table) == 0:
        raise ValueError(f"abs_refcat {name}: no source within {radius * 3600:.0f} arcsec of "
                         f"RA {ra:.6f}, Dec {dec:.6f}")
    keep = [c for c in ("ra", "dec", "mag") if c in table.colnames]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.ecsv"
        Table(table[keep]).write(path, format="ascii.ecsv")
        out = read_reference_catalogs(str(path), epoch=epoch, cuts=cuts, mag_min=mag_min,
                                      mag_max=mag_max)
    for cat in out.meta["catalogs"]:
        cat["file"] = name
    out.meta["source"] = name
    return out
