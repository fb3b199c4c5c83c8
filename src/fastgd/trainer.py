"""Training: validation at the boundary, the epoch driver, history and callbacks.

Per epoch the Trainer shuffles, builds an `EpochPlan`, and hands the whole epoch to the
backend (one compiled call for the Cython and Numba backends); Python runs only between epochs.
"""
from __future__ import annotations

import math
import time

import numpy as np

from . import _checks
from .backends import EpochPlan, get_backend, backend_names


class History:
    """Per-epoch records from `Trainer.fit`.

    ``history.records`` is a list of dicts with keys ``epoch``, ``train_loss``,
    ``train_accuracy`` (running: measured on each minibatch before its update, as it
    trained), ``val_loss`` and ``val_accuracy`` (None without validation data), ``seconds``
    (training only) and ``samples_per_second``. ``history["train_loss"]`` is the list of one key.
    ``compile_seconds`` is the time a JIT backend spent compiling before the first epoch.
    """

    KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_second")

    def __init__(self, records=None, compile_seconds=0.0):
        self.records = list(records or [])
        self.compile_seconds = compile_seconds

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
        Seed for the shuffling; the same seed gives the same run (the numpy backend and every
        backend in deterministic mode).
    shuffle : bool
        Visit the samples in a new random order each epoch.
    deterministic : bool
        Results that do not depend on thread timing. False lets a compiled backend use faster
        asynchronous (Hogwild-style) updates when it has them.
    """

    def __init__(self, net, loss="mse", lr=3.0, batch_size=10, epochs=30, backend="auto", threads=None,
                 seed=None, shuffle=True, deterministic=True):
        from .network import Network

        if not isinstance(net, Network):
            raise TypeError(f"net must be a fastgd.Network, got {type(net).__name__}")
        self.net = net
        self.loss = _checks.check_loss_output(loss, net.output)
        self.lr = _checks.check_positive_float(lr, "lr")
        self.batch_size = _checks.check_positive_int(batch_size, "batch_size")
        self.epochs = _checks.check_positive_int(epochs, "epochs", minimum=0)
        if not isinstance(backend, str) or backend not in backend_names():
            _checks.check_choice(backend, backend_names(), "backend")
        self.backend = get_backend(backend)
        self.threads = _checks.check_threads(threads)
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.deterministic = bool(deterministic)
        self._rng = np.random.default_rng(seed)
        self.history = History()

    # ---- data -----------------------------------------------------------------------------
    def _prepare(self, X, y, what="training data"):
        X, scale = _checks.check_X(X, self.net.sizes[0], self.net.dtype)
        targets, labels = _checks.check_y(y, X.shape[0], self.net.sizes[-1], self.net.dtype, self.loss)
        return X, scale, targets, labels

    def _plan(self, data, order):
        X, scale, targets, labels = data
        steps = -(-len(order) // self.batch_size)
        return EpochPlan(X=X, x_scale=scale, targets=targets, labels=labels, order=order,
                         lrs=np.full(steps, self.lr), batch_size=self.batch_size, loss=self.loss,
                         threads=self.threads, deterministic=self.deterministic)

    # ---- training -------------------------------------------------------------------------
    def fit(self, X, y, validation_data=None, callbacks=()):
        """Train for `self.epochs` epochs; returns the `History` (also kept as `self.history`).

        X is (n, sizes[0]) of any real dtype (uint8 images are scaled by 1/255); y is integer
        labels in [0, sizes[-1]) or real targets of shape (n, sizes[-1]). `validation_data` is
        an (X_val, y_val) pair evaluated after every epoch. Each callback is called as
        ``callback(record, trainer)`` after every epoch; a callback returning True stops training.
        """
        data = self._prepare(X, y)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be an (X_val, y_val) pair")
            val = self._prepare(*validation_data)
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be callables, got {cb!r}")
        n = data[0].shape[0]
        history = self.history = History()
        prepare = getattr(self.backend, "prepare", None)
        if prepare is not None:  # JIT compilation, timed apart from training
            history.compile_seconds = float(prepare(self.net, self._plan(data, np.arange(min(n, self.batch_size)))))
        for epoch in range(1, self.epochs + 1):
            order = self._rng.permutation(n) if self.shuffle else np.arange(n)
            plan = self._plan(data, order.astype(np.int64))
            start = time.perf_counter()
            loss_sum, correct = self.backend.train_epoch(self.net, plan)
            seconds = time.perf_counter() - start
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / n,
                "train_accuracy": correct / n,
                "val_loss": None,
                "val_accuracy": None,
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
            if any(cb(record, self) is True for cb in callbacks):
                break
        return history

    def _evaluate(self, data):
        X, scale, targets, labels = data
        out = self.backend.forward(self.net, X, scale, self.threads)
        loss = _mean_loss(out, targets, self.loss, self.net.output)
        return loss, float(np.mean(np.argmax(out, axis=1) == labels))

    def evaluate(self, X, y):
        """Mean loss and accuracy on (X, y): ``{"loss": ..., "accuracy": ...}``."""
        loss, acc = self._evaluate(self._prepare(X, y, "evaluation data"))
        return {"loss": loss, "accuracy": acc}


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
