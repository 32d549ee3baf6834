"""Shared fixtures. Test data are made on the fly with the stack under test."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ceers_steps.synthetic import ceers_data_dir


@pytest.fixture(scope="session")
def ceers_dir():
    """The real CEERS data folder; tests that need it skip when it is absent."""
    path = ceers_data_dir()
    if path is None:
        pytest.skip("real CEERS data not found: set CEERS_DATA_DIR or provide ../shared/ceers")
    return path


@pytest.fixture(scope="session")
def small_visit_dir(tmp_path_factory):
    """A small synthetic visit on disk: 2 detectors x 2 dithers, 1024x1024, built-in truth."""
    from ceers_steps.synthetic import make_visit, write_visit

    visit = make_visit(detectors=("nrca1", "nrcb4"), n_dithers=2, shape=(1024, 1024),
                       noise=0.02, use_real=False, seed=11)
    directory = tmp_path_factory.mktemp("small_visit")
    asn, refcat, paths = write_visit(visit, directory)
    return {"visit": visit, "dir": directory, "asn": asn, "refcat": refcat, "paths": paths}


def file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def clean_env():
    """An environment with no CRDS_* or STPIPE_* variables (and no proxies)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CRDS", "STPIPE")) and "proxy" not in k.lower()}
    return env


def run_cli(args, cwd, timeout=600):
    """Run a console script of the current environment with a clean environment."""
    exe = Path(sys.executable).parent / args[0]
    cmd = [str(exe) if exe.exists() else shutil.which(args[0]), *args[1:]]
    return subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)
