"""The contract every backend follows.

A backend is an object with a `name` and three methods, all working on a `Network`'s flat
parameter buffer (`net.params`, layout in `net.layout`):

``forward(net, X, x_scale, threads) -> outputs``
    Output-layer activations, shape (n, sizes[-1]), dtype net.dtype.

``loss_and_grad(net, X, x_scale, targets, loss, threads) -> (loss, grad)``
    Mean loss over the rows and its gradient as a flat array laid out like `net.params`.
    Used by the tests (finite differences, the PyTorch oracle); training never calls it.

``train_epoch(net, plan) -> (loss_sum, n_correct)``
    Runs every minibatch of `plan` in order, updating `net.params` in place, and returns the sum
    over samples of the per-sample loss (each measured with the weights its minibatch saw,
    before that minibatch's update) and the number of samples whose argmax output equalled
    their label. A compiled backend runs the whole call without returning to Python.

Conventions (checked against PyTorch autograd in tests/data/torch_one_step.npz):
  * x = X (float rows), or X_uint8 * x_scale computed in the network's dtype.
  * z_l = a_{l-1} @ W_l + b_l; hidden a = activation(z), last layer a = output(z).
  * mse: per-sample loss ½‖a − t‖²; cross_entropy with softmax: −Σ t·log softmax(z);
    cross_entropy with sigmoid: −Σ [t·log a + (1 − t)·log(1 − a)] (Nielsen ch. 3).
    For both cross-entropy pairs dL/dz_last = a − t.
  * The minibatch gradient is the mean over its rows; SGD: params -= lr * grad. The last
    minibatch of an epoch may be smaller than batch_size and is used.
  * The training recipe (all off by default), applied per step in this order, PyTorch's SGD:
      g = grad + l2 * W + l1 * sign(W)          (weights only; biases are not decayed)
      v = momentum * v + g                      (v = plan.velocity, kept across epochs)
      step = g + momentum * v if nesterov else v   (step = g when momentum == 0)
      params -= lr * step
    Dropout (inverted) multiplies each hidden activation by keep/(1 - dropout) during training,
    and image shifts move each input image by (dx, dy) pixels; both draw from the counter-based
    generator in fastgd._random, keyed by (plan.seed, first_position + index in order, unit),
    so every backend draws the same masks and shifts.
  * A backend lists the recipe features it implements in `features` (a set of the names in
    RECIPE_FEATURES); the Trainer refuses to ask a backend for one it does not list.
Inputs reaching a backend have been validated by fastgd._checks: shapes agree, values are
finite, labels lie in range, `order` holds valid row indices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


RECIPE_FEATURES = ("momentum", "nesterov", "l2", "l1", "dropout", "shift")


class BackendUnavailable(ImportError):
    """Raised when a known backend cannot run here (e.g. its compiled extension was not built)."""


@dataclass
class EpochPlan:
    """Everything one call of `train_epoch` needs besides the network."""

    X: np.ndarray  # (n, n_in), C-contiguous, net.dtype or uint8
    x_scale: float  # multiply X by this (1/255 for uint8, else 1.0)
    targets: np.ndarray  # (n, n_out), net.dtype
    labels: np.ndarray  # (n,), int32, for accuracy
    order: np.ndarray  # (m,), int64 row indices in visiting order; minibatch k is order[k*bs:(k+1)*bs]
    lrs: np.ndarray  # (ceil(m / batch_size),), float64 learning rate of each step
    batch_size: int
    loss: str  # "mse" | "cross_entropy"
    threads: int = 1
    deterministic: bool = True  # results must not depend on thread timing
    # ---- the training recipe; the defaults mean plain SGD ----
    momentum: float = 0.0
    nesterov: bool = False
    l2: float = 0.0  # weight decay on weights, not biases
    l1: float = 0.0
    velocity: np.ndarray | None = None  # momentum buffer laid out like net.params (needed when momentum > 0)
    dropout: float = 0.0  # probability of dropping each hidden unit
    max_shift: int = 0  # shift each input image by up to this many pixels in x and y
    image_shape: tuple = (0, 0)  # (rows, cols) with rows * cols == n_in, needed when max_shift > 0
    seed: int = 0  # this epoch's seed for dropout masks and shifts
    first_position: int = 0  # position in the epoch of order[0] (an epoch may be run in chunks)

    def requested_features(self):
        """The recipe features this plan turns on."""
        on = {"momentum": self.momentum > 0, "nesterov": self.nesterov, "l2": self.l2 > 0,
              "l1": self.l1 > 0, "dropout": self.dropout > 0, "shift": self.max_shift > 0}
        return {name for name, wanted in on.items() if wanted}

    @property
    def n_steps(self):
        return -(-len(self.order) // self.batch_size)
