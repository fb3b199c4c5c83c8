"""fastgd.backends.helper_pool: the daemon threads that run row copies and forward chunks."""
import subprocess
import sys
import textwrap
import threading

import pytest

from fastgd.backends import helper_pool


def test_results_and_errors_come_back_through_the_future():
    assert helper_pool.submit(lambda a, b: a * b, 6, 7).result(timeout=30) == 42
    with pytest.raises(MemoryError, match="no room"):
        helper_pool.submit(lambda: (_ for _ in ()).throw(MemoryError("no room"))).result(timeout=30)


def test_tasks_submitted_together_run_at_once():
    """Each task waits for the others (as no copy or chunk does; the pool must not bound them)."""
    barrier = threading.Barrier(4, timeout=30)
    futures = [helper_pool.submit(barrier.wait) for _ in range(4)]
    assert sorted(f.result(timeout=60) for f in futures) == [0, 1, 2, 3]
    # and the threads come back idle: more work runs on them, none is lost
    assert [f.result(timeout=30) for f in [helper_pool.submit(abs, -k) for k in range(20)]] == list(range(20))


def _run(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)  # a hang guard: the process must exit, it is not timed


def test_a_process_exits_while_a_helper_thread_still_works():
    """Interpreter exit does not wait for helper threads (a ThreadPoolExecutor's it joins: one
    that never got its exit sentinel kept a process, or a joblib worker, alive for good)."""
    r = _run("""
        import threading
        from fastgd.backends import helper_pool
        helper_pool.submit(threading.Event().wait)  # never finishes
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("fastgd-helper"))
        print("main done")
    """)
    assert r.returncode == 0 and "main done" in r.stdout, r.stderr


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_starts_its_own_threads():
    """The child of a fork has none of the parent's threads: an idle one counted in the parent
    must not be claimed there, or its work would never run."""
    r = _run("""
        import os
        from fastgd.backends import helper_pool
        assert helper_pool.submit(lambda: 1).result(timeout=30) == 1  # leaves an idle thread
        pid = os.fork()
        if pid == 0:
            try:
                ok = helper_pool.submit(lambda: 2).result(timeout=30) == 2
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
    """)
    assert r.returncode == 0 and "child exit 0" in r.stdout, (r.stdout, r.stderr)
