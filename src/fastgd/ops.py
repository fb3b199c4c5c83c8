"""One table for every activation, output and loss: name, kernel code, where it may be used, and
the NumPy reference formulas.

Everything else takes its names and codes from here: `_checks` (valid choices), the NumPy
reference backend (it calls these formulas), the Numba kernels (they import the integer codes;
module-level ints are compile-time constants there) and the Cython kernels (setup.py writes
``kernels/ops_codes.pxi`` from this module; the Cython backend checks the codes at import). Codes are part of the compiled ABI: never
renumber one, append new ones.

Adding a hidden activation: one `Activation(...)` entry below (forward + derivative), then one
case in each compiled backend's activation switch. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

#: Slope of leaky_relu for z <= 0. The kernels use this same constant.
LEAKY_SLOPE = 0.01


# ---- reference formulas (NumPy, float32/float64-safe) ------------------------------------------
def _sigmoid(z):
    with np.errstate(over="ignore"):  # exp(-z) overflowing to inf gives the right limit 0
        return 1.0 / (1.0 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _softplus(z):
    return np.logaddexp(0, z)


@dataclass(frozen=True)
class Activation:
    """A hidden and/or output activation."""

    name: str
    code: int  # the integer every kernel switches on
    hidden: bool  # may be used as a hidden activation
    output: bool  # may be used as the output activation
    forward: Callable  # z -> a (elementwise, or row-wise for softmax)
    derivative: Optional[Callable]  # (z, a) -> da/dz elementwise; None for softmax (see `backward`)

    def backward(self, z, a, da):
        """dL/dz from dL/da (softmax: its Jacobian-vector product)."""
        if self.derivative is None:  # softmax
            return a * (da - np.sum(da * a, axis=1, keepdims=True))
        return da * self.derivative(z, a)


ACTIVATIONS = {a.name: a for a in (
    Activation("sigmoid", 0, True, True, _sigmoid, lambda z, a: a * (1 - a)),
    Activation("relu", 1, True, False, lambda z: np.maximum(z, 0), lambda z, a: (z > 0).astype(z.dtype)),
    Activation("tanh", 2, True, False, np.tanh, lambda z, a: 1 - a * a),
    Activation("linear", 3, False, True, lambda z: z, lambda z, a: np.ones_like(z)),
    Activation("softmax", 4, False, True, _softmax, None),
    Activation("leaky_relu", 5, True, False,
               lambda z: np.where(z > 0, z, z * z.dtype.type(LEAKY_SLOPE)),
               lambda z, a: np.where(z > 0, z.dtype.type(1), z.dtype.type(LEAKY_SLOPE))),
)}


# ---- losses ------------------------------------------------------------------------------------
def _mse_forward(z, a, t, output):
    return 0.5 * np.sum((a - t) ** 2, axis=1)


def _mse_delta(z, a, t, output):
    return ACTIVATIONS[output].backward(z, a, a - t)


def _ce_forward(z, a, t, output):
    """Cross-entropy from the pre-activation z: exact where a saturates to 0 or 1."""
    if output == "softmax":
        zs = z - z.max(axis=1, keepdims=True)
        log_a = zs - np.log(np.sum(np.exp(zs), axis=1, keepdims=True))
        return -np.sum(t * log_a, axis=1)
    # sigmoid, per unit (Nielsen ch. 3): log a = -softplus(-z), log(1 - a) = -softplus(z)
    return np.sum(t * _softplus(-z) + (1 - t) * _softplus(z), axis=1)


def _ce_delta(z, a, t, output):
    return a - t  # softmax + CE and sigmoid + binary CE share this delta


@dataclass(frozen=True)
class Loss:
    """A per-sample loss of the last layer.

    `forward(z, a, t, output)` gives the per-sample loss (n,) from the last pre-activation z,
    its activation a and the targets t; `delta(z, a, t, output)` gives dL/dz per sample (not yet
    divided by the batch size). `output` is the output activation's name (cross-entropy's
    formula depends on it).
    """

    name: str
    code: int
    outputs: tuple  # the output activations it pairs with
    forward: Callable
    delta: Callable


LOSSES = {l.name: l for l in (
    Loss("mse", 0, ("sigmoid", "softmax", "linear"), _mse_forward, _mse_delta),
    Loss("cross_entropy", 1, ("sigmoid", "softmax"), _ce_forward, _ce_delta),
)}

HIDDEN = tuple(name for name, a in ACTIVATIONS.items() if a.hidden)
OUTPUTS = tuple(name for name, a in ACTIVATIONS.items() if a.output)

# Integer constants for the Numba kernels (compile-time constants there) and setup.py's .pxi.
ACTIVATION_CODES = {name: a.code for name, a in ACTIVATIONS.items()}
LOSS_CODES = {name: l.code for name, l in LOSSES.items()}
SIGMOID, RELU, TANH, LINEAR, SOFTMAX, LEAKY_RELU = (ACTIVATION_CODES[n] for n in (
    "sigmoid", "relu", "tanh", "linear", "softmax", "leaky_relu"))
MSE, CROSS_ENTROPY = LOSS_CODES["mse"], LOSS_CODES["cross_entropy"]


def activation_forward(name, z):
    return ACTIVATIONS[name].forward(z)


def activation_backward(name, z, a, da):
    return ACTIVATIONS[name].backward(z, a, da)


def loss_forward(name, z, a, t, output):
    return LOSSES[name].forward(z, a, t, output)


def loss_delta(name, z, a, t, output):
    return LOSSES[name].delta(z, a, t, output)

