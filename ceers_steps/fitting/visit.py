"""
One visit and filter aligned: relative per group, then absolute (`align_visit`).

Independent group fits go through a ``runner`` the caller passes (the stages give
the step's worker pool); without one they run here, one after the other.
"""

from ..core.logs import get_logger
from ..io.grouping import group_images
from .absolute import absolute_align
from .images import catalog_problem
from .parameters import AbsoluteParameters, RelativeParameters
from .relative import _relative_group_task, relative_joint
from .runner import _run_groups

__all__ = ["align_visit"]

log = get_logger(__name__)


def align_visit(images, refcat=None, rel=None, abs_=None, group_by="detector", runner=None,
                info=None, shared=None):
    """
    Align all images of one visit and filter: relative per group, then absolute.

    With ``abs_.group == "joint"`` the absolute stage is one joint fit that also does
    the relative alignment; without a reference catalog, ``group_by="detector"`` and
    a ``shift`` relative geometry, the relative alignment is the joint model's
    (`relative_joint`); otherwise tweakwcs' relative fit per group.

    Parameters
    ----------
    images : list of AlignImage
    refcat : Table or None
        Absolute reference catalog (``RA``, ``DEC``); None skips the absolute stage.
    rel : RelativeParameters
    abs_ : AbsoluteParameters
    group_by : {"detector", "exposure", "all"}
        Relative alignment groups.
    runner : callable, optional
        Runs the independent group fits (relative runs, absolute per-detector fits)
        in parallel; see `absolute_align`. Results do not depend on it.
    info : dict, optional
        Filled with the joint fit's ``terms`` when one succeeded (the visit terms with
        their uncertainties, `ceers_steps.fitting.jointfit.JointFitResult.terms`).
    shared : dict, optional
        Detector -> (offset, covariance) in the detector's pixel axes, arcsec: offsets
        measured over several visits (`ceers_steps.fitting.jointfit.combine_detector_offsets`),
        fixed in the joint fit.

    With ``abs_group="joint"`` and a reference catalog, ``images`` may hold several
    filters of one visit (short and long wavelength of the same exposures): they are
    fitted together, sharing the common and dither terms.

    Returns
    -------
    rows : list of dict
        Result rows, relative first.
    """
    rel = rel or RelativeParameters()
    abs_ = abs_ or AbsoluteParameters()
    for im in images:
        im.original_wcs = im.model.meta.wcs
        problem = catalog_problem(im)
        if problem:
            log.warning("%s: %s", im.name, problem)
    keys = [im.key for im in images]
    runs, group_ids = group_images(keys, group_by)
    visit_name = images[0].key.visit_filter
    rows = []
    joint = abs_.group == "joint"
    if joint and refcat is None and group_by == "detector" and rel.fitgeometry == "shift":
        rows += relative_joint(images, rel, visit_name, runs, info=info)
    elif refcat is None or not joint:
        run_rows = _run_groups(_relative_group_task, images,
                               [(name, idx, rel) for name, idx in runs.items()], runner,
                               "Relative fits", extra=lambda idx: ([group_ids[i] for i in idx],))
        index = {im.name: i for i, im in enumerate(images)}
        for row in run_rows:
            images[index[row["image"]]].status["relative_failed"] = row["status"].startswith("FAILED")
        rows += run_rows
    if refcat is not None:
        detector_groups, _ = group_images(keys, "detector")
        rows += absolute_align(images, refcat, abs_, detector_groups, visit_name, runner=runner,
                               info=info, shared=shared)
    return rows
