"""Run independent tasks (one per image or per group) serially, on local processes or on Dask.

The steps split their work into plain-function tasks with picklable arguments
(file paths, parameters, catalogs, gwcs objects) and hand them to `run_tasks`:

- ``n_jobs=1``: in this process, one after the other;
- ``n_jobs=None`` or ``0`` (default): one worker process per core on this machine;
  ``n_jobs=N``: N worker processes; negative N: all cores but ``|N| - 1``;
- ``scheduler="tcp://host:8786"``: submitted to that ``dask.distributed``
  scheduler. Dask is imported only then (``pip install ceers-steps[dask]``).

Results come back in task order, whatever the order they finish in, so a
parallel run gives the same results as a serial one. Progress is logged with
counts and elapsed time, at most every ``progress_interval`` seconds.
A failing task raises in the caller (after the other workers are stopped); an
interrupt (Ctrl-C) lets the running tasks finish and starts no other (local pool:
not even the ones already queued to a worker; Dask: the futures are cancelled), and
since every output is written to a temporary name and moved into place, no
half-written file is left behind. Local workers stop within about a second when the
main process is killed (``kill -9``), and start nothing more. On Dask, a scheduler
with no worker (none connected, or the last one died) fails the run with
`SchedulerError` after ``worker_timeout`` seconds (default 120; dask configuration
``ceers_steps.worker-timeout`` or ``DASK_CEERS_STEPS__WORKER_TIMEOUT``) instead of
waiting in silence.
"""

import multiprocessing
import os
import sys
import time
from contextlib import contextmanager

from . import compat  # noqa: F401 - on astropy < 5.3, lets WCS models pickle to workers
from .logs import get_logger

__all__ = ["SchedulerError", "TaskCancelled", "effective_jobs", "probe_scheduler", "run_tasks",
           "worker_pool", "worker_timeout"]

log = get_logger(__name__)


def effective_jobs(n_jobs, n_tasks=None):
    """
    The number of worker processes for ``n_jobs`` on this machine.

    Parameters
    ----------
    n_jobs : int or None
        None or 0: all cores; N > 0: N; N < 0: all cores but ``|N| - 1``.
    n_tasks : int, optional
        No more workers than tasks.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if not n_jobs:
        n = cores
    elif n_jobs < 0:
        n = max(1, cores + 1 + n_jobs)
    else:
        n = int(n_jobs)
    if n_tasks is not None:
        n = min(n, max(1, n_tasks))
    return max(1, n)


class _Progress:
    """
    Log ``label: done/total (elapsed)`` at most every ``interval`` seconds, and at the end.

    The time left is estimated only once a tenth of the tasks (at least 2) are done:
    before that the rate says nothing (the first results of a pool arrive together).
    """

    def __init__(self, label, total, interval):
        self.label, self.total, self.interval = label, total, interval
        self.start = self.last = time.perf_counter()
        self.done = 0

    def step(self, what=None):
        self.done += 1
        now = time.perf_counter()
        if self.done == self.total or now - self.last >= self.interval:
            self.last = now
            eta = ""
            if self.done < self.total and self.done >= max(2, self.total / 10):
                rate = (now - self.start) / self.done
                eta = f", ~{rate * (self.total - self.done):.0f} s left"
            log.info("%s: %d/%d done, %.1f s elapsed%s%s", self.label, self.done, self.total,
                     now - self.start, eta, f" (last: {what})" if what else "")


def _mp_context():
    # fork starts workers in milliseconds with jwst already imported; elsewhere (macOS,
    # Windows) the platform default is the safe choice.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


# The pool (or Dask client) of the innermost `worker_pool` block: (n_jobs, scheduler, executor).
_ACTIVE = None


#: Seconds a worker whose parent died gives its task to clean up (remove its temporary
#: files) before it exits whatever it is doing.
PARENT_GRACE = 1.0

#: Seconds between a worker's checks that its parent is alive.
PARENT_POLL = 0.1

# This worker process's state (set by `_watch_parent`; unused in the main process).
_WORKER = {"parent": None, "cancel": None, "busy": False}


class TaskCancelled(Exception):
    """A queued task was not started: the run was interrupted or failed before its turn."""


def _watch_parent(parent_pid, cancel=None):
    """
    Worker initializer: end this worker when the main process dies.

    - Ctrl-C (SIGINT to the whole process group) is left to the main process: it
      sets ``cancel`` (so a task already queued to a worker is not started), cancels
      the tasks not queued and waits for the running ones, so every file is
      complete; a worker interrupted itself would break the pool, which then
      terminates the others in the middle of their writes.
    - SIGTERM (the pool stopping a broken worker) ends a task with SystemExit, so
      that a file being written is cleaned up (`ceers_steps.core.fileio.atomic_output`).
    - A SIGKILLed main process cannot stop its pool; its workers would go on with
      their task (minutes on a big image), start the tasks queued to them and hold
      memory. A daemon thread checks every ``PARENT_POLL`` seconds whether the
      parent is still this worker's parent; when it is not, an idle worker exits at
      once, and a busy one gets SIGTERM in its main thread (the task unwinds,
      removing its temporary files) and exits when the task has unwound, at most
      ``PARENT_GRACE`` seconds later. `_call_task` never starts a task without
      the parent.
    """
    import signal
    import threading

    def terminate(signum, frame):
        raise SystemExit(1)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, terminate)
    _WORKER.update(parent=parent_pid, cancel=cancel, busy=False)
    main_thread = threading.main_thread().ident

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL)
        if not _WORKER["busy"]:
            os._exit(1)
        # A real signal to the main thread: it also interrupts a blocking call (sleep, I/O).
        signal.pthread_kill(main_thread, signal.SIGTERM)
        deadline = time.monotonic() + PARENT_GRACE
        while _WORKER["busy"] and time.monotonic() < deadline:
            time.sleep(0.02)
        os._exit(1)

    threading.Thread(target=watch, name="ceers-parent-watch", daemon=True).start()


def _parent_gone():
    parent = _WORKER["parent"]
    return parent is not None and os.getppid() != parent


def _call_task(func, *args):
    """Run one task in a pool worker: never after the main process died or cancelled the run."""
    if _parent_gone():
        os._exit(1)
    cancel = _WORKER["cancel"]
    if cancel is not None and cancel.is_set():
        raise TaskCancelled("the run was interrupted before this task started")
    _WORKER["busy"] = True
    try:
        return func(*args)
    finally:
        _WORKER["busy"] = False
        if _parent_gone():
            os._exit(1)


def _process_pool(n):
    from concurrent.futures import ProcessPoolExecutor

    context = _mp_context()
    cancel = context.Event()
    pool = ProcessPoolExecutor(max_workers=n, mp_context=context, initializer=_watch_parent,
                               initargs=(os.getpid(), cancel))
    pool.ceers_cancel = cancel
    return pool


def _stop_pool(pool):
    """Stop a pool after a failure or Ctrl-C: no task not yet started starts; wait for the others."""
    cancel = getattr(pool, "ceers_cancel", None)
    if cancel is not None:
        cancel.set()  # tasks already queued to a worker (the pool queues n + 1) are not started
    pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def worker_pool(n_jobs=None, scheduler=None, n_tasks=None):
    """
    Keep one pool of workers (or one Dask client) for every `run_tasks` call inside.

    A run opens it at its start, while the process is still small: workers are
    forked once, so they neither pay a start-up per stage nor inherit (and, as
    Python touches reference counts, copy) what the run accumulates later.
    Nested blocks reuse the outer pool. ``n_tasks`` (the number of images) caps
    the number of workers: no run needs more workers than it has images.
    """
    global _ACTIVE
    if _ACTIVE is not None:
        yield
        return
    executor = None
    if scheduler:
        executor = _dask_client(scheduler)
    elif effective_jobs(n_jobs, n_tasks) > 1:
        executor = _process_pool(effective_jobs(n_jobs, n_tasks))
    _ACTIVE = (n_jobs, scheduler or None, executor)
    try:
        yield
    except BaseException:
        if executor is not None and not scheduler:
            _stop_pool(executor)
            executor = None
        raise
    finally:
        _ACTIVE = None
        if executor is not None:
            if scheduler:
                executor.close()
            else:
                executor.shutdown(wait=True)


class SchedulerError(ConnectionError):
    """The Dask scheduler cannot be reached, or what answers is not a Dask scheduler."""


def _connect_timeout():
    """Dask's own connect timeout (``distributed.comm.timeouts.connect``, 30 s), seconds."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"),
                                 default="seconds"))


def probe_scheduler(address, timeout=None):
    """
    Connect to ``address`` and complete Dask's handshake within ``timeout`` seconds.

    dask.distributed bounds the TCP connect but not the handshake read after it:
    a port that accepts and never answers would hang the run, and a server of
    another kind (HTTP) makes it read a garbage message length. Both become a
    `SchedulerError` naming the address.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    from distributed.comm import connect

    timeout = _connect_timeout() if timeout is None else float(timeout)

    async def handshake():
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
        await comm.close()

    # In a thread of its own: the caller may already run an event loop (Jupyter).
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(asyncio.run, handshake())
        try:
            future.result(timeout + 5.0)
        except (TimeoutError, asyncio.TimeoutError, FutureTimeout):
            raise SchedulerError(
                f"the Dask scheduler at {address} did not complete a handshake within "
                f"{timeout:g} s (is a dask scheduler running there? the timeout is dask's "
                "distributed.comm.timeouts.connect)") from None
        except Exception as exc:  # noqa: BLE001 - anything else there is not a scheduler
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, MemoryError):
                text = "it answered with something that is not the Dask protocol"
            raise SchedulerError(f"cannot use the Dask scheduler at {address}: {text}") from None


def _dask_client(scheduler):
    try:
        from dask.distributed import Client
    except ImportError:
        raise ImportError(
            "a Dask scheduler was given but dask.distributed is not installed: "
            "pip install 'ceers-steps[dask]'"
        ) from None
    timeout = _connect_timeout()
    probe_scheduler(scheduler, timeout)
    try:
        return Client(scheduler, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - named for the user
        raise SchedulerError(f"cannot use the Dask scheduler at {scheduler}: {exc}") from None


def run_tasks(func, tasks, n_jobs=None, scheduler=None, label="tasks", progress_interval=10.0,
              names=None, worker_timeout=None):
    """
    Run ``func(*task)`` for every task and return the results in task order.

    Parameters
    ----------
    func : callable
        A module-level function (it is pickled to the workers).
    tasks : list of tuple
        The positional arguments of each call.
    n_jobs : int or None
        Worker processes (see module docstring); 1 runs in this process.
    scheduler : str or None
        Address of a ``dask.distributed`` scheduler; overrides ``n_jobs``.
    label : str
        Names the work in progress messages.
    progress_interval : float
        Seconds between progress messages.
    names : list of str, optional
        A name per task for progress messages (e.g. the image).
    worker_timeout : float, optional
        Dask only: seconds the run may wait while the scheduler has no worker (none
        connected, or the last one died) before it fails with `SchedulerError`;
        default from `worker_timeout` (120 s, or dask's ``ceers_steps.worker-timeout``).

    Returns
    -------
    results : list
    """
    tasks = list(tasks)
    if not tasks:
        return []
    progress = _Progress(label, len(tasks), progress_interval)
    name_of = (lambda i: names[i]) if names else (lambda i: None)
    active = _ACTIVE if _ACTIVE is not None and _ACTIVE[:2] == (n_jobs, scheduler or None) else None
    if scheduler:
        return _run_dask(func, tasks, active[2] if active else scheduler, progress, name_of,
                         worker_timeout)
    n = effective_jobs(n_jobs, len(tasks))
    if n == 1:
        results = []
        for i, task in enumerate(tasks):
            results.append(func(*task))
            progress.step(name_of(i))
        return results
    log.info("%s: %d tasks on %d processes", label, len(tasks), n)
    return _run_local(func, tasks, n, progress, name_of, active[2] if active else None)


def _run_local(func, tasks, n, progress, name_of, pool=None):
    from concurrent.futures import FIRST_COMPLETED, wait

    results = [None] * len(tasks)
    own = pool is None
    if own:
        pool = _process_pool(n)
    try:
        futures = {pool.submit(_call_task, func, *task): i for i, task in enumerate(tasks)}
        pending = set(futures)
        while pending:
            # One task at a time, so progress is reported as it happens.
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = futures[fut]
                results[i] = fut.result()  # re-raises a worker's exception here
                progress.step(name_of(i))
    except BaseException:
        # A failed task, a dead worker or Ctrl-C: stop everything that has not started.
        _stop_pool(pool)
        raise
    if own:
        pool.shutdown(wait=True)
    return results


#: Seconds a Dask run waits while the scheduler has no worker, by default (the dask
#: configuration key ``ceers_steps.worker-timeout`` or the environment variable
#: ``DASK_CEERS_STEPS__WORKER_TIMEOUT`` changes it, as does ``worker_timeout``).
WORKER_TIMEOUT = 120.0


def worker_timeout(value=None):
    """
    Seconds a Dask run may wait with no worker on the scheduler before it fails.

    ``value`` if given, else dask's configuration ``ceers_steps.worker-timeout``
    (``DASK_CEERS_STEPS__WORKER_TIMEOUT=300`` in the environment; "5 minutes" works too),
    else `WORKER_TIMEOUT`. A cluster that starts its workers from a batch queue may
    need more.
    """
    if value is None:
        import dask
        from dask.utils import parse_timedelta

        value = dask.config.get("ceers_steps.worker-timeout", WORKER_TIMEOUT)
        value = parse_timedelta(value, default="seconds")
    value = float(value)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"worker_timeout must be a positive number of seconds, not {value!r}")
    return value


def _n_workers(client):
    try:
        return len(client.nthreads())
    except Exception:  # noqa: BLE001 - a scheduler gone is reported as having no worker
        return 0


def _run_dask(func, tasks, scheduler, progress, name_of, timeout=None):
    """
    Run the tasks on Dask, failing (`SchedulerError`) when the scheduler has had no worker
    for ``timeout`` seconds (`worker_timeout`): with none connected, or after the last one
    died, Dask itself would wait in silence forever. Ctrl-C or a failed task cancels the
    tasks not finished.
    """
    timeout = worker_timeout(timeout)
    own = isinstance(scheduler, str)
    client = _dask_client(scheduler) if own else scheduler
    from dask.distributed import wait

    address = client.scheduler.address
    futures = []
    try:
        log.info("%s: %d tasks on the Dask scheduler %s", progress.label, len(tasks), address)
        futures = [client.submit(func, *task, pure=False) for task in tasks]
        index = {f.key: i for i, f in enumerate(futures)}
        pending = set(futures)
        no_worker_since = None
        poll = min(1.0, timeout / 4)
        while pending:
            try:
                done, pending = wait(list(pending), timeout=poll, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            for fut in done:
                if fut.status == "error":
                    fut.result()  # re-raises the task's exception here
                progress.step(name_of(index[fut.key]))
            if done or not pending:
                no_worker_since = None
                continue
            if _n_workers(client):
                no_worker_since = None
            elif no_worker_since is None:
                no_worker_since = time.monotonic()
                log.warning("%s: the Dask scheduler %s has no worker: waiting up to %g s for "
                            "one (worker_timeout)", progress.label, address, timeout)
            elif time.monotonic() - no_worker_since > timeout:
                raise SchedulerError(
                    f"the Dask scheduler at {address} has had no worker for {timeout:g} s with "
                    f"{len(pending)} of {len(tasks)} {progress.label} tasks not done: start "
                    "workers (dask worker " + address + "), or allow a longer wait "
                    "(worker_timeout; DASK_CEERS_STEPS__WORKER_TIMEOUT=seconds)")
        return client.gather(futures)
    except BaseException:
        # A failed task, no worker or Ctrl-C: nothing not yet started may start.
        if futures:
            try:
                client.cancel(futures)
            except Exception:  # noqa: BLE001 - the scheduler may be gone
                pass
        raise
    finally:
        if own:
            client.close()
