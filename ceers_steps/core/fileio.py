"""Writing files completely or not at all."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "check_outputs", "fits_safe_path", "inside_folder", "refuse_existing",
           "write_association", "write_ecsv"]


def _fits_printable(text):
    return all(32 <= ord(c) <= 126 for c in text)


def fits_safe_path(path, base_dirs=()):
    """
    A way to write ``path`` in a FITS header value (printable ASCII only).

    The absolute path when it is printable ASCII; otherwise the path relative to
    the first of ``base_dirs`` (the folder of the file that records it, the
    working directory) that gives a printable one; otherwise None: the path
    cannot be stored in FITS and the caller keeps it where it can (an
    association, the results tables).
    """
    text = str(path)
    if _fits_printable(text):
        return text
    for base in base_dirs:
        try:
            rel = os.path.relpath(Path(path).resolve(), Path(base).resolve())
        except ValueError:  # another drive (Windows)
            continue
        if _fits_printable(rel):
            return rel
    return None


def inside_folder(path, folder):
    """
    ``path``, proven to stay inside ``folder`` (an output folder) once resolved.

    Output names carry header values (visit, filter, detector); those are checked
    where they are read (`ceers_steps.io.grouping.name_part`), and every writer checks
    the path it made here as well, so no value can lead a write elsewhere. Both
    paths are resolved (``..`` and symbolic links) before they are compared.

    Raises
    ------
    ValueError
        Naming the path and the folder.
    """
    path, folder = Path(path), Path(folder)
    target = (folder / path if not path.is_absolute() else path).resolve()
    root = folder.resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{path}: refusing to write outside the output folder {folder} "
                         f"(it resolves to {target})")
    return path


@contextmanager
def atomic_output(path):
    """
    Yield a temporary path for writing ``path``; move it into place only on success.

    The temporary file has the final file name, inside a hidden folder beside
    the target (same filesystem, so the final move is atomic). Writers that
    record the name they write to (stdatamodels' ``meta.filename``) or choose a
    format from the extension therefore behave as if writing ``path``. An
    interrupted or failed write leaves nothing under the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        tmp = tmpdir / path.name
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as exc:
            # Disk full, quota, read-only: say which file could not be written.
            reason = exc.strerror or str(exc)
            if exc.errno is None:  # a short write (numpy, astropy): no errno to say why
                raise OSError(f"cannot write {path}: {reason} (disk full?)") from exc
            raise OSError(exc.errno, f"cannot write {path}: {reason}") from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _file_keys(path):
    """What identifies a file: its resolved path and, when it exists, its device and inode."""
    path = Path(path)
    keys = [("path", str(path.resolve()))]
    try:
        st = path.stat()
        keys.append(("inode", st.st_dev, st.st_ino))
    except OSError:
        pass
    return keys


def check_outputs(outputs, inputs, overwrite=True):
    """
    Refuse, before anything is written, outputs that would overwrite an input or each other
    (or, without ``overwrite``, any existing file).

    Parameters
    ----------
    outputs : list of (path, str)
        Each output file and the input it is made from (for messages).
    inputs : iterable of path
        Every input file of the run (None entries are ignored).
    overwrite : bool
        Whether outputs may replace existing files (never the inputs).

    Raises
    ------
    ValueError
        Naming the output and the input it would overwrite, or the two inputs that
        would be written to the same output.
    FileExistsError
        Without ``overwrite``: naming the first output that exists already.
    """
    known = {}
    for path in inputs:
        if path is not None:
            for key in _file_keys(path):
                known[key] = Path(path)
    seen = {}
    for out, source in outputs:
        keys = _file_keys(out)
        for key in keys:
            if key in known:
                raise ValueError(f"{out}: this output would overwrite the input {known[key]}; "
                                 "choose another output folder or suffix")
        if keys[0] in seen:
            raise ValueError(f"{seen[keys[0]]} and {source} would both be written to {out}; "
                             "rename one or align them in separate runs")
        seen[keys[0]] = source
    if not overwrite:
        existing = [Path(out) for out, _ in outputs if os.path.lexists(out)]
        if existing:
            raise FileExistsError(refuse_existing(existing))


def refuse_existing(existing, flag="--overwrite (overwrite=True)", alternative=""):
    """The message for outputs that exist already: the first named, the others counted."""
    more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
    return (f"{existing[0]} exists already{more}: not written over; add {flag} to replace "
            f"it{alternative}, or choose another output folder")


def write_ecsv(table, path):
    """Write an astropy table as ECSV, completely or not at all; return the path."""
    with atomic_output(path) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    return Path(path)


def write_association(path, product_name, expnames, **fields):
    """
    Write a level-3 image association with one product, completely or not at all.

    Parameters
    ----------
    path : Path
    product_name : str
    expnames : list of str
        Member file names (science exposures), as they should appear in the file.
    **fields
        Top-level keys (``asn_id``, ``asn_pool``, ``asn_rule``, ``program``) overriding
        the defaults.
    """
    import json

    asn = {"asn_type": "image3", "asn_rule": "candidate_Asn_Lv3Image", "asn_id": "a3001",
           "program": "01345", "asn_pool": "ceers_steps", **fields,
           "products": [{"name": product_name,
                         "members": [{"expname": str(e), "exptype": "science"} for e in expnames]}]}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(asn, indent=2))
    return Path(path)
