"""Runs that lose their main process, are interrupted, or whose Dask scheduler has no worker.

Every run here is a subprocess (or a dask scheduler/worker subprocess) with bounded waits;
whatever a test started is killed by pid when it ends, whatever happened.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clean_env

# A task that marks its start (with its process id) and then works for a while.
TASKS_MODULE = '''
import os, time
from pathlib import Path


def marked(directory, i, seconds):
    Path(directory, f"start-{i}-{os.getpid()}").write_text("")
    time.sleep(seconds)
    return i
'''


def _alive(pid):
    """A process that exists and is not a zombie (a container's init may never reap one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_for(predicate, seconds, step=0.02):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _starts(directory):
    """(task, worker pid) of every task that started."""
    return sorted((int(p.name.split("-")[1]), int(p.name.split("-")[2]))
                  for p in Path(directory).glob("start-*"))


def _run_script(tmp_path, body, env=None):
    """Start a python process running ``body`` with the task module importable (own session)."""
    (tmp_path / "marktasks.py").write_text(TASKS_MODULE)
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "run.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
                      f"from marktasks import marked\nMARKS = {str(marks)!r}\n" + body)
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, str(script)], env={**clean_env(), **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log.close()
    return proc, marks


#: Eight marked tasks of ``seconds`` each on a local pool of two workers.
_EIGHT_TASKS = ("from ceers_steps.core.engine import run_tasks\n"
                "run_tasks(marked, [(MARKS, i, {seconds}) for i in range(8)], n_jobs=2)\n")


def _two_started(tmp_path, proc, marks):
    """Wait until the script's first two tasks run (the main process alive); their pids."""
    assert _wait_for(lambda: len(_starts(marks)) >= 2 or proc.poll() is not None, 120), \
        "the tasks never started"
    assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
    return sorted({pid for _, pid in _starts(marks)})


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@needs_proc
def test_kill_9_of_the_main_process_stops_local_workers_promptly(tmp_path):
    """kill -9 of the main process: its workers stop within ~1 s and start no queued task."""
    proc, marks = _run_script(tmp_path, _EIGHT_TASKS.format(seconds=4.0))
    workers = []
    try:
        workers = _two_started(tmp_path, proc, marks)
        assert len(workers) == 2
        proc.kill()
        proc.wait(timeout=30)
        killed = time.monotonic()
        gone = _wait_for(lambda: not any(_alive(pid) for pid in workers), 10)
        took = time.monotonic() - killed
        assert gone and took < 2.0, f"workers still alive {took:.1f} s after the main process died"
        # the queued tasks (the pool hands one more than it has workers) never start
        time.sleep(0.5)
        assert [task for task, _ in _starts(marks)] == [0, 1]
    finally:
        _kill([proc.pid, *workers])
        proc.wait(timeout=30)


@needs_proc
def test_ctrl_c_starts_no_queued_task_on_the_local_pool(tmp_path):
    """Ctrl-C: the running tasks end, no queued task starts (not even one queued to a worker)."""
    proc, marks = _run_script(tmp_path, _EIGHT_TASKS.format(seconds=1.5))
    workers = []
    try:
        workers = _two_started(tmp_path, proc, marks)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: to the whole process group
        proc.wait(timeout=60)
        assert proc.returncode != 0
        assert "KeyboardInterrupt" in (tmp_path / "run.log").read_text()
        assert [task for task, _ in _starts(marks)] == [0, 1]
        assert _wait_for(lambda: not any(_alive(pid) for pid in workers), 10)
    finally:
        _kill([proc.pid, *workers])
        proc.wait(timeout=30)


@pytest.fixture
def dask_scheduler(tmp_path):
    """A dask scheduler subprocess on a free port; yields (address, start_worker)."""
    pytest.importorskip("dask.distributed")
    started = []
    sched_file = tmp_path / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    env = {**clean_env(), "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), clean_env().get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    logs = open(tmp_path / "dask.log", "w")
    started.append(subprocess.Popen(
        [str(bin_dir / "dask"), "scheduler", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(sched_file)], env=env, stdout=logs, stderr=subprocess.STDOUT))

    def start_worker():
        started.append(subprocess.Popen(
            [str(bin_dir / "dask"), "worker", "--scheduler-file", str(sched_file), "--nthreads",
             "1", "--no-nanny", "--no-dashboard", "--local-directory", str(tmp_path / "scratch")],
            env=env, stdout=logs, stderr=subprocess.STDOUT))
        return started[-1]

    try:
        ok = _wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 120, 0.1)
        assert ok, (tmp_path / "dask.log").read_text()[-2000:]
        time.sleep(0.2)  # the file is written whole, but give its writer a moment
        yield json.loads(sched_file.read_text())["address"], start_worker
    finally:
        for proc in reversed(started):
            proc.kill()
            proc.wait(timeout=30)
        logs.close()


def test_dask_scheduler_without_workers_fails_within_the_timeout(tmp_path, dask_scheduler):
    """No worker on the scheduler: a clear SchedulerError after worker_timeout, no silent wait."""
    address, _ = dask_scheduler
    (tmp_path / "marktasks.py").write_text(TASKS_MODULE)
    code = ("import time\nfrom ceers_steps.core.engine import run_tasks\nt = time.monotonic()\n"
            f"try:\n    run_tasks(time.sleep, [(0.1,)] * 3, scheduler={address!r}, label='Detection')\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n    print('after', time.monotonic() - t)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=90, cwd=tmp_path,
                              env={**clean_env(), "DASK_CEERS_STEPS__WORKER_TIMEOUT": "3"})
    except subprocess.TimeoutExpired:
        pytest.fail("the run waited in silence for a worker (90 s)")
    assert "SchedulerError" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert f"the Dask scheduler at {address} has had no worker for 3 s" in proc.stdout
    assert "3 of 3 Detection tasks not done" in proc.stdout
    assert "has no worker: waiting up to 3 s" in proc.stderr
    assert float(proc.stdout.split("after")[1]) < 30


def test_dask_losing_its_only_worker_fails_within_the_timeout(tmp_path, dask_scheduler):
    """The only worker is killed mid-run: SchedulerError after worker_timeout, the rest cancelled."""
    address, start_worker = dask_scheduler
    worker = start_worker()
    proc, marks = _run_script(tmp_path, (
        "import time\nfrom ceers_steps.core.engine import run_tasks\nt = time.monotonic()\n"
        "try:\n"
        f"    run_tasks(marked, [(MARKS, i, 1.0) for i in range(20)], scheduler={address!r})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc, flush=True)\n"),
        env={"DASK_CEERS_STEPS__WORKER_TIMEOUT": "3"})
    try:
        assert _wait_for(lambda: len(_starts(marks)) >= 1 or proc.poll() is not None, 120)
        worker.kill()
        killed = time.monotonic()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the run waited in silence after its only worker died (60 s)")
        assert time.monotonic() - killed < 30
        text = (tmp_path / "run.log").read_text()
        assert "SchedulerError the Dask scheduler at" in text and "has had no worker for 3 s" in text
    finally:
        _kill([proc.pid])
        proc.wait(timeout=30)


def test_worker_timeout_option(monkeypatch):
    """The wait for a worker: the argument, else dask's configuration, else 120 s; finite only."""
    dask = pytest.importorskip("dask")
    from ceers_steps.core.engine import WORKER_TIMEOUT, worker_timeout

    assert worker_timeout(7) == 7.0
    assert worker_timeout() == WORKER_TIMEOUT == 120.0
    with dask.config.set({"ceers_steps.worker-timeout": "5 minutes"}):
        assert worker_timeout() == 300.0
    for bad in (float("nan"), 0, -1, float("inf")):
        with pytest.raises(ValueError, match="worker_timeout must be a positive number"):
            worker_timeout(bad)


def test_ctrl_c_cancels_queued_dask_tasks(tmp_path, dask_scheduler):
    """Ctrl-C of a Dask run: the futures not started are cancelled, no other task starts."""
    address, start_worker = dask_scheduler
    worker = start_worker()
    proc, marks = _run_script(tmp_path, (
        "from ceers_steps.core.engine import run_tasks\n"
        f"run_tasks(marked, [(MARKS, i, 1.5) for i in range(8)], scheduler={address!r})\n"))
    try:
        assert _wait_for(lambda: len(_starts(marks)) >= 1 or proc.poll() is not None, 120)
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        started = len(_starts(marks))
        time.sleep(4.0)  # beyond two more tasks' time on the one-thread worker
        assert len(_starts(marks)) == started <= 2, _starts(marks)
        assert worker.poll() is None  # the cluster itself is left alone
    finally:
        _kill([proc.pid])
        proc.wait(timeout=30)
