"""Named reference catalogs (``GAIADR3``, ...) fetched from STScI's catalog service, as jwst does."""

from pathlib import Path

from astropy.table import Table

from .read import read_reference_catalogs, refcat_paths

__all__ = ["NAMED_CATALOGS", "RefcatUnavailableError", "fetch_named_catalog", "named_catalog",
           "refcat_label"]

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
