"""Timing: MNIST loaded once (Workload), one Result per config, and the Runner that sets a config up
(network, plan, the backend's per-run workspace) and times calls of it."""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import _checks
from ..backends import EpochPlan, get_backend
from .configs import LATENCY_CALLS, MNIST_TEST, MNIST_TRAIN, Config
from .peak import forward_flops_per_sample, train_flops_per_sample

GAUSS_SEED = 0  # dense Gaussian input: np.random.default_rng(0).standard_normal((60000, 784)).astype(float32)


def gaussian_inputs(shape, dtype="float32", seed=GAUSS_SEED):
    """The dense Gaussian training input (the same in fastgd's run and the peers' worker)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


class Workload:
    """MNIST loaded once, with targets per (dtype, loss) built on demand."""

    def __init__(self, data=None):
        if data is None:
            from ..datasets import load_mnist

            data = load_mnist()
        X_train, y_train, X_test, y_test = data
        self.X_train = np.ascontiguousarray(X_train)
        self.y_train = np.asarray(y_train)
        self.X_test = np.ascontiguousarray(X_test)
        self.y_test = np.asarray(y_test)
        self._targets = {}
        self._gauss = {}

    def train_inputs(self, data, dtype):
        """(X, x_scale) of the training set for data "mnist" (uint8 pixels) or "gauss"."""
        if data == "mnist":
            return self.X_train, _checks.UINT8_SCALE
        if data != "gauss":
            raise ValueError(f"unknown data {data!r}; choose mnist or gauss")
        if dtype not in self._gauss:
            self._gauss[dtype] = gaussian_inputs(self.X_train.shape, dtype)
        return self._gauss[dtype], 1.0

    @property
    def n_train(self):
        return self.X_train.shape[0]

    def targets(self, dtype, loss, n_out=10):
        key = (dtype, loss, n_out)
        if key not in self._targets:
            self._targets[key] = _checks.check_y(self.y_train, self.n_train, n_out, np.dtype(dtype), loss)
        return self._targets[key]


# ---- one measurement ----------------------------------------------------------------------------
@dataclass
class Result:
    """Timings of one config: `seconds` holds one entry per timed call over `n_samples` samples.

    `threads_used` and `mode` are what the last training epoch reported (EpochResult): a case
    labelled 2 threads whose kernel ran serially says so. Peers (timed in their own process) have
    `separate_process` set."""

    config: Config
    n_samples: int
    seconds: list = field(default_factory=list)
    compile_seconds: float = 0.0
    subsampled: bool = False
    note: str = ""
    threads_used: int = 0  # 0: not reported (inference, peers)
    mode: str = ""
    separate_process: bool = False

    @property
    def median(self):
        return statistics.median(self.seconds)

    @property
    def samples_per_second(self):
        m = self.median
        return self.n_samples / m if m > 0 else math.inf

    @property
    def ms_per_epoch(self):
        """Milliseconds per full epoch (60,000 samples), per test-set pass (10,000 samples), or per
        single-image predict call (latency)."""
        full = {"train": MNIST_TRAIN, "infer": MNIST_TEST, "latency": 1}[self.config.kind]
        return 1e3 * full / self.samples_per_second

    @property
    def gflops(self):
        """Dense GFLOP/s achieved (training: forward + gradients + deltas; inference: forward);
        None for latency rows."""
        sizes = self.config.net.sizes
        if self.config.kind == "train":
            per_sample = train_flops_per_sample(sizes)
        elif self.config.kind == "infer":
            per_sample = forward_flops_per_sample(sizes)
        else:
            return None
        return per_sample * self.samples_per_second / 1e9

    def percent_of_peak(self, peaks):
        """gflops as a percentage of `peaks[threads]` (GFLOP/s per thread count), or None."""
        g = self.gflops
        peak = (peaks or {}).get(self.config.threads)
        if g is None or not peak:
            return None
        return 100.0 * g / peak

    @property
    def ran(self):
        """How the kernel really ran, e.g. 'sync, 2 threads' or 'serial, 1 thread (of 2)'; '' if unknown."""
        if not self.threads_used:
            return ""
        t = f"{self.threads_used} thread" + ("s" if self.threads_used != 1 else "")
        if self.threads_used != self.config.threads:
            t += f" (of {self.config.threads})"
        return f"{self.mode}, {t}" if self.mode else t

    def to_dict(self):
        return {
            **asdict(self.config), "label": self.config.label, "n_samples": self.n_samples,
            "subsampled": self.subsampled, "seconds": list(self.seconds), "median_seconds": self.median,
            "samples_per_second": self.samples_per_second, "ms_per_epoch": self.ms_per_epoch,
            "compile_seconds": self.compile_seconds, "note": self.note, "threads_used": self.threads_used,
            "mode": self.mode, "separate_process": self.separate_process, "gflops": self.gflops,
        }


def _timed(fn, collect=True):
    if collect:
        gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()


def n_params(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def numpy_step_seconds(sizes, batch_size):
    """Rough cost of one NumPy-reference SGD step on one core: Python and dispatch overhead, the
    parameter update (proportional to the parameters), and the per-sample matrix work. Only used
    to size subsamples when one is asked for; the constants were fitted to the reference on a
    2-core AMD EPYC."""
    p = n_params(sizes)
    return 80e-6 + 1.4e-9 * p + batch_size * (1e-6 + 5e-11 * p)


def epoch_samples(config, budget_seconds=None, max_samples=None):
    """Training samples timed per round for `config`'s case. By default (no budget, no cap) a full
    60,000-sample epoch. A subsample only when asked: with `budget_seconds`, the largest whole
    number of minibatches (at least 20) the NumPy reference would get through in that time; with
    `max_samples`, at most that many. The same for every backend of a case and every run."""
    if config.kind == "infer":
        return MNIST_TEST
    if config.kind == "latency":
        return LATENCY_CALLS
    n = MNIST_TRAIN if max_samples is None else min(max_samples, MNIST_TRAIN)
    if budget_seconds is not None:
        bs = config.batch_size
        steps = int(budget_seconds / numpy_step_seconds(config.net.sizes, bs))
        n = min(n, max(20, steps) * bs)
    return n


class Runner:
    """Sets one config up (network, plan, JIT compilation, sample count) and times calls of it.

    ``runner.reset()`` restores the initial weights (untimed); ``runner.run()`` makes one timed call
    and appends its duration to ``runner.result.seconds``.
    """

    def __init__(self, config, workload, budget_seconds=None, max_samples=None, seed=0):
        from ..network import Network

        self.config = config
        self.workload = workload
        spec = config.net
        self.backend = get_backend(config.backend)
        self.net = Network(list(spec.sizes), activation=spec.activation, output=spec.output, dtype=config.dtype,
                           seed=seed)
        self.initial = self.net.params.copy()
        self._rng = np.random.default_rng(seed)
        if config.kind == "train":
            self._setup_train(epoch_samples(config, budget_seconds, max_samples))
        elif config.kind == "latency":
            self._setup_latency()
        else:
            self._setup_infer()

    # training: one call = one epoch over n samples
    def _plan(self, n):
        c, spec, w = self.config, self.config.net, self.workload
        targets, labels = w.targets(c.dtype, spec.loss, spec.sizes[-1])
        order = self._order[:n]
        steps = -(-n // c.batch_size)
        X, x_scale = w.train_inputs(c.data, c.dtype)
        return EpochPlan(X=X, x_scale=x_scale, targets=targets, labels=labels, order=order,
                         lrs=np.full(steps, spec.lr), batch_size=c.batch_size, loss=spec.loss, threads=c.threads,
                         deterministic=c.deterministic)

    def _setup_train(self, n):
        n = min(n, self.workload.n_train)  # a smaller workload (tests) is timed whole
        self._order = self._rng.permutation(self.workload.n_train)[:n].astype(np.int64)
        self.plan = self._plan(n)
        self.ws = self.backend.prepare(self.net, self.plan)  # JIT, buffers, caches: done here, never timed
        self.result = Result(self.config, n, compile_seconds=self.ws.compile_seconds, subsampled=n < MNIST_TRAIN)
        self.reset()

    # inference: one call = a forward pass over the 10,000 test images
    def _setup_infer(self):
        w = self.workload
        self.X = w.X_test
        self.backend.forward(self.net, self.X, _checks.UINT8_SCALE, self.config.threads)  # warm-up (and JIT)
        self.result = Result(self.config, self.X.shape[0])

    # latency: one call = LATENCY_CALLS single-image predictions through the public API
    def _setup_latency(self):
        w = self.workload
        rows = min(LATENCY_CALLS, w.X_test.shape[0])
        self.rows = [w.X_test[i:i + 1] for i in range(rows)]
        self.calls = [self.rows[i % rows] for i in range(LATENCY_CALLS)]
        self.net.predict_proba(self.rows[0], backend=self.config.backend, threads=self.config.threads)  # warm-up
        self.result = Result(self.config, LATENCY_CALLS)

    def _latency_calls(self):
        predict, backend, threads = self.net.predict_proba, self.config.backend, self.config.threads
        out = None
        for x in self.calls:
            out = predict(x, backend=backend, threads=threads)
        return out

    def reset(self):
        """Restore the initial weights, so every timed call does the same work (untimed)."""
        self.net.params[...] = self.initial

    def call(self):
        """The measured operation itself, untimed (pytest-benchmark times it)."""
        if self.config.kind == "train":
            epoch = self.backend.train_epoch(self.net, self.plan, self.ws)
            self.result.threads_used, self.result.mode = int(epoch.threads_used), str(epoch.mode)
            return epoch
        if self.config.kind == "latency":
            return self._latency_calls()
        return self.backend.forward(self.net, self.X, _checks.UINT8_SCALE, self.config.threads)

    def run(self, wake_seconds=0.0):
        """One timed call; its duration is appended to result.seconds and returned. A full garbage
        collection comes first (none runs during the call); with wake_seconds, untimed calls
        follow it for that long (at least one), so that the timed call finds the backend's
        threads awake, as a peer's back-to-back calls do: after idle time, or after the ~25 ms
        collection with one core busy, the first 10k forwards paid for waking threads, caches
        and clocks (cython's 784-128-10 forward: 7.9 ms in the README run against 4.4 back to
        back)."""
        if wake_seconds > 0:
            gc.collect()
            until = time.perf_counter() + wake_seconds
            self.call()
            while time.perf_counter() < until:
                self.call()
        seconds = _timed(self.call, collect=wake_seconds <= 0)
        self.result.seconds.append(seconds)
        return seconds


# Idle time before each timed call when backends alternate: the worker threads a backend leaves
# behind (OpenBLAS, libgomp, Numba's pool) keep spinning for up to ~0.1 s after its call and
# would steal the next backend's cores (measured: cython's 10k forward 9 -> 18 ms right after numpy).
SETTLE_SECONDS = 0.3
# Untimed infer/latency calls before each timed one (Runner.run).
WAKE_SECONDS = 0.05


def measure(configs, workload=None, repeats=5, budget_seconds=None, warmup=1, progress=None, max_samples=None,
            settle_seconds=SETTLE_SECONDS):
    """Time every config: per case, the backends' rounds are interleaved so that a change in machine
    load affects all of them alike, with `settle_seconds` of idle time before each call of a case
    timed against others; infer/latency calls are preceded by WAKE_SECONDS of untimed ones
    (Runner.run). Returns a list of Results in the order of `configs`."""
    workload = workload or Workload()
    by_case = {}
    for c in configs:
        by_case.setdefault(c.case, []).append(c)
    results = {}
    for case_configs in by_case.values():
        runners = []
        for c in case_configs:
            runners.append(Runner(c, workload, budget_seconds=budget_seconds, max_samples=max_samples))
        for round_ in range(warmup + repeats):
            for r in runners:
                if r.config.kind == "train":
                    r.reset()
                if len(runners) > 1 and settle_seconds > 0:
                    time.sleep(settle_seconds)
                # an epoch amortises waking up; a forward pass does not (Runner.run)
                r.run(wake_seconds=WAKE_SECONDS if r.config.kind != "train" else 0.0)
                if round_ < warmup:  # warm-up rounds are not kept
                    r.result.seconds.pop()
        for r in runners:
            results[r.config] = r.result
            if progress is not None:
                progress(r.result)
    return [results[c] for c in configs if c in results]
