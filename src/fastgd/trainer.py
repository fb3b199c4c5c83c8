"""Training: validation at the boundary, the epoch driver, history, early stopping, checkpoints.

Data flows one way: Trainer -> backend -> kernels. Per fit() the Trainer validates the data,
asks the backend for a Workspace (`prepare`: JIT, buffers, caches built from this X), and
resets the optimiser. Per epoch it shuffles, computes every step's learning rate from the
schedule, and hands the epoch to the backend as an `EpochPlan` in slices of a few milliseconds
(consecutive pieces of the visiting order; bitwise the same result as one call), so Ctrl-C is
honoured promptly and divergence is caught where it happens. Between slices only Python runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import signal
import threading
import time
from pathlib import Path

import numpy as np

from . import _checks
from .backends import FASTEST_FIRST, BackendUnavailable, EpochPlan, backend_names, get_backend
from .optim import OPTIMIZERS, Optimizer, make_optimizer
from .schedules import SCHEDULES, OneCycle, make_schedule

CHECKPOINT_TAG = "fastgd.Checkpoint"
TASKS = ("classification", "binary", "regression")


class History:
    """Per-epoch records from `Trainer.fit`.

    ``history.records`` is a list of dicts with keys ``epoch``, ``train_loss``, the metrics of the
    task (classification and binary: ``train_accuracy`` (running: measured on each minibatch
    before its update; None for binary, whose kernels count argmax hits), ``val_accuracy``;
    regression: ``val_r2``, ``val_mae``), ``val_loss`` (None without validation data), ``lr``
    (the last step's learning rate), ``seconds`` (training only), ``samples_per_second``,
    ``threads_used`` and ``mode`` (what the backend really ran: "serial", "sync", "hogwild",
    "cols", "split", "numpy") and ``partial`` (True for an epoch cut short by Ctrl-C). ``history["train_loss"]``
    is the list of one key. ``compile_seconds`` is the time a JIT backend spent compiling before
    the first epoch; ``stopped_early`` and ``best_epoch`` say what early stopping did.
    ``budget_plans`` (runs with a time budget) lists each planning decision as a dict with
    ``after_epoch``, ``epoch_seconds`` (the estimate used) and ``epochs`` (the run's new length).
    """

    KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_r2", "val_mae", "lr",
            "seconds", "samples_per_second", "threads_used", "mode", "partial")

    def __init__(self, records=None, compile_seconds=0.0):
        self.records = list(records or [])
        self.compile_seconds = compile_seconds
        self.stopped_early = False
        self.best_epoch = None
        self.budget_plans = []

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.records[key]
        if key not in self.KEYS:
            raise KeyError(f"unknown history key {key!r}; keys: {', '.join(self.KEYS)}")
        return [r.get(key) for r in self.records]

    def __iter__(self):
        return iter(self.records)

    @property
    def train_seconds(self):
        return sum(r["seconds"] for r in self.records)

    def to_list(self):
        return [dict(r) for r in self.records]

    def __repr__(self):
        return f"History({len(self)} epochs)"


def _check_fraction(value, what, upper_inclusive=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r}")
    value = float(value)
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok or math.isnan(value):
        raise ValueError(f"{what} must lie in [0, 1{']' if upper_inclusive else ')'}, got {value}")
    return value


def _check_nonnegative(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return value


def checkpoint_path(path):
    """The file a checkpoint named `path` lives in: `.npz` is added as `Network.save` does."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _finite(params):
    # one float64 reduction instead of an isfinite temporary: any NaN/inf makes the sum non-finite
    return math.isfinite(float(np.sum(params, dtype=np.float64)))


class _DeferredInterrupt:
    """While training (main thread only), SIGINT sets a flag instead of raising mid-step; the
    Trainer checks it between epoch slices, so weights, optimiser state and history always agree."""

    def __enter__(self):
        self.pending = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            if callable(old):  # leave SIG_IGN / SIG_DFL / foreign C handlers alone
                self._old = old
                signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.pending = True

    def check(self):
        if self.pending:
            self.pending = False
            if self._old is signal.default_int_handler:
                raise KeyboardInterrupt
            self._old(signal.SIGINT, None)  # the user's own handler decides

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        if exc[0] is None:
            self.check()  # a SIGINT during the last slice still counts
        return False


class _EarlyStopping:
    """Patience on the validation loss; remembers the best epoch's weights."""

    def __init__(self, patience):
        self.patience = patience
        self.best_loss, self.best_epoch, self.bad_epochs, self.best_params = math.inf, None, 0, None

    def update(self, epoch, val_loss, params):
        """Record an epoch; True when training should stop."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            self.best_params = params.copy()
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state(self):
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load(self, state, best_params):
        self.best_loss, self.best_epoch = state["best_loss"], state["best_epoch"]
        self.bad_epochs, self.best_params = state["bad_epochs"], best_params


class Trainer:
    """Minibatch training of a `Network` with SGD, Adam or AdamW.

    Parameters
    ----------
    net : Network
        Trained in place.
    loss : {"mse", "cross_entropy"}
        "mse" is the mean over the minibatch of ½‖a − y‖²; "cross_entropy" is softmax
        cross-entropy (output "softmax") or per-unit binary cross-entropy (output "sigmoid").
    lr : float or None
        Learning rate (None: 3.0 for sgd, the lesson's; 1e-3 for adam and adamw).
    batch_size : int
        Minibatch size; a smaller last minibatch is used, not dropped.
    epochs : int
        Passes over the training data.
    backend : {"auto", "numpy", "cython", "numba"}
        Where the arithmetic runs; "auto" picks the fastest available that implements the settings.
    threads : int or None
        Threads for the backend (None: every core).
    seed : int or None
        Seed for shuffling, dropout masks and shifts; the same seed gives the same run (the
        numpy backend, and every backend in deterministic mode).
    shuffle : bool
        Visit the samples in a new random order each epoch.
    deterministic : bool
        Results that do not depend on thread timing. False lets a compiled backend use faster
        asynchronous (Hogwild-style) updates when it has them (history "mode" says what ran).
    optimizer : {"sgd", "adam", "adamw"} or fastgd.optim.Optimizer
        The update rule (PyTorch's SGD, Adam, AdamW). An Optimizer object carries its own
        settings; the keyword form below builds one.
    momentum, nesterov : float, bool
        SGD with (Nesterov) momentum, PyTorch's formulation (v = μv + g; step v or g + μv).
    weight_decay, l2 : float or None
        Weight decay on weights, not biases: added to the gradient (sgd, adam) or decoupled
        (adamw). None: 0, or 0.01 for adamw. ``l2`` is the older name for it.
    l1 : float
        Adds ``l1 * sign(W)`` to the weights' gradient.
    beta1, beta2, eps : float
        Adam/AdamW moment decay rates and denominator term.
    dropout : float
        Inverted dropout on the hidden layers during training: each hidden unit is dropped with
        this probability and the survivors are scaled by 1 / (1 - dropout).
    lr_schedule : {"constant", "step", "cosine", "onecycle"} or fastgd.schedules.Schedule
        Learning rate per step: constant; step (× lr_gamma every lr_step_size epochs); cosine
        (down to min_lr over the run); onecycle (up from lr/25 to the peak lr over the first
        pct_start of the run, then down to lr/2.5e5; `fastgd.schedules.OneCycle`). warmup_epochs
        of linear warm-up apply to any of them.
    pct_start : float
        onecycle: the fraction of the run spent rising to the peak (default 0.25).
    time_budget : float or None
        Seconds of training (as ``History.train_seconds`` counts them: the backend's epoch calls
        only; not the backend's prepare/JIT compile before the first epoch, not validation,
        checkpoints or callbacks). `epochs` is then the first guess only: epoch 1 runs with
        the schedule of `epochs` epochs, then the number of epochs is set so the run ends within
        ``(1 - budget_margin)`` of the budget, from the steady time per step of epoch 1 (its
        first backend call, which warms caches and threads, is left out of the estimate). After
        each later epoch the plan is checked against the median measured epoch time and only
        ever shortened, so the schedule (e.g. onecycle) completes within the budget. At least one
        epoch runs. ``history.budget_plans`` records the decisions.
    label_smoothing : float
        cross_entropy only: train on targets (1 - ε)·onehot + ε/K (K classes for softmax, 2 for a
        sigmoid unit) instead of the labels. Validation loss uses the unsmoothed targets.
    augment_shift : int
        Shift each training image by a random (dx, dy) in [-k, k]² pixels each epoch (zero fill).
        Needs square images or image_shape=(rows, cols).
    augment_rotate : float
        Rotate each training image by a random angle in [-deg, deg] degrees each epoch (backend
        feature "rotate"; every shipped backend has it, drawn inside the compiled epoch).
    augment_elastic : float
        Elastic distortion of each training image, displacement scale in pixels (backend
        feature "elastic"; every shipped backend has it).
    validation_split : float
        Hold out this fraction of the training data (seeded) as validation data.
    early_stopping : int or None
        Stop when the validation loss has not improved for this many epochs, and restore the
        weights of the best epoch.
    checkpoint, checkpoint_every : path or None, int
        Write a checkpoint (atomically, to ``path`` with ``.npz`` added if missing) every N epochs
        and when Ctrl-C stops a run; ``fit(..., resume=path)`` continues from it exactly where the
        run stopped, mid-epoch included.

    The task follows from the network and the targets: regression for a linear output with real
    targets (history and `evaluate` report ``r2`` and ``mae``), binary classification for one
    sigmoid output unit with labels {0, 1}, classification otherwise (``accuracy``).
    """

    #: Target wall time of one backend call; bounds the Ctrl-C latency. `slice_steps` (an int)
    #: fixes the number of optimiser steps per call instead (tests use it). 50 ms keeps Ctrl-C under
    #: ~100 ms while the per-call cost (plan checks, thread limits, Numba's argument unboxing) stays
    #: small: at 10 ms it cost Numba ~15-30% of a 784-128-10 epoch on 2 cores.
    slice_seconds = 0.05
    slice_steps = None
    #: With a time budget, plan to end within (1 - budget_margin) of it (timings vary between epochs).
    budget_margin = 0.03
    #: The clock training time is measured with (tests replace it with a fake one).
    clock = staticmethod(time.perf_counter)

    def __init__(self, net, loss="mse", lr=None, batch_size=10, epochs=30, backend="auto", threads=None,
                 seed=None, shuffle=True, deterministic=True, *, optimizer="sgd", momentum=0.0, nesterov=False,
                 weight_decay=None, l2=None, l1=0.0, beta1=0.9, beta2=0.999, eps=1e-8, dropout=0.0,
                 lr_schedule="constant", warmup_epochs=0.0, lr_step_size=10, lr_gamma=0.1, min_lr=0.0,
                 augment_shift=0, image_shape=None, validation_split=0.0, early_stopping=None, checkpoint=None,
                 checkpoint_every=1, pct_start=0.25, time_budget=None, label_smoothing=0.0, augment_rotate=0.0,
                 augment_elastic=0.0):
        from .network import Network

        if not isinstance(net, Network):
            raise TypeError(f"net must be a fastgd.Network, got {type(net).__name__}")
        self.net = net
        self.loss = _checks.check_loss_output(loss, net.output)
        self.optimizer = self._make_optimizer(optimizer, lr, momentum, nesterov, weight_decay, l2, l1, beta1,
                                              beta2, eps)
        self.batch_size = _checks.check_positive_int(batch_size, "batch_size")
        self.epochs = _checks.check_positive_int(epochs, "epochs", minimum=0)
        _checks.check_choice(backend, backend_names(), "backend")
        self.threads = _checks.check_threads(threads)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.deterministic = bool(deterministic)
        self.dropout = _check_fraction(dropout, "dropout")
        if self.dropout > 0 and net.n_layers < 2:
            raise ValueError("dropout applies to hidden layers, and this network has none")
        self.warmup_epochs = _check_nonnegative(warmup_epochs, "warmup_epochs")
        self.lr_step_size = _checks.check_positive_int(lr_step_size, "lr_step_size")
        self.lr_gamma = _checks.check_positive_float(lr_gamma, "lr_gamma")
        self.min_lr = _check_nonnegative(min_lr, "min_lr")
        self.pct_start = _check_fraction(pct_start, "pct_start", upper_inclusive=True)
        if isinstance(lr_schedule, str):
            self.lr_schedule = _checks.check_choice(lr_schedule, SCHEDULES, "lr_schedule")
            self.schedule = make_schedule(lr_schedule, self.warmup_epochs, self.lr_step_size, self.lr_gamma,
                                          self.min_lr)
            if lr_schedule == "onecycle":
                self.schedule = OneCycle(pct_start=self.pct_start, warmup_epochs=self.warmup_epochs)
        elif hasattr(lr_schedule, "rates"):
            self.schedule, self.lr_schedule = lr_schedule, getattr(lr_schedule, "name", type(lr_schedule).__name__)
        else:
            raise TypeError(f"lr_schedule must be one of {', '.join(SCHEDULES)} or a schedule object, "
                            f"got {lr_schedule!r}")
        self.augment_shift = _checks.check_positive_int(augment_shift, "augment_shift", minimum=0)
        self.augment_rotate = _check_nonnegative(augment_rotate, "augment_rotate")
        if self.augment_rotate > 180:
            raise ValueError(f"augment_rotate is the largest angle in degrees, at most 180; got {self.augment_rotate}")
        self.augment_elastic = _check_nonnegative(augment_elastic, "augment_elastic")
        augmenting = self.augment_shift or self.augment_rotate or self.augment_elastic
        used = [k for k in ("augment_shift", "augment_rotate", "augment_elastic") if getattr(self, k)]
        self.image_shape = self._check_image_shape(image_shape, used[0]) if augmenting else (0, 0)
        self.label_smoothing = _check_fraction(label_smoothing, "label_smoothing")
        if self.label_smoothing and self.loss != "cross_entropy":
            raise ValueError(f"label_smoothing applies to loss='cross_entropy', not {self.loss!r}")
        if time_budget is not None:
            if isinstance(time_budget, (bool, np.bool_)) or not isinstance(time_budget, numbers.Real):
                raise TypeError(f"time_budget must be a number of seconds or None, got {time_budget!r}")
            if not (math.isfinite(time_budget) and time_budget > 0):
                raise ValueError(f"time_budget must be a finite number of seconds > 0, got {time_budget}")
            time_budget = float(time_budget)
        self.time_budget = time_budget
        self._epochs_setting = self.epochs  # with a time budget, fit() plans self.epochs from this guess
        self.validation_split = _check_fraction(validation_split, "validation_split")
        self.early_stopping = (None if early_stopping is None
                               else _checks.check_positive_int(early_stopping, "early_stopping"))
        self.checkpoint = None if checkpoint is None else checkpoint_path(checkpoint)
        self._check_checkpoint_folder()
        self.checkpoint_every = _checks.check_positive_int(checkpoint_every, "checkpoint_every")
        self.backend = self._pick_backend(backend)
        missing = self._features() - set(getattr(self.backend, "features", ()))
        if missing:
            keywords = {"rotate": "augment_rotate", "elastic": "augment_elastic", "shift": "augment_shift"}
            asked = [keywords[f] for f in sorted(missing) if f in keywords]
            raise ValueError(f"backend {self.backend.name!r} does not implement {', '.join(sorted(missing))} yet"
                             f"{' (' + ', '.join(asked) + ')' if asked else ''}; use backend='numpy' for it")
        self._rng = np.random.default_rng(seed)
        self.history = History()
        self.interrupted = False
        self.task = None
        self._run = None  # what save_checkpoint needs about the current run
        self.optimizer.reset(net.params)

    # ---- settings -------------------------------------------------------------------------
    @staticmethod
    def _make_optimizer(optimizer, lr, momentum, nesterov, weight_decay, l2, l1, beta1, beta2, eps):
        if l2 is not None and weight_decay is not None:
            raise ValueError("pass weight_decay or l2 (its older name), not both")
        if l2 is not None:
            weight_decay = l2
        if isinstance(optimizer, Optimizer):
            given = [k for k, v, default in (("lr", lr, None), ("momentum", momentum, 0.0),
                                              ("nesterov", nesterov, False), ("weight_decay", weight_decay, None),
                                              ("l1", l1, 0.0), ("beta1", beta1, 0.9), ("beta2", beta2, 0.999),
                                              ("eps", eps, 1e-8)) if v != default]
            if given:
                raise ValueError(f"optimizer is an object: set {', '.join(given)} on it, not on the Trainer")
            return optimizer
        if isinstance(optimizer, str):
            _checks.check_choice(optimizer, OPTIMIZERS, "optimizer")
        if lr is not None:
            _checks.check_positive_float(lr, "lr")
        momentum = _check_fraction(momentum, "momentum")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        l1 = _check_nonnegative(l1, "l1")
        if weight_decay is not None:
            weight_decay = _check_nonnegative(weight_decay, "weight_decay" if l2 is None else "l2")
        return make_optimizer(optimizer, lr, momentum, nesterov, weight_decay, l1, beta1, beta2, eps)

    # The optimiser's settings, readable under their Trainer names (the CLI reports them).
    lr = property(lambda self: self.optimizer.lr)
    momentum = property(lambda self: getattr(self.optimizer, "momentum", 0.0))
    nesterov = property(lambda self: getattr(self.optimizer, "nesterov", False))
    weight_decay = property(lambda self: self.optimizer.weight_decay)
    l2 = weight_decay
    l1 = property(lambda self: self.optimizer.l1)

    def _features(self):
        probe = EpochPlan(X=None, x_scale=1.0, targets=None, labels=None, order=None, lrs=None, batch_size=1,
                          loss=self.loss, rule=self.optimizer.step_rule(), dropout=self.dropout,
                          max_shift=self.augment_shift, max_rotate=self.augment_rotate,
                          elastic_alpha=self.augment_elastic)
        return probe.requested_features()

    def _pick_backend(self, name):
        """The named backend; for "auto", the fastest available one implementing the settings asked for."""
        if name != "auto":
            return get_backend(name)
        wanted = self._features()
        for candidate in FASTEST_FIRST:
            try:
                backend = get_backend(candidate)
            except BackendUnavailable:
                continue
            if wanted <= set(getattr(backend, "features", ())):
                return backend
        return get_backend("auto")

    def _check_image_shape(self, image_shape, what="augment_shift"):
        n_in = self.net.sizes[0]
        if image_shape is None:
            side = math.isqrt(n_in)
            if side * side != n_in:
                raise ValueError(f"{what} needs image_shape=(rows, cols): {n_in} inputs are not a square image")
            return (side, side)
        rows, cols = (int(v) for v in image_shape)
        if rows * cols != n_in:
            raise ValueError(f"image_shape {image_shape} has {rows * cols} pixels but the network takes {n_in} inputs")
        return (rows, cols)

    def _check_checkpoint_folder(self):
        if self.checkpoint is not None and not self.checkpoint.parent.is_dir():
            raise ValueError(f"checkpoint folder {str(self.checkpoint.parent)!r} does not exist; create it first")

    # ---- data -----------------------------------------------------------------------------
    def _task_of(self, y):
        """classification | binary | regression, from the network's output and the targets."""
        n_out, output = self.net.sizes[-1], self.net.output
        y = np.asarray(y)
        integer_labels = y.ndim == 1 and (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_)
        if output == "linear" and not (integer_labels and n_out > 1):
            return "regression"
        if output == "sigmoid" and n_out == 1:
            return "binary"
        return "classification"

    def _prepare(self, X, y, task=None):
        scale_inputs = getattr(self.net, "scale_inputs", None)
        scale_targets = getattr(self.net, "scale_targets", None)
        if scale_inputs is not None:
            X = scale_inputs(X)
        X, scale = _checks.check_X(X, self.net.sizes[0], self.net.dtype)
        task = task or self._task_of(y)
        if scale_targets is not None and task == "regression":
            y = scale_targets(y)
        targets, labels = _checks.check_y(y, X.shape[0], self.net.sizes[-1], self.net.dtype, self.loss, task)
        return X, scale, targets, labels

    def _split(self, data, split_seed):
        n = data[0].shape[0]
        n_val = int(round(n * self.validation_split))
        if n_val < 1 or n_val >= n:
            raise ValueError(f"validation_split {self.validation_split} of {n} samples leaves no validation or no "
                             f"training data")
        perm = np.random.default_rng(split_seed).permutation(n)
        train, val = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        take = lambda idx: (data[0][idx], data[1], data[2][idx], data[3][idx])  # noqa: E731
        return take(train), take(val)

    def _plan(self, data, order, lrs, epoch_seed):
        X, scale, targets, labels = data
        return EpochPlan(X=X, x_scale=scale, targets=targets, labels=labels, order=order, lrs=lrs,
                         batch_size=self.batch_size, loss=self.loss, threads=self.threads,
                         deterministic=self.deterministic, rule=self.optimizer.step_rule(), dropout=self.dropout,
                         max_shift=self.augment_shift, image_shape=self.image_shape, max_rotate=self.augment_rotate,
                         elastic_alpha=self.augment_elastic, seed=epoch_seed)

    # ---- training -------------------------------------------------------------------------
    def fit(self, X, y, validation_data=None, callbacks=(), resume=None):
        """Train for `self.epochs` epochs; returns the `History` (also kept as `self.history`).

        X is (n, sizes[0]) of floats or uint8 pixels (scaled by 1/255); y is integer labels in
        [0, sizes[-1]), real targets of shape (n, sizes[-1]), or for one output unit a 1-D array.
        `validation_data` is an (X_val, y_val) pair evaluated after every epoch (or use
        validation_split). Each callback is called as ``callback(record, trainer)`` after every
        epoch; a callback returning True stops training. `resume` continues from a checkpoint
        written by a run with the same settings and data. The optimiser starts afresh each fit().

        Ctrl-C (KeyboardInterrupt) stops between optimiser steps within a few milliseconds: the
        network and the optimiser hold the state after the last completed step, the history ends
        with the partial epoch (``"partial": True``), the checkpoint (if any) is written, and
        ``trainer.interrupted`` is True; then KeyboardInterrupt propagates. If the parameters stop
        being finite, the weights and optimiser state of the start of that epoch are restored
        and FloatingPointError is raised.
        """
        self._check_checkpoint_folder()
        self.task = self._task_of(y)
        data = self._prepare(X, y, self.task)
        if validation_data is not None and self.validation_split:
            raise ValueError("pass validation_data or validation_split, not both")
        if validation_data is not None and (not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2):
            raise TypeError("validation_data must be an (X_val, y_val) pair")
        val = self._prepare(*validation_data, task=self.task) if validation_data is not None else None
        if self.early_stopping and val is None and not self.validation_split:
            raise ValueError("early_stopping needs validation_data or validation_split")
        if self.time_budget is not None and resume is not None:
            raise ValueError("time_budget cannot resume a checkpoint: the budget plans a whole run (resume without it, "
                             "with the epochs the run planned)")
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables, got {cb!r}")

        self.interrupted = False
        self.optimizer.reset(self.net.params)
        stopper = _EarlyStopping(self.early_stopping) if self.early_stopping else None
        state = {"epoch": 0, "split_seed": int(self._rng.integers(2 ** 63)), "partial": None}
        history = self.history = History()
        if resume is not None:
            state = self._load_checkpoint(resume, history, stopper)
        if self.validation_split:
            data, val = self._split(data, state["split_seed"])
        if self.label_smoothing:
            data = self._smooth(data)
        if self.time_budget is not None:
            self.epochs = max(1, self._epochs_setting)  # the first guess; planned after epoch 1
        self._calls = []  # (steps, seconds) of every backend call this fit, for the time budget
        n = data[0].shape[0]
        self._run = {"state": state, "history": history, "stopper": stopper}

        self._max_loss = float(np.finfo(self.net.dtype).max)
        self._slice_guess = 4  # steps in the first call; then sized to slice_seconds from measured times
        try:
            # A Ctrl-C while a JIT backend compiles stops here, nothing trained. It is deferred to the
            # end of compiling: raised inside Numba's compiler, llvmlite swallows the KeyboardInterrupt
            # in a ctypes callback and the compile then fails with an unrelated RuntimeError.
            with _DeferredInterrupt():
                ws = self._workspace(data, n)
            history.compile_seconds = ws.compile_seconds
            self._epochs(data, val, n, ws, state, history, stopper, callbacks)
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        if stopper is not None and stopper.best_params is not None:
            self.net.params[...] = stopper.best_params
            history.best_epoch = stopper.best_epoch
        return history

    def _smooth(self, data):
        """Training targets with label smoothing: (1 - eps) t + eps / K (K classes; 2 for sigmoid units)."""
        X, scale, targets, labels = data
        k = targets.shape[1] if self.net.output == "softmax" else 2
        eps = self.label_smoothing
        smoothed = (targets.astype(np.float64) * (1.0 - eps) + eps / k).astype(targets.dtype)
        return X, scale, np.ascontiguousarray(smoothed), labels

    def _steady_step_seconds(self):
        """Seconds per optimiser step measured so far, leaving out the fit's first backend call (it
        warms caches and threads); None before there is anything else to go by."""
        rest = self._calls[1:] or self._calls
        steps = sum(k for k, _ in rest)
        return sum(t for _, t in rest) / steps if steps else None

    def plan_epochs(self, done, spent, epoch_seconds):
        """The run's length in epochs for a time budget: `done` epochs took `spent` seconds and
        one more is expected to take `epoch_seconds`. At least `done` (and at least 1)."""
        room = self.time_budget * (1.0 - self.budget_margin) - spent
        more = int(room // epoch_seconds) if epoch_seconds > 0 and room > 0 else 0
        return max(done + more, 1)

    def _replan(self, epoch, steps, history):
        """After each epoch of a budgeted run: set (epoch 1) or shorten (later) the number of epochs."""
        done = [r for r in history.records if not r.get("partial")]
        spent = sum(r["seconds"] for r in done)
        if epoch == 1:
            per_step = self._steady_step_seconds()
            estimate = per_step * steps if per_step is not None else spent
        else:
            estimate = float(np.median([r["seconds"] for r in done[1:]]))
        planned = self.plan_epochs(epoch, spent, estimate)
        if epoch > 1:
            planned = min(planned, self.epochs)  # only ever shorter: the schedule never climbs back
        if epoch == 1 or planned != self.epochs:
            history.budget_plans.append({"after_epoch": epoch, "epoch_seconds": estimate, "epochs": planned})
        self.epochs = planned

    def _epochs(self, data, val, n, ws, state, history, stopper, callbacks):
        with _DeferredInterrupt() as interrupt:
            epoch = state["epoch"]
            while epoch < self.epochs:
                epoch += 1
                record = self._epoch(epoch, data, n, ws, state, history, interrupt)
                if val is not None:
                    record.update(self._metrics(val, prefix="val_"))
                history.records.append(record)
                self.net.history = history.to_list()
                state["epoch"], state["partial"] = epoch, None
                if self.time_budget is not None:
                    self._replan(epoch, -(-n // self.batch_size), history)
                stop = stopper.update(epoch, record["val_loss"], self.net.params) if stopper else False
                if self.checkpoint is not None and (epoch % self.checkpoint_every == 0 or epoch == self.epochs or stop):
                    self.save_checkpoint()
                if any(cb(record, self) is True for cb in callbacks) or stop:
                    history.stopped_early = stop
                    break

    def _workspace(self, data, n):
        """The backend's per-fit workspace, built from this fit's data (compile time measured there)."""
        lrs = self.schedule.rates(self.lr, 1, max(self.epochs, 1), -(-n // self.batch_size))
        probe = self._plan(data, np.arange(n, dtype=np.int64), lrs, 0)
        saved = [self.net.params.copy()] + [s.copy() for s in self.optimizer.state]
        ws = self.backend.prepare(self.net, probe)
        for live, copy in zip([self.net.params, *self.optimizer.state], saved):
            live[...] = copy  # preparing must not move the real state
        return ws

    def _epoch(self, epoch, data, n, ws, state, history, interrupt):
        """Run one epoch in slices; returns its history record (raises on Ctrl-C or divergence)."""
        opt, bs = self.optimizer, self.batch_size
        partial = state.get("partial")
        if partial is not None and partial["epoch"] == epoch:  # resuming inside this epoch
            self._rng.bit_generator.state = partial["rng"]
        rng_at_start = self._rng.bit_generator.state
        order = (self._rng.permutation(n) if self.shuffle else np.arange(n)).astype(np.int64)
        epoch_seed = int(self._rng.integers(2 ** 63))
        steps = -(-n // bs)
        lrs = self.schedule.rates(self.lr, epoch, max(self.epochs, epoch), steps)
        full = self._plan(data, order, lrs, epoch_seed)
        k, loss_sum, correct, seconds = 0, 0.0, 0, 0.0
        if partial is not None and partial["epoch"] == epoch:
            k, loss_sum, correct, seconds = partial["step"], partial["loss_sum"], partial["correct"], partial["seconds"]
        snapshot = (self.net.params.copy(), [s.copy() for s in opt.state], opt.step_count)
        n_slice = self.slice_steps or self._slice_guess  # adaptive: carried over from the previous epoch
        result = None
        while k < steps:
            a, b = k * bs, min((k + n_slice) * bs, n)
            plan = dataclasses.replace(full, order=order[a:b], lrs=lrs[k:k + n_slice], first_position=a,
                                       rule=opt.step_rule())
            start = self.clock()
            result = self.backend.train_epoch(self.net, plan, ws)
            took = self.clock() - start
            if self.time_budget is not None and epoch == 1:
                self._calls.append((plan.n_steps, took))
            seconds += took
            opt.step_count += plan.n_steps
            k += plan.n_steps
            loss_sum += result.loss_sum
            correct += result.n_correct
            # a loss beyond the network dtype's range is divergence too, whatever precision a backend sums in
            if not (abs(loss_sum) <= self._max_loss and _finite(self.net.params)):
                self._restore(snapshot)
                raise FloatingPointError(
                    f"training diverged in epoch {epoch} (loss {loss_sum / max(b, 1):.4g}"
                    f"{'' if _finite(self.net.params) else ', parameters not finite'}); the weights and optimiser "
                    f"state of the start of epoch {epoch} are restored. Lower the learning rate (now {self.lr:g})"
                    f"{' or scale the inputs' if self.net.output == 'linear' else ''}")
            if self.slice_steps is None:  # aim each call at slice_seconds
                per_step = took / plan.n_steps
                n_slice = max(1, min(4 * n_slice, int(self.slice_seconds / per_step) if per_step > 0 else 4 * n_slice))
                self._slice_guess = n_slice
            try:
                interrupt.check()
            except KeyboardInterrupt:
                done = min(k * bs, n)
                record = self._record(epoch, loss_sum, correct, done, seconds, lrs[k - 1], result)
                record["partial"] = True
                history.records.append(record)
                self.net.history = history.to_list()
                state["partial"] = {"epoch": epoch, "step": k, "rng": rng_at_start, "loss_sum": loss_sum,
                                    "correct": correct, "seconds": seconds}
                if self.checkpoint is not None:
                    self.save_checkpoint()
                raise
        return self._record(epoch, loss_sum, correct, n, seconds, lrs[-1], result)

    def _record(self, epoch, loss_sum, correct, n, seconds, lr, result):
        record = {"epoch": epoch, "train_loss": loss_sum / n}
        if self.task != "regression":
            record["train_accuracy"] = correct / n if self.task == "classification" else None
            record["val_accuracy"] = None
        else:
            record["val_r2"] = record["val_mae"] = None
        record.update({"val_loss": None, "lr": float(lr), "seconds": seconds,
                       "samples_per_second": n / seconds if seconds > 0 else math.inf,
                       "threads_used": None if result is None else int(result.threads_used),
                       "mode": None if result is None else result.mode, "partial": False})
        return record

    def _restore(self, snapshot):
        params, state, step_count = snapshot
        self.net.params[...] = params
        for live, saved in zip(self.optimizer.state, state):
            live[...] = saved
        self.optimizer.step_count = step_count

    # ---- evaluation -----------------------------------------------------------------------
    def _metrics(self, data, prefix=""):
        """Loss (the training formula, from pre-activations, computed by the backend) and the task's metrics."""
        X, scale, targets, labels = data
        n = X.shape[0]
        loss_sum, correct = self.backend.evaluate(self.net, X, scale, targets, labels, self.loss, self.threads)
        out = {prefix + "loss": loss_sum / n}
        if self.task == "classification":
            out[prefix + "accuracy"] = correct / n
            return out
        pred = self.backend.forward(self.net, X, scale, self.threads).astype(np.float64)
        if self.task == "binary":
            out[prefix + "accuracy"] = float(np.mean((pred[:, 0] > 0.5) == (labels == 1)))
            return out
        t = targets.astype(np.float64)
        ss_res = np.sum((t - pred) ** 2, axis=0)
        ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
        # per output, then averaged (scikit-learn's r2_score); a constant target scores 1 if fitted exactly
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0))
        out[prefix + "r2"] = float(r2.mean())
        out[prefix + "mae"] = float(np.mean(np.abs(t - pred)))
        return out

    def evaluate(self, X, y):
        """Mean loss and the task's metrics on (X, y): ``{"loss", "accuracy"}`` for classification,
        ``{"loss", "r2", "mae"}`` for regression."""
        task = self.task or self._task_of(y)
        saved, self.task = self.task, task
        try:
            return self._metrics(self._prepare(X, y, task))
        finally:
            self.task = saved

    # ---- checkpoints ----------------------------------------------------------------------
    def _settings(self):
        """What must match between a checkpoint and the run that resumes it."""
        keys = ("loss", "lr", "batch_size", "shuffle", "momentum", "nesterov", "l2", "l1", "dropout",
                "lr_schedule", "warmup_epochs", "lr_step_size", "lr_gamma", "min_lr", "augment_shift",
                "validation_split", "early_stopping")
        out = {k: getattr(self, k) for k in keys}
        # newer settings join the key set only when used, so older checkpoints still resume
        for key, default in (("label_smoothing", 0.0), ("augment_rotate", 0.0), ("augment_elastic", 0.0)):
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        if self.lr_schedule == "onecycle":
            out["pct_start"] = self.pct_start
        if self.optimizer.name != "sgd":  # sgd runs keep the key set older checkpoints have
            out["optimizer"] = self.optimizer.name
            out["optimizer_settings"] = self.optimizer.hyperparameters()
        return out

    def save_checkpoint(self, path=None):
        """Write the current run (network, optimiser state, history, position) to `path`
        (default: the `checkpoint` setting), atomically. fit() calls it; after Ctrl-C it is the
        state of the last completed step. Returns the path written."""
        if self._run is None:
            raise ValueError("nothing to checkpoint: fit() has not started")
        path = checkpoint_path(path or self.checkpoint)
        run = self._run
        if not _finite(self.net.params):
            raise FloatingPointError("the parameters are not finite; refusing to write a checkpoint")
        opt = self.optimizer.state_dict()
        meta = {"state": run["state"], "settings": self._settings(), "rng": self._rng.bit_generator.state,
                "compile_seconds": run["history"].compile_seconds,
                "optimizer": {"name": opt["name"], "step_count": opt["step_count"], "n_state": len(opt["state"])}}
        if run["stopper"] is not None:
            meta["early_stopping"] = run["stopper"].state()
        extra = {"checkpoint": np.array(CHECKPOINT_TAG), "trainer_state": np.array(json.dumps(meta))}
        for i, s in enumerate(opt["state"]):
            extra[f"optimizer_state_{i}"] = s
        if run["stopper"] is not None and run["stopper"].best_params is not None:
            extra["best_params"] = run["stopper"].best_params
        return self.net.save(path, extra=extra)

    def _load_checkpoint(self, path, history, stopper):
        from .network import Network

        path = checkpoint_path(path)
        saved = Network.load(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                if "checkpoint" not in f.files or str(f["checkpoint"]) != CHECKPOINT_TAG:
                    raise ValueError(f"{path} is a saved network, not a training checkpoint")
                meta = json.loads(str(f["trainer_state"]))
                opt_meta = meta.get("optimizer", {"name": "sgd", "step_count": 0, "n_state": 0})
                arrays = [f[f"optimizer_state_{i}"] for i in range(int(opt_meta["n_state"]))]
                if not arrays and "velocity" in f.files:  # written before optimisers were objects
                    arrays = [f["velocity"]]
                best_params = f["best_params"] if "best_params" in f.files else None
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is a damaged checkpoint: {exc}") from exc
        if saved.sizes != self.net.sizes or saved.activation != self.net.activation or \
                saved.output != self.net.output or saved.dtype != self.net.dtype:
            raise ValueError(f"{path} holds a {saved!r}, not this trainer's {self.net!r}")
        different = {k: (meta["settings"].get(k), v) for k, v in self._settings().items()
                     if meta["settings"].get(k) != v}
        if different:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in different.items())
            raise ValueError(f"cannot resume {path} with different settings ({detail})")
        self.net.params[...] = saved.params
        self.optimizer.load_state_dict({"name": opt_meta["name"], "step_count": opt_meta["step_count"],
                                        "state": arrays})
        self._rng.bit_generator.state = meta["rng"]
        history.records = [r for r in (saved.history or []) if not r.get("partial")]
        state = meta["state"]
        if stopper is not None and ("early_stopping" in meta or "best_loss" in state):  # older checkpoints: in state
            stopper.load(meta.get("early_stopping", state), best_params)
        state.setdefault("partial", None)
        return state
