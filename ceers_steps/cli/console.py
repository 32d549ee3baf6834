"""What the console commands show, and the log file each one writes.

Every console command (``ceers-demo``, ``ceers-align``, ``ceers-apply-wcs``,
``ceers-convert-cfg``) prints warnings and its own summary on the console, and writes
the full log (INFO and up, every step's parameters) to a file in its output folder;
``--verbose`` shows that log on the console too. This holds on every supported stpipe:
older ones (jwst < 1.17) put a console handler on the ``stpipe`` logger when imported,
newer ones add one in ``Step.call`` (from 0.11 unless ``configure_log=False``), so the
commands run step *instances* (`run_step`), never ``Step.call``, and set the handlers of
the loggers they show themselves for the duration of the command.
"""

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOG_FORMAT", "add_verbose", "command_logging", "run_step"]

#: The log file's line format (stpipe's own).
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"

#: The loggers whose records the commands route (besides those stpipe routes for a step).
_LOGGERS = ("stpipe", "jwst", "ceers_steps", "tweakwcs", "stcal", "stdatamodels", "gwcs",
            "py.warnings")


def add_verbose(parser):
    """``--verbose``: the full log on the console too (it is always in the log file)."""
    parser.add_argument("--verbose", action="store_true",
                        help="show the full log on the console too (it is always written to "
                             "the log file in the output folder)")


def _logger_names():
    from ..core.compat import stpipe_logger_names
    from ..core.logs import LOGGER_NAME

    # CRDS keeps its own console handler (and is never asked by this package).
    return sorted((set(_LOGGERS) | set(stpipe_logger_names(LOGGER_NAME))) - {"CRDS"})


def _is_console(handler):
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


@contextmanager
def command_logging(log_path, verbose=False):
    """
    Route the steps' log records for a console command.

    Parameters
    ----------
    log_path : str or Path
        The log file (INFO and up), written anew; its folder is made if needed.
    verbose : bool
        Show INFO records on the console (stderr) too; otherwise WARNING and up only.

    Yields
    ------
    Path
        The log file.

    Notes
    -----
    Console handlers found on the routed loggers (stpipe < 0.8 adds one to ``stpipe`` at
    import) are set aside for the block, and every logger's level, propagation and
    handlers are restored afterwards: a command may run inside a larger program (tests).
    A folder made for the log that holds nothing else at the end (the run failed before
    writing anything) is removed with the log.
    """
    import stpipe  # noqa: F401 - older versions set their handlers up on import

    from ..core import compat  # noqa: F401 - jwst < 1.16 reconfigures logging on its first import

    log_path = Path(log_path)
    made = [] if log_path.parent.exists() else [log_path.parent]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_path, "w", "utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter(LOG_FORMAT if verbose else
                                           "%(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in _logger_names():
        logger = logging.getLogger(name)
        aside = [h for h in logger.handlers if _is_console(h)]
        saved.append((logger, logger.level, logger.propagate, aside))
        for handler in aside:
            logger.removeHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(file_handler)
        logger.addHandler(console)
    try:
        yield log_path
    finally:
        for logger, level, propagate, aside in saved:
            logger.removeHandler(file_handler)
            logger.removeHandler(console)
            for handler in aside:
                logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        file_handler.close()
        # A run that wrote nothing else (it failed first; the console said why) leaves no
        # folder made only for its log.
        if made and [p.name for p in made[0].iterdir()] == [log_path.name]:
            log_path.unlink()
            made[0].rmdir()


def run_step(step_class, *args, **parameters):
    """
    Run a step as ``step_class.call(*args, **parameters)`` does for this package's steps
    (they read no CRDS parameter files), without ``call``'s logging setup.
    """
    return step_class(**parameters).run(*args)
