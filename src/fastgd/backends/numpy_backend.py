"""The NumPy reference backend: the oracle every compiled kernel is tested against.

Written for clarity, in matrix form over a minibatch, as forward/backward pairs of plain
functions. Speed comes from BLAS (x @ W); nothing here is clever.
"""
from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from .. import _random
from .base import RECIPE_FEATURES

NAME = "numpy"


# ---- activations ----------------------------------------------------------------------------
def activation_forward(z, kind):
    """a = f(z) for a hidden or output activation."""
    if kind == "sigmoid":
        with np.errstate(over="ignore"):  # exp(-z) overflowing to inf gives the right limit 0
            return 1.0 / (1.0 + np.exp(-z))
    if kind == "relu":
        return np.maximum(z, 0)
    if kind == "tanh":
        return np.tanh(z)
    if kind == "linear":
        return z
    if kind == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown activation {kind!r}")


def activation_backward(a, da, kind):
    """dL/dz given the activation's output a = f(z) and dL/da."""
    if kind == "sigmoid":
        return da * a * (1 - a)
    if kind == "relu":
        return da * (a > 0)
    if kind == "tanh":
        return da * (1 - a * a)
    if kind == "linear":
        return da
    if kind == "softmax":  # Jacobian-vector product of softmax
        return a * (da - np.sum(da * a, axis=1, keepdims=True))
    raise ValueError(f"unknown activation {kind!r}")


# ---- losses ---------------------------------------------------------------------------------
def _softplus(z):
    return np.logaddexp(0, z)


def loss_forward(z, a, t, loss, output):
    """Per-sample loss (n,), from the last pre-activation z and its activation a."""
    if loss == "mse":
        return 0.5 * np.sum((a - t) ** 2, axis=1)
    if output == "softmax":  # log softmax from z: exact even where a underflows to 0
        zs = z - z.max(axis=1, keepdims=True)
        log_a = zs - np.log(np.sum(np.exp(zs), axis=1, keepdims=True))
        return -np.sum(t * log_a, axis=1)
    # sigmoid: log a = -softplus(-z), log(1 - a) = -softplus(z)
    return np.sum(t * _softplus(-z) + (1 - t) * _softplus(z), axis=1)


def loss_backward(a, t, loss, output):
    """dL/dz of the last layer, per sample (not yet divided by the batch size)."""
    if loss == "mse":
        return activation_backward(a, a - t, output)
    return a - t  # softmax + CE and sigmoid + binary CE share this simple delta


# ---- the network ----------------------------------------------------------------------------
def dense_forward(x, W, b, kind):
    """One layer: returns (z, a) with z = x @ W + b and a = kind(z)."""
    z = x @ W + b
    return z, activation_forward(z, kind)


def dense_backward(x, W, dz, gW, gb, need_dx=True):
    """Writes the batch-mean weight and bias gradients into gW, gb; returns dL/dx (or None)."""
    n = x.shape[0]
    np.matmul(x.T, dz, out=gW)
    gW /= n
    gb[...] = dz.sum(axis=0) / n
    return dz @ W.T if need_dx else None


def network_forward(net, x, masks=None):
    """All activations [x, a1, ..., aL] and the last pre-activation zL.

    masks[l] (optional, one per hidden layer) scales hidden layer l+1's activations: inverted
    dropout's keep/(1 - rate). acts holds the activations before masking; the next layer sees
    acts * mask.
    """
    acts = [x]
    z = None
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        kind = net.output if l == net.n_layers - 1 else net.activation
        inp = acts[-1] if masks is None or l == 0 else acts[-1] * masks[l - 1]
        z, a = dense_forward(inp, W, b, kind)
        acts.append(a)
    return acts, z


def network_backward(net, acts, dz, grad, masks=None):
    """Back-propagate dL/dz_last through every layer, writing gradients into the flat `grad`."""
    for l in range(net.n_layers - 1, -1, -1):
        w_off, b_off, n_in, n_out = net.layout[l]
        gW = grad[w_off:b_off].reshape(n_in, n_out)
        gb = grad[b_off:b_off + n_out]
        inp = acts[l] if masks is None or l == 0 else acts[l] * masks[l - 1]
        dx = dense_backward(inp, net.weights[l], dz, gW, gb, need_dx=l > 0)
        if l > 0:
            if masks is not None:
                dx = dx * masks[l - 1]
            dz = activation_backward(acts[l], dx, net.activation)


def dropout_masks(net, plan, positions):
    """Inverted-dropout multipliers for every hidden layer of the samples at `positions`."""
    masks, first_unit = [], 0
    scale = net.dtype.type(1.0 / (1.0 - plan.dropout))
    for width in net.sizes[1:-1]:
        keep = _random.dropout_keep(plan.seed, positions, first_unit, width, plan.dropout)
        masks.append(keep.astype(net.dtype) * scale)
        first_unit += width
    return masks


def sgd_update(net, grad, lr, plan):
    """One optimiser step on net.params from the minibatch gradient (see base.py for the rule)."""
    if plan.l2 > 0 or plan.l1 > 0:
        for w_off, b_off, _, _ in net.layout:
            W = net.params[w_off:b_off]
            if plan.l2 > 0:
                grad[w_off:b_off] += net.dtype.type(plan.l2) * W
            if plan.l1 > 0:
                grad[w_off:b_off] += net.dtype.type(plan.l1) * np.sign(W)
    step = grad
    if plan.momentum > 0:
        mu = net.dtype.type(plan.momentum)
        plan.velocity *= mu
        plan.velocity += grad
        step = grad + mu * plan.velocity if plan.nesterov else plan.velocity
    net.params -= net.dtype.type(lr) * step


def _rows(X, idx, x_scale, dtype):
    x = X[idx]
    if X.dtype == np.uint8:
        return x.astype(dtype) * dtype.type(x_scale)
    return x


def minibatch_loss_and_grad(net, x, t, loss, grad, masks=None):
    """Forward + backward on one minibatch: per-sample losses, outputs; gradient into `grad`."""
    acts, z = network_forward(net, x, masks)
    a = acts[-1]
    per_sample = loss_forward(z, a, t, loss, net.output)
    network_backward(net, acts, loss_backward(a, t, loss, net.output), grad, masks)
    return per_sample, a


# ---- the backend interface (see base.py) ----------------------------------------------------
class NumpyBackend:
    name = NAME
    features = frozenset(RECIPE_FEATURES)

    def forward(self, net, X, x_scale, threads=1, chunk=8192):
        out = np.empty((X.shape[0], net.sizes[-1]), dtype=net.dtype)
        with threadpool_limits(threads, user_api="blas"):
            for start in range(0, X.shape[0], chunk):
                rows = slice(start, start + chunk)
                x = _rows(X, rows, x_scale, net.dtype)
                acts, _ = network_forward(net, x)
                out[rows] = acts[-1]
        return out

    def loss_and_grad(self, net, X, x_scale, targets, loss, threads=1):
        grad = np.zeros_like(net.params)
        with threadpool_limits(threads, user_api="blas"):
            x = _rows(X, slice(None), x_scale, net.dtype)
            per_sample, _ = minibatch_loss_and_grad(net, x, targets, loss, grad)
        return float(per_sample.mean()), grad

    def train_epoch(self, net, plan):
        grad = np.zeros_like(net.params)
        loss_sum, correct = 0.0, 0
        bs = plan.batch_size
        with threadpool_limits(plan.threads, user_api="blas"):
            for step in range(plan.n_steps):
                idx = plan.order[step * bs:(step + 1) * bs]
                positions = plan.first_position + step * bs + np.arange(len(idx))
                x = _rows(plan.X, idx, plan.x_scale, net.dtype)
                if plan.max_shift > 0:
                    dx, dy = _random.shifts(plan.seed, positions, plan.max_shift)
                    x = _random.shift_images(x, *plan.image_shape, dx, dy)
                masks = dropout_masks(net, plan, positions) if plan.dropout > 0 else None
                per_sample, a = minibatch_loss_and_grad(net, x, plan.targets[idx], plan.loss, grad, masks)
                loss_sum += float(per_sample.sum(dtype=np.float64))
                correct += int(np.count_nonzero(np.argmax(a, axis=1) == plan.labels[idx]))
                sgd_update(net, grad, plan.lrs[step], plan)
        return loss_sum, correct
