"""The package's logger names, and the error that ends a run in which every image failed."""

import logging

__all__ = ["LOGGER_NAME", "AllImagesFailedError", "get_logger"]

#: Every logger of the package is under this name; the steps register it with stpipe.
LOGGER_NAME = "ceers_steps"


class AllImagesFailedError(RuntimeError):
    """Every image of a run failed: the run itself fails (one image's failure does not)."""


def get_logger(name):
    """Return the package logger for module ``name``."""
    return logging.getLogger(name if name.startswith(LOGGER_NAME) else f"{LOGGER_NAME}.{name}")
