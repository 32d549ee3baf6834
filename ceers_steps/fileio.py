"""Writing files completely or not at all."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output"]


@contextmanager
def atomic_output(path):
    """
    Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    An interrupted or failed write leaves no partial file under the final name.
    The temporary name keeps the final suffix, so writers that pick a format from
    the extension (astropy, stdatamodels, asdf) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
