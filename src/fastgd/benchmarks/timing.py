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
from .configs import MNIST_TEST, MNIST_TRAIN, Config


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
    """Timings of one config: `seconds` holds one entry per timed call over `n_samples` samples."""

    config: Config
    n_samples: int
    seconds: list = field(default_factory=list)
    compile_seconds: float = 0.0
    subsampled: bool = False
    note: str = ""

    @property
    def median(self):
        return statistics.median(self.seconds)

    @property
    def samples_per_second(self):
        m = self.median
        return self.n_samples / m if m > 0 else math.inf

    @property
    def ms_per_epoch(self):
        """Milliseconds per full epoch (60,000 samples) or per test-set pass (10,000 samples)."""
        full = MNIST_TRAIN if self.config.kind == "train" else MNIST_TEST
        return 1e3 * full / self.samples_per_second

    def to_dict(self):
        return {
            **asdict(self.config), "label": self.config.label, "n_samples": self.n_samples,
            "subsampled": self.subsampled, "seconds": list(self.seconds), "median_seconds": self.median,
            "samples_per_second": self.samples_per_second, "ms_per_epoch": self.ms_per_epoch,
            "compile_seconds": self.compile_seconds, "note": self.note,
        }


def _timed(fn):
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
    to size subsamples; the constants were fitted to the reference on the 2-core AMD EPYC this
    project is developed on."""
    p = n_params(sizes)
    return 80e-6 + 1.4e-9 * p + batch_size * (1e-6 + 5e-11 * p)


def epoch_samples(config, budget_seconds=0.3, max_samples=None):
    """Training samples timed per round for `config`'s case: a full 60,000-sample epoch when the
    NumPy reference would finish it within `budget_seconds`, else the largest whole number of
    minibatches it would (at least 20). The same for every backend of a case and every run, so
    timings are comparable within a group and across saved runs."""
    cap = MNIST_TRAIN if max_samples is None else min(max_samples, MNIST_TRAIN)
    if config.kind != "train":
        return MNIST_TEST
    bs = config.batch_size
    steps = int(budget_seconds / numpy_step_seconds(config.net.sizes, bs))
    n = max(20, steps) * bs
    return cap if n >= cap else n


class Runner:
    """Sets one config up (network, plan, JIT compilation, sample count) and times calls of it.

    ``runner.reset()`` restores the initial weights (untimed); ``runner.run()`` makes one timed call
    and appends its duration to ``runner.result.seconds``.
    """

    def __init__(self, config, workload, budget_seconds=0.3, max_samples=None, seed=0):
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
        else:
            self._setup_infer()

    # training: one call = one epoch over n samples
    def _plan(self, n):
        c, spec, w = self.config, self.config.net, self.workload
        targets, labels = w.targets(c.dtype, spec.loss, spec.sizes[-1])
        order = self._order[:n]
        steps = -(-n // c.batch_size)
        return EpochPlan(X=w.X_train, x_scale=_checks.UINT8_SCALE, targets=targets, labels=labels, order=order,
                         lrs=np.full(steps, spec.lr), batch_size=c.batch_size, loss=spec.loss, threads=c.threads,
                         deterministic=c.deterministic)

    def _setup_train(self, n):
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

    def reset(self):
        """Restore the initial weights, so every timed call does the same work (untimed)."""
        self.net.params[...] = self.initial

    def call(self):
        """The measured operation itself, untimed (pytest-benchmark times it)."""
        if self.config.kind == "train":
            return self.backend.train_epoch(self.net, self.plan, self.ws)
        return self.backend.forward(self.net, self.X, _checks.UINT8_SCALE, self.config.threads)

    def run(self):
        """One timed call; its duration is appended to result.seconds and returned."""
        seconds = _timed(self.call)
        self.result.seconds.append(seconds)
        return seconds


def measure(configs, workload=None, repeats=5, budget_seconds=0.3, warmup=1, progress=None, max_samples=None):
    """Time every config: per case, the backends' rounds are interleaved so that a change in machine
    load affects all of them alike. Returns a list of Results in the order of `configs`."""
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
                r.run()
                if round_ < warmup:  # warm-up rounds are not kept
                    r.result.seconds.pop()
        for r in runners:
            results[r.config] = r.result
            if progress is not None:
                progress(r.result)
    return [results[c] for c in configs if c in results]
