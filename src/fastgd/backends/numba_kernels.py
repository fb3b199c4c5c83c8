"""Numba kernels: fused dense forward/backward pairs and whole-epoch SGD loops.

Every function here is a module-level ``@njit(cache=True, nogil=True)`` function over flat
buffers (llm.c style), compiled once per dtype (float32/float64) and input type (float/uint8)
and cached on disk, so a second process starts warm. Validation happens in Python
(`fastgd._checks`); these kernels assume valid input.

Buffers
-------
``params``  the network's flat parameter buffer; ``layout`` (n_layers, 4) int64 rows
            (w_off, b_off, n_in, n_out); ``kinds`` (n_layers,) int64 activation codes.
``target``  where updates go: ``params`` itself when training (``target -= coef * grad_sum``
            with coef = lr / B), or a zeroed gradient buffer with coef = -1 / B for
            `loss_and_grad` (then target = mean gradient). Reads always come from ``params``.
A *workspace* (`Workspace` in numba_backend.py) holds per-worker scratch arrays, so nothing is
allocated per minibatch on the loop path.

Two ways to run a layer
-----------------------
* loops: per-sample row-axpy loops, fused bias + activation; the first layer reads the input
  as a list of its non-zero pixels (MNIST is 81% zeros) and scales uint8 on the fly exactly
  like the reference (``dtype(pixel) * dtype(x_scale)``).
* BLAS: ``np.dot`` on contiguous views (Numba calls SciPy's BLAS gemm) with the elementwise
  work fused around it; used when a layer's work per step (B * n_in * n_out) reaches
  ``blas_min_work``, since large layers must not fall behind BLAS.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

SIGMOID, RELU, TANH, LINEAR, SOFTMAX = 0, 1, 2, 3, 4
ACTIVATION_CODES = {"sigmoid": SIGMOID, "relu": RELU, "tanh": TANH, "linear": LINEAR, "softmax": SOFTMAX}
MSE, CROSS_ENTROPY = 0, 1
LOSS_CODES = {"mse": MSE, "cross_entropy": CROSS_ENTROPY}

# Reassociation lets LLVM vectorise the dot products and reductions; no 'nnan'/'ninf', because
# sigmoid relies on exp overflowing to inf (1 / (1 + inf) = 0) exactly like the reference.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
JIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


# ---- activations, in place on one sample's row ----------------------------------------------
@njit(**JIT)
def activation_forward(z, a, kind):
    """a[:] = kind(z[:]) for one sample's row (z and a may be the same array)."""
    n = z.shape[0]
    one = a.dtype.type(1.0)
    if kind == SIGMOID:
        for j in range(n):
            a[j] = one / (one + np.exp(-z[j]))
    elif kind == RELU:
        zero = a.dtype.type(0.0)
        for j in range(n):
            a[j] = z[j] if z[j] > zero else zero
    elif kind == TANH:
        for j in range(n):
            a[j] = np.tanh(z[j])
    elif kind == LINEAR:
        for j in range(n):
            a[j] = z[j]
    else:  # SOFTMAX, shifted by the max like the reference
        m = z[0]
        for j in range(1, n):
            if z[j] > m:
                m = z[j]
        s = a.dtype.type(0.0)
        for j in range(n):
            e = np.exp(z[j] - m)
            a[j] = e
            s += e
        for j in range(n):
            a[j] = a[j] / s


@njit(**JIT)
def activation_backward(a, d, kind):
    """d[:] = dL/dz given a = f(z) and d = dL/da on entry (one sample's row)."""
    n = a.shape[0]
    one = a.dtype.type(1.0)
    if kind == SIGMOID:
        for j in range(n):
            d[j] = d[j] * a[j] * (one - a[j])
    elif kind == RELU:
        zero = a.dtype.type(0.0)
        for j in range(n):
            d[j] = d[j] if a[j] > zero else zero
    elif kind == TANH:
        for j in range(n):
            d[j] = d[j] * (one - a[j] * a[j])
    elif kind == SOFTMAX:  # Jacobian-vector product a * (d - <d, a>)
        s = a.dtype.type(0.0)
        for j in range(n):
            s += d[j] * a[j]
        for j in range(n):
            d[j] = a[j] * (d[j] - s)
    # LINEAR: unchanged


@njit(**JIT)
def _softplus(z):
    """log(1 + exp(z)) without overflow, in float64."""
    if z > 0.0:
        return z + np.log1p(np.exp(-z))
    return np.log1p(np.exp(z))


@njit(**JIT)
def loss_forward_backward(z, a, t, d, loss, out_kind):
    """Per-sample loss (float64) of the output row; writes dL/dz_last (not yet / B) into d."""
    n = a.shape[0]
    value = 0.0
    if loss == MSE:
        for j in range(n):
            diff = a[j] - t[j]
            d[j] = diff
            value += float(diff) * float(diff)
        activation_backward(a, d, out_kind)
        return 0.5 * value
    for j in range(n):  # softmax + CE and sigmoid + binary CE share dL/dz = a - t
        d[j] = a[j] - t[j]
    if out_kind == SOFTMAX:  # -sum t * log_softmax(z), from z: exact where a underflows
        m = float(z[0])
        for j in range(1, n):
            if z[j] > m:
                m = float(z[j])
        s = 0.0
        for j in range(n):
            s += np.exp(float(z[j]) - m)
        log_s = np.log(s)
        for j in range(n):
            value -= float(t[j]) * (float(z[j]) - m - log_s)
        return value
    for j in range(n):  # sigmoid: log a = -softplus(-z), log(1 - a) = -softplus(z)
        zj = float(z[j])
        tj = float(t[j])
        value += tj * _softplus(-zj) + (1.0 - tj) * _softplus(zj)
    return value


@njit(**JIT)
def argmax_row(a):
    """Index of the first largest entry, like np.argmax."""
    best = 0
    for j in range(1, a.shape[0]):
        if a[j] > a[best]:
            best = j
    return best


# ---- the input layer's non-zero list ----------------------------------------------------------
@njit(**JIT)
def gather_nonzeros(X, rows, x_scale, nz_idx, nz_val, nz_cnt):
    """For each sample row, the non-zero inputs as (column, value in the network's dtype).

    Values are dtype(X[r, k]) * dtype(x_scale), the reference's uint8 scaling, rounded the same.
    """
    scale = nz_val.dtype.type(x_scale)
    n_in = X.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        c = 0
        for k in range(n_in):
            if X[r, k] != 0:
                nz_idx[i, c] = k
                nz_val[i, c] = nz_val.dtype.type(X[r, k]) * scale
                c += 1
        nz_cnt[i] = c


@njit(**JIT)
def gather_dense(X, rows, x_scale, x):
    """x[i, :] = X[rows[i], :] in the network's dtype, scaled like the reference."""
    scale = x.dtype.type(x_scale)
    for i in range(rows.shape[0]):
        r = rows[i]
        for k in range(X.shape[1]):
            x[i, k] = x.dtype.type(X[r, k]) * scale


# ---- one dense layer on the loop path ---------------------------------------------------------
@njit(**JIT)
def dense_forward_sparse(nz_idx, nz_val, nz_cnt, B, W, b, z):
    """z[i] = b + sum over the non-zero inputs k of sample i of x_ik * W[k] (no activation)."""
    n_out = W.shape[1]
    for i in range(B):
        for j in range(n_out):
            z[i, j] = b[j]
        for p in range(nz_cnt[i]):
            k = nz_idx[i, p]
            v = nz_val[i, p]
            for j in range(n_out):
                z[i, j] += v * W[k, j]


@njit(**JIT)
def dense_forward_loops(x, B, W, b, z):
    """z[i] = b + x[i] @ W for i < B, skipping zero inputs (ReLU zeros, sparse pixels)."""
    n_in, n_out = W.shape
    zero = x.dtype.type(0.0)
    for i in range(B):
        for j in range(n_out):
            z[i, j] = b[j]
        for k in range(n_in):
            v = x[i, k]
            if v != zero:
                for j in range(n_out):
                    z[i, j] += v * W[k, j]


@njit(**JIT)
def dense_backward_dx_loops(d, B, W, a_in, in_kind, dx):
    """dx[i] = (d[i] @ W.T) * f'(a_in[i]): the previous layer's delta, derivative folded in."""
    n_in, n_out = W.shape
    for i in range(B):
        for k in range(n_in):
            s = dx.dtype.type(0.0)
            for j in range(n_out):
                s += d[i, j] * W[k, j]
            dx[i, k] = s
        activation_backward(a_in[i], dx[i], in_kind)


@njit(**JIT)
def dense_update_loops(x, d, B, coef, tW, tb, g):
    """tW -= coef * x[:B].T @ d[:B]; tb -= coef * sum(d[:B]) (g: scratch row of n_out)."""
    n_in, n_out = tW.shape
    zero = x.dtype.type(0.0)
    for k in range(n_in):
        for j in range(n_out):
            g[j] = zero
        for i in range(B):
            v = x[i, k]
            if v != zero:
                for j in range(n_out):
                    g[j] += v * d[i, j]
        for j in range(n_out):
            tW[k, j] -= coef * g[j]
    for j in range(n_out):
        g[j] = zero
    for i in range(B):
        for j in range(n_out):
            g[j] += d[i, j]
    for j in range(n_out):
        tb[j] -= coef * g[j]


@njit(**JIT)
def dense_update_sparse(nz_idx, nz_val, nz_cnt, d, B, coef, tW, tb, g):
    """The input layer's update from its non-zero list: only touched rows of W are written."""
    n_out = tW.shape[1]
    for i in range(B):
        for p in range(nz_cnt[i]):
            k = nz_idx[i, p]
            v = coef * nz_val[i, p]
            for j in range(n_out):
                tW[k, j] -= v * d[i, j]
    zero = d.dtype.type(0.0)
    for j in range(n_out):
        g[j] = zero
    for i in range(B):
        for j in range(n_out):
            g[j] += d[i, j]
    for j in range(n_out):
        tb[j] -= coef * g[j]


# ---- one dense layer on the BLAS path ---------------------------------------------------------
@njit(**JIT)
def dense_forward_blas(x, B, W, b, z):
    """z[:B] = x[:B] @ W (BLAS gemm) + b."""
    zb = z[:B]
    np.dot(x[:B], W, zb)
    for i in range(B):
        for j in range(W.shape[1]):
            zb[i, j] += b[j]


@njit(**JIT)
def dense_backward_dx_blas(d, B, W, a_in, in_kind, dx):
    """dx[:B] = (d[:B] @ W.T) * f'(a_in) with gemm."""
    dxb = dx[:B]
    np.dot(d[:B], W.T, dxb)
    for i in range(B):
        activation_backward(a_in[i], dxb[i], in_kind)


@njit(**JIT)
def dense_update_blas(x, d, B, coef, tW, tb, gW, g):
    """tW -= coef * x[:B].T @ d[:B] (gemm into the scratch gW), tb -= coef * sum(d[:B])."""
    n_in, n_out = tW.shape
    gWv = gW[:n_in * n_out].reshape((n_in, n_out))
    np.dot(x[:B].T, d[:B], gWv)
    for k in range(n_in):
        for j in range(n_out):
            tW[k, j] -= coef * gWv[k, j]
    zero = d.dtype.type(0.0)
    for j in range(n_out):
        g[j] = zero
    for i in range(B):
        for j in range(n_out):
            g[j] += d[i, j]
    for j in range(n_out):
        tb[j] -= coef * g[j]


# ---- the whole network ------------------------------------------------------------------------
@njit(**JIT)
def _layer_views(params, layout, l):
    w_off, b_off, n_in, n_out = layout[l, 0], layout[l, 1], layout[l, 2], layout[l, 3]
    return params[w_off:b_off].reshape((n_in, n_out)), params[b_off:b_off + n_out]


@njit(**JIT)
def _acts(acts, act_off, sizes, l, bmax):
    """Layer l's activation block (bmax, sizes[l]) inside the flat activation buffer."""
    return acts[act_off[l]:act_off[l] + bmax * sizes[l]].reshape((bmax, sizes[l]))


@njit(**JIT)
def network_forward(params, layout, kinds, X, x_scale, rows, use_blas, acts, act_off, sizes, zlast,
                    nz_idx, nz_val, nz_cnt):
    """Forward pass of the samples X[rows]: activations into `acts`, last pre-activation into zlast.

    Returns True when the input layer went through the non-zero list (then acts[0] is unused).
    """
    B = rows.shape[0]
    bmax = zlast.shape[0]
    L = layout.shape[0]
    sparse_input = not use_blas[0]
    if sparse_input:
        gather_nonzeros(X, rows, x_scale, nz_idx, nz_val, nz_cnt)
    else:
        gather_dense(X, rows, x_scale, _acts(acts, act_off, sizes, 0, bmax))
    for l in range(L):
        W, b = _layer_views(params, layout, l)
        x = _acts(acts, act_off, sizes, l, bmax)
        a = _acts(acts, act_off, sizes, l + 1, bmax)
        z = zlast if l == L - 1 else a  # hidden layers turn z into a in place
        if l == 0 and sparse_input:
            dense_forward_sparse(nz_idx, nz_val, nz_cnt, B, W, b, z)
        elif use_blas[l]:
            dense_forward_blas(x, B, W, b, z)
        else:
            dense_forward_loops(x, B, W, b, z)
        for i in range(B):
            activation_forward(z[i], a[i], kinds[l])
    return sparse_input


@njit(**JIT)
def minibatch_step(params, target, layout, kinds, loss, X, x_scale, targets, labels, rows, coef, use_blas,
                   acts, act_off, sizes, zlast, delta0, delta1, nz_idx, nz_val, nz_cnt, gW, g):
    """Forward + backward + update for one minibatch X[rows]: target -= coef * sum of gradients.

    Returns (sum of per-sample losses, number of correct argmax predictions), both measured with
    the weights before the update.
    """
    B = rows.shape[0]
    bmax = zlast.shape[0]
    L = layout.shape[0]
    sparse_input = network_forward(params, layout, kinds, X, x_scale, rows, use_blas, acts, act_off, sizes,
                                   zlast, nz_idx, nz_val, nz_cnt)
    n_out = sizes[L]
    out = _acts(acts, act_off, sizes, L, bmax)
    d = delta0[:bmax * n_out].reshape((bmax, n_out))
    loss_sum = 0.0
    correct = 0
    for i in range(B):
        r = rows[i]
        loss_sum += loss_forward_backward(zlast[i], out[i], targets[r], d[i], loss, kinds[L - 1])
        if argmax_row(out[i]) == labels[r]:
            correct += 1
    use_d0 = True
    for l in range(L - 1, -1, -1):
        W, _ = _layer_views(params, layout, l)
        tW, tb = _layer_views(target, layout, l)
        n_in = sizes[l]
        x = _acts(acts, act_off, sizes, l, bmax)
        cur = d
        if l > 0:  # the previous layer's delta, from W before its update
            other = delta1 if use_d0 else delta0
            d = other[:bmax * n_in].reshape((bmax, n_in))
            if use_blas[l]:
                dense_backward_dx_blas(cur, B, W, x, kinds[l - 1], d)
            else:
                dense_backward_dx_loops(cur, B, W, x, kinds[l - 1], d)
            use_d0 = not use_d0
        if l == 0 and sparse_input:
            dense_update_sparse(nz_idx, nz_val, nz_cnt, cur, B, coef, tW, tb, g)
        elif use_blas[l]:
            dense_update_blas(x, cur, B, coef, tW, tb, gW, g)
        else:
            dense_update_loops(x, cur, B, coef, tW, tb, g)
    return loss_sum, correct


@njit(**JIT)
def train_epoch_serial(params, layout, kinds, loss, X, x_scale, targets, labels, order, lrs, batch_size, use_blas,
                       acts, act_off, sizes, zlast, delta0, delta1, nz_idx, nz_val, nz_cnt, gW, g):
    """Every minibatch of `order` in turn, in one compiled call. Returns (loss_sum, n_correct)."""
    n = order.shape[0]
    n_steps = (n + batch_size - 1) // batch_size
    loss_sum = 0.0
    correct = 0
    for s in range(n_steps):
        start = s * batch_size
        stop = min(n, start + batch_size)
        rows = order[start:stop]
        coef = params.dtype.type(lrs[s]) / params.dtype.type(stop - start)
        ls, c = minibatch_step(params, params, layout, kinds, loss, X, x_scale, targets, labels, rows, coef,
                               use_blas, acts, act_off, sizes, zlast, delta0, delta1, nz_idx, nz_val, nz_cnt, gW, g)
        loss_sum += ls
        correct += c
    return loss_sum, correct


@njit(parallel=True, **JIT)
def train_epoch_hogwild(params, layout, kinds, loss, X, x_scale, targets, labels, order, lrs, batch_size, use_blas,
                        acts, act_off, sizes, zlast, delta0, delta1, nz_idx, nz_val, nz_cnt, gW, g):
    """Hogwild-style epoch: worker w runs its own contiguous share of the minibatches, updating
    the shared parameters without locks (results depend on thread timing; opt-in only).

    Every workspace array has a leading worker axis; one parallel region for the whole epoch.
    """
    n_workers = acts.shape[0]
    n = order.shape[0]
    n_steps = (n + batch_size - 1) // batch_size
    losses = np.zeros(n_workers)
    corrects = np.zeros(n_workers, dtype=np.int64)
    for w in prange(n_workers):
        s0 = n_steps * w // n_workers
        s1 = n_steps * (w + 1) // n_workers
        for s in range(s0, s1):
            start = s * batch_size
            stop = min(n, start + batch_size)
            rows = order[start:stop]
            coef = params.dtype.type(lrs[s]) / params.dtype.type(stop - start)
            ls, c = minibatch_step(params, params, layout, kinds, loss, X, x_scale, targets, labels, rows, coef,
                                   use_blas, acts[w], act_off, sizes, zlast[w], delta0[w], delta1[w], nz_idx[w],
                                   nz_val[w], nz_cnt[w], gW[w], g[w])
            losses[w] += ls
            corrects[w] += c
    return losses.sum(), corrects.sum()


@njit(**JIT)
def loss_and_grad(params, grad, layout, kinds, loss, X, x_scale, targets, labels, use_blas,
                  acts, act_off, sizes, zlast, delta0, delta1, nz_idx, nz_val, nz_cnt, gW, g):
    """Mean loss over all rows of X; the mean gradient is written into the zeroed `grad`."""
    n = X.shape[0]
    rows = np.arange(n)
    coef = grad.dtype.type(-1.0) / grad.dtype.type(n)  # grad -= (-1 / n) * sum = mean gradient
    ls, _ = minibatch_step(params, grad, layout, kinds, loss, X, x_scale, targets, labels, rows, coef, use_blas,
                           acts, act_off, sizes, zlast, delta0, delta1, nz_idx, nz_val, nz_cnt, gW, g)
    return ls / n


@njit(parallel=True, **JIT)
def forward_chunks(params, layout, kinds, X, x_scale, out, chunk, use_blas,
                   acts, act_off, sizes, zlast, nz_idx, nz_val, nz_cnt):
    """Output activations of every row of X, in chunks of `chunk` rows, one chunk per worker at
    a time (workspace arrays have a leading worker axis). Chunks are independent, so the result
    does not depend on the thread count."""
    n = X.shape[0]
    n_workers = acts.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    L = layout.shape[0]
    n_out = sizes[L]
    for w in prange(n_workers):
        for c in range(w, n_chunks, n_workers):
            start = c * chunk
            stop = min(n, start + chunk)
            rows = np.arange(start, stop)
            network_forward(params, layout, kinds, X, x_scale, rows, use_blas, acts[w], act_off, sizes, zlast[w],
                            nz_idx[w], nz_val[w], nz_cnt[w])
            a = _acts(acts[w], act_off, sizes, L, chunk)
            for i in range(stop - start):
                for j in range(n_out):
                    out[start + i, j] = a[i, j]
