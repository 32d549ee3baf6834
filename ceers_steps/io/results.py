"""Alignment results as a table, as the CEERS text file, and as a readable log summary."""

from pathlib import Path

from astropy.table import Table

from ..core.fileio import atomic_output, write_ecsv

__all__ = [
    "CEERS_HEADER",
    "ceers_results_lines",
    "format_summary",
    "summary_line",
    "merge_results",
    "read_results_table",
    "results_paths",
    "results_table",
    "rows_of_other_images",
    "status_text",
    "write_ceers_results",
    "write_results_table",
]

COLUMNS = ("stage", "group", "image", "status", "fit_status", "nmatch", "nmatch_all", "rmse", "mae", "xshift",
           "yshift", "rotation", "scale", "fitgeometry", "err_center", "err_corner",
           "holdout_err", "holdout_sigma", "holdout_n")
_UNITS = {"rmse": "arcsec", "mae": "arcsec", "xshift": "arcsec", "yshift": "arcsec",
          "rotation": "deg", "err_center": "mas", "err_corner": "mas", "holdout_err": "mas",
          "holdout_sigma": "mas"}
#: Columns an older results file may lack, and their value then (not computed).
_MISSING = {"err_center": float("nan"), "err_corner": float("nan"),
            "holdout_err": float("nan"), "holdout_sigma": float("nan"), "holdout_n": 0}

#: Why the reference image of a relative fit is FAILED when no other image of its fit was
#: aligned (its WCS is its input's: nothing was aligned to it).
REFERENCE_ALONE = ("the reference image of a relative fit in which no other image was aligned "
                   "(its WCS is unchanged)")
#: What a COMPLETE reference image of a relative fit is, in words (its WCS did not move).
REFERENCE_NOTE = "reference of the relative fit: not moved, the others were aligned to it"

#: Header of CEERS' ``tweakreg_results_all.<visit>.txt`` (run_tweakreg.py), verbatim.
CEERS_HEADER = (
    "Absolute/Relative     Filename                                        NMATCH    "
    "RMSE(arcsec)  MAE(arcsec)   XSH(arcsec)   YSH(arcsec)   ROT(deg)      SCALE\n"
    "------------------    ----------------------------------------------  ------    "
    "----------    ----------    ----------    ----------    ----------    ----------\n"
)


def results_paths(out_dir, visit_filter):
    """``<visit>_<filter>_tweakreg_results.ecsv`` and ``tweakreg_results_all.<visit>_<filter>.txt``."""
    out_dir = Path(out_dir)
    from ..core.fileio import inside_folder

    return (inside_folder(out_dir / f"{visit_filter}_tweakreg_results.ecsv", out_dir),
            inside_folder(out_dir / f"tweakreg_results_all.{visit_filter}.txt", out_dir))


def _user_statuses(rows):
    """
    (status, fit_status) of every row: jwst's words for the image (COMPLETE, or
    ``FAILED: <reason>``) and tweakwcs' for its fit (SUCCESS, REFERENCE, FAILED).

    The reference image of a relative fit is COMPLETE when another image of that fit
    (the same stage and group) was aligned to it, else FAILED with `REFERENCE_ALONE`.
    Rows that already carry a ``fit_status`` (an earlier table's) are kept as they are.
    """
    aligned = {(r["stage"], r["group"]) for r in rows
               if r.get("fit_status") is None and str(r["status"]) == "SUCCESS"}
    out = []
    for r in rows:
        status = str(r["status"])
        if r.get("fit_status") is not None:
            out.append((status, str(r["fit_status"])))
        elif status == "SUCCESS":
            out.append(("COMPLETE", "SUCCESS"))
        elif status.startswith("REFERENCE"):
            ok = (r["stage"], r["group"]) in aligned
            out.append(("COMPLETE" if ok else f"FAILED: {REFERENCE_ALONE}", "REFERENCE"))
        elif status.startswith(("COMPLETE", "SKIPPED")):
            out.append((status, status.split(":")[0]))
        else:
            out.append((status if status.startswith("FAILED") else f"FAILED: {status}", "FAILED"))
    return out


def results_table(rows, meta=None):
    """
    The result rows as an `~astropy.table.Table` with units.

    Columns: ``stage``, ``group``, ``image``, ``status`` (jwst's words: COMPLETE
    when this fit aligned the image, or it is the reference the others of its
    relative fit were aligned to; ``FAILED: <reason>`` otherwise), ``fit_status``
    (tweakwcs' words for the fit: SUCCESS, REFERENCE, FAILED), ``nmatch`` (sources
    of the final solution, after clipping: CEERS' NMATCH), ``nmatch_all`` (matches
    before clipping), ``rmse``, ``mae``, ``xshift``, ``yshift`` (arcsec, in
    tweakwcs' frame), ``rotation`` (deg), ``scale``, ``fitgeometry``,
    ``err_center`` and ``err_corner`` (mas): 1-sigma semi-major axis of the
    error ellipse of the image's aligned position at its centre and at its
    worst corner, from the joint fit's covariance (NaN where not computed:
    the tweakwcs modes and failed fits); ``holdout_err`` (mas) and ``holdout_n``:
    the hold-out estimate of the image's error near its centre, from its ``holdout_n``
    reference sources each held out of the fit once (`JointFitResult.holdout`), and
    ``holdout_sigma`` (mas) the noise of that estimate per axis (NaN and 0 where not
    computed). Text columns are as wide as their longest value: nothing is cut.

    ``rows`` are dicts with these keys; a row's ``status`` may be tweakwcs' (SUCCESS,
    REFERENCE, ``FAILED: <reason>``) and is then translated.
    """
    rows = list(rows)
    statuses = _user_statuses(rows)
    values = [[*(row.get(c, _MISSING.get(c)) for c in COLUMNS[:3]), status, fit_status,
               *(row.get(c, _MISSING.get(c)) for c in COLUMNS[5:])]
              for row, (status, fit_status) in zip(rows, statuses, strict=True)]
    table = Table(rows=values, names=COLUMNS,
                  dtype=(str, str, str, str, str, "i4", "i4", "f8", "f8", "f8", "f8", "f8", "f8",
                         str, "f8", "f8", "f8", "f8", "i4"))
    for name, unit in _UNITS.items():
        table[name].unit = unit
    table.meta.update(meta or {})
    return table


def rows_of_other_images(earlier, table):
    """
    The rows of an earlier results table for images not in ``table``, in this
    release's columns (a column an older file lacks is 0, or NaN for the
    uncertainty columns), or None when there are none.

    One visit's detectors aligned by separate calls (CEERS ran one per detector)
    share the visit's results files: each call replaces its own images' rows and
    keeps the others'.
    """
    ours = {str(name) for name in table["image"]}
    others = [row for row in earlier if str(row["image"]) not in ours]
    if not others:
        return None
    return results_table([{c: row[c] if c in row.colnames else _MISSING.get(c, 0)
                           for c in COLUMNS if c != "fit_status" or c in row.colnames}
                          for row in others])


def merge_results(others, table):
    """``others`` (from `rows_of_other_images`, or None) followed by ``table``, with its meta."""
    from astropy.table import vstack

    if others is None:
        return table
    merged = vstack([others, table], metadata_conflicts="silent")
    merged.meta = dict(table.meta)
    return merged


def read_results_table(path):
    """An earlier ``<visit>_<filter>_tweakreg_results.ecsv``, or None when absent or unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        table = Table.read(path, format="ascii.ecsv")
    except Exception:  # noqa: BLE001 - an unreadable earlier file is replaced, not merged
        return None
    if "image" not in table.colnames or "stage" not in table.colnames:
        return None
    if "fit_status" not in table.colnames and "status" in table.colnames:
        # A table of an earlier release (tweakwcs' words in ``status``): today's columns.
        table = results_table([{c: row[c] if c in table.colnames else _MISSING.get(c, 0)
                                for c in COLUMNS if c != "fit_status"} for row in table],
                              meta=table.meta)
    return table


def write_results_table(table, path):
    """Write the results table as ECSV (completely or not at all)."""
    return write_ecsv(table, path)


def ceers_results_lines(table):
    """
    The rows of the CEERS text file, in CEERS' exact column layout.

    One ``Relative alignment:`` line per aligned image (the reference image of
    a tweakwcs relative fit has none, as in CEERS), and one ``Absolute
    alignment:`` line per absolute group. Failed fits have zeros, as CEERS
    wrote them, so ``grep Relative ... | sort`` works as before.
    """
    lines = []
    for row in table[table["stage"] == "relative"]:
        if str(row["fit_status"]) in ("REFERENCE", "SKIPPED"):
            continue
        ok = row["fit_status"] == "SUCCESS"
        vals = (row["nmatch"], row["rmse"], row["mae"], row["xshift"], row["yshift"]) if ok else \
            (0, 0.0, 0.0, 0.0, 0.0)
        # CEERS run_tweakreg.py format strings, verbatim.
        lines.append("Relative alignment:   %46s  %6i  %12.8f  %12.8f  %12.8f  %12.8f\n"  # noqa: UP031
                     % (row["image"], *vals))
    seen = set()
    for row in table[table["stage"] == "absolute"]:
        if row["group"] in seen:
            continue
        seen.add(row["group"])
        ok = row["fit_status"] == "SUCCESS"
        vals = (row["nmatch"], row["rmse"], row["mae"], row["xshift"], row["yshift"],
                row["rotation"], row["scale"]) if ok else (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        lines.append("Absolute alignment:   %-46s  %6i  %12.8f  %12.8f  %12.8f  %12.8f  %12.8f  "  # noqa: UP031
                     "%12.8f\n" % (row["group"], *vals))
    return lines


def write_ceers_results(table, path):
    """Write ``tweakreg_results_all.<visit>_<filter>.txt`` in the CEERS layout."""
    with atomic_output(path) as tmp:
        tmp.write_text(CEERS_HEADER + "".join(ceers_results_lines(table)))
    return Path(path)


def summary_line(table):
    """
    One line for the log: images per outcome and the median RMSE (mas) of the
    successful fits. The full table is in the results files.
    """
    import numpy as np

    images = {}
    for row in table:
        status = str(row["status"]).split(":")[0]
        previous = images.get(row["image"])
        # An image's outcome is its worst row: FAILED over SKIPPED over the rest.
        rank = {"FAILED": 2, "SKIPPED": 1}
        if previous is None or rank.get(status, 0) > rank.get(previous, 0):
            images[row["image"]] = status
    counts = {}
    for status in images.values():
        counts[status] = counts.get(status, 0) + 1
    ok = table[table["fit_status"] == "SUCCESS"]
    rmse = f"; median RMSE {1e3 * float(np.median(ok['rmse'])):.2f} mas" if len(ok) else ""
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return f"{len(images)} images ({parts}){rmse}"


def status_text(row):
    """A results row's status as a user reads it (the reference of a relative fit said so)."""
    status = str(row["status"])
    if status == "COMPLETE" and str(row["fit_status"]) == "REFERENCE":
        return f"COMPLETE ({REFERENCE_NOTE})"
    return status


def format_summary(table):
    """A readable fixed-width summary (for the console), mas and deg."""
    head = (f"{'stage':8s} {'group':34s} {'image':44s} {'nmatch':>6s} {'rmse':>7s} "
            f"{'xshift':>9s} {'yshift':>9s} {'rot(deg)':>9s} {'scale':>10s}  status")
    out = [head, "-" * len(head)]
    for row in table:
        out.append(
            f"{row['stage']:8s} {row['group'][:34]:34s} {row['image'][:44]:44s} "
            f"{row['nmatch']:6d} {1e3 * row['rmse']:7.2f} {1e3 * row['xshift']:9.2f} "
            f"{1e3 * row['yshift']:9.2f} {row['rotation']:9.5f} {row['scale']:10.7f}  "
            f"{status_text(row)}"
        )
    out.append("(rmse and shifts in mas)")
    return "\n".join(out)
