"""Cross-filter consistency: how far apart the filters of a visit are after alignment.

Every filter of a visit is aligned to the same reference catalog on its own (or fitted
together with others). Whether the filters agree is measured on the sky, from what the
run leaves on disk for each aligned image: its catalog (``<image>_cat.ecsv``, 0-based
``xcentroid``/``ycentroid``) put through its aligned WCS (``tweakreg_wcs/<exposure>_tweakreg.asdf``,
status COMPLETE only). The same galaxies in two filters then give, source by source, the
offset of one filter's aligned frame from the other's, plus each galaxy's own centroid
difference between the bands (colour gradients, morphology) and centroid noise: a median
over the sources and its uncertainty from their scatter.

Per visit, filter pair and detector (`cross_filter_offsets`):

1. each filter's detections on a detector (all its dithers) are merged into sources
   (`merge_detections`: a detection within ``tolerance`` of a source seen in an earlier
   image joins it; a source's position is its detections' mean), so that a galaxy seen in
   three dithers counts once: the uncertainty is not shrunk by repeats;
2. the sources of filter *a* (the shorter wavelength) on detector *d* are matched to those of
   filter *b* on *d*; when *b* has no detector *d* (an SW filter against an LW one) to *b*'s
   detectors of the same module (``nrca1`` against ``nrcalong``), else to all of *b*'s.
   Matches are mutual nearest neighbours in the tangent plane within ``tolerance``, twice:
   the second time after removing the first pass's median offset, so an offset close to the
   tolerance is not clipped into a smaller one (`match_sources`);
3. offsets *b* minus *a* per matched source (east ``dRA cos(Dec)``, north ``dDec``, mas):
   their median per axis, its 1-sigma ``1.2533 x 1.4826 MAD / sqrt(n)`` (the standard error of
   a median of ``n`` Gaussian values with the MAD's robust sigma; `robust_offset`), the
   length of the median offset; NaN with fewer than ``min_sources`` matches.

A row with detector ``all`` does the same for the whole visit (each filter's sources merged
over all its detectors).

In the survey (``ceers-align --all``), the table is written as ``survey_crossfilter.ecsv``
(`write_survey_crossfilter`) and shown in the survey index. Decision for
``survey_summary.ecsv`` (one row per image): each image gets its filter's *worst*
cross-filter offset on its own detector, ``xfilter_offset`` and ``xfilter_err`` (mas) and the
other filter ``xfilter_with`` (`worst_offsets`): the largest offset length over the rows of
its visit whose pair includes its filter and whose detectors include its detector (NaN and
``""`` for a visit with one filter, or without enough matches). Per-pair detail stays in the
crossfilter table: a per-image column per pair would change the summary's columns with the
number of filters.
"""

import html
import re
from pathlib import Path

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

__all__ = ["DEFAULT_TOLERANCE", "MIN_SOURCES", "add_worst_offsets", "aligned_sky_positions",
           "cross_filter_offsets", "crossfilter_html", "match_sources", "merge_detections",
           "read_aligned_catalogs", "robust_offset", "worst_offsets", "write_survey_crossfilter"]

#: Match radius between detections of one source, mas: ~3 SW pixels, well beyond centroid
#: noise (a few mas) and the band-to-band offsets of galaxies (~10 mas), well inside the
#: distance between neighbouring sources of a deep field.
DEFAULT_TOLERANCE = 100.0

#: Fewer matched sources than this: no offset (a median of fewer has no usable MAD).
MIN_SOURCES = 5

_MAS_PER_RAD = 180.0 / np.pi * 3600e3

_COLUMNS = (("visit", str), ("filter_a", str), ("filter_b", str), ("detector", str),
            ("detector_b", str), ("dx_mas", "f8"), ("dy_mas", "f8"), ("offset_mas", "f8"),
            ("dx_err_mas", "f8"), ("dy_err_mas", "f8"), ("offset_err_mas", "f8"), ("n", "i4"))


def _tangent(ra, dec, ra0, dec0):
    """Gnomonic projection about (ra0, dec0): east and north standard coordinates, mas."""
    ra, dec = np.deg2rad(np.asarray(ra, float)), np.deg2rad(np.asarray(dec, float))
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.column_stack([xi, eta]) * _MAS_PER_RAD


def aligned_sky_positions(catalog, wcs):
    """
    A catalog's detections through a WCS (the image's aligned one).

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        Pixel columns ``xcentroid``/``ycentroid`` (or ``x``/``y``...), 0-based
        (`ceers_steps.detection.catalogs.catalog_xy`).
    wcs : `gwcs.WCS`
        Pixel -> (RA, Dec) in deg.

    Returns
    -------
    ra, dec : ndarray
        deg; detections the WCS puts nowhere (NaN) left out.
    """
    from ..detection.catalogs import catalog_xy

    xy = catalog_xy(catalog)
    if not len(xy):
        return np.zeros(0), np.zeros(0)
    ra, dec = wcs(np.asarray(xy["x"], float), np.asarray(xy["y"], float), with_bounding_box=False)
    ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
    ok = np.isfinite(ra) & np.isfinite(dec)
    return ra[ok], dec[ok]


def _mutual_nearest(a, b, tolerance):
    """Index pairs (i, j): ``b[j]`` is ``a[i]``'s nearest within ``tolerance`` and vice versa."""
    if not len(a) or not len(b):
        return np.zeros(0, int), np.zeros(0, int)
    dist_ab, j = cKDTree(b).query(a, distance_upper_bound=tolerance)
    _, i_back = cKDTree(a).query(b, distance_upper_bound=tolerance)
    i = np.arange(len(a))
    ok = np.isfinite(dist_ab)
    ok[ok] &= i_back[j[ok]] == i[ok]
    return i[ok], j[ok]


def merge_detections(positions, tolerance=DEFAULT_TOLERANCE):
    """
    Merge the detections of several images (one filter) into sources.

    Parameters
    ----------
    positions : list of ndarray (n_k, 2)
        Each image's detections in a common tangent plane, mas.
    tolerance : float
        A detection within this distance (mas) of a source seen in an earlier image (its
        mutual nearest neighbour) joins that source.

    Returns
    -------
    ndarray (n_sources, 2)
        Each source's mean position, mas.
    """
    sums, counts = np.zeros((0, 2)), np.zeros(0)
    for xy in positions:
        xy = np.asarray(xy, float).reshape(-1, 2)
        i, j = _mutual_nearest(xy, sums / np.maximum(counts, 1)[:, None], tolerance)
        sums[j] += xy[i]
        counts[j] += 1
        new = np.ones(len(xy), bool)
        new[i] = False
        sums = np.vstack([sums, xy[new]])
        counts = np.concatenate([counts, np.ones(int(new.sum()))])
    return sums / np.maximum(counts, 1)[:, None]


def match_sources(a, b, tolerance=DEFAULT_TOLERANCE):
    """
    The same sources in two filters: mutual nearest neighbours within ``tolerance``, found
    again after removing the first pass's median offset.

    Parameters
    ----------
    a, b : ndarray (n, 2)
        Source positions in a common tangent plane, mas.
    tolerance : float
        mas.

    Returns
    -------
    ndarray (n_matched, 2)
        Offsets ``b - a`` of the matched sources, mas.
    """
    a, b = np.asarray(a, float).reshape(-1, 2), np.asarray(b, float).reshape(-1, 2)
    i, j = _mutual_nearest(a, b, tolerance)
    if len(i):
        shift = np.median(b[j] - a[i], axis=0)
        i, j = _mutual_nearest(a + shift, b, tolerance)
    return b[j] - a[i]


def robust_offset(offsets):
    """
    The median of per-source offsets and its 1-sigma per axis.

    Parameters
    ----------
    offsets : ndarray (n, 2)
        mas.

    Returns
    -------
    median : ndarray (2,)
        mas.
    err : ndarray (2,)
        ``1.2533 * 1.4826 * MAD / sqrt(n)`` per axis, mas: the standard error of the median
        of ``n`` Gaussian values (``sqrt(pi / 2)`` times that of the mean), with the MAD's
        robust standard deviation, so a few mismatches or odd galaxies do not inflate it.
    """
    d = np.asarray(offsets, float).reshape(-1, 2)
    if not len(d):
        return np.full(2, np.nan), np.full(2, np.nan)
    med = np.median(d, axis=0)
    sigma = 1.4826 * np.median(np.abs(d - med), axis=0)
    return med, np.sqrt(np.pi / 2.0) * sigma / np.sqrt(len(d))


def _wavelength_key(name):
    digits = re.search(r"(\d+)", str(name))
    return (int(digits.group(1)) if digits else 10**9, str(name))


def _module(detector):
    """``nrca1`` -> ``nrca``; the module of a NIRCam detector (its SW and LW share the sky)."""
    return str(detector)[:4]


def _partners(detector, b_detectors):
    """Filter b's detectors that see detector ``detector``'s sky (see the module docstring)."""
    if detector == "all" or detector in b_detectors:
        return [detector] if detector != "all" else sorted(b_detectors)
    same = sorted(d for d in b_detectors if _module(d) == _module(detector))
    return same or sorted(b_detectors)


def cross_filter_offsets(catalogs, tolerance=DEFAULT_TOLERANCE, min_sources=MIN_SOURCES):
    """
    Median offsets between the filters of each visit, per pair and per detector.

    Parameters
    ----------
    catalogs : iterable of dict
        One per aligned image: ``visit``, ``filter``, ``detector`` (str) and ``ra``, ``dec``
        (ndarray, deg: its detections through its aligned WCS, `aligned_sky_positions`).
    tolerance : float
        Match radius, mas (within a filter's images and between filters).
    min_sources : int
        Fewer matched sources: the row's offsets are NaN (its ``n`` is kept).

    Returns
    -------
    `~astropy.table.Table`
        One row per visit, filter pair (``filter_a`` the shorter wavelength) and detector of
        ``filter_a`` (plus ``all``), where at least one source matched: ``detector_b``
        (filter b's detectors matched, ``+``-joined), ``dx_mas`` (east, ``dRA cos(Dec)``),
        ``dy_mas`` (north): the median offset of filter b from filter a, mas; ``offset_mas``
        its length; ``dx_err_mas``, ``dy_err_mas`` their 1-sigma, ``offset_err_mas`` the
        1-sigma per axis of the median (``sqrt((dx_err^2 + dy_err^2) / 2)``); ``n`` the
        matched sources.
    """
    by_visit = {}
    for cat in catalogs:
        ra, dec = np.asarray(cat["ra"], float), np.asarray(cat["dec"], float)
        by_visit.setdefault(str(cat["visit"]), []).append(
            (str(cat["filter"]), str(cat["detector"]), ra, dec))
    rows = []
    for visit in sorted(by_visit):
        items = by_visit[visit]
        filters = sorted({f for f, *_ in items}, key=_wavelength_key)
        if len(filters) < 2:
            continue
        ra_all = np.concatenate([ra for *_, ra, _ in items])
        dec_all = np.concatenate([dec for *_, dec in items])
        if not len(ra_all):
            continue
        ra0, dec0 = float(np.median(ra_all)), float(np.median(dec_all))
        # Per filter and detector: each image's detections in the visit's tangent plane.
        planes = {}
        for f, det, ra, dec in items:
            planes.setdefault(f, {}).setdefault(det, []).append(_tangent(ra, dec, ra0, dec0))
        for ia, fa in enumerate(filters):
            for fb in filters[ia + 1:]:
                for det in [*sorted(planes[fa]), "all"]:
                    dets_a = sorted(planes[fa]) if det == "all" else [det]
                    dets_b = _partners(det, planes[fb])
                    a = merge_detections([xy for d in dets_a for xy in planes[fa][d]], tolerance)
                    b = merge_detections([xy for d in dets_b for xy in planes[fb][d]], tolerance)
                    d = match_sources(a, b, tolerance)
                    if not len(d):
                        continue
                    med, err = robust_offset(d)
                    if len(d) < min_sources:
                        med, err = np.full(2, np.nan), np.full(2, np.nan)
                    rows.append((visit, fa, fb, det, "+".join(dets_b), float(med[0]),
                                 float(med[1]), float(np.hypot(*med)), float(err[0]),
                                 float(err[1]), float(np.sqrt(np.mean(err ** 2))), len(d)))
    names = [n for n, _ in _COLUMNS]
    table = Table(rows=rows or None, names=names, dtype=[t for _, t in _COLUMNS])
    for name in names:
        if name.endswith("_mas"):
            table[name].unit = "mas"
    table.meta.update({"tolerance_mas": float(tolerance), "min_sources": int(min_sources),
                       "offset": "filter_b minus filter_a, east (dRA cos Dec) and north, "
                                 "median over matched sources",
                       "offset_err": "1-sigma per axis of the median: 1.2533 * 1.4826 MAD "
                                     "/ sqrt(n)"})
    return table


def read_aligned_catalogs(out_dir, images):
    """
    What a run left in ``out_dir`` for its aligned images: each image's catalog through its
    aligned WCS.

    Parameters
    ----------
    out_dir : path-like
        The run's output folder: ``<image stem>_cat.ecsv`` and
        ``tweakreg_wcs/<exposure>_tweakreg.asdf`` per image.
    images : iterable of (visit, filter, detector, image file name)

    Returns
    -------
    list of dict
        For `cross_filter_offsets`; images without a catalog, without a model or whose
        model is not COMPLETE (not aligned) are left out.
    """
    from ..detection.catalogs import catalog_path_for
    from ..io.wcs_models import read_wcs_model_file, wcs_model_path

    out_dir = Path(out_dir)
    out = []
    for visit, filt, detector, name in images:
        cat_path = catalog_path_for(name, out_dir)
        model_path = wcs_model_path(out_dir / "tweakreg_wcs", name)
        if not cat_path.is_file() or not model_path.is_file():
            continue
        try:
            saved = read_wcs_model_file(model_path)
            catalog = Table.read(cat_path, format="ascii.ecsv")
            if saved.status != "COMPLETE":
                continue
            ra, dec = aligned_sky_positions(catalog, saved.wcs)
        except (OSError, ValueError):
            continue  # an unreadable output: that image is left out of the comparison
        out.append({"visit": visit, "filter": filt, "detector": detector, "image": name,
                    "ra": ra, "dec": dec})
    return out


def write_survey_crossfilter(out_dir, images, tolerance=DEFAULT_TOLERANCE,
                             min_sources=MIN_SOURCES):
    """
    ``survey_crossfilter.ecsv`` in ``out_dir`` (`cross_filter_offsets` of
    `read_aligned_catalogs`); written also when empty (no visit with two aligned filters).

    Returns
    -------
    `~astropy.table.Table`
    """
    from ..core.fileio import write_ecsv

    table = cross_filter_offsets(read_aligned_catalogs(out_dir, images), tolerance, min_sources)
    write_ecsv(table, Path(out_dir) / "survey_crossfilter.ecsv")
    return table


def worst_offsets(table, visit, filter_name, detector):
    """
    An image's worst cross-filter offset: the largest ``offset_mas`` among ``table``'s rows
    of its visit whose pair includes its filter and whose detectors include its detector.

    Returns
    -------
    offset, err : float
        mas (NaN when no such row has an offset).
    other : str
        The other filter of that row ("" when none).
    """
    best = (float("nan"), float("nan"), "")
    if table is None:
        return best
    for row in table:
        if str(row["visit"]) != visit or str(row["detector"]) == "all":
            continue
        if str(row["filter_a"]) == filter_name and str(row["detector"]) == detector:
            other = str(row["filter_b"])
        elif (str(row["filter_b"]) == filter_name
              and detector in str(row["detector_b"]).split("+")):
            other = str(row["filter_a"])
        else:
            continue
        offset = float(row["offset_mas"])
        if np.isfinite(offset) and not offset <= best[0]:
            best = (offset, float(row["offset_err_mas"]), other)
    return best


def add_worst_offsets(summary, table):
    """
    Add each image's `worst_offsets` to a survey summary (one row per image: ``visit``,
    ``filter``, ``detector``): columns ``xfilter_offset``, ``xfilter_err`` (mas) and
    ``xfilter_with``.
    """
    worst = [worst_offsets(table, str(r["visit"]), str(r["filter"]), str(r["detector"]))
             for r in summary]
    summary["xfilter_offset"] = np.array([w[0] for w in worst], float)
    summary["xfilter_err"] = np.array([w[1] for w in worst], float)
    summary["xfilter_with"] = np.array([w[2] for w in worst], str) if worst else np.zeros(0, str)
    summary["xfilter_offset"].unit = summary["xfilter_err"].unit = "mas"
    return summary


def crossfilter_html(table):
    """The survey index's section: the table of `cross_filter_offsets`, as HTML."""
    if table is None:
        return ""
    out = ["<h2>Cross-filter consistency</h2>"]
    if not len(table):
        out.append("<p id='crossfilter-none'>No visit with two filters aligned: nothing to "
                   "compare.</p>")
        return "\n".join(out)
    out.append("<table id='crossfilter'><tr><th class='text'>visit</th><th class='text'>"
               "filters</th><th class='text'>detector</th><th>east (mas)</th><th>north (mas)"
               "</th><th>offset (mas)</th><th>1-sigma (mas)</th><th>sources</th></tr>")

    def num(value, col=None):
        v = float(value)
        attr = f" data-col='{col}'" if col else ""
        return f"<td{attr} data-value='{v!r}'>{f'{v:.2f}' if np.isfinite(v) else '-'}</td>"

    for row in table:
        det = str(row["detector"])
        if str(row["detector_b"]) not in (det, "") and det != "all":
            det = f"{det} / {row['detector_b']}"
        out.append(f"<tr><td class='text'>{html.escape(str(row['visit']))}</td>"
                   f"<td class='text'>{html.escape(str(row['filter_b']))} - "
                   f"{html.escape(str(row['filter_a']))}</td><td class='text'>"
                   f"{html.escape(det)}</td>{num(row['dx_mas'])}{num(row['dy_mas'])}"
                   f"{num(row['offset_mas'], 'offset')}{num(row['offset_err_mas'], 'offset_err')}"
                   f"<td data-col='n'>{int(row['n'])}</td></tr>")
    out.append(f"</table><p>The same sources in two filters of a visit after alignment (each "
               f"image's catalog through its aligned WCS; a source's detections in several "
               f"dithers counted once; matched within {table.meta.get('tolerance_mas', 0):g} "
               f"mas): the median offset of the second filter from the first, east "
               f"(dRA cos Dec) and north, its length, the 1-sigma per axis of the median "
               f"(1.2533 x robust sigma / sqrt(n)) and the matched sources; '-' with fewer "
               f"than {table.meta.get('min_sources', MIN_SOURCES)} sources. In "
               f"<code>survey_crossfilter.ecsv</code>; each image's worst is in "
               f"<code>survey_summary.ecsv</code> (xfilter_offset).</p>")
    return "\n".join(out)
