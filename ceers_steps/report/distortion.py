"""The report's residual-distortion section: the run's field per detector (issue 32).

`distortion_section` makes one HTML section (a table and an embedded figure) from a run's
`~ceers_steps.fitting.distortion.DistortionFit`, or from the detectors' fields alone (read
back from their files, as the survey index does): per detector the RMS of the fitted field
per axis with the RMS of its uncertainty, the degree kept, the reference sources, detections
and visits it rests on, the reason when none was kept, and its file. The figure shows, per
detector, the binned offsets the data asked for before the field and after it (when the fit's
maps are at hand) and the fitted field on a grid, all along the detector's pixel axes, on one
arrow scale with a reference arrow. The field is the run's: the same section goes into every
visit report of the run, made once.
"""

import os
from pathlib import Path

import numpy as np

from .figures import _figure, _nice, _png

__all__ = ["MIN_CELL_DETECTIONS", "distortion_figure", "distortion_section"]

#: Fewest detections in a map cell for its mean offset to be drawn; thinner cells are grey.
MIN_CELL_DETECTIONS = 5

def _field_mas(d, cells=8):
    """
    The fitted field at the centres of ``cells x cells`` cells (those of the maps): x, y
    (full-frame pixels) and its offsets (n, 2), mas.
    """
    from ..core.distortion import DETECTOR_PIXELS

    centres = (np.arange(cells) + 0.5) * DETECTOR_PIXELS / cells - 0.5
    x, y = (g.ravel() for g in np.meshgrid(centres, centres))
    dx, dy = d.offset(x, y)
    return x, y, 1e3 * d.pixel_scale * np.column_stack([dx, dy])


def distortion_figure(distortions, maps=None):
    """
    Per detector: the binned offsets before and after the field (with ``maps``) and the
    fitted field, along the detector's pixel axes (mas), every panel on one arrow scale.

    Parameters
    ----------
    distortions : dict
        Detector -> `~ceers_steps.core.distortion.DetectorDistortion`.
    maps : dict, optional
        Detector -> binned offsets (`~ceers_steps.fitting.distortion.DistortionFit.maps`).

    Returns
    -------
    `matplotlib.figure.Figure`
    """
    from matplotlib.patches import Rectangle

    from ..core.distortion import DETECTOR_PIXELS

    maps = maps or {}
    dets = sorted(distortions)
    with_maps = any(maps.get(d, {}).get("before") is not None for d in dets)
    kinds = ("before", "after", "field") if with_maps else ("field",)
    per_row = 2 if with_maps else 4  # detectors per row
    cols = per_row * len(kinds)
    rows = max(1, -(-len(dets) // per_row))
    panel = 11.0 / cols
    fig = _figure(11, rows * (panel + 0.45) + 0.5, left=0.02, right=0.98, wspace=0.15,
                  hspace=0.3, bottom=0.45 / (rows * (panel + 0.45) + 0.5),
                  top=1 - 0.5 / (rows * (panel + 0.45) + 0.5))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    # One arrow scale for every panel: the 90th percentile of the lengths ~ 0.9 of a cell
    # (arrows centred on their cell).
    lengths = []
    for d in dets:
        lengths.append(np.hypot(*_field_mas(distortions[d])[2].T))
        for which in ("before", "after"):
            m = maps.get(d, {})
            if m.get(which) is not None:
                ok = np.asarray(m["n"]) >= MIN_CELL_DETECTIONS
                lengths.append(np.hypot(*np.asarray(m[which], float)[ok].T))
    lengths = np.concatenate(lengths) if lengths else np.zeros(0)
    lengths = lengths[np.isfinite(lengths)]
    p90 = float(np.percentile(lengths, 90)) if len(lengths) else 0.0
    ref = _nice(p90) if p90 >= 1 else (0.5 if p90 >= 0.5 else 0.2 if p90 >= 0.2 else 0.1)
    cell = DETECTOR_PIXELS / 8.0
    scale = max(p90, ref) / (0.9 * cell)  # mas per pixel of arrow
    for ax in axes.flat:
        ax.set_axis_off()
    for k, d in enumerate(dets):
        r, c0 = divmod(k, per_row)
        for j, which in enumerate(kinds):
            ax = axes[r, c0 * len(kinds) + j]
            ax.set_axis_on()
            ax.set_xlim(-0.5, DETECTOR_PIXELS - 0.5)
            ax.set_ylim(-0.5, DETECTOR_PIXELS - 0.5)
            ax.set_aspect("equal")
            ax.set_xticks([0, 1024, 2047], ["0", "1024", "2047"], fontsize=6)
            for label, align in zip(ax.get_xticklabels(), ("left", "center", "right"),
                                    strict=True):
                label.set_horizontalalignment(align)
            ax.set_yticks([0, 1024, 2047], ["", "", ""] if j else ["0", "1024", "2047"],
                          fontsize=6, rotation=90, va="center")
            if which == "field":
                x, y, off = _field_mas(distortions[d])
                rx, ry = distortions[d].rms_mas()
                title = (f"{d} fitted field\nrms {rx:.2f}, {ry:.2f} mas" if not
                         distortions[d].is_zero else f"{d} fitted field\nnone kept")
                colour = "#6a3d9a"
            else:
                m = maps[d]
                x, y = np.asarray(m["x"], float), np.asarray(m["y"], float)
                n = np.asarray(m["n"])
                off = np.asarray(m[which], float)
                thin = (n > 0) & (n < MIN_CELL_DETECTIONS)
                for cx, cy in zip(x[thin], y[thin], strict=True):
                    ax.add_patch(Rectangle((cx - cell / 2, cy - cell / 2), cell, cell,
                                           facecolor="#dddddd", edgecolor="none", zorder=0))
                keep = (n >= MIN_CELL_DETECTIONS) & np.all(np.isfinite(off), axis=1)
                x, y, off = x[keep], y[keep], off[keep]
                rms = (np.sqrt(np.mean(off**2, axis=0)) if len(off) else (np.nan, np.nan))
                title = f"{d} {which}\nrms {rms[0]:.2f}, {rms[1]:.2f} mas"
                colour = "#1f77b4" if which == "before" else "#1a7f37"
            if len(off):
                q = ax.quiver(x, y, off[:, 0], off[:, 1], color=colour, angles="xy",
                              scale_units="xy", scale=scale, width=0.012, headwidth=3.5,
                              pivot="middle")
                ax.quiverkey(q, 0.5, -0.13, ref, f"{ref:g} mas", labelpos="E",
                             coordinates="axes", fontproperties={"size": 6})
            ax.set_title(title, fontsize=7)
    return fig


def _pm(value, err):
    v, e = float(value), float(err)
    text = f"{v:.2f}" + (f" ± {e:.2f}" if np.isfinite(e) else "")
    return f"<td data-value='{v!r}' data-err='{e!r}'>{text}</td>"


def _link(path, base):
    from html import escape

    if path is None:
        return "-"
    path = Path(path)
    rel = os.path.relpath(path, base) if base is not None else str(path)
    return f"<a href='{escape(Path(rel).as_posix())}'>{escape(path.name)}</a>"


def distortion_section(fit=None, distortions=None, paths=None, base=None, scope="run"):
    """
    The HTML section on the run's residual distortion.

    Parameters
    ----------
    fit : `~ceers_steps.fitting.distortion.DistortionFit`, optional
        The run's fit: its fields, maps, rounds and status.
    distortions : dict, optional
        Detector -> `~ceers_steps.core.distortion.DetectorDistortion`, without ``fit`` (e.g.
        read back from the files: no maps, no rounds).
    paths : dict, optional
        Detector -> its ``ceers_distortion_<detector>.asdf`` (linked).
    base : path-like, optional
        Folder of the page, for relative links.
    scope : str
        ``"run"`` (a visit report: the field is this run's, shared with every visit report)
        or ``"survey"`` (the survey index).

    Returns
    -------
    str
        Empty when there is neither ``fit`` nor ``distortions``.
    """
    from html import escape

    if fit is None and not distortions:
        return ""
    distortions = dict(fit.distortions if fit is not None else distortions)
    maps = fit.maps if fit is not None else None
    # Without paths, the files the fields were read from (the survey index).
    paths = paths or {det: d.meta["file"] for det, d in distortions.items() if d.meta.get("file")}
    parts = ["<h2 id='distortion'>Residual distortion per detector</h2>"]
    first = next(iter(distortions.values()), None)
    visits = (first.meta.get("visits") if first is not None else None) or []
    filters = (first.meta.get("filters") if first is not None else None) or []
    where = (f" ({len(visits)} visit{'s' if len(visits) != 1 else ''}"
             + (f": {', '.join(map(str, visits))}" if visits else "")
             + (f"; filters {', '.join(map(str, filters))}" if filters else "") + ")"
             if visits or filters else "")
    shared = ("the same section is in every visit report of the run" if scope == "run"
              else "fitted once for every visit and filter of the survey's run")
    folder = None
    if paths:
        folder = Path(next(iter(paths.values()))).parent
    files = (f" Files: one per detector in {_link(folder, base)}/ "
             "(<code>ceers_distortion_&lt;detector&gt;.asdf</code>; apply them with "
             "<code>ceers-apply-wcs --distortion-file</code> or <code>ceers-align "
             "--distortion-file</code>)." if folder is not None else
             " No distortion file was written.")
    parts.append(f"<p id='distortion-note'>The residual distortion of each detector beyond the "
                 f"pipeline's reference files, fitted from every visit and filter of the run"
                 f"{escape(where)}: {shared}. Offsets along the detector's pixel axes "
                 "(corrected pixel = pixel + field); rms: the field's RMS over the detector per "
                 f"axis ± the RMS of its 1-sigma uncertainty.{files}</p>")
    if fit is not None and not fit.success:
        parts.append(f"<p id='distortion-status' class='poor'>Not fitted: {escape(fit.status)}. "
                     "The images were aligned without a residual distortion.</p>")
    if fit is not None and fit.iterations:
        rounds = ", ".join(f"{c:.3f}" for c in fit.iterations)
        parts.append(f"<p id='distortion-rounds'>{len(fit.iterations)} round"
                     f"{'s' if len(fit.iterations) != 1 else ''}; largest change of a field per "
                     f"round (mas): {rounds}.</p>")
    if not distortions:
        return "\n".join(parts)
    parts.append("<table id='distortion-table'><tr><th class='text'>detector</th>"
                 "<th>rms x (mas)</th><th>rms y (mas)</th><th>degree kept</th>"
                 "<th>reference sources</th><th>detections</th><th>visits</th>"
                 "<th class='text'>file</th><th class='text'>reason</th></tr>")
    for det in sorted(distortions):
        d = distortions[det]
        meta = d.meta
        (rx, ry), (ex, ey) = d.rms_mas(), d.rms_error_mas()
        kept = int(meta.get("max_degree", 0 if d.is_zero else 3))
        reason = "" if not d.is_zero else str(meta.get("reason", "none kept"))
        path = paths.get(det) or meta.get("file")
        parts.append(
            f"<tr data-detector='{escape(det)}'><td class='text'>{escape(det)}</td>"
            + (_pm(rx, ex) + _pm(ry, ey) if not d.is_zero else
               "<td data-value='0.0' title='no field kept: zero'>0</td>" * 2)
            + f"<td data-col='degree'>{kept if kept else 'none'}</td>"
            + "".join(f"<td data-col='{k}'>{int(meta[k]) if k in meta else '-'}</td>"
                      for k in ("n_sources", "n_detections", "n_visits"))
            + f"<td class='text'>{_link(path, base) if path else '-'}</td>"
            f"<td class='reason'>{escape(reason)}</td></tr>")
    parts.append("</table>")
    fig = distortion_figure(distortions, maps)
    caption = ("Per detector (full-frame pixels): "
               + ("the mean offset the data ask for in each of 8 x 8 cells (reference minus "
                  "aligned detection) before the field and after it (cells with fewer than "
                  f"{MIN_CELL_DETECTIONS} detections grey, empty cells blank; a cell's mean carries "
                  "its detections' scatter over the square root of their number, so sparse "
                  "maps are noisier than the fit, whose uncertainty the table gives), and "
                  if maps else "")
               + "the fitted field at the cells' centres; every panel on one arrow scale (the reference "
               "arrow). A field with no significant term is not kept (zero)."
               + ("" if maps else " The maps before and after are in the visit reports."))
    parts.append(f"<figure><img alt='Residual distortion' src='data:image/png;base64,"
                 f"{_png(fig)}'><figcaption>{escape(caption)}</figcaption></figure>")
    return "\n".join(parts)
