"""Absolute reference catalogs: read one or several, cut, merge, propagate to the images' epoch.

A reference catalog is any table `astropy.table.Table.read` reads with RA/Dec
(any case; degrees or sexagesimal) or a ``sky_centroid`` column. Gaia-like
columns are used when present (any case):

=================================  ==============================================
``pmra``, ``pmdec``                proper motion, mas/yr (``pmra`` is mu_alpha*
                                   cos(dec), Gaia's convention); converted when the
                                   column carries a unit
``parallax``                       mas (only used to place the source in space)
``ref_epoch`` or ``epoch``         epoch of the positions: Julian year (2016.0) or
                                   any string `astropy.time.Time` reads; else the
                                   ``epoch`` argument (step: ``abs_refcat_epoch``)
``ra_error``, ``dec_error``        position errors, mas (Gaia: ra_error is of
                                   alpha*)
``pmra_error``, ``pmdec_error``    proper-motion errors, mas/yr
=================================  ==============================================

`read_reference_catalogs` reads a list of files in priority order, applies
magnitude and quality cuts on any named column, merges sources found in more
than one catalog (closer than ``merge_radius``: the row with the smaller
position error is kept, else the one of the earlier catalog) and reports how
many sources each catalog gave. `at_epoch` moves every source with a proper
motion to an epoch with `astropy.coordinates.SkyCoord.apply_space_motion` and
gives each source its position error at that epoch (``ERR``, mas per axis:
position and proper-motion errors propagated linearly, without correlations).
Sources of a catalog with proper motions whose own proper motion is missing
(Gaia's two-parameter solutions) are kept with an error grown by an assumed
proper-motion dispersion times the epoch difference (``pm_missing="keep"``,
the default: such sources are usually faint, distant stars and galaxies) or
dropped (``"drop"``). Catalogs without proper-motion columns (galaxy
catalogs such as CEERS' HST F160W one) are taken as fixed.
"""

from .epoch import at_epoch, image_epoch, julian_year
from .merge import collapse_near_duplicates, merge_catalogs
from .named import NAMED_CATALOGS, RefcatUnavailableError, fetch_named_catalog, named_catalog, refcat_label
from .read import (
    DUPLICATE_RADIUS_MAS,
    parse_cuts,
    read_refcat,
    read_refcat_file,
    read_reference_catalogs,
    refcat_paths,
)

__all__ = [
    "DUPLICATE_RADIUS_MAS",
    "NAMED_CATALOGS",
    "RefcatUnavailableError",
    "at_epoch",
    "collapse_near_duplicates",
    "fetch_named_catalog",
    "image_epoch",
    "julian_year",
    "merge_catalogs",
    "parse_cuts",
    "read_reference_catalogs",
    "read_refcat",
    "named_catalog",
    "read_refcat_file",
    "refcat_label",
    "refcat_paths",
]

