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
interrupt (Ctrl-C) stops the workers, and since every output is written to a
temporary name and moved into place, no half-written file is left behind.
"""

import multiprocessing
import os
import sys
import time
from contextlib import contextmanager

from . import compat  # noqa: F401 - on astropy < 5.3, lets WCS models pickle to workers
from ._stpipe import get_logger

__all__ = ["SchedulerError", "effective_jobs", "probe_scheduler", "run_tasks", "worker_pool"]

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


#: Seconds a worker whose parent died has to clean up before it exits.
PARENT_GRACE = 3.0


def _watch_parent(parent_pid):
    """
    Worker initializer: end this worker when the main process dies.

    - Ctrl-C (SIGINT to the whole process group) is left to the main process: it
      cancels the tasks not started and waits for the running ones, so every file
      is complete; a worker interrupted itself would break the pool, which then
      terminates the others in the middle of their writes.
    - SIGTERM (the pool stopping a broken worker) ends a task with SystemExit, so
      that a file being written is cleaned up (`ceers_steps.fileio.atomic_output`).
    - A SIGKILLed main process cannot stop its pool; its workers would go on with
      their task (minutes on a big image) and hold memory. A daemon thread checks
      every half second whether the parent is still this worker's parent; when it is
      not, the task is ended as by SIGTERM, and the worker exits ``PARENT_GRACE``
      seconds later whatever it is doing.
    """
    import _thread
    import signal
    import threading

    def terminate(signum, frame):
        raise SystemExit(1)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, terminate)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        _thread.interrupt_main(signal.SIGTERM)
        time.sleep(PARENT_GRACE)
        os._exit(1)

    threading.Thread(target=watch, name="ceers-parent-watch", daemon=True).start()


def _process_pool(n):
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=n, mp_context=_mp_context(),
                               initializer=_watch_parent, initargs=(os.getpid(),))


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
            executor.shutdown(wait=True, cancel_futures=True)
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
              names=None):
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
        return _run_dask(func, tasks, active[2] if active else scheduler, progress, name_of)
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
        futures = {pool.submit(func, *task): i for i, task in enumerate(tasks)}
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
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    if own:
        pool.shutdown(wait=True)
    return results


def _run_dask(func, tasks, scheduler, progress, name_of):
    own = isinstance(scheduler, str)
    client = _dask_client(scheduler) if own else scheduler
    from dask.distributed import as_completed

    try:
        log.info("%s: %d tasks on the Dask scheduler %s", progress.label, len(tasks),
                 client.scheduler.address)
        futures = [client.submit(func, *task, pure=False) for task in tasks]
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            progress.step(name_of(index[fut.key]))
        return client.gather(futures)
    finally:
        if own:
            client.close()
