"""The contract every backend follows (CONTRACT.md sections 2-4; issue 10).

A backend is a stateless object (``Backend`` below): it holds NO per-run buffers or caches, so
two Trainers in two threads may share it. Everything a run needs lives in the `Workspace` that
``prepare`` returns, which the Trainer owns (one per ``fit()``).

``prepare(net, plan) -> Workspace``
    Per fit(): JIT-compiles, allocates buffers, builds caches (e.g. a CSR copy of plan.X) from
    plan.X *now*; the next fit() calls prepare again, so ``X[:] = other`` between fits is seen.
    Must not change net.params or plan.rule.state. ``ws.compile_seconds`` says how long it took.
``train_epoch(net, plan, ws) -> EpochResult``
    Calls ``plan.validate(net)`` first, then runs plan.order's minibatches in order, updating
    net.params and plan.rule.state in place. The Trainer may split one epoch into consecutive
    slices (order[a:b] with a a multiple of batch_size, lrs sliced to match, first_position=a,
    rule.step advanced by the steps before); in deterministic mode the result must be bitwise
    the same as one call over the whole order, so kernels keep no state between calls except
    net.params and rule.state.
``forward(net, X, x_scale, threads) -> outputs``
    Output-layer activations (n, sizes[-1]), dtype net.dtype. No state kept between calls.
``evaluate(net, X, x_scale, targets, labels, loss, threads) -> (loss_sum, n_correct)``
    Sum over rows of the per-sample loss, computed from the last layer's PRE-activations with the
    training formula (so validation loss and training loss agree), and the number of rows whose
    argmax output equals their label.
``loss_and_grad(net, X, x_scale, targets, loss, threads) -> (mean_loss, flat grad)``
    Tests only (finite differences, the PyTorch oracles).

Conventions (checked against PyTorch in tests/data/torch_*.npz):
  * x = X (float rows), or X_uint8 * x_scale computed in the network's dtype.
  * z_l = a_{l-1} @ W_l + b_l; hidden a = activation(z), last layer a = output(z). The formulas
    and integer codes of activations and losses live in fastgd/ops.py.
  * The minibatch gradient g is the mean over its rows. The last minibatch of an epoch may be
    smaller than batch_size and is used.
  * The per-sample training loss is measured with the weights its minibatch saw, before that
    minibatch's update; n_correct counts argmax(output) == label over the same outputs.
  * Optimiser step (StepRule below), with g += l1 * sign(W) on weights (all kinds) and
    g += weight_decay * W on weights (sgd, adam); biases are never decayed:
      sgd:   v = mu v + g; step = g + mu v (nesterov) or v (step = g when mu == 0); W -= lr step
      adam:  m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; t = rule.step + k + 1 for the plan's
             k-th step; bc1 = 1 - b1^t, bc2 = 1 - b2^t in double precision;
             W -= lr * (m / bc1) / (sqrt(v / bc2) + eps)
      adamw: W -= lr * weight_decay * W (weights only), then the adam step (g without decay).
  * Dropout (inverted) multiplies each hidden activation by keep/(1 - dropout) during training;
    image shifts move each input image by (dx, dy) pixels; both draw from the counter-based
    generator in fastgd._random keyed by (plan.seed, first_position + index in order, unit), so
    every backend draws the same masks and shifts. Rotations (max_rotate) and elastic
    distortions (elastic_alpha) resample each image by the one sampling map of fastgd.augment
    (with the same shift folded in), keyed alike; the compiled kernels equal its NumPy reference.
  * `features` lists what a backend implements (names in FEATURES); the Trainer refuses to ask
    a backend for a feature it does not list.
  * deterministic=False means "Hogwild allowed"; a backend without Hogwild runs deterministic
    and says so in EpochResult.mode.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .. import _random, augment, ops

#: Optimiser kinds as the kernels see them (StepRule.kind).
OPTIMIZER_CODES = {"sgd": 0, "adam": 1, "adamw": 2}
SGD, ADAM, ADAMW = OPTIMIZER_CODES["sgd"], OPTIMIZER_CODES["adam"], OPTIMIZER_CODES["adamw"]

#: Features a backend may implement; plain SGD needs none.
FEATURES = ("momentum", "nesterov", "l2", "l1", "dropout", "shift", "adam", "adamw")
#: Image augmentations beyond shifts (fastgd.augment); a backend lists them in `features` once its
#: kernels draw them.
AUGMENT_FEATURES = ("rotate", "elastic")


_blas_controller = []
_blas_controller_lock = threading.Lock()


def blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, one per process. A new one reads
    /proc/self/maps: ~0.9 ms, which a per-call `threadpool_limits` paid on every forward (the
    lesson network's whole 10k-image inference takes ~1.3 ms). Make it after the backends have
    loaded scipy's BLAS (a controller sees only the libraries loaded before it): at the first
    limit, or in a backend's prepare, so that no timed epoch pays for it."""
    with _blas_controller_lock:
        if not _blas_controller:
            from threadpoolctl import ThreadpoolController

            _blas_controller.append(ThreadpoolController())
        return _blas_controller[0]


def blas_limit(threads):
    """Context manager limiting BLAS (numpy's and scipy's OpenBLAS) to `threads` threads."""
    return blas_controller().limit(limits=threads, user_api="blas")


def sparse_input_pays(X, max_density):
    """Whether the zero-skipping first layer pays for inference on uint8 X: at most max_density
    of its pixels non-zero, measured on 16 evenly spaced runs of 32 rows (rows are independent,
    so only speed depends on the sample). Runs of adjacent rows, not every k-th row: NumPy counts
    a contiguous block ~10x faster, and every-k-th-of-2048 rows cost ~0.4 ms a call, a third of
    the lesson network's 10k-image inference. The compiled backends add their own kernel limits."""
    if X.dtype != np.uint8 or X.shape[1] > 65536 or X.size == 0:
        return False
    n, run = X.shape[0], 32
    if n <= 16 * run:
        return np.count_nonzero(X) <= max_density * X.size
    starts = np.linspace(0, n - run, 16).astype(np.int64)
    nonzero = sum(int(np.count_nonzero(X[s:s + run])) for s in starts)
    return nonzero <= max_density * 16 * run * X.shape[1]


#: The lower thread's share of the first layer's non-zero pixels in the compiled backends' "split"
#: epoch (the other thread also copies the rows in visiting order; the lower one runs the rest of
#: the network).
SPLIT_LOWER_SHARE = 0.5

#: The split epoch's optional phase profile (both compiled backends' `split_profile` knob; a
#: measuring aid, bench/split_profile.py): slot -> phase. The lower thread's slots are 0-7, the
#: upper's 16-23, so that the two threads never write one cache line.
SPLIT_PROFILE_PHASES = {
    0: "lower: wait for the step's rows", 1: "lower: sums of its pixels", 2: "lower: wait for the upper sums",
    3: "lower: forward of the other layers", 4: "lower: output loss and delta", 5: "lower: hidden deltas",
    6: "lower: update (its rows, the small layers)",
    16: "upper: sums of its pixels", 17: "upper: copy of the rows ahead", 18: "upper: wait for the deltas",
    19: "upper: update of its rows"}
SPLIT_PROFILE_SLOTS = 24


def balanced_split(idx, n_in, share=None):
    """The pixel at which a sparse first layer's rows are split between the "split" epoch's two
    threads: the lower thread gets pixels below it, about `share` (SPLIT_LOWER_SHARE) of the
    non-zeros in idx (the CSR's pixel indices). -1 when there is nothing to split (n_in < 2, no
    non-zeros). Depends only on the input, so every thread count uses the same split."""
    share = SPLIT_LOWER_SHARE if share is None else share
    if n_in < 2 or idx.size == 0:
        return -1
    cum = np.cumsum(np.bincount(idx, minlength=n_in))
    return int(min(max(np.searchsorted(cum, share * cum[-1]) + 1, 1), n_in - 1))


#: The auto rule of the compiled backends' "cols" epoch (see `cols_pays`).
COLS_MIN_WORK = 1 << 20
COLS_SMALL_BATCH = 64
COLS_MIN_WEIGHT_BYTES = 1 << 19


def cols_pays(sizes, batch, workers, sparse_first, lanes=16, min_work=COLS_MIN_WORK):
    """Whether the "cols" epoch (each worker owns a column slice of every hidden layer for the
    call) should replace a compiled backend's other modes, when it applies. Each worker's slice
    of the narrowest hidden layer must be at least 2 vectors (lanes) wide, and then either:
      * batch x the parameters it runs dense (all but a zero-skipped first layer) >= min_work
        per step (784-512-512-10; 100-128-128-10 on dense input at batch 128), or
      * on 2+ workers with slices of at least 4 vectors, a batch of at most COLS_SMALL_BATCH rows
        (the sample-split modes pay two hand-offs a step for a few rows each) or weights of at
        least COLS_MIN_WEIGHT_BYTES (float32; those modes stream all of them every step, cols
        each worker its own slice).
    Measured on MNIST, 2 threads, alternating subprocesses, auto -> cols ms an epoch, Cython /
    Numba: 784-128-10 b32 161 -> 150 / 260 -> 185; 784-256-10 b64 220 -> 193 / 318 -> 272;
    784-512-10 b128 398 -> 371 / 584 -> 432; left out: 784-128-10 b128 (400 KB of weights)
    142 -> 150 / 180 -> 199; 784-64-10 b32 (2 vectors a slice) 92 -> 125 / 177 -> 168."""
    sizes = [int(n) for n in sizes]
    narrowest = min(sizes[1:-1])
    if narrowest < 2 * lanes * workers:
        return False
    weights = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    dense = weights - (sizes[0] * sizes[1] if sparse_first else 0)
    if int(batch) * dense >= min_work:
        return True
    return (workers >= 2 and narrowest >= 4 * lanes * workers
            and (int(batch) <= COLS_SMALL_BATCH or 4 * weights >= COLS_MIN_WEIGHT_BYTES))


class BackendUnavailable(ImportError):
    """Raised when a known backend cannot run here (e.g. its compiled extension was not built)."""


@dataclass(frozen=True)
class StepRule:
    """All a kernel needs to apply optimiser steps (see the module docstring for the formulas)."""

    kind: int  # OPTIMIZER_CODES value
    momentum: float = 0.0  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # sgd/adam: L2 in the gradient; adamw: decoupled. Weights only.
    l1: float = 0.0  # g += l1 * sign(W), weights only
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    step: int = 0  # optimiser steps already taken; the plan's k-th step uses t = step + k + 1
    state: tuple = ()  # arrays like net.params, updated in place: sgd+momentum (velocity,); adam(w) (m, v)

    def n_state(self):
        """How many state arrays this rule needs."""
        if self.kind == SGD:
            return 1 if self.momentum > 0 else 0
        return 2

    def features(self):
        """The backend features this rule needs."""
        out = set()
        if self.kind == ADAM:
            out.add("adam")
        elif self.kind == ADAMW:
            out.add("adamw")
        elif self.momentum > 0:
            out.add("momentum")
        if self.nesterov:
            out.add("nesterov")
        if self.weight_decay > 0 and self.kind != ADAMW:
            out.add("l2")
        if self.l1 > 0:
            out.add("l1")
        return out


@dataclass
class EpochPlan:
    """Everything one call of `train_epoch` needs besides the network and the workspace."""

    X: np.ndarray  # (n, n_in), C-contiguous, net.dtype or uint8
    x_scale: float  # multiply X by this (1/255 for uint8, else 1.0)
    targets: np.ndarray  # (n, n_out), net.dtype, C-contiguous
    labels: np.ndarray  # (n,), int32, for accuracy
    order: np.ndarray  # (m,), int64 row indices in visiting order; minibatch k is order[k*bs:(k+1)*bs]
    lrs: np.ndarray  # (ceil(m / batch_size),), float64 learning rate of each step
    batch_size: int
    loss: str  # a name in ops.LOSSES
    threads: int = 1
    deterministic: bool = True  # False: Hogwild allowed
    rule: StepRule = field(default_factory=lambda: StepRule(SGD))
    dropout: float = 0.0  # probability of dropping each hidden unit
    max_shift: int = 0  # shift each input image by up to this many pixels in x and y
    image_shape: tuple = (0, 0)  # (rows, cols) with rows * cols == n_in, needed when max_shift > 0
    max_rotate: float = 0.0  # rotate each input image by up to this many degrees (needs image_shape)
    elastic_alpha: float = 0.0  # elastic distortion: displacement scale in pixels (needs image_shape)
    seed: int = 0  # this epoch's seed for dropout masks and shifts
    first_position: int = 0  # position in the epoch of order[0] (an epoch may run in slices)

    @property
    def n_steps(self):
        return -(-len(self.order) // self.batch_size)

    def requested_features(self):
        """The backend features this plan turns on."""
        out = self.rule.features()
        if self.dropout > 0:
            out.add("dropout")
        if self.max_shift > 0:
            out.add("shift")
        if self.max_rotate > 0:
            out.add("rotate")
        if self.elastic_alpha > 0:
            out.add("elastic")
        return out

    def validate(self, net):
        """Check shapes, dtypes, contiguity, index ranges and state arrays; raise ValueError.

        Cheap: no O(n) scans except the bounds of `order` (min and max once). Every backend calls
        this at the top of train_epoch, so its kernels may index without further checks.
        """
        dt = net.dtype
        n_in, n_out = net.sizes[0], net.sizes[-1]

        def array(a, what, dtypes, ndim):
            if not isinstance(a, np.ndarray):
                raise ValueError(f"plan.{what} must be a numpy array, got {type(a).__name__}")
            if a.dtype not in dtypes:
                raise ValueError(f"plan.{what} has dtype {a.dtype}; expected {' or '.join(map(str, dtypes))}")
            if a.ndim != ndim:
                raise ValueError(f"plan.{what} must be {ndim}-D, got shape {a.shape}")
            if not a.flags.c_contiguous:
                raise ValueError(f"plan.{what} must be C-contiguous")

        if not (isinstance(net.params, np.ndarray) and net.params.flags.c_contiguous and net.params.dtype == dt):
            raise ValueError("net.params must be a C-contiguous array of the network's dtype")
        array(self.X, "X", (dt, np.dtype(np.uint8)), 2)
        n = self.X.shape[0]
        if self.X.shape[1] != n_in:
            raise ValueError(f"plan.X has {self.X.shape[1]} columns; the network takes {n_in} inputs")
        if not np.isfinite(self.x_scale) or self.x_scale <= 0:
            raise ValueError(f"plan.x_scale must be finite and > 0, got {self.x_scale}")
        array(self.targets, "targets", (dt,), 2)
        if self.targets.shape != (n, n_out):
            raise ValueError(f"plan.targets has shape {self.targets.shape}; expected {(n, n_out)}")
        array(self.labels, "labels", (np.dtype(np.int32),), 1)
        if self.labels.shape[0] != n:
            raise ValueError(f"plan.labels has {self.labels.shape[0]} entries for {n} rows")
        array(self.order, "order", (np.dtype(np.int64),), 1)
        if len(self.order) == 0:
            raise ValueError("plan.order is empty")
        lo, hi = int(self.order.min()), int(self.order.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"plan.order holds row {lo if lo < 0 else hi}, outside [0, {n})")
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"plan.batch_size must be an integer >= 1, got {self.batch_size}")
        array(self.lrs, "lrs", (np.dtype(np.float64),), 1)
        if self.lrs.shape[0] != self.n_steps:
            raise ValueError(f"plan.lrs has {self.lrs.shape[0]} rates for {self.n_steps} steps")
        if self.loss not in ops.LOSSES:
            raise ValueError(f"plan.loss {self.loss!r} is not one of {', '.join(ops.LOSSES)}")
        if net.output not in ops.LOSSES[self.loss].outputs:
            raise ValueError(f"loss {self.loss!r} does not pair with output {net.output!r}")
        if int(self.threads) != self.threads or self.threads < 1:
            raise ValueError(f"plan.threads must be an integer >= 1, got {self.threads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"plan.dropout must lie in [0, 1), got {self.dropout}")
        if self.max_shift < 0:
            raise ValueError(f"plan.max_shift must be >= 0, got {self.max_shift}")
        if self.max_shift > 0 and int(self.image_shape[0]) * int(self.image_shape[1]) != n_in:
            raise ValueError(f"plan.image_shape {self.image_shape} does not hold {n_in} inputs")
        augment.check(self.max_rotate, self.elastic_alpha, self.image_shape, n_in)
        if self.dropout > 0 and sum(net.sizes[1:-1]) >= _random.FIRST_RESERVED:
            raise ValueError(f"dropout numbers at most {_random.FIRST_RESERVED - 1} hidden units per sample; "
                             f"this network has {sum(net.sizes[1:-1])}")
        if self.first_position < 0:
            raise ValueError(f"plan.first_position must be >= 0, got {self.first_position}")
        rule = self.rule
        if rule.kind not in OPTIMIZER_CODES.values():
            raise ValueError(f"plan.rule.kind {rule.kind} is not one of {sorted(OPTIMIZER_CODES.values())}")
        if not (0.0 <= rule.momentum < 1.0 and 0.0 <= rule.beta1 < 1.0 and 0.0 <= rule.beta2 < 1.0):
            raise ValueError("plan.rule: momentum, beta1 and beta2 must lie in [0, 1)")
        if rule.weight_decay < 0 or rule.l1 < 0 or rule.eps <= 0 or rule.step < 0:
            raise ValueError("plan.rule: weight_decay, l1 and step must be >= 0, eps > 0")
        if len(rule.state) != rule.n_state():
            raise ValueError(f"plan.rule.state holds {len(rule.state)} arrays; this rule needs {rule.n_state()}")
        for i, s in enumerate(rule.state):
            array(s, f"rule.state[{i}]", (dt,), 1)
            if s.shape != net.params.shape:
                raise ValueError(f"plan.rule.state[{i}] has shape {s.shape}; expected {net.params.shape}")
            others = [net.params, *rule.state[:i]]
            if any(np.may_share_memory(s, o) for o in others):  # bounds only: all are contiguous 1-D
                raise ValueError(f"plan.rule.state[{i}] shares memory with net.params or another state array")
        return self


@dataclass
class EpochResult:
    """What one train_epoch call did."""

    loss_sum: float  # sum of per-sample losses (before each minibatch's update)
    n_correct: int  # rows whose argmax output equalled their label
    threads_used: int  # threads that really ran
    mode: str  # "serial" | "sync" | "hogwild" | "cols" | "split" | "numpy"


class Workspace:
    """Per-fit buffers and caches a backend builds in `prepare`; owned by the Trainer.

    Backends add whatever attributes they want (``ws.rows = ...``); the Trainer reads only
    `compile_seconds`.
    """

    def __init__(self, compile_seconds=0.0, **buffers):
        self.compile_seconds = float(compile_seconds)
        self.__dict__.update(buffers)

    def __repr__(self):
        keys = ", ".join(k for k in self.__dict__ if k != "compile_seconds")
        return f"Workspace(compile_seconds={self.compile_seconds:.3f}, {keys})"


class Backend:
    """Base class of every backend. Subclasses set `name` and `features` and implement the methods.

    A backend object holds no per-run state: all buffers and caches go in the Workspace.
    """

    name: str = "?"
    features: frozenset = frozenset()

    def prepare(self, net, plan) -> Workspace:
        return Workspace()

    def train_epoch(self, net, plan, ws) -> EpochResult:
        raise NotImplementedError

    def forward(self, net, X, x_scale, threads=1):
        raise NotImplementedError

    def evaluate(self, net, X, x_scale, targets, labels, loss, threads=1):
        raise NotImplementedError

    def loss_and_grad(self, net, X, x_scale, targets, loss, threads=1):
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"
