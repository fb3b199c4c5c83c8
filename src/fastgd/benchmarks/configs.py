"""What is measured: the benchmark networks, one Config per backend x case, and the presets."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .. import _checks
from ..backends import available_backends

MNIST_TRAIN = 60_000  # one training epoch
MNIST_TEST = 10_000  # one inference pass
BACKEND_ORDER = ("numpy", "cython", "numba")  # numpy first: it is the reference
PEERS = ("torch", "jax")


@dataclass(frozen=True)
class NetSpec:
    """A benchmark network and the settings it is trained with (loss, learning rate)."""

    key: str
    sizes: tuple
    activation: str
    output: str
    loss: str
    lr: float
    dtypes: tuple = ("float32",)
    matrix: bool = True  # in the full matrix (every batch size, thread count and dtype); else issue cases only

    @property
    def name(self):
        return "-".join(str(s) for s in self.sizes)


NETWORKS = (
    # The lesson's network (Nielsen ch. 1): sigmoid everywhere, quadratic cost; also in float64.
    NetSpec("lesson", (784, 16, 16, 10), "sigmoid", "sigmoid", "mse", 3.0, ("float32", "float64")),
    NetSpec("wide", (784, 128, 10), "relu", "softmax", "cross_entropy", 0.05),
    NetSpec("large", (784, 512, 512, 10), "relu", "softmax", "cross_entropy", 0.05),
    NetSpec("mid", (784, 256, 10), "relu", "softmax", "cross_entropy", 0.05, matrix=False),
)
NETWORK_BY_KEY = {n.key: n for n in NETWORKS}
BATCH_SIZES = (1, 10, 32, 128)
# train: one full epoch of minibatch SGD; infer: one forward pass over the 10,000 test images;
# latency: Network.predict_proba on one image at a time (LATENCY_CALLS calls per round)
KINDS = ("train", "infer", "latency")
DATA = ("mnist", "gauss")  # gauss: dense standard-normal float32 input of MNIST's shape (no zeros to skip)
LATENCY_CALLS = 1000
ISSUE_THREADS = 2
# The issue-11 table: (network, batch size, data), float32, ISSUE_THREADS threads
ISSUE_CASES = (("lesson", 10, "mnist"), ("wide", 32, "mnist"), ("wide", 128, "mnist"), ("mid", 64, "mnist"),
               ("large", 32, "mnist"), ("large", 128, "mnist"), ("large", 128, "gauss"))


def issue_threads():
    """The issue table's thread count: 2, or every core on a one-core machine."""
    return min(ISSUE_THREADS, _checks.available_cores())


def thread_counts():
    """1, the issue table's 2 and every core (fewer on a machine with fewer cores)."""
    return tuple(sorted({1, issue_threads(), _checks.available_cores()}))


@dataclass(frozen=True)
class Config:
    """One benchmark: a backend (or peer) on one case."""

    kind: str  # "train": one epoch of minibatch SGD; "infer": forward pass over the test set; "latency"
    backend: str
    network: str  # a NetSpec key
    dtype: str
    threads: int
    batch_size: int = 0  # 0 for inference (forward takes the whole set) and latency (one image a call)
    deterministic: bool = True
    data: str = "mnist"  # or "gauss": dense Gaussian input (training only)

    @property
    def net(self):
        return NETWORK_BY_KEY[self.network]

    @property
    def case(self):
        """Everything but the backend: configs with the same case are compared with each other."""
        return (self.kind, self.network, self.dtype, self.batch_size, self.threads, self.deterministic, self.data)

    def with_backend(self, backend):
        return replace(self, backend=backend)

    @property
    def label(self):
        """Human-readable case, e.g. 'train 784-16-16-10 float32 batch 10, 2 threads'."""
        threads = f"{self.threads} thread" + ("s" if self.threads > 1 else "")
        what = {"train": f"batch {self.batch_size}", "infer": "forward 10k", "latency": "predict 1 image"}[self.kind]
        extra = "" if self.deterministic else ", nondeterministic"
        if self.data == "gauss":
            extra += ", dense Gaussian input"
        return f"{self.kind} {self.net.name} {self.dtype} {what}, {threads}{extra}"

    @property
    def id(self):
        """Short id for pytest, e.g. 'train-lesson-float32-bs10-t1-numpy'."""
        parts = [self.kind, self.network, self.dtype]
        if self.kind == "train":
            parts.append(f"bs{self.batch_size}")
        parts.append(f"t{self.threads}")
        if self.data != "mnist":
            parts.append(self.data)
        if not self.deterministic:
            parts.append("nondet")
        return "-".join(parts + [self.backend])

    @property
    def quick(self):
        return is_quick(self)


def is_quick(config):
    """The smoke-test subset: the lesson network at batch 10 and 128 (1 and all threads), the large
    network at batch 128 on one core (multithreaded BLAS on a shared machine can be 10x slower
    and this subset must stay under a minute), inference with both on every core, and single-image
    predict latency on 784-128-10 (one thread)."""
    all_threads = max(thread_counts())
    if config.dtype != "float32" or not config.deterministic or config.data != "mnist":
        return False
    if config.kind == "latency":
        return config.network == "wide" and config.threads == 1
    if config.kind == "infer":
        return config.network in ("lesson", "large") and config.threads == all_threads
    if config.network == "lesson":
        return config.batch_size in (10, 128)
    return config.network == "large" and config.batch_size == 128 and config.threads == 1


def is_issue(config):
    """The issue-11 table: ISSUE_CASES trained in float32 on issue_threads() threads."""
    return (config.kind == "train" and config.dtype == "float32" and config.deterministic
            and config.threads == issue_threads()
            and (config.network, config.batch_size, config.data) in ISSUE_CASES)


def is_readme(config):
    """The README's Speed table: the issue table, 10k-image inference on its networks (same threads)
    and single-image predict latency on 784-128-10 (one thread)."""
    if not config.deterministic or config.dtype != "float32" or config.data != "mnist":
        return is_issue(config)
    if config.kind == "infer":
        return config.network in ("lesson", "wide", "large") and config.threads == issue_threads()
    if config.kind == "latency":
        return config.network == "wide" and config.threads == 1
    return is_issue(config)


PRESETS = {"quick": is_quick, "issue": is_issue, "readme": is_readme, "full": lambda config: True}


def ordered_backends(backends=None):
    """`backends` (default: every one that loads here) in BACKEND_ORDER, numpy first, then peers."""
    names = available_backends() if backends is None else list(backends)
    known = [b for b in BACKEND_ORDER + PEERS if b in names]
    return known + sorted(b for b in names if b not in known)


def all_configs(backends=None, kinds=KINDS):
    """The whole matrix, grouped by case with the backends of a case next to each other (numpy first).

    Training: every matrix network x its dtypes x BATCH_SIZES x thread_counts(), then the issue
    cases outside it (784-256-10 at batch 64, dense Gaussian input) at every thread count;
    inference: every matrix network x its dtypes x thread_counts(); latency: 784-128-10 float32
    at every thread count.
    """
    backends = ordered_backends(backends)
    cases = []
    for kind in kinds:
        if kind == "latency":
            cases += [("latency", "wide", "float32", threads, 0, "mnist") for threads in thread_counts()]
            continue
        for spec in NETWORKS:
            if not spec.matrix:
                continue
            for dtype in spec.dtypes:
                for batch_size in (BATCH_SIZES if kind == "train" else (0,)):
                    for threads in thread_counts():
                        cases.append((kind, spec.key, dtype, threads, batch_size, "mnist"))
        if kind == "train":
            for network, batch_size, data in ISSUE_CASES:
                if NETWORK_BY_KEY[network].matrix and data == "mnist" and batch_size in BATCH_SIZES:
                    continue  # already in the matrix
                cases += [("train", network, "float32", threads, batch_size, data) for threads in thread_counts()]
    return [Config(kind, backend, network, dtype, threads, batch_size, data=data)
            for kind, network, dtype, threads, batch_size, data in cases for backend in backends]


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
    if preset in ("issue", "readme"):  # the issue table's row order (a stable sort keeps backends' order)
        kinds_order = {k: i for i, k in enumerate(KINDS)}

        def key(c):
            issue = (c.network, c.batch_size, c.data)
            return kinds_order[c.kind], ISSUE_CASES.index(issue) if issue in ISSUE_CASES else len(ISSUE_CASES)
        out.sort(key=key)
    return out
