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
