"""Python threads that run work beside a kernel: a call's row copies (pipeline.run_in_parts) and
Cython's forward chunks. One process-wide pool; the threads hold no data between calls.

Why not concurrent.futures.ThreadPoolExecutor: since Python 3.9 interpreter exit joins its
threads, after queueing a sentinel for each thread the executor has registered. A
KeyboardInterrupt that lands inside or just after ``Thread.start`` (it waits for the new
thread) leaves a started thread the executor never registered; when it is the pool's first, no
sentinel ever reaches it, and the exit of the process (a script, or a joblib worker whose
parent then waits for it) waits forever. These threads are daemons: exit never waits for them.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future

_lock = threading.Lock()
_tasks = queue.SimpleQueue()  # (future, fn, args)
_idle = 0  # threads waiting in _tasks.get() that no submit has claimed yet
_started = 0  # threads ever started, for their names


def _work():
    global _idle
    while True:
        future, fn, args = _tasks.get()
        if future.set_running_or_notify_cancel():
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(exc)
            else:
                future.set_result(result)
        del future, fn, args  # hold nothing while idle
        with _lock:
            _idle += 1


def submit(fn, *args):
    """Run fn(*args) on a pool thread: a Future of its result. A thread is started when none is
    idle, so work submitted together runs at once (the copies and forward chunks wait for
    nothing but themselves, so the pool needs no bound)."""
    global _idle, _started
    future = Future()
    with _lock:
        claimed = _idle > 0
        if claimed:
            _idle -= 1
        else:
            _started += 1
            name = f"fastgd-helper-{_started}"
    if not claimed:
        # started before the task is queued: an interrupt here leaves no task behind for a
        # later thread to run out of its context, only an extra idle daemon
        threading.Thread(target=_work, name=name, daemon=True).start()
    _tasks.put((future, fn, args))
    return future


def _after_fork_in_child():
    # the child has none of the parent's threads: the idle count would claim threads that do
    # not exist, and the lock or queue may have been held by one of them at the fork
    global _lock, _tasks, _idle
    _lock = threading.Lock()
    _tasks = queue.SimpleQueue()
    _idle = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
