"""The NumPy reference backend: the oracle every compiled kernel is tested against.

Written for clarity, in matrix form over a minibatch, as llm.c-style `*_forward`/`*_backward`
pairs of plain functions driven by the ops table (fastgd/ops.py). Speed comes from BLAS (x @ W);
nothing here is clever. The optimiser step follows the StepRule formulas in base.py.
"""
from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from .. import _random, augment, ops
from .base import ADAMW, AUGMENT_FEATURES, FEATURES, SGD, Backend, EpochResult, Workspace

NAME = "numpy"


# ---- one dense layer ------------------------------------------------------------------------
def dense_forward(x, W, b, kind):
    """x (B, n_in), W (n_in, n_out), b (n_out,) -> z, a (B, n_out) with z = x @ W + b, a = kind(z)."""
    z = x @ W + b
    return z, ops.activation_forward(kind, z)


def dense_backward(x, W, dz, gW, gb, need_dx=True):
    """dz (B, n_out) -> batch-mean gradients written into gW (n_in, n_out), gb (n_out,); returns dx (B, n_in)."""
    n = x.shape[0]
    np.matmul(x.T, dz, out=gW)
    gW /= n
    gb[...] = dz.sum(axis=0) / n
    return dz @ W.T if need_dx else None


# ---- the network ----------------------------------------------------------------------------
def network_forward(net, x, masks=None):
    """x (B, n_in) -> zs, acts: zs[l] (B, sizes[l+1]) pre-activations, acts = [x, a1, ..., aL].

    masks[l] (optional, one per hidden layer) scales hidden layer l+1's activations: inverted
    dropout's keep/(1 - rate). acts holds the activations before masking; the next layer sees
    acts * mask.
    """
    acts, zs = [x], []
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        kind = net.output if l == net.n_layers - 1 else net.activation
        inp = acts[-1] if masks is None or l == 0 else acts[-1] * masks[l - 1]
        z, a = dense_forward(inp, W, b, kind)
        zs.append(z)
        acts.append(a)
    return zs, acts


def network_backward(net, zs, acts, dz, grad, masks=None):
    """Back-propagate dL/dz_last (B, n_out) through every layer, writing the flat `grad` (like params)."""
    for l in range(net.n_layers - 1, -1, -1):
        w_off, b_off, n_in, n_out = net.layout[l]
        gW = grad[w_off:b_off].reshape(n_in, n_out)
        gb = grad[b_off:b_off + n_out]
        inp = acts[l] if masks is None or l == 0 else acts[l] * masks[l - 1]
        dx = dense_backward(inp, net.weights[l], dz, gW, gb, need_dx=l > 0)
        if l > 0:
            if masks is not None:
                dx = dx * masks[l - 1]
            dz = ops.activation_backward(net.activation, zs[l - 1], acts[l], dx)


def minibatch_forward_backward(net, x, t, loss, grad, masks=None):
    """Forward + backward on one minibatch: per-sample losses (B,) and outputs (B, n_out); gradient into `grad`."""
    zs, acts = network_forward(net, x, masks)
    z, a = zs[-1], acts[-1]
    per_sample = ops.loss_forward(loss, z, a, t, net.output)
    network_backward(net, zs, acts, ops.loss_delta(loss, z, a, t, net.output), grad, masks)
    return per_sample, a


def dropout_masks(net, plan, positions):
    """Inverted-dropout multipliers for every hidden layer of the samples at `positions`."""
    masks, first_unit = [], 0
    scale = net.dtype.type(1.0 / (1.0 - plan.dropout))
    for width in net.sizes[1:-1]:
        keep = _random.dropout_keep(plan.seed, positions, first_unit, width, plan.dropout)
        masks.append(keep.astype(net.dtype) * scale)
        first_unit += width
    return masks


# ---- the optimiser step (StepRule; formulas in base.py) ------------------------------------
def optimizer_step(net, grad, lr, rule, t):
    """One step on net.params (and rule.state) from the minibatch gradient `grad` (modified).

    t is the 1-based step number used by Adam's bias corrections.
    """
    dt = net.dtype.type
    P = net.params
    decay_in_grad = rule.weight_decay > 0 and rule.kind != ADAMW
    if decay_in_grad or rule.l1 > 0:
        for w_off, b_off, _, _ in net.layout:  # weights only, never biases
            W = P[w_off:b_off]
            if decay_in_grad:
                grad[w_off:b_off] += dt(rule.weight_decay) * W
            if rule.l1 > 0:
                grad[w_off:b_off] += dt(rule.l1) * np.sign(W)
    if rule.kind == SGD:
        step = grad
        if rule.momentum > 0:
            mu = dt(rule.momentum)
            (v,) = rule.state
            v *= mu
            v += grad
            step = grad + mu * v if rule.nesterov else v
        P -= dt(lr) * step
        return
    if rule.kind == ADAMW and rule.weight_decay > 0:  # decoupled decay, weights only
        for w_off, b_off, _, _ in net.layout:
            P[w_off:b_off] -= dt(lr * rule.weight_decay) * P[w_off:b_off]
    m, v = rule.state
    m *= dt(rule.beta1)
    m += dt(1.0 - rule.beta1) * grad
    v *= dt(rule.beta2)
    v += dt(1.0 - rule.beta2) * (grad * grad)
    bc1 = 1.0 - rule.beta1 ** t  # in double precision, as the kernels do
    bc2 = 1.0 - rule.beta2 ** t
    P -= dt(lr) * (m / dt(bc1)) / (np.sqrt(v / dt(bc2)) + dt(rule.eps))


def _rows(X, idx, x_scale, dtype):
    x = X[idx]
    if X.dtype == np.uint8:
        return x.astype(dtype) * dtype.type(x_scale)
    return x


# ---- the backend interface (see base.py) ----------------------------------------------------
class NumpyBackend(Backend):
    name = NAME
    features = frozenset(FEATURES + AUGMENT_FEATURES)
    forward_chunk = 8192  # rows per forward/evaluate chunk: bounds the temporary memory

    def prepare(self, net, plan):
        return Workspace(grad=np.zeros_like(net.params))

    def forward(self, net, X, x_scale, threads=1):
        out = np.empty((X.shape[0], net.sizes[-1]), dtype=net.dtype)
        with threadpool_limits(threads, user_api="blas"):
            for start in range(0, X.shape[0], self.forward_chunk):
                rows = slice(start, start + self.forward_chunk)
                _, acts = network_forward(net, _rows(X, rows, x_scale, net.dtype))
                out[rows] = acts[-1]
        return out

    def evaluate(self, net, X, x_scale, targets, labels, loss, threads=1):
        loss_sum, correct = 0.0, 0
        with threadpool_limits(threads, user_api="blas"):
            for start in range(0, X.shape[0], self.forward_chunk):
                rows = slice(start, start + self.forward_chunk)
                zs, acts = network_forward(net, _rows(X, rows, x_scale, net.dtype))
                per_sample = ops.loss_forward(loss, zs[-1], acts[-1], targets[rows], net.output)
                loss_sum += float(per_sample.sum(dtype=np.float64))
                correct += int(np.count_nonzero(np.argmax(acts[-1], axis=1) == labels[rows]))
        return loss_sum, correct

    def loss_and_grad(self, net, X, x_scale, targets, loss, threads=1):
        grad = np.zeros_like(net.params)
        with threadpool_limits(threads, user_api="blas"):
            x = _rows(X, slice(None), x_scale, net.dtype)
            per_sample, _ = minibatch_forward_backward(net, x, targets, loss, grad)
        return float(per_sample.mean()), grad

    def train_epoch(self, net, plan, ws):
        plan.validate(net)
        grad = ws.grad
        loss_sum, correct = 0.0, 0
        bs = plan.batch_size
        with threadpool_limits(plan.threads, user_api="blas"):
            for k in range(plan.n_steps):
                idx = plan.order[k * bs:(k + 1) * bs]
                positions = plan.first_position + k * bs + np.arange(len(idx))
                x = _rows(plan.X, idx, plan.x_scale, net.dtype)
                if plan.max_rotate > 0 or plan.elastic_alpha > 0:
                    x = augment.augment_images(x, *plan.image_shape, plan.seed, positions, plan.max_shift,
                                               plan.max_rotate, plan.elastic_alpha)
                elif plan.max_shift > 0:
                    dx, dy = _random.shifts(plan.seed, positions, plan.max_shift)
                    x = _random.shift_images(x, *plan.image_shape, dx, dy)
                masks = dropout_masks(net, plan, positions) if plan.dropout > 0 else None
                per_sample, a = minibatch_forward_backward(net, x, plan.targets[idx], plan.loss, grad, masks)
                loss_sum += float(per_sample.sum(dtype=np.float64))
                correct += int(np.count_nonzero(np.argmax(a, axis=1) == plan.labels[idx]))
                optimizer_step(net, grad, plan.lrs[k], plan.rule, plan.rule.step + k + 1)
        return EpochResult(loss_sum, correct, threads_used=plan.threads, mode="numpy")
