"""Training: validation at the boundary, the epoch driver, history, callbacks, checkpoints.

Per epoch the Trainer shuffles, computes the learning rate of every step, builds an
`EpochPlan`, and hands the whole epoch to the backend (one compiled call for the Cython and
Numba backends); Python runs only between epochs.
"""
from __future__ import annotations

import json
import math
import numbers
import time
from pathlib import Path

import numpy as np

from . import _checks
from .backends import FASTEST_FIRST, BackendUnavailable, EpochPlan, backend_names, get_backend
from .schedules import SCHEDULES, epoch_learning_rates

CHECKPOINT_TAG = "fastgd.Checkpoint"


class History:
    """Per-epoch records from `Trainer.fit`.

    ``history.records`` is a list of dicts with keys ``epoch``, ``train_loss``,
    ``train_accuracy`` (running: measured on each minibatch before its update, as it
    trained), ``val_loss`` and ``val_accuracy`` (None without validation data), ``lr`` (the
    last step's learning rate), ``seconds`` (training only) and ``samples_per_second``.
    ``history["train_loss"]`` is the list of one key. ``compile_seconds`` is the time a JIT
    backend spent compiling before the first epoch; ``stopped_early`` and ``best_epoch`` say
    what early stopping did.
    """

    KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
            "samples_per_second")

    def __init__(self, records=None, compile_seconds=0.0):
        self.records = list(records or [])
        self.compile_seconds = compile_seconds
        self.stopped_early = False
        self.best_epoch = None

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.records[key]
        if key not in self.KEYS:
            raise KeyError(f"unknown history key {key!r}; keys: {', '.join(self.KEYS)}")
        return [r[key] for r in self.records]

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


class Trainer:
    """Minibatch SGD for a `Network`.

    Parameters
    ----------
    net : Network
        Trained in place.
    loss : {"mse", "cross_entropy"}
        "mse" is the mean over the minibatch of ½‖a − y‖²; "cross_entropy" is softmax
        cross-entropy (output "softmax") or per-unit binary cross-entropy (output "sigmoid").
    lr : float
        Learning rate; each step does ``params -= lr * mean minibatch gradient``.
    batch_size : int
        Minibatch size; a smaller last minibatch is used, not dropped.
    epochs : int
        Passes over the training data.
    backend : {"auto", "numpy", "cython", "numba"}
        Where the arithmetic runs; "auto" picks the fastest available.
    threads : int or None
        Threads for the backend (None: every core).
    seed : int or None
        Seed for shuffling, dropout masks and shifts; the same seed gives the same run (the
        numpy backend, and every backend in deterministic mode).
    shuffle : bool
        Visit the samples in a new random order each epoch.
    deterministic : bool
        Results that do not depend on thread timing. False lets a compiled backend use faster
        asynchronous (Hogwild-style) updates when it has them.
    momentum, nesterov : float, bool
        SGD with (Nesterov) momentum, PyTorch's formulation (v = μv + g; step v or g + μv).
    l2, l1 : float
        Weight decay: adds ``l2 * W + l1 * sign(W)`` to the weights' gradient (not biases').
    dropout : float
        Inverted dropout on the hidden layers during training: each hidden unit is dropped with
        this probability and the survivors are scaled by 1 / (1 - dropout).
    lr_schedule : {"constant", "step", "cosine"}
        Learning rate per step: constant; step (× lr_gamma every lr_step_size epochs); cosine
        (down to min_lr over the run). warmup_epochs of linear warm-up apply to any of them.
    augment_shift : int
        Shift each training image by a random (dx, dy) in [-k, k]² pixels each epoch (zero fill).
        Needs square images or image_shape=(rows, cols).
    validation_split : float
        Hold out this fraction of the training data (seeded) as validation data.
    early_stopping : int or None
        Stop when the validation loss has not improved for this many epochs, and restore the
        weights of the best epoch.
    checkpoint, checkpoint_every : path or None, int
        Write a checkpoint (atomically) every N epochs; ``fit(..., resume=path)`` continues
        from it exactly where the run stopped.
    """

    def __init__(self, net, loss="mse", lr=3.0, batch_size=10, epochs=30, backend="auto", threads=None,
                 seed=None, shuffle=True, deterministic=True, *, momentum=0.0, nesterov=False, l2=0.0, l1=0.0,
                 dropout=0.0, lr_schedule="constant", warmup_epochs=0.0, lr_step_size=10, lr_gamma=0.1,
                 min_lr=0.0, augment_shift=0, image_shape=None, validation_split=0.0, early_stopping=None,
                 checkpoint=None, checkpoint_every=1):
        from .network import Network

        if not isinstance(net, Network):
            raise TypeError(f"net must be a fastgd.Network, got {type(net).__name__}")
        self.net = net
        self.loss = _checks.check_loss_output(loss, net.output)
        self.lr = _checks.check_positive_float(lr, "lr")
        self.batch_size = _checks.check_positive_int(batch_size, "batch_size")
        self.epochs = _checks.check_positive_int(epochs, "epochs", minimum=0)
        _checks.check_choice(backend, backend_names(), "backend")
        self.threads = _checks.check_threads(threads)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.deterministic = bool(deterministic)
        self.momentum = _check_fraction(momentum, "momentum")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.l2 = _check_nonnegative(l2, "l2")
        self.l1 = _check_nonnegative(l1, "l1")
        self.dropout = _check_fraction(dropout, "dropout")
        if self.dropout > 0 and net.n_layers < 2:
            raise ValueError("dropout applies to hidden layers, and this network has none")
        self.lr_schedule = _checks.check_choice(lr_schedule, SCHEDULES, "lr_schedule")
        self.warmup_epochs = _check_nonnegative(warmup_epochs, "warmup_epochs")
        self.lr_step_size = _checks.check_positive_int(lr_step_size, "lr_step_size")
        self.lr_gamma = _checks.check_positive_float(lr_gamma, "lr_gamma")
        self.min_lr = _check_nonnegative(min_lr, "min_lr")
        self.augment_shift = _checks.check_positive_int(augment_shift, "augment_shift", minimum=0)
        self.image_shape = self._check_image_shape(image_shape) if self.augment_shift else (0, 0)
        self.validation_split = _check_fraction(validation_split, "validation_split")
        self.early_stopping = (None if early_stopping is None
                               else _checks.check_positive_int(early_stopping, "early_stopping"))
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_every = _checks.check_positive_int(checkpoint_every, "checkpoint_every")
        self.backend = self._pick_backend(backend)
        missing = self._plan_features() - set(getattr(self.backend, "features", ()))
        if missing:
            raise ValueError(f"backend {self.backend.name!r} does not implement {', '.join(sorted(missing))} yet; "
                             f"use backend='numpy' for it")
        self._rng = np.random.default_rng(seed)
        self.history = History()
        self.velocity = np.zeros_like(net.params) if self.momentum > 0 else None

    def _pick_backend(self, name):
        """The named backend; for "auto", the fastest available one implementing the recipe asked for."""
        if name != "auto":
            return get_backend(name)
        wanted = self._plan_features()
        for candidate in FASTEST_FIRST:
            try:
                backend = get_backend(candidate)
            except BackendUnavailable:
                continue
            if wanted <= set(getattr(backend, "features", ())):
                return backend
        return get_backend("auto")

    def _check_image_shape(self, image_shape):
        n_in = self.net.sizes[0]
        if image_shape is None:
            side = math.isqrt(n_in)
            if side * side != n_in:
                raise ValueError(f"augment_shift needs image_shape=(rows, cols): {n_in} inputs are not a square image")
            return (side, side)
        rows, cols = (int(v) for v in image_shape)
        if rows * cols != n_in:
            raise ValueError(f"image_shape {image_shape} has {rows * cols} pixels but the network takes {n_in} inputs")
        return (rows, cols)

    def _plan_features(self):
        probe = EpochPlan(X=None, x_scale=1.0, targets=None, labels=None, order=None, lrs=None, batch_size=1,
                          loss=self.loss, momentum=self.momentum, nesterov=self.nesterov, l2=self.l2, l1=self.l1,
                          dropout=self.dropout, max_shift=self.augment_shift)
        return probe.requested_features()

    # ---- data -----------------------------------------------------------------------------
    def _prepare(self, X, y):
        X, scale = _checks.check_X(X, self.net.sizes[0], self.net.dtype)
        targets, labels = _checks.check_y(y, X.shape[0], self.net.sizes[-1], self.net.dtype, self.loss)
        return X, scale, targets, labels

    def _plan(self, data, order, epoch, epoch_seed):
        X, scale, targets, labels = data
        steps = -(-len(order) // self.batch_size)
        lrs = epoch_learning_rates(self.lr_schedule, self.lr, epoch, max(self.epochs, epoch), steps,
                                   self.warmup_epochs, self.lr_step_size, self.lr_gamma, self.min_lr)
        return EpochPlan(X=X, x_scale=scale, targets=targets, labels=labels, order=order, lrs=lrs,
                         batch_size=self.batch_size, loss=self.loss, threads=self.threads,
                         deterministic=self.deterministic, momentum=self.momentum, nesterov=self.nesterov,
                         l2=self.l2, l1=self.l1, velocity=self.velocity, dropout=self.dropout,
                         max_shift=self.augment_shift, image_shape=self.image_shape, seed=epoch_seed)

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

    # ---- training -------------------------------------------------------------------------
    def fit(self, X, y, validation_data=None, callbacks=(), resume=None):
        """Train for `self.epochs` epochs; returns the `History` (also kept as `self.history`).

        X is (n, sizes[0]) of any real dtype (uint8 images are scaled by 1/255); y is integer
        labels in [0, sizes[-1]) or real targets of shape (n, sizes[-1]). `validation_data` is
        an (X_val, y_val) pair evaluated after every epoch (or use validation_split). Each
        callback is called as ``callback(record, trainer)`` after every epoch; a callback
        returning True stops training. `resume` continues from a checkpoint written by a run
        with the same settings and data.

        Ctrl-C (KeyboardInterrupt) stops between optimiser steps: the network holds the weights
        of the last completed step, the history the completed epochs, and the last checkpoint
        file is untouched.
        """
        data = self._prepare(X, y)
        if validation_data is not None and self.validation_split:
            raise ValueError("pass validation_data or validation_split, not both")
        if validation_data is not None and (not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2):
            raise TypeError("validation_data must be an (X_val, y_val) pair")
        val = self._prepare(*validation_data) if validation_data is not None else None
        if self.early_stopping and val is None and not self.validation_split:
            raise ValueError("early_stopping needs validation_data or validation_split")
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables, got {cb!r}")

        state = {"epoch": 0, "split_seed": int(self._rng.integers(2 ** 63)), "best_loss": math.inf,
                 "best_epoch": None, "bad_epochs": 0}
        history = self.history = History()
        best_params = None
        if resume is not None:
            state, best_params = self._load_checkpoint(resume, history)
        if self.validation_split:
            data, val = self._split(data, state["split_seed"])
        n = data[0].shape[0]

        prepare = getattr(self.backend, "prepare", None)
        if prepare is not None:  # JIT compilation, timed apart from training
            probe = self._plan(data, np.arange(min(n, self.batch_size), dtype=np.int64), 1, 0)
            if probe.velocity is not None:
                probe.velocity = np.zeros_like(self.net.params)  # compiling must not move the real state
            saved = self.net.params.copy()
            history.compile_seconds = float(prepare(self.net, probe))
            self.net.params[...] = saved

        for epoch in range(state["epoch"] + 1, self.epochs + 1):
            order = (self._rng.permutation(n) if self.shuffle else np.arange(n)).astype(np.int64)
            plan = self._plan(data, order, epoch, int(self._rng.integers(2 ** 63)))
            start = time.perf_counter()
            loss_sum, correct = self.backend.train_epoch(self.net, plan)
            seconds = time.perf_counter() - start
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / n,
                "train_accuracy": correct / n,
                "val_loss": None,
                "val_accuracy": None,
                "lr": float(plan.lrs[-1]),
                "seconds": seconds,
                "samples_per_second": n / seconds if seconds > 0 else math.inf,
            }
            if not math.isfinite(record["train_loss"]):
                raise FloatingPointError(
                    f"training diverged in epoch {epoch} (loss {record['train_loss']}); lower the learning rate")
            if val is not None:
                record["val_loss"], record["val_accuracy"] = self._evaluate(val)
            history.records.append(record)
            self.net.history = history.to_list()
            state["epoch"] = epoch
            stop = False
            if self.early_stopping:
                if record["val_loss"] < state["best_loss"]:
                    state.update(best_loss=record["val_loss"], best_epoch=epoch, bad_epochs=0)
                    best_params = self.net.params.copy()
                else:
                    state["bad_epochs"] += 1
                    stop = state["bad_epochs"] >= self.early_stopping
            if self.checkpoint is not None and (epoch % self.checkpoint_every == 0 or epoch == self.epochs or stop):
                self._save_checkpoint(self.checkpoint, state, history, best_params)
            if any(cb(record, self) is True for cb in callbacks) or stop:
                history.stopped_early = stop
                break
        if self.early_stopping and best_params is not None:
            self.net.params[...] = best_params
            history.best_epoch = state["best_epoch"]
        return history

    def _evaluate(self, data):
        X, scale, targets, labels = data
        out = self.backend.forward(self.net, X, scale, self.threads)
        loss = _mean_loss(out, targets, self.loss, self.net.output)
        return loss, float(np.mean(np.argmax(out, axis=1) == labels))

    def evaluate(self, X, y):
        """Mean loss and accuracy on (X, y): ``{"loss": ..., "accuracy": ...}``."""
        loss, acc = self._evaluate(self._prepare(X, y))
        return {"loss": loss, "accuracy": acc}

    # ---- checkpoints ----------------------------------------------------------------------
    def _settings(self):
        """What must match between a checkpoint and the run that resumes it."""
        keys = ("loss", "lr", "batch_size", "shuffle", "momentum", "nesterov", "l2", "l1", "dropout",
                "lr_schedule", "warmup_epochs", "lr_step_size", "lr_gamma", "min_lr", "augment_shift",
                "validation_split", "early_stopping")
        return {k: getattr(self, k) for k in keys}

    def _save_checkpoint(self, path, state, history, best_params):
        extra = {
            "checkpoint": np.array(CHECKPOINT_TAG),
            "trainer_state": np.array(json.dumps({
                "state": state, "settings": self._settings(), "rng": self._rng.bit_generator.state,
                "compile_seconds": history.compile_seconds})),
        }
        if self.velocity is not None:
            extra["velocity"] = self.velocity
        if best_params is not None:
            extra["best_params"] = best_params
        self.net.save(path, extra=extra)

    def _load_checkpoint(self, path, history):
        from .network import Network

        saved = Network.load(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                if "checkpoint" not in f.files or str(f["checkpoint"]) != CHECKPOINT_TAG:
                    raise ValueError(f"{path} is a saved network, not a training checkpoint")
                meta = json.loads(str(f["trainer_state"]))
                velocity = f["velocity"] if "velocity" in f.files else None
                best_params = f["best_params"] if "best_params" in f.files else None
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is a damaged checkpoint: {exc}") from exc
        if saved.sizes != self.net.sizes or saved.activation != self.net.activation or \
                saved.output != self.net.output or saved.dtype != self.net.dtype:
            raise ValueError(f"{path} holds a {saved!r}, not this trainer's {self.net!r}")
        different = {k: (meta["settings"][k], v) for k, v in self._settings().items()
                     if meta["settings"].get(k) != v}
        if different:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in different.items())
            raise ValueError(f"cannot resume {path} with different settings ({detail})")
        self.net.params[...] = saved.params
        if self.velocity is not None:
            self.velocity[...] = velocity
        self._rng.bit_generator.state = meta["rng"]
        history.records = list(saved.history or [])
        return meta["state"], best_params


def _mean_loss(out, targets, loss, output):
    """Mean loss from output activations (evaluation only; training losses come from the backend)."""
    out = out.astype(np.float64)
    t = targets.astype(np.float64)
    if loss == "mse":
        return float(np.mean(0.5 * np.sum((out - t) ** 2, axis=1)))
    tiny = np.finfo(np.float64).tiny
    if output == "softmax":
        return float(np.mean(-np.sum(t * np.log(np.maximum(out, tiny)), axis=1)))
    return float(np.mean(-np.sum(t * np.log(np.maximum(out, tiny)) + (1 - t) * np.log(np.maximum(1 - out, tiny)), axis=1)))
