"""Merging reference sources: duplicate rows of one catalog, several catalogs in priority order."""

import numpy as np
from astropy.table import vstack

from ..core.logs import get_logger

__all__ = ["NEAR_DUPLICATE_FRACTION", "collapse_near_duplicates", "merge_catalogs",
           "merge_duplicates"]

# One logger for the subpackage: log lines name "ceers_steps.refcat", as before the split.
log = get_logger(__package__)


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
