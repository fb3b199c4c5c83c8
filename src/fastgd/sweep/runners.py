"""Where trials run: this process, a local process pool, or a Dask cluster.

Every runner has the same small interface, driven by `fastgd.sweep.engine`:

    runner.start(data)      ship the data: once per worker process, never once per trial
    runner.slots            how many trials run at once
    runner.submit(task)     queue a trial
    runner.wait()           block until at least one trial finished -> [(task, record, params)]
    runner.close(cancel)    stop; with cancel=True abandon queued and running trials at once
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from collections import deque

from .trial import run_trial


def _lost_record(task, reason):
    return ({"trial_id": task.trial_id, "point": task.point, "seed": task.seed, "settings": task.settings,
             "status": "error", "error": reason}, None)


class SequentialRunner:
    """Trials one after another in this process (no extra processes; for debugging and comparison)."""

    slots = 1
    description = "sequential, this process"

    def start(self, data):
        self._data = data
        self._queue = deque()

    def submit(self, task):
        self._queue.append(task)

    def pending(self):
        return len(self._queue)

    def wait(self):
        task = self._queue.popleft()
        return [(task, *run_trial(self._data, task))]

    def close(self, cancel=False):
        self._queue = deque()


# ---- local process pool --------------------------------------------------------------------
_WORKER_DATA = None


def _init_worker(data):
    """Pool worker start-up: keep the data (sent once per process) and leave Ctrl-C to the parent,
    which stops the pool itself (a terminal sends SIGINT to the whole process group)."""
    global _WORKER_DATA
    _WORKER_DATA = data
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_trial(task):
    return run_trial(_WORKER_DATA, task)


class LocalPoolRunner:
    """One worker process per core (spawned fresh: no inherited OpenMP/Numba thread state)."""

    MAX_ATTEMPTS = 3  # a trial whose worker process died this often is recorded as failed
    # A dead worker the pool has not reported after this long has wedged it (see wait)
    DEAD_WORKER_GRACE = 2.0

    def __init__(self, workers=None):
        self.slots = workers or os.cpu_count() or 1
        self.description = f"local pool, {self.slots} processes"

    def start(self, data):
        self._data = data
        self._futures = {}
        self._attempts = {}
        self._executor = self._new_executor()

    def _new_executor(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.slots, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self._data,))

    def submit(self, task):
        self._futures[self._executor.submit(_pool_trial, task)] = task

    def pending(self):
        return len(self._futures)

    def wait(self):
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures
        from concurrent.futures.process import BrokenProcessPool

        dead_since = None
        while True:
            done, _ = wait_futures(list(self._futures), timeout=0.5, return_when=FIRST_COMPLETED)
            if done:
                break
            # A worker that died between the two writes of a result (killed, out of memory) leaves
            # half a message in the result pipe: the pool's manager thread then waits for the rest
            # forever and never reports the death, so no future would complete. A dead worker
            # normally breaks the pool within milliseconds; one unreported for
            # DEAD_WORKER_GRACE seconds is that case: stop the pool's other workers and unblock
            # the thread, which then fails every trial in flight (BrokenProcessPool, run again).
            processes = list((getattr(self._executor, "_processes", None) or {}).values())
            if any(p.exitcode is not None for p in processes):
                dead_since = dead_since or time.monotonic()
                if time.monotonic() - dead_since >= self.DEAD_WORKER_GRACE:
                    _stop_workers(self._executor, processes)
            else:
                dead_since = None
        finished, resubmit = [], []
        for future in done:
            task = self._futures.pop(future)
            try:
                finished.append((task, *future.result()))
            except BrokenProcessPool:
                # A worker process died (killed, out of memory, crashed): every trial in flight
                # fails with it. Run them again in a new pool, a few times at most.
                self._attempts[task.trial_id] = self._attempts.get(task.trial_id, 0) + 1
                if self._attempts[task.trial_id] >= self.MAX_ATTEMPTS:
                    finished.append((task, *_lost_record(
                        task, f"WorkerDied: the worker process died {self.MAX_ATTEMPTS} times running this trial")))
                else:
                    resubmit.append(task)
            except Exception as exc:  # noqa: BLE001 - e.g. a result that could not be sent back
                finished.append((task, *_lost_record(task, f"{type(exc).__name__}: {exc}")))
        if resubmit:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
            for task in resubmit:
                self.submit(task)
        return finished

    def close(self, cancel=False):
        executor = getattr(self, "_executor", None)
        if executor is None:
            return
        if cancel:
            _terminate_workers(executor)
        else:
            executor.shutdown(wait=True)
        self._executor = None


def _terminate_workers(executor):
    """Stop a pool's running trials now (Ctrl-C must not wait for a long trial to end)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())  # shutdown() forgets them
    manager = getattr(executor, "_executor_manager_thread", None)  # likewise
    results = getattr(executor, "_result_queue", None)
    if hasattr(executor, "terminate_workers"):  # Python 3.14+
        executor.terminate_workers()
    else:
        executor.shutdown(wait=False, cancel_futures=True)
    _stop_workers(executor, processes, results)
    # Let the manager thread see its dead workers and close its wake-up pipe now: left running, it
    # races the interpreter's exit hook, which then writes to the closed pipe and prints an
    # OSError traceback after our clean "stopped" message.
    if manager is not None:
        manager.join(timeout=5)


def _stop_workers(executor, processes, results=None):
    """Terminate the pool's worker processes, then unblock its manager thread.

    A worker stopped between the two writes of a result leaves half a message in the result pipe,
    and the manager thread blocks reading the rest: the pool never reports anything again, and
    the interpreter hangs at exit joining that thread. Once every worker is dead nothing writes to
    the pipe again, so closing our copy of its write end turns the wait into end-of-file, which
    the thread treats as a broken pool: it fails the pending futures and ends."""
    results = results if results is not None else getattr(executor, "_result_queue", None)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
    if results is not None and all(not process.is_alive() for process in processes):
        results._writer.close()


# ---- Dask ----------------------------------------------------------------------------------
def import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ImportError('running a sweep on a Dask cluster needs dask.distributed: pip install "fastgd[dask]"') from exc
    return distributed


class DaskRunner:
    """Trials as futures on a dask.distributed cluster (`Client(address)` or a given client).

    The data is scattered to every worker once (broadcast) and each trial takes that future, so
    it resolves to the worker's own copy. A worker that dies mid-trial is handled by Dask: the
    scheduler reruns its trials on other workers (up to ``distributed.scheduler.allowed-failures``
    times); ``retries`` also reruns a trial whose task raised outside the trial itself.

    A finished trial's result waits on its worker until fetched. If that worker dies first, Dask
    is meant to recompute it, but a fetch racing the death can wait for good (gather hangs of
    that kind are reported against distributed). So a fetch that takes longer than
    ``fetch_timeout`` seconds gives the trial up and submits it again (trials are deterministic),
    at most ``MAX_FETCHES`` times, then records it as lost. Waiting for a trial to *finish* has
    no timeout: trials may legitimately run for hours.
    """

    MAX_FETCHES = 3

    def __init__(self, address=None, client=None, retries=2, fetch_timeout=60.0):
        if (address is None) == (client is None):
            raise ValueError("give a scheduler address or a dask client, not both or neither")
        self._address, self._client, self._own_client = address, client, client is None
        self.retries = retries
        self.fetch_timeout = fetch_timeout
        self._fetches = {}
        self.slots = 1
        self.description = f"dask {address or 'client'}"

    def start(self, data):
        distributed = import_distributed()
        if self._client is None:
            self._client = distributed.Client(self._address, timeout="20s")
        client = self._client
        nthreads = client.nthreads()
        if not nthreads:
            client.wait_for_workers(1, timeout=60)
            nthreads = client.nthreads()
        self.slots = max(1, sum(nthreads.values()))
        self.description = f"dask {client.scheduler.address}, {len(nthreads)} workers, {self.slots} slots"
        self._data_future = client.scatter(data, broadcast=True, hash=False)
        self._futures = {}

    def submit(self, task):
        future = self._client.submit(run_trial, self._data_future, task, pure=False, retries=self.retries,
                                     key=f"fastgd-trial-{task.trial_id}-{uuid.uuid4().hex[:8]}")
        self._futures[future] = task

    def pending(self):
        return len(self._futures)

    def wait(self):
        distributed = import_distributed()
        done, _ = distributed.wait(list(self._futures), return_when="FIRST_COMPLETED")
        finished = []
        for future in done:
            task = self._futures.pop(future)
            try:
                finished.append((task, *future.result(timeout=self.fetch_timeout)))
            except TimeoutError:  # the result is stuck on (or lost with) a worker: run the trial again
                fetches = self._fetches[task.trial_id] = self._fetches.get(task.trial_id, 0) + 1
                if fetches >= self.MAX_FETCHES:
                    finished.append((task, *_lost_record(
                        task, f"LostResult: its result could not be fetched in {fetches} runs")))
                else:
                    future.cancel()
                    self.submit(task)
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker after too many worker deaths
                finished.append((task, *_lost_record(task, f"{type(exc).__name__}: {exc}")))
            future.release()
        return finished

    def close(self, cancel=False):
        client = self._client
        if client is None:
            return
        futures = list(getattr(self, "_futures", {}))
        if futures:
            client.cancel(futures)
        if getattr(self, "_data_future", None) is not None:
            self._data_future.release()
            self._data_future = None
        if self._own_client:
            client.close()
            self._client = None
