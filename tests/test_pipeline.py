"""fastgd.backends.pipeline: the split of a call's rows into parts and the copy/train hand-off.
(That a pipelined epoch equals an unpipelined one bitwise is test_cython_backend's
test_overlapped_row_copy_changes_nothing.)"""
import threading
import time

import pytest

from fastgd.backends import pipeline


@pytest.mark.parametrize("n_rows,bs", [(60000, 10), (203, 6), (20, 10), (21, 10), (1, 1), (7, 3), (1000, 1)])
def test_part_bounds_cover_every_row_in_whole_minibatches(n_rows, bs):
    n_steps = -(-n_rows // bs)
    b = pipeline.part_bounds(n_steps, bs, n_rows, True)
    assert b[0] == 0 and b[-1] == n_rows
    assert all(x < y for x, y in zip(b, b[1:]))
    assert all(x % bs == 0 for x in b[:-1])  # every part but the last starts and ends on a minibatch
    sizes = [(y - x + bs - 1) // bs for x, y in zip(b, b[1:])]
    assert sum(sizes) == n_steps
    if n_steps >= 2:
        assert len(b) > 2
        # each part twice the one before (the last < 4x: the tail joins it), so it is copied
        # while the kernel trains on that one
        assert all(later < 4 * earlier for earlier, later in zip(sizes, sizes[1:]))
    assert pipeline.part_bounds(n_steps, bs, n_rows, False) == [0, n_rows]


def test_the_lesson_epoch_waits_only_for_a_small_first_part():
    b = pipeline.part_bounds(6000, 10, 60000, True)
    assert b[1] <= 60000 // 32
    assert len(b) <= 10


def _recorder(bounds, fail_copy_at=None, fail_run_at=None, slow_copy=0.0):
    events, lock = [], threading.Lock()

    def copy(a, b, pos):
        if slow_copy:
            time.sleep(slow_copy)
        if a == fail_copy_at:
            raise MemoryError("copy failed")
        with lock:
            events.append(("copy", a, b, pos))
        return pos + (b - a)

    def run(a, b):
        with lock:
            copied = [e for e in events if e[0] == "copy" and e[1] == a]
        assert copied, f"part {a}..{b} ran before it was copied"
        if a == fail_run_at:
            raise KeyboardInterrupt
        with lock:
            events.append(("run", a, b))

    return copy, run, events


def test_run_in_parts_runs_each_part_after_its_copy_in_order():
    bounds = pipeline.part_bounds(100, 3, 300, True)
    copy, run, events = _recorder(bounds, slow_copy=0.001)
    pipeline.run_in_parts(copy, bounds, run)
    runs = [(a, b) for kind, a, b, *_ in events if kind == "run"]
    copies = [e for e in events if e[0] == "copy"]
    assert runs == list(zip(bounds, bounds[1:]))
    assert [(a, b) for _, a, b, _ in copies] == runs
    assert [pos for *_, pos in copies] == bounds[:-1]  # each copy starts where the one before ended


def test_run_in_parts_single_part_copies_then_runs():
    copy, run, events = _recorder([0, 10])
    pipeline.run_in_parts(copy, [0, 10], run)
    assert [e[0] for e in events] == ["copy", "run"]


def test_a_copy_error_is_raised_before_its_part_runs():
    bounds = pipeline.part_bounds(64, 1, 64, True)
    copy, run, events = _recorder(bounds, fail_copy_at=bounds[2])
    with pytest.raises(MemoryError, match="copy failed"):
        pipeline.run_in_parts(copy, bounds, run)
    ran = [a for kind, a, *_ in events if kind == "run"]
    assert bounds[2] not in ran and all(a < bounds[2] for a in ran)


def test_an_interrupted_run_stops_the_copying_before_returning():
    bounds = pipeline.part_bounds(640, 1, 640, True)
    copy, run, events = _recorder(bounds, fail_run_at=bounds[1], slow_copy=0.002)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_in_parts(copy, bounds, run)
    n = len(events)
    time.sleep(0.05)
    assert len(events) == n  # no copy writes the workspace's buffers after the call returned
    assert len([e for e in events if e[0] == "copy"]) < len(bounds) - 1


def test_a_second_interrupt_while_the_copy_stops_is_raised_after_it_stopped():
    """Ctrl-C twice: the second lands while run_in_parts waits for the copy in flight; it is
    raised only once that copy is done, so nothing writes the buffers after the call."""
    import signal

    main = threading.get_ident()
    bounds = pipeline.part_bounds(640, 1, 640, True)
    copy, run_part, events = _recorder(bounds, slow_copy=0.2)
    timers = []

    def run(a, b):
        if a == bounds[1]:
            # a real signal to the main thread: it wakes a blocked wait, as Ctrl-C does
            # (_thread.interrupt_main would only be noticed once the wait was over)
            timers.append(threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGINT)))
            timers[-1].start()
            raise KeyboardInterrupt
        run_part(a, b)

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_in_parts(copy, bounds, run)
        n = len(events)
        timers[0].join()
        time.sleep(0.3)
    finally:
        signal.signal(signal.SIGINT, old)
    assert len(events) == n


def test_an_interrupt_right_after_the_copy_was_queued_still_waits_for_it(monkeypatch):
    """Ctrl-C can land inside submit, after the copy was queued and started: the call still
    stops that copy and waits for it before returning."""
    def submit_then_interrupted(fn, *args):
        threading.Thread(target=fn, args=args).start()
        time.sleep(0.02)  # the copy of part 1 is under way
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.helper_pool, "submit", submit_then_interrupted)
    bounds = pipeline.part_bounds(640, 1, 640, True)
    copy, run, events = _recorder(bounds, slow_copy=0.1)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_in_parts(copy, bounds, run)
    n = len(events)
    time.sleep(0.2)
    assert len(events) == n == 2  # parts 0 and 1: the copy stopped before part 2


def test_a_copy_that_starts_after_the_call_gave_up_writes_nothing(monkeypatch):
    """...and one that had not started yet then writes nothing when it does."""
    late = []
    monkeypatch.setattr(pipeline.helper_pool, "submit", lambda fn, *args: late.append((fn, args)))
    bounds = pipeline.part_bounds(64, 1, 64, True)
    copy, _, events = _recorder(bounds)

    def run(a, b):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.run_in_parts(copy, bounds, run)
    n = len(events)
    fn, args = late[0]
    fn(*args)  # the queued copy finally runs
    assert len(events) == n == 1  # only part 0, copied before the call's first run
