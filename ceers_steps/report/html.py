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

import base64
import html
import io
import sys
from pathlib import Path

import numpy as np

from ..core.fileio import atomic_output
from ..io.results import status_text

__all__ = ["final_rows", "regions_dir", "report_path", "software_versions", "write_regions",
           "write_report", "write_survey_index"]

_GRADE_COLOURS = {"good": "#1a7f37", "check": "#b58100", "poor": "#c62828"}
_FLAG_STYLE = {"matched": ("circle", "green"), "rejected": ("x point", "red"),
               "unmatched": ("circle", "cyan")}


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

def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width, height, **margins):
    """A figure with fixed margins (fractions; constrained layout would double the cost)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    fig.subplots_adjust(**{"left": 0.07, "right": 0.98, "bottom": 0.13, "top": 0.9,
                           "wspace": 0.22, "hspace": 0.35, **margins})
    return fig


def _colours(residuals):
    from matplotlib import colormaps

    dets = sorted({r.detector for r in residuals})
    cmap = colormaps["tab10"]
    return {d: cmap(i % 10) for i, d in enumerate(dets)}


def _nice(value):
    """The 1-2-5 number nearest below ``value`` (>= 1)."""
    if not np.isfinite(value) or value <= 1:
        return 1
    exp = 10 ** np.floor(np.log10(value))
    for m in (5, 2, 1):
        if m * exp <= value:
            return int(m * exp)
    return int(exp)


def _focal_plane(residuals, colours):
    """Footprints and residual vectors before and after, each exaggerated by a stated factor."""
    fig = _figure(11, 5.2, bottom=0.1, top=0.93, wspace=0.08)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    corners = np.concatenate([r.footprint_after for r in residuals if len(r.footprint_after)]
                             or [np.zeros((1, 2))])
    extent = float(np.max(np.ptp(corners, axis=0))) or 1.0
    for ax, which in zip(axes, ("before", "after"), strict=True):
        lengths = np.concatenate([np.hypot(*getattr(r, which)[r.used].T) for r in residuals]
                                 or [np.zeros(0)])
        p90 = np.percentile(lengths, 90) / 1e3 if len(lengths) else 0.0
        factor = _nice(0.05 * extent / p90) if p90 > 0 else 1
        for r in residuals:
            foot = r.footprint_before if which == "before" else r.footprint_after
            if not len(foot):
                continue
            c = colours[r.detector]
            ax.fill(foot[:, 0], foot[:, 1], facecolor=(*c[:3], 0.06), edgecolor=c, lw=0.8)
            m = r.used
            if m.any():
                d = getattr(r, which)[m] * factor / 1e3
                ax.quiver(r.east[m], r.north[m], d[:, 0], d[:, 1], color=c, angles="xy",
                          scale_units="xy", scale=1, width=0.0025, headwidth=3)
        ax.set_title(f"{which} alignment: residuals x {factor:,}")
        ax.set_xlabel("east offset (arcsec)")
        ax.set_aspect("equal")
        ax.invert_xaxis()
        if len(lengths):
            ax.text(0.02, 0.02, f"median |residual| {np.median(lengths):.1f} mas",
                    transform=ax.transAxes, fontsize=9)
    axes[0].set_ylabel("north offset (arcsec)")
    handles = [_patch(colours[d], d) for d in colours]
    axes[1].legend(handles=handles, fontsize=8, loc="upper right", ncols=2)
    return fig


def _patch(colour, label):
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, label=label)


def _terms_figure(terms):
    """Dither and detector terms with their 1-sigma error bars (mas)."""
    fig = _figure(11, 3.6, bottom=0.15)
    axes = fig.subplots(1, 2)
    for ax, key, title in ((axes[0], "dithers", "dither terms (against the first dither)"),
                           (axes[1], "detectors", "detector terms (sum zero over those fitted)")):
        items = terms.get(key) or []
        ids = [_short_dither(t["id"]) for t in items]
        pos = np.arange(len(items))
        for k, (axis, colour) in enumerate((("east", "#1f77b4"), ("north", "#d62728"))):
            vals = [t[axis] for t in items]
            errs = [t[f"err_{axis}"] for t in items]
            ax.errorbar(pos + (k - 0.5) * 0.15, vals, yerr=errs, fmt="o", color=colour,
                        label=axis, capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(pos, ids, rotation=30 if len(ids) > 4 else 0, fontsize=8)
        ax.set_ylabel("mas")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return fig


def _histograms(residuals):
    fig = _figure(11, 3.4, bottom=0.15, top=0.88)
    axes = fig.subplots(1, 2)
    used = np.concatenate([r.after[r.used] for r in residuals] or [np.zeros((0, 2))])
    rej = np.concatenate([r.after[r.flag == "rejected"] for r in residuals] or [np.zeros((0, 2))])
    for k, (ax, axis) in enumerate(zip(axes, ("east", "north"), strict=True)):
        both = np.concatenate([used[:, k], rej[:, k]])
        bins = np.linspace(*(np.percentile(both, [0, 100]) if len(both) else (-1, 1)), 41)
        ax.hist(used[:, k], bins=bins, color="#1f77b4", label=f"matched ({len(used)})")
        if len(rej):
            ax.hist(rej[:, k], bins=bins, color="#c62828", label=f"rejected ({len(rej)})")
        if len(used):
            rms = np.sqrt(np.mean(used[:, k] ** 2))
            ax.set_title(f"{axis} residual after alignment: mean {used[:, k].mean():+.2f}, "
                         f"RMS {rms:.2f} mas", fontsize=10)
        ax.set_xlabel(f"{axis} residual (mas)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("sources")
    return fig


def _residual_scatter(residuals, colours, mag_label):
    """Residual against magnitude and against position (after alignment)."""
    fig = _figure(11, 6.4, bottom=0.08, top=0.94, hspace=0.3)
    axes = fig.subplots(2, 2, sharey="row")
    for r in residuals:
        m = r.used
        if not m.any():
            continue
        c = colours[r.detector]
        total = np.hypot(*r.after[m].T)
        axes[0, 0].scatter(r.mag[m], total, s=6, color=c)
        axes[0, 1].scatter(r.east[m], r.after[m, 0], s=6, color=c)
        axes[1, 0].scatter(r.mag[m], r.after[m, 1], s=6, color=c)
        axes[1, 1].scatter(r.north[m], r.after[m, 1], s=6, color=c)
    axes[0, 0].set_ylabel("|residual| (mas)")
    axes[0, 0].set_xlabel(mag_label)
    axes[0, 1].set_xlabel("east offset (arcsec)")
    axes[0, 1].set_ylabel("east residual (mas)")
    axes[0, 1].invert_xaxis()
    axes[1, 0].set_ylabel("north residual (mas)")
    axes[1, 0].set_xlabel(mag_label)
    axes[1, 1].set_xlabel("north offset (arcsec)")
    for ax in axes.flat:
        ax.axhline(0, color="grey", lw=0.8)
    axes[0, 0].set_title("residual against magnitude", fontsize=10)
    axes[0, 1].set_title("residual against position", fontsize=10)
    return fig


#: Bars per row of the per-image RMS chart: 48 keeps every rotated label clear of the
#: next at the report's width (~14 px apart at 7 pt); more images take more rows.
BARS_PER_ROW = 48


def _rms_bars(residuals, grades):
    # The legend sits right of the axes, never over a bar. Every image keeps its label:
    # a visit of 200 images is drawn in rows of at most BARS_PER_ROW bars.
    n = len(residuals)
    rows = max(1, -(-n // BARS_PER_ROW))
    per_row = -(-n // rows) if n else 1
    if rows == 1:
        fig = _figure(11, 3.8, bottom=0.3, top=0.9, right=0.84)
        axes = [fig.subplots()]
    else:
        axes_h, label_h, title_h = 1.9, 1.15, 0.45  # inches
        height = rows * (axes_h + label_h) + title_h
        fig = _figure(11, height, bottom=label_h / height, top=1 - title_h / height,
                      right=0.84, hspace=label_h / axes_h)
        axes = list(fig.subplots(rows, 1))
    before = np.array([r.rms("before") for r in residuals], float)
    after = np.array([r.rms("after") for r in residuals], float)
    colours = [_GRADE_COLOURS[g.grade] for g in grades]
    for k, ax in enumerate(axes):
        sel = np.arange(k * per_row, min(n, (k + 1) * per_row))
        pos = np.arange(len(sel))
        ax.bar(pos - 0.2, before[sel], width=0.4, color="#999999", label="before")
        ax.bar(pos + 0.2, after[sel], width=0.4, color=[colours[i] for i in sel],
               label="after (colour: grade)")
        ax.set_yscale("log")
        ax.set_xlim(-0.6, per_row - 0.4)  # the same bar width in every row
        ax.set_xticks(pos, [_short(residuals[i].name) for i in sel], rotation=60, ha="right",
                      fontsize=7)
        ax.set_ylabel("RMS per axis (mas)")
    axes[0].set_title("per-image residual RMS of the matched sources"
                      + (f" ({n} images in {rows} rows)" if rows > 1 else ""), fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def _short_dither(ident):
    """``jw01345001001_02201_00002`` -> ``00002`` (the exposure number)."""
    return str(ident).split("_")[-1]


def _short(name):
    """``jw01345001001_02201_00001_nrca1_cal.fits`` -> ``02201_00001_nrca1`` (unique in a visit)."""
    parts = Path(str(name)).name.split("_")
    return "_".join(parts[1:4]) if len(parts) >= 5 and parts[0].startswith("jw") else str(name)


# --- HTML -----------------------------------------------------------------------------------

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
                 title=None, refcat=None):
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
    if parameters:
        parts.append(_parameters_html(parameters))
    parts += [_table_html("Software", "versions", software_versions()), "</body></html>"]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_regions(directory, residuals):
    """
    One DS9 region file per image, ``<directory>/<image stem>.reg``, in image
    coordinates (1-based, as DS9 counts pixels): matched sources as green circles,
    rejected matches as red crosses, unmatched sources as cyan circles, each
    tagged with its residual after alignment (mas).

    Returns
    -------
    dict
        Image name -> path written.
    """
    directory = Path(directory)
    out = {}
    for r in residuals:
        if not len(r.x):
            continue
        lines = ["# Region file format: DS9 version 4.1",
                 f"# {r.name}: {int(r.used.sum())} matched, {int((r.flag == 'rejected').sum())} "
                 f"rejected, {int((r.flag == 'unmatched').sum())} unmatched (ceers-steps)",
                 'global font="helvetica 9 normal" width=1', "image"]
        for k in range(len(r.x)):
            shape, colour = _FLAG_STYLE[r.flag[k]]
            x, y = r.x[k] + 1.0, r.y[k] + 1.0
            tag = (f" text={{{np.hypot(*r.after[k]):.1f} mas}}" if r.flag[k] != "unmatched"
                   else "")
            if shape == "circle":
                lines.append(f"circle({x:.3f},{y:.3f},6) # color={colour} tag={{{r.flag[k]}}}{tag}")
            else:
                lines.append(f"point({x:.3f},{y:.3f}) # point=x color={colour} "
                             f"tag={{{r.flag[k]}}}{tag}")
        path = directory / f"{Path(str(r.name)).stem}.reg"
        with atomic_output(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        out[r.name] = path
    return out


def write_survey_index(path, outcomes, summary, crossfilter=None):
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
    parts += [_table_html("Software", "versions", software_versions()), "</body></html>"]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
