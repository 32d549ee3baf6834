"""The survey's summary: ``survey_summary.ecsv``, one row per image of every group."""

from pathlib import Path

__all__ = ["survey_summary"]


def _column(row, name, missing, kind):
    """``row[name]`` as ``kind``, or ``missing`` without a row or that column (older files)."""
    if row is None or name not in row.colnames:
        return missing
    return kind(row[name])


def survey_summary(outcomes, groups, out_dir, crossfilter=None, distortions=None):
    """
    ``survey_summary.ecsv``: one row per image of the survey, from each group's results
    table (its absolute row, else its relative row): visit, filter, detector, image,
    status (COMPLETE = aligned, else FAILED with the reason), nmatch, rmse (mas),
    err_center, err_corner (mas), holdout_err (mas) and holdout_n (the hold-out estimate
    of the error and the reference sources behind it; NaN and 0 where not computed), the
    group's outcome and its report; with ``crossfilter`` (`ceers_steps.report.crossfilter`),
    the image's worst cross-filter offset on its detector, ``xfilter_offset``,
    ``xfilter_err`` (mas) and the other filter ``xfilter_with`` (NaN and "" without one).
    With ``distortions`` (detector -> DetectorDistortion: the run's ``--fit-distortion``),
    ``meta["distortion"]`` holds per detector the fitted field's RMS per axis and the RMS of
    its uncertainty (mas), the degree kept, the reference sources and its file.

    Returns
    -------
    Table (also written)
    """
    from astropy.table import Table

    from ..core.fileio import write_ecsv
    from ..io.results import read_results_table
    from ..report.html import final_rows

    rows = []
    for result, group in zip(outcomes, groups, strict=True):
        table = read_results_table(result.results) if result.results else None
        final = final_rows(table) if table is not None else {}
        for det in sorted(group.selected):
            for path in group.selected[det]:
                row = final.get(path.name)
                status = str(row["status"]) if row is not None else f"FAILED: {result.message}"
                rows.append({
                    "visit": group.visit, "filter": group.filter, "detector": det,
                    "image": path.name, "status": status,
                    "nmatch": int(row["nmatch"]) if row is not None else 0,
                    "rmse": 1e3 * float(row["rmse"]) if row is not None else float("nan"),
                    "err_center": float(row["err_center"]) if row is not None else float("nan"),
                    "err_corner": float(row["err_corner"]) if row is not None else float("nan"),
                    "holdout_err": _column(row, "holdout_err", float("nan"), float),
                    "holdout_n": _column(row, "holdout_n", 0, int),
                    "group_status": result.status,
                    "report": Path(result.report).name if result.report else ""})
    names = ("visit", "filter", "detector", "image", "status", "nmatch", "rmse", "err_center",
             "err_corner", "holdout_err", "holdout_n", "group_status", "report")
    table = Table(rows=[[r[n] for n in names] for r in rows], names=names,
                  dtype=(str, str, str, str, str, "i4", "f8", "f8", "f8", "f8", "i4", str, str))
    for name in ("rmse", "err_center", "err_corner", "holdout_err"):
        table[name].unit = "mas"
    if crossfilter is not None:
        from ..report.crossfilter import add_worst_offsets

        add_worst_offsets(table, crossfilter)
    table.meta["groups"] = len(groups)
    if distortions:
        table.meta["distortion"] = {det: _distortion_meta(d)
                                    for det, d in sorted(distortions.items())}
    write_ecsv(table, Path(out_dir) / "survey_summary.ecsv")
    return table


def _distortion_meta(d):
    (rx, ry), (ex, ey) = d.rms_mas(), d.rms_error_mas()
    out = {"rms_x": round(rx, 4), "rms_y": round(ry, 4), "rms_error_x": round(ex, 4),
           "rms_error_y": round(ey, 4), "unit": "mas",
           "max_degree": int(d.meta.get("max_degree", 0)),
           "n_sources": int(d.meta.get("n_sources", 0)),
           "file": Path(d.meta.get("file", "")).name}
    if d.is_zero:
        out["reason"] = str(d.meta.get("reason", "none kept"))
    return out
