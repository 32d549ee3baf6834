"""Reference catalogs at the images' epoch: proper motions applied, position errors grown."""

import math
import warnings

import numpy as np
from astropy.table import Table

from ..io.grouping import image_epoch
from .merge import _merge_by_priority

__all__ = ["at_epoch", "image_epoch", "julian_year"]


def julian_year(value, what):
    """``value`` (a Julian year, 'J2016.0' or a date) as a Julian year; ``what`` names it in errors."""
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
