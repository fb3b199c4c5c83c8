"""Benchmarks: the configurations, one timed epoch, medians, speed-ups, tables, JSON, plots, peers.

Shared by the pytest-benchmark suite in ``bench/`` and by ``fastgd bench``. One measurement is one
call of the backend contract (``backend.train_epoch(net, EpochPlan(...))`` or ``backend.forward``),
timed with ``time.perf_counter``; a backend's ``prepare(net, plan)`` (JIT compilation) runs before
and is never timed. Every round starts from the same initial weights, so every round does the same
work.

Slow cases (NumPy at batch 1 on the large network would take minutes per epoch) time a random
subsample of the 60,000 training images (`epoch_samples`: what the NumPy reference would get
through in a time budget, the same count for every backend of a case and for every run), gathered
from the full array so memory behaves as in a real epoch; they report samples per second and an
epoch time extrapolated to 60,000 samples, and the tables mark them with ``*``. Speed-ups are
ratios of samples per second measured in the same run, from medians of several rounds.
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import _checks
from .backends import EpochPlan, available_backends, get_backend

MNIST_TRAIN = 60_000  # one training epoch
MNIST_TEST = 10_000  # one inference pass
BACKEND_ORDER = ("numpy", "cython", "numba")  # numpy first: it is the reference
PEERS = ("torch", "jax")
README_START = "<!-- bench-table:start -->"
README_END = "<!-- bench-table:end -->"


# ---- what is measured -------------------------------------------------------------------------
@dataclass(frozen=True)
class NetSpec:
    """A benchmark network and the recipe it is trained with."""

    key: str
    sizes: tuple
    activation: str
    output: str
    loss: str
    lr: float
    dtypes: tuple = ("float32",)

    @property
    def name(self):
        return "-".join(str(s) for s in self.sizes)


NETWORKS = (
    # The lesson's network (Nielsen ch. 1): sigmoid everywhere, quadratic cost; also in float64.
    NetSpec("lesson", (784, 16, 16, 10), "sigmoid", "sigmoid", "mse", 3.0, ("float32", "float64")),
    NetSpec("wide", (784, 128, 10), "relu", "softmax", "cross_entropy", 0.05),
    NetSpec("large", (784, 512, 512, 10), "relu", "softmax", "cross_entropy", 0.05),
)
NETWORK_BY_KEY = {n.key: n for n in NETWORKS}
BATCH_SIZES = (1, 10, 32, 128)
KINDS = ("train", "infer")


def thread_counts():
    """1 and every core (just 1 on a one-core machine)."""
    return tuple(sorted({1, _checks.available_cores()}))


@dataclass(frozen=True)
class Config:
    """One benchmark: a backend (or peer) on one case."""

    kind: str  # "train": one epoch of minibatch SGD; "infer": forward pass over the test set
    backend: str
    network: str  # a NetSpec key
    dtype: str
    threads: int
    batch_size: int = 0  # 0 for inference (forward takes the whole set)
    deterministic: bool = True

    @property
    def net(self):
        return NETWORK_BY_KEY[self.network]

    @property
    def case(self):
        """Everything but the backend: configs with the same case are compared with each other."""
        return (self.kind, self.network, self.dtype, self.batch_size, self.threads, self.deterministic)

    def with_backend(self, backend):
        return replace(self, backend=backend)

    @property
    def label(self):
        """Human-readable case, e.g. 'train 784-16-16-10 float32 batch 10, 2 threads'."""
        threads = f"{self.threads} thread" + ("s" if self.threads > 1 else "")
        what = f"batch {self.batch_size}" if self.kind == "train" else "forward"
        extra = "" if self.deterministic else ", nondeterministic"
        return f"{self.kind} {self.net.name} {self.dtype} {what}, {threads}{extra}"

    @property
    def id(self):
        """Short id for pytest, e.g. 'train-lesson-float32-bs10-t1-numpy'."""
        parts = [self.kind, self.network, self.dtype]
        if self.kind == "train":
            parts.append(f"bs{self.batch_size}")
        parts.append(f"t{self.threads}")
        if not self.deterministic:
            parts.append("nondet")
        return "-".join(parts + [self.backend])

    @property
    def quick(self):
        return is_quick(self)


def is_quick(config):
    """The smoke-test subset: the lesson network at batch 10 and 128 (1 and all threads), the large
    network at batch 128 on one core (multithreaded BLAS on a shared machine can be 10x slower
    and this subset must stay under a minute), and inference with both on every core."""
    all_threads = max(thread_counts())
    if config.dtype != "float32" or not config.deterministic:
        return False
    if config.kind == "infer":
        return config.network in ("lesson", "large") and config.threads == all_threads
    if config.network == "lesson":
        return config.batch_size in (10, 128)
    return config.network == "large" and config.batch_size == 128 and config.threads == 1


def is_readme(config):
    """The cases in the README table."""
    all_threads = max(thread_counts())
    if not config.deterministic:
        return False
    if config.kind == "infer":
        return config.dtype == "float32" and config.network in ("lesson", "large") and config.threads == all_threads
    wanted = {
        ("lesson", "float32", 10, 1), ("lesson", "float32", 10, all_threads), ("lesson", "float32", 128, all_threads),
        ("lesson", "float64", 10, 1), ("wide", "float32", 32, all_threads), ("large", "float32", 128, all_threads),
    }
    return (config.network, config.dtype, config.batch_size, config.threads) in wanted


PRESETS = {"quick": is_quick, "readme": is_readme, "full": lambda config: True}


def ordered_backends(backends=None):
    """`backends` (default: every one that loads here) in BACKEND_ORDER, numpy first, then peers."""
    names = available_backends() if backends is None else list(backends)
    known = [b for b in BACKEND_ORDER + PEERS if b in names]
    return known + sorted(b for b in names if b not in known)


def all_configs(backends=None, kinds=KINDS):
    """The whole matrix, grouped by case with the backends of a case next to each other (numpy first).

    Training: every network x its dtypes x BATCH_SIZES x thread_counts(); inference: every
    network x its dtypes x thread_counts().
    """
    backends = ordered_backends(backends)
    out = []
    for kind in kinds:
        for spec in NETWORKS:
            for dtype in spec.dtypes:
                for batch_size in (BATCH_SIZES if kind == "train" else (0,)):
                    for threads in thread_counts():
                        for backend in backends:
                            out.append(Config(kind, backend, spec.key, dtype, threads, batch_size))
    return out


def select_configs(preset="quick", backends=None, networks=None, batch_sizes=None, threads=None, dtypes=None,
                   kinds=None, deterministic=True):
    """The configs of `preset`, narrowed by any of the other filters (None: no filter)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if networks is not None:
        unknown = [n for n in networks if n not in NETWORK_BY_KEY]
        if unknown:
            names = ", ".join(f"{n.key} ({n.name})" for n in NETWORKS)
            raise ValueError(f"unknown network {unknown[0]!r}; choose from: {names}")
    if kinds is not None:
        for k in kinds:
            _checks.check_choice(k, KINDS, "kind")
    keep = PRESETS[preset]
    out = []
    for c in all_configs(backends, kinds or KINDS):
        if not keep(c):
            continue
        if networks is not None and c.network not in networks:
            continue
        if batch_sizes is not None and c.kind == "train" and c.batch_size not in batch_sizes:
            continue
        if threads is not None and c.threads not in threads:
            continue
        if dtypes is not None and c.dtype not in dtypes:
            continue
        out.append(c if deterministic else replace(c, deterministic=False))
    return out


# ---- data ---------------------------------------------------------------------------------------
class Workload:
    """MNIST loaded once, with targets per (dtype, loss) built on demand."""

    def __init__(self, data=None):
        if data is None:
            from .datasets import load_mnist

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
        from .network import Network

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
        bs = self.config.batch_size
        self._order = self._rng.permutation(self.workload.n_train)[:n].astype(np.int64)
        compile_seconds = 0.0
        prepare = getattr(self.backend, "prepare", None)
        if prepare is not None:  # JIT compilation: done here, never timed
            compile_seconds = float(prepare(self.net, self._plan(min(n, bs))) or 0.0)
        self.plan = self._plan(n)
        self.result = Result(self.config, n, compile_seconds=compile_seconds, subsampled=n < MNIST_TRAIN)
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
            return self.backend.train_epoch(self.net, self.plan)
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


# ---- comparison ---------------------------------------------------------------------------------
def compare(results):
    """Rows for the table: every result with `ratios`, its samples/s divided by that of each fastgd
    backend measured on the same case (a row's own backend excluded)."""
    by_case = {}
    for r in results:
        by_case.setdefault(r.config.case, {})[r.config.backend] = r
    rows = []
    for r in results:
        peers = by_case[r.config.case]
        ratios = {}
        for name, other in peers.items():
            if name != r.config.backend and name not in PEERS:
                ratios[name] = r.samples_per_second / other.samples_per_second
        rows.append({"result": r, "ratios": ratios})
    return rows


def speedup(results, config, over="numpy"):
    """samples/s of `config` divided by that of `over` on the same case, or None if not measured."""
    mine = theirs = None
    for r in results:
        if r.config == config:
            mine = r
        elif r.config == config.with_backend(over):
            theirs = r
    if mine is None or theirs is None:
        return None
    return mine.samples_per_second / theirs.samples_per_second


def _ratio_columns(results):
    present = {r.config.backend for r in results}
    return [b for b in ordered_backends(present) if b not in PEERS]


def _fmt_rate(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _fmt_ratio(x):
    if x >= 10:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _fmt_ms(x):
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table_rows(results):
    """The table as a header and string rows: config, backend, samples, samples/s, ms/epoch, x <backend>..."""
    columns = _ratio_columns(results)
    header = ["config", "backend", "samples", "samples/s", "ms/epoch"] + [f"x {b}" for b in columns]
    body = []
    last_case = None
    for row in compare(results):
        r = row["result"]
        label = r.config.label if r.config.case != last_case else ""
        last_case = r.config.case
        star = "*" if r.subsampled else ""
        line = [label, r.config.backend, f"{r.n_samples}{star}", _fmt_rate(r.samples_per_second),
                f"{_fmt_ms(r.ms_per_epoch)}{star}"]
        line += [f"{row['ratios'][b]:.2f}" if b in row["ratios"] else "" for b in columns]
        body.append(line)
    return header, body


FOOTNOTE = ("ms/epoch: per 60,000-sample training epoch, or per 10,000-image forward pass for infer rows; "
            "x B: samples/s relative to backend B on the same case (median of the rounds, same run); "
            "* timed on a random subsample of that many images, epoch time extrapolated.")


def format_table(results):
    """The plain-text table, with a footnote."""
    header, body = table_rows(results)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    right = set(range(2, len(header)))

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    return "\n".join(lines + ["", FOOTNOTE])


def markdown_table(results, machine=None, command=None):
    """A compact Markdown table for the README: one row per case, one column per backend, each cell
    'ms per epoch (speed-up over numpy)', preceded by the machine and date."""
    machine = machine or machine_info()
    backends = ordered_backends({r.config.backend for r in results})
    cases = {}
    for r in results:
        cases.setdefault(r.config.case, {})[r.config.backend] = r
    lines = []
    intro = (f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores, load average "
             f"{machine['load_average']} at the start), Python {machine['python']}, NumPy {machine['numpy']}, "
             f"fastgd {machine['fastgd']}")
    if command:
        intro += f", with `{command}`"
    lines.append(intro + ". Milliseconds per 60,000-image training epoch (forward: per 10,000-image pass); "
                 "in brackets the speed-up over NumPy, from medians of the same run"
                 + ("; * timed on a random subsample and extrapolated" if any(r.subsampled for r in results) else "")
                 + ".")
    lines.append("")
    lines.append("| config | " + " | ".join(backends) + " |")
    lines.append("|---|" + "---:|" * len(backends))
    for per_backend in cases.values():
        any_r = next(iter(per_backend.values()))
        ref = per_backend.get("numpy")
        cells = []
        for b in backends:
            r = per_backend.get(b)
            if r is None:
                cells.append("—")
                continue
            star = "*" if r.subsampled else ""
            cell = f"{_fmt_ms(r.ms_per_epoch)}{star} ms"
            if ref is not None and b != "numpy":
                cell += f" ({_fmt_ratio(r.samples_per_second / ref.samples_per_second)}×)"
            cells.append(cell)
        lines.append(f"| {any_r.config.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(results, machine=None, settings=None):
    """A JSON-ready dict: machine, settings, and one record per result with its ratios."""
    records = []
    for row in compare(results):
        d = row["result"].to_dict()
        d["ratios"] = row["ratios"]
        records.append(d)
    return {"machine": machine or machine_info(), "settings": settings or {}, "results": records}


def plot(results, path):
    """Write a PNG bar chart of samples/s per case and backend (log scale). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install 'fastgd[plot]'") from exc
    backends = ordered_backends({r.config.backend for r in results})
    cases = {}
    for r in results:
        cases.setdefault(r.config.case, {})[r.config.backend] = r
    labels = [next(iter(v.values())).config.label for v in cases.values()]
    height = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(cases) * max(1, len(backends)) ** 0.5 + 1.6))
    y = np.arange(len(cases))
    for i, b in enumerate(backends):
        values = [v[b].samples_per_second if b in v else 0 for v in cases.values()]
        ax.barh(y + (i - (len(backends) - 1) / 2) * height, values, height=height, label=b)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("samples per second (log scale; higher is better)")
    m = machine_info()
    ax.set_title(f"fastgd {m['fastgd']} on {m['cpu']} ({m['cores']} cores), {m['date']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def machine_info():
    """CPU model, cores, date and versions, for tables and JSON."""
    from . import __version__

    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    return {
        "cpu": cpu,
        "cores": _checks.available_cores(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fastgd": __version__,
        "platform": platform.platform(),
        "load_average": _load_average(),
    }


def _load_average():
    """The 1-minute load average (None where unknown): above ~0 other work shared the cores."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def update_readme(path, block):
    """Replace the text between README_START and README_END in `path` with `block` (markers kept)."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0:
        raise ValueError(f"{path} has no '{README_START}' ... '{README_END}' markers")
    if end < start or text.count(README_START) != 1 or text.count(README_END) != 1:
        raise ValueError(f"{path} must hold exactly one '{README_START}' followed by one '{README_END}'")
    new = text[:start + len(README_START)] + "\n" + block.strip("\n") + "\n" + text[end:]
    path.write_text(new)
    return path


# ---- peers: PyTorch and JAX, each in its own process -------------------------------------------
def peer_available(name):
    """True if `name` ("torch" or "jax") can be imported here."""
    import importlib.util

    module = {"torch": "torch", "jax": "jax"}[name]
    return importlib.util.find_spec(module) is not None


def measure_peers(configs, peers=PEERS, repeats=5, budget_seconds=0.3, warmup=1, max_samples=None):
    """Run the cases of `configs` with each installed peer, in a subprocess per peer and thread count
    (its own thread pools never run beside fastgd's; the process is pinned to `threads` cores).
    Returns (results, messages)."""
    results, messages = [], []
    cases = {}
    for c in configs:
        cases.setdefault(c.case, c)
    for peer in peers:
        if not peer_available(peer):
            messages.append(f"{peer} is not installed; skipped (pip install {'torch' if peer == 'torch' else 'jax jaxlib'})")
            continue
        by_threads = {}
        for c in cases.values():
            by_threads.setdefault(c.threads, []).append(c.with_backend(peer))
        for threads, group in sorted(by_threads.items()):
            request = {"peer": peer, "threads": threads, "configs": [asdict(c) for c in group], "repeats": repeats,
                       "budget_seconds": budget_seconds, "warmup": warmup, "max_samples": max_samples}
            env = dict(os.environ)
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(threads)
            if peer == "jax":
                env["JAX_PLATFORMS"] = "cpu"
                if threads == 1:
                    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
            proc = subprocess.run([sys.executable, "-m", "fastgd.benchmarks", "peer-worker"], input=json.dumps(request),
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                messages.append(f"{peer} ({threads} threads) failed: {tail}")
                continue
            for d in json.loads(proc.stdout.strip().splitlines()[-1]):
                cfg = Config(**d["config"])
                results.append(Result(cfg, d["n_samples"], d["seconds"], d["compile_seconds"], d["subsampled"],
                                      d.get("note", "")))
    return results, messages


class _PeerRunner:
    """Interface shared by the peers inside the worker: setup, then run() per timed call."""

    def __init__(self, config, workload, budget_seconds, max_samples, seed=0):
        self.config = config
        self.spec = config.net
        self.workload = workload
        self.rng = np.random.default_rng(seed)
        self.compile_seconds = 0.0
        self.build()
        if config.kind == "train":
            n = self.n = epoch_samples(config, budget_seconds, max_samples)
            self.order = self.rng.permutation(workload.n_train)[:n].astype(np.int64)
            start = time.perf_counter()
            self.prepare_epoch(n)
            self.epoch()  # the first call compiles (JAX) or allocates (torch): not timed
            self.compile_seconds = time.perf_counter() - start
        else:
            self.prepare_infer()
            self.infer()
            self.n = workload.X_test.shape[0]

    def run(self):
        if self.config.kind == "train":
            self.reset()
            return _timed(self.epoch)
        return _timed(self.infer)


class _TorchRunner(_PeerRunner):
    """PyTorch as a careful user writes it: nn.Sequential + optim.SGD, data converted to float once."""

    def build(self):
        import torch
        from torch import nn

        torch.manual_seed(0)
        self.torch = torch
        dt = torch.float32 if self.config.dtype == "float32" else torch.float64
        self.dtype = dt
        act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[self.spec.activation]
        layers = []
        sizes = self.spec.sizes
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        if self.spec.output == "sigmoid":
            layers.append(nn.Sigmoid())  # softmax output: folded into CrossEntropyLoss on the logits
        self.model = nn.Sequential(*layers).to(dt)
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.spec.lr)
        w = self.workload
        np_dt = np.dtype(self.config.dtype)
        self.X = torch.from_numpy(w.X_train.astype(np_dt)).div_(255)
        self.labels = torch.from_numpy(w.y_train.astype(np.int64))
        self.T = torch.nn.functional.one_hot(self.labels, sizes[-1]).to(dt)
        self.X_test = torch.from_numpy(w.X_test.astype(np_dt)).div_(255)

    def reset(self):
        self.model.load_state_dict(self.initial)

    def prepare_epoch(self, n):
        self.batches = list(self.torch.from_numpy(self.order[:n]).split(self.config.batch_size))

    def epoch(self):
        torch, model, opt = self.torch, self.model, self.opt
        mse = self.spec.loss == "mse"
        for idx in self.batches:
            out = model(self.X[idx])
            if mse:
                loss = 0.5 * ((out - self.T[idx]) ** 2).sum(dim=1).mean()
            elif self.spec.output == "softmax":
                loss = torch.nn.functional.cross_entropy(out, self.labels[idx])
            else:
                loss = torch.nn.functional.binary_cross_entropy(out, self.T[idx], reduction="sum") / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def prepare_infer(self):
        pass

    def infer(self):
        with self.torch.inference_mode():
            out = self.model(self.X_test)
            if self.spec.output == "softmax":
                out = out.softmax(dim=1)
        return out


class _JaxRunner(_PeerRunner):
    """JAX as a careful user writes it: the whole epoch one jit-compiled lax.scan over minibatches."""

    def build(self):
        import jax

        if self.config.dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax

        self.jax, self.jnp = jax, jnp
        dt = jnp.float32 if self.config.dtype == "float32" else jnp.float64
        spec = self.spec
        act = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh}[spec.activation]
        rng = np.random.default_rng(0)
        params = []
        for a, b in zip(spec.sizes[:-1], spec.sizes[1:]):
            params.append((jnp.asarray(rng.standard_normal((a, b)) * np.sqrt(2.0 / (a + b)), dtype=dt),
                           jnp.zeros(b, dtype=dt)))
        self.initial = params

        def logits(params, x):
            for W, b in params[:-1]:
                x = act(x @ W + b)
            W, b = params[-1]
            return x @ W + b

        def loss_fn(params, x, t):
            z = logits(params, x)
            if spec.loss == "mse":
                a = jax.nn.sigmoid(z) if spec.output == "sigmoid" else jax.nn.softmax(z) if spec.output == "softmax" else z
                return 0.5 * jnp.mean(jnp.sum((a - t) ** 2, axis=1))
            if spec.output == "softmax":
                return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(z), axis=1))
            return jnp.mean(jnp.sum(t * jax.nn.softplus(-z) + (1 - t) * jax.nn.softplus(z), axis=1))

        lr = spec.lr

        def step(params, X, T, idx):
            g = jax.grad(loss_fn)(params, X[idx], T[idx])
            return jax.tree_util.tree_map(lambda p, gp: p - lr * gp, params, g)

        @jax.jit
        def epoch(params, X, T, batches):
            params, _ = lax.scan(lambda p, idx: (step(p, X, T, idx), None), params, batches)
            return params

        self._epoch = epoch
        self._step = jax.jit(step)

        def predict(params, x):
            z = logits(params, x)
            return jax.nn.softmax(z) if spec.output == "softmax" else jax.nn.sigmoid(z) if spec.output == "sigmoid" else z

        self._predict = jax.jit(predict)
        w = self.workload
        self.X = jax.device_put(jnp.asarray(w.X_train, dtype=dt) / 255)
        self.T = jax.device_put(jax.nn.one_hot(jnp.asarray(w.y_train), spec.sizes[-1], dtype=dt))
        self.X_test = jax.device_put(jnp.asarray(w.X_test, dtype=dt) / 255)
        self.params = params

    def reset(self):
        self.params = self.initial

    def prepare_epoch(self, n):
        bs = self.config.batch_size
        full = (n // bs) * bs
        self.batches = self.jnp.asarray(self.order[:full].reshape(-1, bs))
        self.rest = self.jnp.asarray(self.order[full:n]) if n > full else None

    def epoch(self):
        params = self._epoch(self.params, self.X, self.T, self.batches)
        if self.rest is not None:  # a smaller last minibatch, as in every fastgd epoch
            params = self._step(params, self.X, self.T, self.rest)
        self.jax.block_until_ready(params)
        self.params = params

    def prepare_infer(self):
        pass

    def infer(self):
        return self._predict(self.params, self.X_test).block_until_ready()


def _peer_worker():
    """Entry point of the peer subprocess: a JSON request on stdin, a JSON list of results on stdout."""
    request = json.loads(sys.stdin.read())
    threads = int(request["threads"])
    if threads < _checks.available_cores() and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    runner_cls = {"torch": _TorchRunner, "jax": _JaxRunner}[request["peer"]]
    if request["peer"] == "torch":
        import torch

        torch.set_num_threads(threads)
    workload = Workload()
    out = []
    for d in request["configs"]:
        config = Config(**d)
        runner = runner_cls(config, workload, request["budget_seconds"], request["max_samples"])
        for _ in range(request["warmup"]):
            runner.run()
        seconds = [runner.run() for _ in range(request["repeats"])]
        out.append({"config": asdict(config), "n_samples": runner.n, "seconds": seconds,
                    "compile_seconds": runner.compile_seconds,
                    "subsampled": config.kind == "train" and runner.n < MNIST_TRAIN})
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1:] == ["peer-worker"]:
        _peer_worker()
    else:
        sys.exit("usage: python -m fastgd.benchmarks peer-worker  (internal; use `fastgd bench`)")
