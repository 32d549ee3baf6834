"""
Independent group fits run through a caller's runner: the images made picklable
for worker processes, and the fitted WCSs copied back.
"""

from ..core.engine import run_tasks
from .images import AlignImage, ImageHeader

__all__ = []


def _serial(func, tasks, label="tasks", names=None):
    """The runner when none is given: every task in this process, in order."""
    return run_tasks(func, tasks, n_jobs=1, label=label, names=names)


def _portable(images):
    """What a group fit needs of its images, picklable for worker processes."""
    return [(im.name, ImageHeader.from_model(im.model), im.catalog, im.key, dict(im.status))
            for im in images]


def _unpack(portable):
    return [AlignImage(name=name, model=header, catalog=catalog, key=key, status=status)
            for name, header, catalog, key, status in portable]


def _run_groups(task, images, groups, runner, label, extra=lambda idx: ()):
    """
    Run one independent group fit ``task(portable images, *extra(idx))`` per
    ``(name, indices, params)`` through ``runner`` (serially when None) and copy
    the fitted WCSs back onto ``images``.
    """
    runner = runner or _serial
    args = [(_portable([images[i] for i in idx]), params, name, *extra(idx))
            for name, idx, params in groups]
    results = runner(task, args, label=label, names=[name for name, _, _ in groups])
    rows = []
    for (_, idx, _), (group_rows, states) in zip(groups, results, strict=True):
        for i, (wcs, status, fit_info) in zip(idx, states, strict=True):
            if wcs is not images[i].model.meta.wcs:
                images[i].set_wcs(wcs)
            images[i].status.update(status)
            images[i].fit_info.update(fit_info)
        rows += group_rows
    return rows
