"""
What a run leaves in its output folder to say what it did, and who is writing there.

- A **manifest** per visit and filter, ``<visit>_<filter>_manifest.json``, written last
  (after its results tables, WCS models and report), completely or not at all: the
  group's inputs (path, size, modification time), the parameters that decide its result,
  and its outcome. ``ceers-align --all --resume`` leaves a group alone only when its
  manifest says COMPLETE for the same inputs and the same parameters (`manifest_matches`);
  a FAILED group, a group whose inputs or parameters changed, and a group without a
  manifest (killed before it finished: its manifest is removed before it starts) are
  redone.
- A **lock** per output folder, ``.ceers-steps.lock`` (`output_lock`): one run writes into
  one folder at a time. A second run refuses at once, naming the folder and the pid of
  the run that holds it (refusing rather than waiting: a batch script learns at once, and
  nothing waits in silence). A lock whose process is no longer alive (killed) is stale:
  it is removed with a warning and the run goes on.
- `remove_partial_files`: the hidden ``.<name>.part`` folders that a killed run leaves
  beside the files it was writing (`ceers_steps.core.fileio.atomic_output`).
"""

import errno
import json
import logging
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..core.fileio import atomic_output

__all__ = ["LOCK_NAME", "OutputFolderInUseError", "input_record", "manifest_matches",
           "manifest_path", "output_lock", "parameters_record", "read_manifest",
           "remove_manifest", "remove_partial_files", "write_manifest"]

log = logging.getLogger("ceers_steps.io.runstate")

LOCK_NAME = ".ceers-steps.lock"


# --- manifests ------------------------------------------------------------------------------

def manifest_path(out_dir, visit_filter):
    """``<out_dir>/<visit>_<filter>_manifest.json``."""
    return Path(out_dir) / f"{visit_filter}_manifest.json"


def input_record(paths):
    """
    Path (resolved), size (bytes) and modification time (ns) of every input, sorted:
    what makes two runs' inputs the same. A missing file has size and time None.
    """
    out = []
    for path in paths:
        path = Path(path)
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size = mtime = None
        out.append({"path": str(path.resolve()), "size": size, "mtime_ns": mtime})
    return sorted(out, key=lambda r: r["path"])


def parameters_record(parameters):
    """``parameters`` as plain JSON values (numbers, strings, lists, dicts), keys sorted."""
    return json.loads(json.dumps(parameters, sort_keys=True, default=str))


def write_manifest(out_dir, visit_filter, status, inputs, parameters, **extra):
    """
    Write a group's manifest (last, completely or not at all).

    Parameters
    ----------
    out_dir : Path
    visit_filter : str
    status : str
        COMPLETE (every image aligned) or FAILED.
    inputs : list of Path
        Every file the result depends on: the images and the reference catalogs.
    parameters : dict
        The parameters that decide the result (step parameters, fit options).
    **extra
        Other fields (image counts, the parameter file's name).

    Returns
    -------
    Path
    """
    from .. import __version__

    record = {"visit_filter": visit_filter, "status": status,
              "inputs": input_record(inputs), "parameters": parameters_record(parameters),
              "ceers_steps": __version__,
              "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    path = manifest_path(out_dir, visit_filter)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    return path


def read_manifest(out_dir, visit_filter):
    """A group's manifest as a dict, or None when absent or unreadable."""
    try:
        record = json.loads(manifest_path(out_dir, visit_filter).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def remove_manifest(out_dir, visit_filter):
    """Before a group is (re)done: until its new manifest is written it is not complete."""
    manifest_path(out_dir, visit_filter).unlink(missing_ok=True)


def manifest_matches(out_dir, visit_filter, inputs, parameters):
    """
    Whether the group's manifest says COMPLETE for these inputs and parameters.

    Returns
    -------
    ok : bool
    why : str
        When not: why the group is redone (for the log).
    """
    record = read_manifest(out_dir, visit_filter)
    if record is None:
        return False, "no manifest (never finished)"
    if record.get("status") != "COMPLETE":
        return False, f"its last run was {record.get('status')}"
    if record.get("inputs") != input_record(inputs):
        return False, "its inputs changed"
    if record.get("parameters") != parameters_record(parameters):
        return False, "its parameters changed"
    return True, ""


# --- the output folder's lock ---------------------------------------------------------------

class OutputFolderInUseError(OSError):
    """Another live run holds the output folder's lock."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read_lock(path):
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def output_lock(out_dir, command=None):
    """
    Hold ``<out_dir>/.ceers-steps.lock`` while a run writes into ``out_dir``.

    Creates ``out_dir`` when needed. Yields a dict with ``created``: whether this call
    created the folder (it is removed again on release when the run left nothing in it
    but its ``*.log``).

    Raises
    ------
    OutputFolderInUseError
        When a live process holds the lock, naming the folder, its pid and command.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, f"output folder {out_dir} is a file") from None
    path = out_dir / LOCK_NAME
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host,
              "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            pid = holder.get("pid")
            if not isinstance(pid, int):
                # Being written this instant, or not ours: look again once it is complete.
                time.sleep(0.2)
                holder = _read_lock(path)
                pid = holder.get("pid")
            same_host = holder.get("host", host) == host
            if isinstance(pid, int) and same_host and not _alive(pid):
                log.warning("%s: removing a stale lock of process %d (%s), which is no longer "
                            "running", out_dir, pid, holder.get("command", "?"))
                path.unlink(missing_ok=True)
                continue
            where = "" if same_host else f" on {holder.get('host')}"
            raise OutputFolderInUseError(
                f"output folder {out_dir} is in use by another run (pid {pid}{where}, started "
                f"{holder.get('started', '?')}: {holder.get('command', '?')}); wait for it to "
                "finish or choose another --output-dir (if that run is gone, remove "
                f"{path})") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record))
        break
    else:
        raise OutputFolderInUseError(f"output folder {out_dir}: cannot take its lock {path}")
    try:
        yield {"created": created, "path": path}
    finally:
        if _read_lock(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        if created:
            # A folder made for this run that holds nothing but its command log (the run
            # failed before writing anything; the console said why) is removed.
            left = list(out_dir.iterdir()) if out_dir.is_dir() else []
            if all(p.is_file() and p.suffix == ".log" for p in left):
                for p in left:
                    p.unlink(missing_ok=True)
                try:
                    out_dir.rmdir()
                except OSError:
                    pass


def remove_partial_files(out_dir):
    """
    Remove the ``.<name>.part`` folders a killed run left in ``out_dir`` (and below).
    Only under the folder's lock: no other run is writing them.

    Returns
    -------
    list of Path
        The folders removed.
    """
    removed = []
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return removed
    for path in sorted(out_dir.rglob(".*.part")):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
