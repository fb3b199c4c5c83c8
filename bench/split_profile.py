"""Where the lesson network's "split" epoch spends its time: full 60k-image epochs of 784-16-16-10
(sigmoid/MSE, float32, batch 10, 2 threads) in each compiled backend's split epoch, with its
optional phase profile (the backends' `split_profile` knob; phases: base.SPLIT_PROFILE_PHASES).
Prints, per backend, each thread's time per phase in ms per epoch and us per step, the threads'
totals and the median epoch. The two threads hand work to each other twice a step, so a thread's
"wait" phases show how long the other one's work kept it idle: the thread that barely waits is
the one that bounds the epoch. On a shared machine the wall times drift; the split between the
phases of one run is what to read.

    PYTHONPATH=src python bench/split_profile.py [epochs] [backends: cython,numba]
"""
import sys
import time

import numpy as np
from numba import njit

from fastgd.backends.base import SPLIT_PROFILE_PHASES, SPLIT_PROFILE_SLOTS
from fastgd.backends.numba_simd import cycles
from fastgd.benchmarks.configs import Config
from fastgd.benchmarks.timing import Runner, Workload


@njit
def _now():
    return cycles()


def cycles_per_second(backend):
    """The rate of the clock the backend's profile counts (the time-stamp counter on x86; the
    Cython kernel counts ns elsewhere), against perf_counter over 0.2 s."""
    if backend == "cython":
        from fastgd._kernels.dense_sgd import cycles as now
    else:
        now = _now
    c0, t0 = now(), time.perf_counter()
    time.sleep(0.2)
    return (now() - c0) / (time.perf_counter() - t0)


def profile(backend, epochs, workload):
    runner = Runner(Config("train", backend, "lesson", "float32", 2, 10), workload)
    prof = np.zeros(SPLIT_PROFILE_SLOTS, dtype=np.int64)
    runner.backend.split_profile = prof
    runner.reset()
    runner.call()  # warm-up, not counted
    prof[:] = 0
    walls = []
    for _ in range(epochs):
        time.sleep(0.05)
        t = time.perf_counter()
        runner.call()
        walls.append(time.perf_counter() - t)
    mode = runner.result.mode
    runner.backend.split_profile = None
    return prof, walls, mode, runner.plan.order.size // runner.plan.batch_size


if __name__ == "__main__":
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    backends = sys.argv[2].split(",") if len(sys.argv) > 2 else ["cython", "numba"]
    w = Workload()
    print(f"{epochs} epochs per backend")
    for b in backends:
        hz = cycles_per_second(b)
        prof, walls, mode, steps = profile(b, epochs, w)
        if mode != "split":
            print(f"{b}: the epoch ran in mode {mode!r}, not the split epoch: no profile")
            continue
        ms = prof / hz / epochs * 1e3
        print(f"\n{b}: median epoch {np.median(walls) * 1e3:.1f} ms ({steps} steps; profile clock {hz / 1e9:.3f} GHz)")
        for slot, name in SPLIT_PROFILE_PHASES.items():
            print(f"  {name:45s} {ms[slot]:6.2f} ms  {ms[slot] / steps * 1e3:6.3f} us/step")
        print(f"  {'lower thread, all phases':45s} {ms[:8].sum():6.2f} ms")
        print(f"  {'upper thread, all phases':45s} {ms[16:24].sum():6.2f} ms")
