"""Parallel and distributed runs: same results as serial, progress, interrupts."""

import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
from conftest import clean_env, module_tmp

from ceers_steps.core.engine import effective_jobs, run_tasks


def _square(x):
    time.sleep(0.01 * (5 - x % 5))  # finish out of order
    return x * x


def _fail_on_three(x):
    if x == 3:
        raise ValueError("task 3 is bad")
    return x


def _die_on_two(x):
    if x == 2:
        os._exit(1)  # a killed worker
    return x


def test_results_in_task_order_serial_and_parallel():
    tasks = [(i,) for i in range(12)]
    assert run_tasks(_square, tasks, n_jobs=1) == [i * i for i in range(12)]
    assert run_tasks(_square, tasks, n_jobs=2) == [i * i for i in range(12)]


def test_effective_jobs():
    cores = effective_jobs(None)
    assert cores >= 1 and effective_jobs(0) == cores
    assert effective_jobs(3, n_tasks=2) == 2
    assert effective_jobs(-1) == cores
    assert effective_jobs(-cores - 5) == 1


def test_task_error_and_dead_worker_raise():
    with pytest.raises(ValueError, match="task 3 is bad"):
        run_tasks(_fail_on_three, [(i,) for i in range(6)], n_jobs=2)
    with pytest.raises(BrokenProcessPool):
        run_tasks(_die_on_two, [(i,) for i in range(6)], n_jobs=2)


def test_progress_is_logged_with_counts_and_time(caplog):
    with caplog.at_level(logging.INFO, logger="ceers_steps"):
        run_tasks(_square, [(i,) for i in range(8)], n_jobs=2, label="Detection",
                  progress_interval=0.0, names=[f"img{i}" for i in range(8)])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Detection:")]
    assert "Detection: 8 tasks on 2 processes" in lines[0]
    assert any("8/8 done" in line and "s elapsed" in line for line in lines)
    # without a zero interval only the start and the end are logged for a quick run
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ceers_steps"):
        run_tasks(_square, [(i,) for i in range(8)], n_jobs=2, label="Quick")
    # (stpipe 0.7 echoes records under its own logger name: count distinct messages)
    assert len({r.getMessage() for r in caplog.records if r.getMessage().startswith("Quick:")}) == 2


def _wcs_values(models):
    grid = np.meshgrid(np.linspace(0, 1023, 8), np.linspace(0, 1023, 8))
    return [np.array(m.meta.wcs(*grid)) for m in models]


_OPENED = []  # written files opened by a test, closed when it ends


@pytest.fixture(autouse=True)
def _close_opened():
    """An open handle collected during a later test would be that test's (unraisable) warning."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def _run_align(paths, refcat, out, **kwargs):
    from ceers_steps import CeersAlignPipeline
    from ceers_steps.io.inputs import library_models

    out.mkdir(exist_ok=True)
    steps = {"tweakreg": {"abs_refcat": str(refcat), **kwargs.pop("tweakreg", {})}}
    pipe = CeersAlignPipeline(steps=steps, output_dir=str(out), save_results=True, **kwargs)
    result = pipe.run([str(p) for p in paths])
    models = library_models(result)
    _OPENED.extend(models)
    return models, pipe.results


@pytest.mark.parametrize("abs_group", ["joint", "detector"])
def test_parallel_run_identical_to_serial(builtin_files, tmp_path, abs_group):
    """Detection, group fits and writing on 2 processes give exactly the serial results."""
    d = builtin_files
    serial, serial_rows = _run_align(d["paths"], d["refcat"], tmp_path / "serial", n_jobs=1,
                                     tweakreg={"abs_group": abs_group})
    parallel, parallel_rows = _run_align(d["paths"], d["refcat"], tmp_path / "parallel", n_jobs=2,
                                         tweakreg={"abs_group": abs_group})
    for a, b in zip(_wcs_values(serial), _wcs_values(parallel), strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(serial_rows["status"]) == list(parallel_rows["status"])
    np.testing.assert_array_equal(serial_rows["rmse"], parallel_rows["rmse"])
    for name in ("serial", "parallel"):
        cats = sorted(p.name for p in (tmp_path / name).glob("*_cat.ecsv"))
        assert len(cats) == len(d["paths"])
    for cat in (tmp_path / "serial").glob("*_cat.ecsv"):
        assert cat.read_text() == (tmp_path / "parallel" / cat.name).read_text()


@pytest.fixture(scope="module")
def visit24(request, tmp_path_factory):
    """24 images (8 SW detectors x 3 dithers, 1024x1024, built-in truth) on disk."""
    from ceers_steps.synthetic.visits import SW_DETECTORS, make_visit, write_visit

    visit = make_visit(detectors=SW_DETECTORS, n_dithers=3, shape=(1024, 1024), noise=0.03,
                       use_real=False, seed=2)
    directory = module_tmp(request, tmp_path_factory, "visit24")
    asn, refcat, paths = write_visit(visit, directory)
    return {"visit": visit, "asn": asn, "refcat": refcat, "paths": paths}


# dask warns when creating its scratch folders takes over a second on a busy machine; with
# filterwarnings=error that warning would abort the cluster start. It says nothing about our code.
@pytest.mark.filterwarnings("ignore:Creating scratch directories is taking:UserWarning")
def test_dask_local_cluster_gives_the_local_results(visit24, tmp_path):
    """dask.distributed with a LocalCluster: the same WCSs as the local run, 24 images."""
    pytest.importorskip("dask.distributed")
    from conftest import accuracy, local_cluster

    local, local_rows = _run_align(visit24["paths"], visit24["refcat"], tmp_path / "local",
                                   n_jobs=2)
    with local_cluster(tmp_path) as cluster:
        remote, remote_rows = _run_align(visit24["paths"], visit24["refcat"], tmp_path / "dask",
                                         scheduler=cluster.scheduler_address)
    assert len(remote) == 24
    for a, b in zip(_wcs_values(local), _wcs_values(remote), strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(local_rows["status"]) == list(remote_rows["status"])
    assert accuracy(remote, visit24["visit"])[0] < 3.0


def test_no_dask_import_without_a_scheduler(builtin_files, tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import sys, jwst.assign_wcs.util; "
                            "print('dask' in sys.modules)"], env=clean_env(), capture_output=True,
                           text=True, timeout=600)
    if probe.stdout.strip() == "True":
        pytest.skip("this jwst imports dask itself (jwst.assign_wcs), which the steps use")
    code = (
        "import sys\n"
        "from ceers_steps import CeersAlignPipeline\n"
        f"CeersAlignPipeline.call({[str(p) for p in builtin_files['paths'][:3]]!r}, n_jobs=2,\n"
        f"    output_dir={str(tmp_path)!r}, steps={{'tweakreg': {{'abs_refcat': ''}}}})\n"
        "assert not [m for m in sys.modules if m == 'dask' or m.startswith('dask.')], 'dask imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_ctrl_c_leaves_no_half_written_output(visit24, tmp_path):
    """SIGINT while images are being written: every file present is complete, no temp left."""
    from ceers_steps.core.compat import datamodels

    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "strun"), "ceers_align", str(visit24["asn"]),
           f"--steps.tweakreg.abs_refcat={visit24['refcat']}", f"--output_dir={out}"]
    log = tmp_path / "run.log"
    with open(log, "w") as log_file:  # a file, not a pipe: a full pipe would block the run
        # start_new_session: its own process group, as a shell job. The child gets SIGINT's
        # default disposition back, as a terminal's job would: a pytest started under nohup or
        # with '&' passes SIGINT on ignored, and Python keeps an ignored SIGINT ignored.
        proc = subprocess.Popen(cmd, env=clean_env(), stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 300
        while (time.time() < deadline and proc.poll() is None
               and not list(out.glob("*_tweakreg.fits"))):
            time.sleep(0.02)
        assert list(out.glob("*_tweakreg.fits")), f"no output appeared:\n{log.read_text()[-2000:]}"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: to the whole process group
        proc.wait(timeout=120)
    assert proc.returncode != 0
    written = sorted(out.glob("*_tweakreg.fits"))
    assert 0 < len(written) < 24, "the interrupt came too late to test anything"
    for path in written:
        with datamodels.open(path) as m:
            assert m.data.shape == (1024, 1024)
            assert m.meta.cal_step.tweakreg == "COMPLETE"
    for cat in out.glob("*_cat.ecsv"):
        assert cat.read_text().rstrip().count("\n") > 10
    assert not [p for p in out.rglob("*") if ".part" in p.name]
