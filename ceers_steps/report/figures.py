"""The report's figures: matplotlib (Agg, `matplotlib.figure.Figure`, no pyplot state) drawn to PNG.

Residuals are `ceers_steps.report.diagnostics` residuals, in mas; each figure returns base64 PNG
data for embedding in the self-contained HTML page.
"""

import base64
import io
from pathlib import Path

import numpy as np

GRADE_COLOURS = {"good": "#1a7f37", "check": "#b58100", "poor": "#c62828"}


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
    colours = [GRADE_COLOURS[g.grade] for g in grades]
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
