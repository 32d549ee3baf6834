"""The alignment report: one self-contained HTML page per visit and filter, and DS9 regions.

`write_report` draws the residuals of `ceers_steps.report.diagnostics` with matplotlib
(Agg, no display; figures made with `matplotlib.figure.Figure`, so no global
pyplot state) and embeds them as PNG data in one HTML file that opens offline.
Its numbers per image (status, nmatch, RMSE, uncertainty) are the results
table's; grades and before/after residuals are the report's own
(`ceers_steps.report.diagnostics`). `write_regions` writes one DS9 region file per
image (image coordinates, 1-based) with its matched, rejected and unmatched
sources.
"""

import html
import sys
from pathlib import Path

import numpy as np

from ..core.fileio import atomic_output
from ..io.results import status_text
from .figures import (
    _colours,
    _focal_plane,
    _histograms,
    _png,
    _residual_scatter,
    _rms_bars,
    _short,
    _terms_figure,
)
from .regions import write_regions

__all__ = ["final_rows", "regions_dir", "report_path", "software_versions", "write_regions",
           "write_report", "write_survey_index"]



def report_path(output_dir, visit_filter):
    """``<output_dir>/<visit>_<filter>_alignment_report.html``."""
    from ..core.fileio import inside_folder

    return inside_folder(Path(output_dir) / f"{visit_filter}_alignment_report.html", output_dir)


def regions_dir(output_dir, visit_filter):
    """``<output_dir>/<visit>_<filter>_regions``: one DS9 region file per image."""
    from ..core.fileio import inside_folder

    return inside_folder(Path(output_dir) / f"{visit_filter}_regions", output_dir)


def final_rows(table):
    """
    Image name -> its last result row: the absolute stage's when there is one,
    else the relative stage's (the row whose numbers describe the image's final WCS).
    """
    out = {}
    for row in table:
        name = str(row["image"])
        if name not in out or row["stage"] == "absolute":
            out[name] = row
    return out


def software_versions():
    """Versions of the packages an alignment depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("ceers-steps", "jwst", "stpipe", "stdatamodels", "tweakwcs", "gwcs", "astropy",
                 "numpy", "scipy", "sep", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# --- figures --------------------------------------------------------------------------------

_CSS = """
body{font-family:sans-serif;margin:1.5em;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0;display:block;max-width:100%;
overflow-x:auto}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td.text,th.text{text-align:left}td.reason{text-align:left;min-width:12em}
td.nofit{color:#777;font-style:italic;text-align:left}
td[data-col=accuracy]{font-weight:bold}span.basis{font-weight:normal;color:#777;font-size:0.85em}
.good{color:#1a7f37;font-weight:bold}.check{color:#b58100;font-weight:bold}
.poor{color:#c62828;font-weight:bold}
img{max-width:100%;border:1px solid #eee}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em}dt{font-weight:bold}
"""


def _e(text):
    return html.escape(str(text))


def _num(value, fmt="{:.2f}", col=None):
    """A numeric cell: formatted text, the exact value in ``data-value``."""
    v = float(value)
    text = fmt.format(v) if np.isfinite(v) else "-"
    attr = f' data-col="{col}"' if col else ""
    return f'<td{attr} data-value="{v!r}">{text}</td>'


def _table_html(title, ident, items):
    """A titled two-column table of names and values."""
    rows = "".join(f"<tr><td class='text'>{_e(k)}</td><td class='text'>{_e(v)}</td></tr>"
                   for k, v in items.items())
    return f"<h2>{_e(title)}</h2><table id='{ident}'>{rows}</table>"


def _parameters_html(parameters):
    """
    The step parameters used, without jwst's star-finder parameters that did nothing here
    (at jwst's defaults, or unset): listed by name below the table instead.
    """
    from ..detection.jwst_finder import IGNORED, MAPPED

    shown, idle = {}, []
    for name, value in parameters.items():
        if (name in IGNORED and value == IGNORED[name]) or (name in MAPPED and value is None):
            idle.append(name)
        elif name in IGNORED:
            shown[name] = f"{value} (not used: jwst's star finder; detection is SEP)"
        else:
            shown[name] = value
    out = _table_html("Parameters", "parameters", shown)
    if idle:
        out += ("<p id='parameters-not-used'>Not listed: jwst's star-finder parameters unset or at "
                "jwst's defaults, which did nothing here (detection is SEP with the CEERS "
                f"recipe): {_e(', '.join(idle))}.</p>")
    return out


def _terms_html(terms):
    out = []
    common = terms.get("common")
    if common:
        out.append("<table id='common-terms'><tr><th class='text'>common term</th><th>value</th>"
                   "<th>1-sigma</th></tr>")
        for label, key, fmt in (("shift east (mas)", "east", "{:.2f}"),
                                ("shift north (mas)", "north", "{:.2f}"),
                                ("rotation (deg)", "rotation", "{:.6f}"),
                                ("scale", "scale", "{:.8f}")):
            # A rotation or scale the fit geometry leaves out has no variance: not fitted.
            if key in ("rotation", "scale") and float(common["err_" + key]) == 0.0:
                out.append(f"<tr><td class='text'>{label}</td>"
                           f"<td class='nofit' data-col='{key}' colspan='2'>not fitted</td></tr>")
                continue
            out.append(f"<tr><td class='text'>{label}</td>{_num(common[key], fmt, key)}"
                       f"{_num(common['err_' + key], fmt)}</tr>")
        out.append("</table>")
    for key, title in (("dithers", "dither"), ("detectors", "detector")):
        items = terms.get(key) or []
        if not items:
            continue
        extra = "<th>fitted</th>" if key == "detectors" else ""
        # The detectors' own rotations, when the fit found them (older results lack the keys).
        turned = key == "detectors" and any(t.get("rotated") for t in items)
        extra += "<th>own rotation (arcsec)</th><th>1-sigma</th>" if turned else ""
        out.append(f"<table id='{key}-terms'><tr><th class='text'>{title}</th><th>east (mas)</th>"
                   f"<th>north (mas)</th><th>1-sigma east</th><th>1-sigma north</th>{extra}</tr>")
        for t in items:
            fitted = f"<td>{'yes' if t['fitted'] else 'no'}</td>" if key == "detectors" else ""
            if turned:
                fitted += (f"{_num(t['rotation'], '{:.1f}', 'rotation')}"
                           f"{_num(t['err_rotation'], '{:.1f}')}")
            if key == "detectors" and not t["fitted"]:
                # An offset the fit did not include is not a measured zero.
                values = "<td class='nofit' data-col='east' colspan='4'>not fitted</td>"
            else:
                values = (f"{_num(t['east'], col='east')}{_num(t['north'], col='north')}"
                          f"{_num(t['err_east'])}{_num(t['err_north'])}")
            out.append(f"<tr><td class='text'>{_e(t['id'])}</td>{values}{fitted}</tr>")
        out.append("</table>")
    return "\n".join(out)


#: Held-out sources behind an image's held-out error for it to be the accuracy its row leads
#: with; fewer: the model's err centre, marked "model". The held-out error includes the
#: image's mean held-out residual where significant, whose noise is the sources' scatter
#: over sqrt(n): below ~10 sources it is too noisy to stand for the image.
MIN_HOLDOUT_SOURCES = 10


def _accuracy_cell(row):
    """
    The one accuracy number an image's row leads with (mas, 1-sigma at its centre): the
    validated one, ``holdout_err``, with at least `MIN_HOLDOUT_SOURCES` held-out sources;
    else the model's ``err_center``, marked "model".
    """
    names = row.colnames if hasattr(row, "colnames") else row.keys()
    n = int(row["holdout_n"]) if "holdout_n" in names else 0
    held = float(row["holdout_err"]) if "holdout_err" in names else float("nan")
    if n >= MIN_HOLDOUT_SOURCES and np.isfinite(held):
        value, basis = held, "held-out"
        tip = f"held-out error: measured from {n} of its reference sources held out of the fit"
    else:
        value, basis = float(row["err_center"]), "model"
        tip = ("the model's err centre: " + (f"only {n} sources held out" if n
                                               else "no hold-out validation"))
    if not np.isfinite(value):
        return "<td data-col='accuracy'>-</td>"
    return (f"<td data-col='accuracy' data-value='{value!r}' data-basis='{basis}' "
            f"title='{_e(tip)}'>{value:.2f} <span class='basis'>{basis}</span></td>")


def _holdout_cell(row):
    """The hold-out error cell: its value, with its noise and sources on hover."""
    names = row.colnames if hasattr(row, "colnames") else row.keys()
    if "holdout_err" not in names or not int(row["holdout_n"]):
        return "<td data-col='holdout_err'>-</td>"
    err, sigma, n = float(row["holdout_err"]), float(row["holdout_sigma"]), int(row["holdout_n"])
    return (f"<td data-col='holdout_err' data-value='{err:.3f}' title='+- {sigma:.2f} mas per "
            f"axis, {n} sources held out'>{err:.2f}</td>")


def write_report(path, table, residuals, grades, terms=None, parameters=None, regions=None,
                 title=None, refcat=None, distortion=None):
    """
    Write the HTML report of one visit and filter (completely or not at all).

    Parameters
    ----------
    path : path-like
        ``<visit>_<filter>_alignment_report.html`` (`report_path`).
    table : Table
        The run's results table for this visit and filter (`ceers_steps.io.results`).
    residuals : list of `ceers_steps.report.diagnostics.ImageResiduals`
    grades : list of `ceers_steps.report.diagnostics.ImageGrade`
        Same order as ``residuals``.
    terms : dict, optional
        The joint fit's terms (`ceers_steps.fitting.jointfit.JointFitResult.terms`).
    parameters : dict, optional
        The step parameters used.
    regions : dict, optional
        Image name -> path of its DS9 region file (linked relative to the report).
    title : str, optional
    refcat : str, optional
        What the reference was (for the summary).
    distortion : str, optional
        The run's residual-distortion section (`ceers_steps.report.distortion.distortion_section`:
        made once per run, the same in every visit report), placed after the figures.

    Returns
    -------
    Path
    """
    path = Path(path)
    title = title or table.meta.get("visit_filter", "alignment")
    rows = final_rows(table)
    colours = _colours(residuals)
    have_ref_mag = any(np.isfinite(r.mag[r.used]).any() for r in residuals if r.used.any())
    mag_label = "reference magnitude (MAG)" if refcat and have_ref_mag else "magnitude"
    figures = [("Focal plane", _focal_plane(residuals, colours),
                "Detector footprints on the sky (through the input WCS, then the aligned one) "
                "and the residual of every matched source, source minus reference, exaggerated "
                "by the factor in each title; colour: detector.")]
    if terms:
        figures.append(("Visit terms", _terms_figure(terms),
                        "The joint fit's per-dither and per-detector shifts with 1-sigma error "
                        "bars."))
    figures += [
        ("Residual histograms", _histograms(residuals),
         "Residuals after alignment per axis; rejected matches (beyond "
         "3.44 robust sigma) in red."),
        ("Residuals against magnitude and position", _residual_scatter(residuals, colours,
                                                                       mag_label),
         "After alignment; colour: detector. A trend with position means a term the model "
         "lacks (rotation, scale, distortion)."),
        ("Per-image RMS", _rms_bars(residuals, grades),
         "RMS per axis of each image's matched residuals through the input WCS (grey) and the "
         "aligned WCS (coloured by grade); log scale."),
    ]
    n_matched = sum(int(r.used.sum()) for r in residuals)
    n_rejected = sum(int((r.flag == "rejected").sum()) for r in residuals)
    statuses = [r.status for r in residuals]
    ok_rmse = [1e3 * float(row["rmse"]) for row in rows.values() if row["fit_status"] == "SUCCESS"]
    after = [g.rms_after for g in grades if np.isfinite(g.rms_after)]
    before = [g.rms_before for g in grades if np.isfinite(g.rms_before)]
    counts = {k: sum(g.grade == k for g in grades) for k in ("good", "check", "poor")}
    summary = [
        ("images", f"<span id='n-images'>{len(residuals)}</span> "
                   f"({statuses.count('COMPLETE')} aligned, {len(statuses) - statuses.count('COMPLETE')} "
                   "not aligned)"),
        ("grades", ", ".join(f"<span class='{k}'>{v} {k}</span>" for k, v in counts.items())),
        ("reference", _e(refcat or "none: relative alignment (other exposures' sources)")),
        ("absolute fit", _e(table.meta.get("abs_group", "")) if refcat else "-"),
        ("matched sources", f"{n_matched} ({n_rejected} rejected as outliers)"),
        ("median RMSE of the fits (results table)",
         f"<span id='median-rmse' data-value='{float(np.median(ok_rmse))!r}'>"
         f"{np.median(ok_rmse):.2f} mas</span>" if ok_rmse else "-"),
        ("median image RMS per axis, before / after",
         f"{np.median(before):.2f} / {np.median(after):.2f} mas" if after and before else "-"),
    ]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{_e(title)} alignment report</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}: alignment report</h1>", "<h2>Summary</h2><dl>"]
    parts += [f"<dt>{k}</dt><dd>{v}</dd>" for k, v in summary]
    parts.append("</dl>")
    if terms:
        parts += ["<h2>Fitted terms</h2>", _terms_html(terms)]
    parts.append("<h2>Images</h2><p id='accuracy-note'>Accuracy: each image's error at its "
                 "centre (mas, 1-sigma), the validated figure: its held-out error, measured "
                 "from its own reference sources each held out of the fit once, when at least "
                 f"{MIN_HOLDOUT_SOURCES} are behind it; else the model's err centre, marked "
                 "<i>model</i>. The other columns are what it rests on: the fit's matches and "
                 "rmse, the model's err centre and err corner (trusting the fit's error model), "
                 "the held-out err, and this report's own residuals and grade.</p>"
                 "<table id='images'><tr><th class='text'>image</th><th>accuracy (mas)</th>"
                 "<th class='text'>status</th><th>fit nmatch</th><th>fit rmse (mas)</th>"
                 "<th>err centre (mas)</th><th>held-out err (mas)</th><th>err corner (mas)</th>"
                 "<th>own matches</th>"
                 "<th>RMS before (mas)</th><th>RMS after (mas)</th><th class='text'>grade</th>"
                 "<th class='text'>reason</th><th class='text'>DS9</th></tr>")
    for r, g in zip(residuals, grades, strict=True):
        row = rows.get(r.name)
        status = status_text(row) if row is not None else r.status
        link = ""
        if regions and r.name in regions:
            rel = Path(regions[r.name]).relative_to(path.parent).as_posix()
            link = f"<a href='{_e(rel)}'>regions</a>"
        parts.append(
            f"<tr data-image='{_e(r.name)}'><td class='text' title='{_e(r.name)}'>"
            f"{_e(_short(r.name))}</td>"
            + (_accuracy_cell(row) if row is not None else "<td data-col='accuracy'>-</td>")
            + f"<td class='text' data-col='status'>{_e(status)}</td>"
            + (f"<td data-col='nmatch' data-value='{int(row['nmatch'])}'>{int(row['nmatch'])}</td>"
               + _num(1e3 * float(row["rmse"]), col="rmse")
               + _num(row["err_center"], col="err_center") + _holdout_cell(row)
               + _num(row["err_corner"], col="err_corner")
               if row is not None else "<td>-</td>" * 5)
            + f"<td data-col='own_matches'>{g.nmatch}</td>" + _num(g.rms_before, col="rms_before")
            + _num(g.rms_after, col="rms_after")
            + f"<td class='text {g.grade}' data-col='grade'>{g.grade}</td>"
            f"<td class='reason'>{_e(g.reason)}</td><td class='text'>{link}</td></tr>")
    parts.append("</table><p>Images as group_exposure_detector (hover for the file name). "
                 "Status, fit nmatch, fit rmse and err columns are the results "
                 "table's (<code>*_tweakreg_results.ecsv</code>: each image's absolute row, else "
                 "its relative row; nmatch and rmse are those of the fit that aligned it: per "
                 "detector for <code>abs_group</code> joint and detector, the visit for visit). "
                 "err centre: the joint fit's 1-sigma (semi-major) at the image's centre; "
                 "held-out err: the same error measured without trusting the model, from the "
                 "image's reference sources each held out of the fit once (hover: its noise "
                 "per axis and the number of sources; a large one next to a small err centre "
                 "grades the image check). "
                 "Own matches, before/after RMS and grades are this report's own, per image: its "
                 "aligned sources' nearest reference within the matching tolerance, outliers "
                 "beyond 3.44 robust sigma rejected.</p>")
    for name, fig, caption in figures:
        parts.append(f"<h2>{_e(name)}</h2><figure><img alt='{_e(name)}' "
                     f"src='data:image/png;base64,{_png(fig)}'><figcaption>{_e(caption)}"
                     "</figcaption></figure>")
    if distortion:
        parts.append(distortion)
    if parameters:
        parts.append(_parameters_html(parameters))
    parts += [_table_html("Software", "versions", software_versions()), "</body></html>"]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_survey_index(path, outcomes, summary, crossfilter=None, distortion=None):
    """
    ``survey_index.html``: one row per visit and filter of a survey, linking its report.

    Parameters
    ----------
    path : path-like
    outcomes : list of `ceers_steps.survey.survey.GroupOutcome`
    summary : Table
        The survey summary (`ceers_steps.survey.survey.survey_summary`).
    crossfilter : Table, optional
        Offsets between the filters of each visit (`ceers_steps.report.crossfilter`): a section.
    distortion : str, optional
        The run's residual-distortion section (`ceers_steps.report.distortion.distortion_section`).

    Returns
    -------
    Path
    """
    path = Path(path)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Survey "
             f"alignment</title><style>{_CSS}</style></head><body><h1>Survey alignment: "
             f"{len(outcomes)} {'visit and filter' if len(outcomes) == 1 else 'visits and filters'}, "
             f"{len(summary)} images</h1>",
             "<table id='groups'><tr><th class='text'>visit</th><th class='text'>filter</th>"
             "<th>images</th><th>aligned</th><th>median rmse (mas)</th><th>median err corner "
             "(mas)</th><th class='text'>run</th><th class='text'>report</th></tr>"]
    for result in outcomes:
        rows = summary[(summary["visit"] == result.visit) & (summary["filter"] == result.filter)]
        ok = rows[rows["status"] == "COMPLETE"]
        rmse = float(np.median(ok["rmse"])) if len(ok) else float("nan")
        err = ok["err_corner"][np.isfinite(ok["err_corner"])]
        link = (f"<a href='{_e(Path(result.report).name)}'>report</a>"
                if result.report else "-")
        run = result.status + (f": {result.message}" if result.message else "")
        parts.append(
            f"<tr data-group='{_e(result.name)}'><td class='text'>{_e(result.visit)}</td>"
            f"<td class='text'>{_e(result.filter)}</td><td>{len(rows)}</td>"
            f"<td data-col='aligned'>{len(ok)}</td>{_num(rmse, col='rmse')}"
            f"{_num(float(np.median(err)) if len(err) else float('nan'))}"
            f"<td class='text'>{_e(run)}</td><td class='text'>{link}</td></tr>")
    parts.append("</table><p>One row per image in <code>survey_summary.ecsv</code>.</p>")
    if crossfilter is not None:
        from .crossfilter import crossfilter_html

        parts.append(crossfilter_html(crossfilter))
    if distortion:
        parts.append(distortion)
    parts += [_table_html("Software", "versions", software_versions()), "</body></html>"]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
