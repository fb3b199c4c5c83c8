"""Numba kernels: fused dense forward/backward pairs and one whole-epoch training loop.

Every function here is a module-level ``@njit(cache=True, nogil=True)`` function over flat
buffers (llm.c style), compiled once per argument types and cached on disk, so a second process
starts warm. Validation happens in Python (`EpochPlan.validate`); these kernels assume valid
input (run with NUMBA_BOUNDSCHECK=1 to have every index checked, see numba_simd).

What a kernel call gets (namedtuples, so signatures stay short; see numba_backend for who builds them)
------------------------------------------------------------------------------------------
``Net``      params (flat), layout (n_layers, 4) int64 rows (w_off, b_off, n_in, n_out),
             kinds (n_layers,) int64 activation codes (fastgd.ops).
``Data``     X (n, n_in) float or uint8, x_scale, the CSR of uint8 X's non-zero pixels
             (csr_ptr (n+1,) int64 / csr_idx (nnz,) / csr_val (nnz,) uint8; empty arrays: dense
             path), targets (n, n_out), labels (n,) int32, loss code.
``Scratch``  per-minibatch buffers: acts (flat, layer l's (bmax, sizes[l]) block at act_off[l]),
             sizes, zlast (bmax, n_out), delta0/delta1 (bmax * widest), gW (BLAS partial weight
             gradients / a loop layer's transposed weights), use_blas (n_layers,) bool, n_split.
``Optim``    the optimiser beyond plain in-place SGD (StepRule; momentum, weight decay, L1,
             Adam/AdamW), with the gradient buffer and the state arrays; ``None`` for plain SGD.
``Augment``  dropout, image shifts, rotation and elastic distortion (numba_augment) with their
             scratch; ``None`` when all are off.
``None`` arguments are compile-time facts: Numba prunes `if opt is None` branches, so plain SGD
compiles to the same code as before the optimiser and augmentation existed, from the same source.

``target`` is where updates go: ``params`` itself for plain SGD (``target -= coef * grad_sum``
with coef = lr / B), or a zeroed gradient buffer with coef = -1 / B (then target = mean gradient)
for an optimiser step and for `loss_and_grad`. Reads always come from ``params``.

Two ways to run a layer
-----------------------
* loops: 16-lane vectors held in registers (numba_simd's `vload`/`vfma`/`vstore`), four
  independent FMA chains per block, bias + activation + derivative fused into the same pass. The
  first layer of a uint8 input reads the CSR of its non-zero pixels (MNIST is 81% zeros), built
  once per fit, and scales pixels on the fly exactly like the reference; its update touches only
  those pixels' weight rows.
* BLAS: ``np.dot`` on contiguous views (Numba calls SciPy's BLAS gemm) with the elementwise work
  fused around it; used when a layer's work per step (B * n_in * n_out) reaches ``blas_min_work``.

Per-step overheads that were measured and removed: row views (atomic reference counts; the views
here are borrowed, see `view2d`), horizontal sums in the hidden deltas (transposed weights
instead), waiting for shuffled samples' data (prefetched one minibatch ahead).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange
from numba.core import config
from numba.cpython.unsafe.numbers import trailing_zeros  # LLVM cttz: the next non-zero pixel

from fastgd.ops import (CROSS_ENTROPY, LEAKY_RELU, LEAKY_SLOPE, LINEAR, MSE, RELU, SIGMOID, SOFTMAX,  # noqa: F401
                        TANH)

from .base import ADAM, ADAMW, SGD
from .numba_augment import augment_rows_split
from .numba_sparse import scale_table, sparse_forward, sparse_forward_narrow, sparse_update  # noqa: F401
from .numba_simd import (HAVE_COMPRESS, HAVE_GOMP, VL, borrow, copy_elems, gemm_raw, ld, nonzero_bits64,  # noqa: F401
                         nonzeros_packed64, prefetch, team_barrier, team_size, team_thread_num, vadd, vdiv,
                         vexp, vfma, vload, vmul, vsigmoid, vsign, vsplat, vsqrt, vstore, vsub, vsum, vwhere_positive,
                         vwhere_positive_else, view1d, view2d)

# No 'reassoc': with it, a process that had just compiled the kernels and one that loaded them
# from the disk cache trained to different float32 weights from the same seed (LLVM reassociated
# the sums differently in the two; test_a_cached_kernel_trains_bitwise_like_a_freshly_compiled_one),
# and the hot loops are written with explicit vectors anyway (no epoch measured slower without
# it). No 'nnan'/'ninf', because sigmoid relies on exp overflowing to inf (1 / (1 + inf) = 0)
# exactly like the reference.
FASTMATH = {"nsz", "arcp", "contract"}
# A bounds-checked build is not cached: the on-disk cache would hand it the unchecked code.
BOUNDS = bool(config.BOUNDSCHECK)
JIT = dict(cache=not config.BOUNDSCHECK, nogil=True, fastmath=FASTMATH, error_model="numpy")

Net = namedtuple("Net", "params layout kinds")
Data = namedtuple("Data", "X x_scale csr_ptr csr_idx csr_val targets labels loss")
Scratch = namedtuple("Scratch", "acts act_off sizes zlast delta0 delta1 gW use_blas n_split")
Optim = namedtuple("Optim", "kind momentum nesterov weight_decay l1 beta1 beta2 eps step grad state1 state2")
Team = namedtuple("Team", "acts deltas zlast WT woff wt_size bm act_off sizes use_blas lut cs es ev lo hi slut split")
Augment = namedtuple("Augment", "dropout drop_scale seed first_position max_shift img_rows img_cols masks dropped "
                                "mptr midx mval brows pixel_row pixel_col max_rotate elastic_alpha aug_work")



@njit(**JIT)
def borrowed_net(net):
    """net with borrowed arrays (numba_simd.borrow): no atomic reference counting inside a call."""
    return Net(borrow(net.params), borrow(net.layout), borrow(net.kinds))


@njit(**JIT)
def borrowed_data(d):
    return Data(borrow(d.X), d.x_scale, borrow(d.csr_ptr), borrow(d.csr_idx), borrow(d.csr_val), borrow(d.targets),
                borrow(d.labels), d.loss)


@njit(**JIT)
def borrowed_scratch(s):
    return Scratch(borrow(s.acts), borrow(s.act_off), borrow(s.sizes), borrow(s.zlast), borrow(s.delta0),
                   borrow(s.delta1), borrow(s.gW), borrow(s.use_blas), s.n_split)


@njit(**JIT)
def borrowed_team(t):
    return Team(borrow(t.acts), borrow(t.deltas), borrow(t.zlast), borrow(t.WT), borrow(t.woff), t.wt_size, t.bm,
                borrow(t.act_off), borrow(t.sizes), borrow(t.use_blas), borrow(t.lut), borrow(t.cs), borrow(t.es),
                borrow(t.ev), borrow(t.lo), borrow(t.hi), borrow(t.slut), t.split)


@njit(**JIT)
def prefetch_rows(X, csr_ptr, csr_idx, csr_val, targets, labels, rows):
    """Start loading the input (its CSR entries, or the dense row), targets and labels of the
    samples `rows`: in a shuffled order each sample sits at a random place in memory, and
    waiting for it stalled the input layer for longer than its arithmetic took (measured 38 ms
    vs 9 ms per MNIST epoch with the lesson network)."""
    sparse = csr_ptr.shape[0] > 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if sparse:
            start = csr_ptr[r]
            end = csr_ptr[r + 1]
            for p in range(start, end, 64 // csr_idx.itemsize):
                prefetch(csr_idx, p)
            for p in range(start, end, 64):
                prefetch(csr_val, p)
        else:
            for k in range(0, X.shape[1], 64 // X.itemsize):
                prefetch(X, r * X.shape[1] + k)
        prefetch(targets, r * targets.shape[1])
        prefetch(labels, r)


# ---- activations, in place on one sample's row ----------------------------------------------
# These take a 2-D array and a row number rather than a row view: every array view costs an
# atomic reference-count increment and decrement, and at ~200 views per minibatch that showed.
@njit(**JIT)
def act_vec(zv, kind):
    """kind(zv) lane by lane, for the element-wise kinds that have a vector form (vector_kind)."""
    if kind == SIGMOID:
        return vsigmoid(zv)
    if kind == RELU:
        return vwhere_positive(zv, zv)
    if kind == LEAKY_RELU:
        return vwhere_positive_else(zv, zv, vmul(zv, vsplat(LEAKY_SLOPE, zv)))
    return zv  # LINEAR


@njit(**JIT)
def vector_kind(kind):
    """Has act_vec a case for kind (tanh goes through np.tanh, softmax is per row)."""
    return kind == SIGMOID or kind == RELU or kind == LEAKY_RELU or kind == LINEAR


@njit(**JIT)
def dact_vec(av, dv, kind):
    """dL/dz from a = f(z) and dL/da, lane by lane, for every kind but softmax."""
    if kind == SIGMOID:
        return vmul(vmul(dv, av), vsub(vsplat(1, av), av))
    if kind == RELU:
        return vwhere_positive(av, dv)
    if kind == LEAKY_RELU:  # a > 0 exactly where z > 0 (the slope is positive)
        return vwhere_positive_else(av, dv, vmul(dv, vsplat(LEAKY_SLOPE, av)))
    if kind == TANH:
        return vmul(dv, vsub(vsplat(1, av), vmul(av, av)))
    return dv  # LINEAR


@njit(**JIT)
def activation_forward(z, a, i, kind):
    """a[i] = kind(z[i]) for one sample's row (z and a may be the same array)."""
    n = z.shape[1]
    o = i * n
    if vector_kind(kind):
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            vstore(a, o + j0, m, act_vec(vload(z, o + j0, m), kind))
    elif kind == TANH:
        for j in range(n):
            a[i, j] = np.tanh(z[i, j])
    else:  # SOFTMAX, shifted by the max like the reference
        mx = z[i, 0]
        for j in range(1, n):
            if z[i, j] > mx:
                mx = z[i, j]
        s = a.dtype.type(0.0)
        for j in range(n):
            e = np.exp(z[i, j] - mx)
            a[i, j] = e
            s += e
        for j in range(n):
            a[i, j] = a[i, j] / s


@njit(**JIT)
def activation_forward_rows(z, a, B, kind):
    """activation_forward of rows 0..B of z into a (both (rows, n), rows contiguous): the
    vector kinds as one run of 16-lane vectors over all B * n values (the same value per lane;
    one mask for the tail instead of one per row, and the rows' chains independent)."""
    if vector_kind(kind):
        total = B * z.shape[1]
        for j0 in range(0, total, VL):
            m = min(VL, total - j0)
            vstore(a, j0, m, act_vec(vload(z, j0, m), kind))
        return
    for i in range(B):
        activation_forward(z, a, i, kind)


@njit(**JIT)
def activation_backward(a, d, i, kind):
    """d[i] = dL/dz given a[i] = f(z) and d[i] = dL/da on entry (one sample's row)."""
    n = a.shape[1]
    o = i * n
    if kind == SOFTMAX:  # Jacobian-vector product a * (d - <d, a>)
        s = a.dtype.type(0.0)
        for j in range(n):
            s += d[i, j] * a[i, j]
        for j in range(n):
            d[i, j] = a[i, j] * (d[i, j] - s)
    elif kind != LINEAR:  # (linear: unchanged)
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            vstore(d, o + j0, m, dact_vec(vload(a, o + j0, m), vload(d, o + j0, m), kind))


@njit(**JIT)
def activation_backward_rows(a, d, B, kind):
    """activation_backward of rows 0..B (a and d (rows, n), rows contiguous): every kind but
    softmax as one run of 16-lane vectors over all B * n values, like activation_forward_rows."""
    if kind == SOFTMAX:
        for i in range(B):
            activation_backward(a, d, i, kind)
        return
    if kind == LINEAR:
        return
    total = B * a.shape[1]
    for j0 in range(0, total, VL):
        m = min(VL, total - j0)
        vstore(d, j0, m, dact_vec(vload(a, j0, m), vload(d, j0, m), kind))


@njit(**JIT)
def _softplus(z):
    """log(1 + exp(z)) without overflow, in float64."""
    if z > 0.0:
        return z + np.log1p(np.exp(-z))
    return np.log1p(np.exp(z))


@njit(**JIT)
def loss_forward_backward(z, a, d, i, t, r, loss, out_kind):
    """Per-sample loss (float64) of output row i against target row t[r]; writes dL/dz_last
    (not yet / B) into d[i]."""
    n = a.shape[1]
    o = i * n
    value = 0.0
    if loss == MSE:
        sq = vsplat(0, a)
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            diff = vsub(vload(a, o + j0, m), vload(t, r * n + j0, m))
            vstore(d, o + j0, m, diff)
            sq = vfma(sq, diff, diff)
        activation_backward(a, d, i, out_kind)
        return 0.5 * float(vsum(sq))
    for j in range(n):  # softmax + CE and sigmoid + binary CE share dL/dz = a - t
        d[i, j] = a[i, j] - t[r, j]
    if out_kind == SOFTMAX:  # -sum t * log_softmax(z), from z: exact where a underflows
        mx = float(z[i, 0])
        for j in range(1, n):
            if z[i, j] > mx:
                mx = float(z[i, j])
        s = 0.0
        for j in range(n):
            s += np.exp(float(z[i, j]) - mx)
        log_s = np.log(s)
        for j in range(n):
            value -= float(t[r, j]) * (float(z[i, j]) - mx - log_s)
        return value
    for j in range(n):  # sigmoid: log a = -softplus(-z), log(1 - a) = -softplus(z)
        zj = float(z[i, j])
        tj = float(t[r, j])
        value += tj * _softplus(-zj) + (1.0 - tj) * _softplus(zj)
    return value


@njit(**JIT)
def argmax_row(a, i):
    """Index of the first largest entry of a[i], like np.argmax. The running maximum is kept in
    a variable: re-reading a[i, best] made Numba wrap a possibly negative index on every entry."""
    best = 0
    top = a[i, 0]
    for j in range(1, a.shape[1]):
        if a[i, j] > top:
            top = a[i, j]
            best = j
    return best


# ---- the input layer's non-zero list ----------------------------------------------------------
@njit(**JIT)
def csr_count(X, ptr):
    """Row pointers of uint8 X's non-zero pixels into ptr (n + 1,); returns their number."""
    n, n_in = X.shape
    ptr[0] = 0
    for r in range(n):
        c = 0
        for k in range(n_in):
            c += X[r, k] != 0
        ptr[r + 1] = ptr[r] + c
    return ptr[n]


@njit(**JIT)
def csr_fill(X, ptr, idx, val):
    """Columns and values of uint8 X's non-zero pixels, row r's at idx/val[ptr[r]:ptr[r + 1]]."""
    n, n_in = X.shape
    for r in range(n):
        p = ptr[r]
        for k in range(n_in):
            if X[r, k] != 0:
                idx[p] = k
                val[p] = X[r, k]
                p += 1


def build_csr(X, idx_dtype):
    """Non-zero pixels of uint8 rows as CSR: (row pointers int64, columns of idx_dtype (uint16
    when the width allows: less memory traffic per epoch, int32 otherwise), values uint8).

    Built once per fit (the backend keeps it in the workspace), so each epoch reads ~150 entries
    per MNIST image instead of scanning 784 bytes. The arrays are allocated here and filled in
    place: a compiled function that returns arrays calls back into Python to box them, and a
    Ctrl-C pending at that moment surfaced as "SystemError: ... returned a result with an
    exception set" (issue 12); the kernels above return only numbers."""
    ptr = np.empty(X.shape[0] + 1, dtype=np.int64)
    nnz = int(csr_count(X, ptr))
    idx = np.empty(nnz, dtype=idx_dtype)
    val = np.empty(nnz, dtype=np.uint8)
    csr_fill(X, ptr, idx, val)
    return ptr, idx, val


@njit(**JIT)
def csr_rows_nnz(ptr, order):
    """The number of non-zero pixels in CSR rows order[0], order[1], ..."""
    total = 0
    for s in range(order.shape[0]):
        total += ptr[order[s] + 1] - ptr[order[s]]
    return total


@njit(**JIT)
def gather_csr_rows(ptr, idx, val, order, a, b, out_ptr, out_idx, out_val, pos):
    """Copies CSR rows order[a], ..., order[b - 1] in that order into out_* from pixel entry pos
    on (row order[s]: out_ptr[s - a]..out_ptr[s - a + 1]; out_ptr has b - a + 1 entries,
    out_idx/out_val room for pos + the rows' pixels). Returns the entry after the last pixel
    copied. The rows sit at random places, so each is asked for 8 rows ahead (its pointers 16
    ahead) in the whole order, beyond b too: the split epoch copies one step's rows a call."""
    m = order.shape[0]
    for s in range(a, b):
        if s + 16 < m:
            prefetch(ptr, ld(order, s + 16))
        if s + 8 < m:
            r = ld(order, s + 8)
            k0 = ld(ptr, r)
            for p in range(k0, ld(ptr, r + 1), 64 // idx.itemsize):
                prefetch(idx, p)
            for p in range(k0, ld(ptr, r + 1), 64):
                prefetch(val, p)
        r = ld(order, s)
        k0 = ld(ptr, r)
        n = ld(ptr, r + 1) - k0
        out_ptr[s - a] = pos
        copy_elems(out_idx, pos, idx, k0, n)
        copy_elems(out_val, pos, val, k0, n)
        pos += n
    out_ptr[b - a] = pos
    return pos


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
def pixel_table(x_scale, coef, like):
    """t[v] = coef * (dtype(v) * dtype(x_scale)) for every uint8 value v: the reference's scaled
    pixel (coef 1) or the update's factor, looked up instead of a convert and multiplies per pixel."""
    t = np.empty(256, dtype=like.dtype)
    scale = like.dtype.type(x_scale)
    c = like.dtype.type(coef)
    for v in range(256):
        t[v] = c * (like.dtype.type(v) * scale)
    return t


@njit(**JIT)
def dense_forward_sparse(csr_ptr, csr_idx, csr_val, x_scale, rows, W, b, z):
    """z[i] = b + sum over the non-zero pixels k of row rows[i] of x_k * W[k] (no activation).

    x_k = dtype(pixel) * dtype(x_scale) like the reference, from a 256-entry table. Column blocks
    outermost: one 16-column block of W (n_in x 16, 50 KB for MNIST, mostly the ~600 pixels
    that are ever non-zero) stays in L1 while every sample of the minibatch reads it, so wide
    layers read W from L1 instead of L2. Four vector accumulators per sample keep four FMA
    chains in flight; `ld` loads without Numba's wraparound test."""
    n_out = W.shape[1]
    lut = pixel_table(x_scale, 1.0, z)
    for j0 in range(0, n_out, VL):
        m = min(VL, n_out - j0)
        bv = vload(b, j0, m)
        for i in range(rows.shape[0]):
            r = ld(rows, i)
            start = ld(csr_ptr, r)
            end = ld(csr_ptr, r + 1)
            acc0 = bv
            acc1 = vsplat(0, b)
            acc2 = acc1
            acc3 = acc1
            p = start
            while p + 4 <= end:
                acc0 = vfma(acc0, ld(lut, ld(csr_val, p)), vload(W, np.int64(ld(csr_idx, p)) * n_out + j0, m))
                acc1 = vfma(acc1, ld(lut, ld(csr_val, p + 1)), vload(W, np.int64(ld(csr_idx, p + 1)) * n_out + j0, m))
                acc2 = vfma(acc2, ld(lut, ld(csr_val, p + 2)), vload(W, np.int64(ld(csr_idx, p + 2)) * n_out + j0, m))
                acc3 = vfma(acc3, ld(lut, ld(csr_val, p + 3)), vload(W, np.int64(ld(csr_idx, p + 3)) * n_out + j0, m))
                p += 4
            while p < end:
                acc0 = vfma(acc0, ld(lut, ld(csr_val, p)), vload(W, np.int64(ld(csr_idx, p)) * n_out + j0, m))
                p += 1
            vstore(z, i * n_out + j0, m, vadd(vadd(acc0, acc1), vadd(acc2, acc3)))


@njit(**JIT)
def dense_forward_loops(x, B, W, b, z):
    """z[i] = b + x[i] @ W for i < B; four vector accumulators per 16-column block."""
    n_in, n_out = W.shape
    for i in range(B):
        for j0 in range(0, n_out, VL):
            m = min(VL, n_out - j0)
            acc0 = vload(b, j0, m)
            acc1 = vsplat(0, b)
            acc2 = acc1
            acc3 = acc1
            k = 0
            while k + 4 <= n_in:
                acc0 = vfma(acc0, x[i, k], vload(W, k * n_out + j0, m))
                acc1 = vfma(acc1, x[i, k + 1], vload(W, (k + 1) * n_out + j0, m))
                acc2 = vfma(acc2, x[i, k + 2], vload(W, (k + 2) * n_out + j0, m))
                acc3 = vfma(acc3, x[i, k + 3], vload(W, (k + 3) * n_out + j0, m))
                k += 4
            while k < n_in:
                acc0 = vfma(acc0, x[i, k], vload(W, k * n_out + j0, m))
                k += 1
            vstore(z, i * n_out + j0, m, vadd(vadd(acc0, acc1), vadd(acc2, acc3)))


@njit(**JIT)
def dense_backward_dx_loops(d, B, W, a_in, in_kind, dx, WT):
    """dx[i] = (d[i] @ W.T) * f'(a_in[i]): the previous layer's delta, derivative folded in.

    W is first copied transposed into the scratch WT (n_out x n_in), so each sample's delta is
    a sum of whole rows of WT in vector registers, like the forward pass. Per-element dot
    products with a horizontal sum each measured 15 ms per lesson-network epoch; this ~2 ms."""
    n_in, n_out = W.shape
    for j in range(n_out):  # WT's rows written whole (LLVM gathers the column of W)
        for k in range(n_in):
            WT[j * n_in + k] = W[k, j]
    for i in range(B):
        for k0 in range(0, n_in, VL):
            m = min(VL, n_in - k0)
            acc0 = vsplat(0, W)
            acc1 = acc0
            j = 0
            while j + 2 <= n_out:
                acc0 = vfma(acc0, d[i, j], vload(WT, j * n_in + k0, m))
                acc1 = vfma(acc1, d[i, j + 1], vload(WT, (j + 1) * n_in + k0, m))
                j += 2
            if j < n_out:
                acc0 = vfma(acc0, d[i, j], vload(WT, j * n_in + k0, m))
            vstore(dx, i * n_in + k0, m, vadd(acc0, acc1))
    activation_backward_rows(a_in, dx, B, in_kind)


@njit(**JIT)
def bias_update(d, B, coef, tb):
    """tb -= coef * sum(d[:B], axis=0)."""
    n_out = tb.shape[0]
    for j0 in range(0, n_out, VL):
        m = min(VL, n_out - j0)
        g = vsplat(0, d)
        for i in range(B):
            g = vadd(g, vload(d, i * n_out + j0, m))
        vstore(tb, j0, m, vfma(vload(tb, j0, m), -coef, g))


@njit(**JIT)
def dense_update_loops(x, d, B, coef, tW, tb):
    """tW -= coef * x[:B].T @ d[:B]; tb -= coef * sum(d[:B])."""
    n_in, n_out = tW.shape
    for k in range(n_in):
        for j0 in range(0, n_out, VL):
            m = min(VL, n_out - j0)
            g = vsplat(0, d)
            for i in range(B):
                g = vfma(g, x[i, k], vload(d, i * n_out + j0, m))
            vstore(tW, k * n_out + j0, m, vfma(vload(tW, k * n_out + j0, m), -coef, g))
    bias_update(d, B, coef, tb)


@njit(**JIT)
def sparse_update_block(csr_ptr, csr_idx, csr_val, table, rows, d, tW, j0):
    """tW[k, j0:j0 + 16] -= table[pixel] * d[i, j0:j0 + 16] for every non-zero pixel k of every
    sample i, samples in order (the block of W stays in L1 for the whole minibatch); table from
    pixel_table(x_scale, coef): the same coef * x products as before."""
    n_out = tW.shape[1]
    m = min(VL, n_out - j0)
    for i in range(rows.shape[0]):
        r = ld(rows, i)
        di = vload(d, i * n_out + j0, m)
        for p in range(ld(csr_ptr, r), ld(csr_ptr, r + 1)):
            off = np.int64(ld(csr_idx, p)) * n_out + j0
            vstore(tW, off, m, vfma(vload(tW, off, m), -ld(table, ld(csr_val, p)), di))


@njit(**JIT)
def dense_update_sparse(csr_ptr, csr_idx, csr_val, x_scale, rows, d, coef, tW, tb):
    """The input layer's update from its non-zero pixels: only their rows of W are written,
    each weight gets its samples' terms in sample order; column blocks outermost."""
    n_out = tW.shape[1]
    table = pixel_table(x_scale, coef, d)
    for j0 in range(0, n_out, VL):
        sparse_update_block(csr_ptr, csr_idx, csr_val, table, rows, d, tW, j0)
    bias_update(d, rows.shape[0], coef, tb)


# ---- one dense layer on the BLAS path ---------------------------------------------------------
# n_split: 1 = one gemm call (BLAS may use its own threads); k > 1 = the rows of the minibatch
# in k fixed chunks, one per Numba thread, each a single-threaded gemm. OpenBLAS's own threads
# spin-wait, and on a busy 2-core machine they collapsed (784-512-512-10: 31 s per epoch with
# 2 BLAS threads vs 2 s with one); fixed chunks keep the result independent of thread timing.
@njit(parallel=True, **JIT)
def split_dot(a, b, out, n_split):
    """out = a @ b, the rows of a in n_split chunks on Numba's threads."""
    n = a.shape[0]
    for c in prange(n_split):
        r0 = n * c // n_split
        r1 = n * (c + 1) // n_split
        if r1 > r0:
            np.dot(a[r0:r1], b, out[r0:r1])


@njit(**JIT)
def n_parts(n_rows, n_split):
    """How many row chunks a minibatch of n_rows splits into: never an empty one (issue 12: a
    chunk with no rows left its partial gradient unwritten, and split_apply added stale scratch
    from an earlier minibatch when a minibatch had fewer rows than threads)."""
    return min(n_split, n_rows)


@njit(parallel=True, **JIT)
def split_dot_tn(x, d, parts, n_chunks):
    """parts[c] = x[rows of chunk c].T @ d[rows of chunk c] for c < n_chunks <= len(x): partial
    weight gradients, every one of them written."""
    n = x.shape[0]
    n_in = x.shape[1]
    n_out = d.shape[1]
    for c in prange(n_chunks):
        r0 = n * c // n_chunks
        r1 = n * (c + 1) // n_chunks
        np.dot(x[r0:r1].T, d[r0:r1], view2d(parts, c * n_in * n_out, n_in, n_out))


@njit(parallel=True, **JIT)
def split_apply(tW, coef, parts, n_chunks):
    """tW -= coef * (parts[0] + ... + parts[n_chunks - 1]), summed in a fixed order, weight rows
    split over the threads."""
    n_in, n_out = tW.shape
    size = n_in * n_out
    n_threads = min(n_chunks, n_in)
    for c in prange(n_threads):
        for k in range(n_in * c // n_threads, n_in * (c + 1) // n_threads):
            for j in range(n_out):
                g = parts[k * n_out + j]
                for q in range(1, n_chunks):
                    g += parts[q * size + k * n_out + j]
                tW[k, j] -= coef * g


@njit(**JIT)
def dense_forward_blas(x, B, W, b, z, n_split):
    """z[:B] = x[:B] @ W (BLAS gemm) + b."""
    zb = z[:B]
    if n_split is None:  # a compile-time branch: Hogwild's kernel must not reach parallel code
        np.dot(x[:B], W, zb)
    elif n_split > 1:
        split_dot(x[:B], W, zb, n_split)
    else:
        np.dot(x[:B], W, zb)
    for i in range(B):
        for j in range(W.shape[1]):
            zb[i, j] += b[j]


@njit(**JIT)
def dense_backward_dx_blas(d, B, W, a_in, in_kind, dx, n_split):
    """dx[:B] = (d[:B] @ W.T) * f'(a_in) with gemm."""
    dxb = dx[:B]
    if n_split is None:
        np.dot(d[:B], W.T, dxb)
    elif n_split > 1:
        split_dot(d[:B], W.T, dxb, n_split)
    else:
        np.dot(d[:B], W.T, dxb)
    for i in range(B):
        activation_backward(a_in, dxb, i, in_kind)


@njit(**JIT)
def _gemm_update(x, d, B, coef, tW, gW):
    n_in, n_out = tW.shape
    gWv = view2d(gW, 0, n_in, n_out)
    np.dot(x[:B].T, d[:B], gWv)
    for k in range(n_in):
        for j in range(n_out):
            tW[k, j] -= coef * gWv[k, j]


@njit(**JIT)
def dense_update_blas(x, d, B, coef, tW, tb, gW, n_split):
    """tW -= coef * x[:B].T @ d[:B] (gemm into the scratch gW), tb -= coef * sum(d[:B])."""
    n_in, n_out = tW.shape
    if n_split is None:
        _gemm_update(x, d, B, coef, tW, gW)
    elif n_split > 1:
        chunks = n_parts(B, n_split)
        split_dot_tn(x[:B], d[:B], gW, chunks)
        split_apply(tW, coef, gW, chunks)
    else:
        _gemm_update(x, d, B, coef, tW, gW)
    bias_update(d, B, coef, tb)



# ---- the whole network ------------------------------------------------------------------------
@njit(**JIT)
def _layer_views(params, layout, l):
    w_off, b_off, n_in, n_out = layout[l, 0], layout[l, 1], layout[l, 2], layout[l, 3]
    return view2d(params, w_off, n_in, n_out), view1d(params, b_off, n_out)


@njit(**JIT)
def _acts(acts, act_off, sizes, l, bmax):
    """Layer l's activation block (bmax, sizes[l]) inside the flat activation buffer."""
    return view2d(acts, act_off[l], bmax, sizes[l])


@njit(**JIT)
def _layer_input(s, aug, l, bmax):
    """What layer l reads: the activations below it, or their dropout-masked copy."""
    if aug is not None:
        if aug.dropout > 0 and l > 0:
            return _acts(aug.dropped, s.act_off, s.sizes, l, bmax)
    return _acts(s.acts, s.act_off, s.sizes, l, bmax)


@njit(**JIT)
def input_rows(data, rows, s, aug, pos0):
    """The input layer's source for the samples X[rows]: (csr_ptr, csr_idx, csr_val, rows) of
    their non-zero pixels (sparse path; with shifts, the minibatch's own shifted CSR), or the
    rows gathered (uint8 scaled, shifted) into acts[0] (dense path; the CSR arrays are then
    returned but unused)."""
    bmax = s.zlast.shape[0]
    x0 = _acts(s.acts, s.act_off, s.sizes, 0, bmax)
    if data.csr_ptr.shape[0] > 0:
        if aug is not None:
            if aug.max_shift > 0:
                shifted_csr(data.csr_ptr, data.csr_idx, data.csr_val, rows, aug.seed, pos0, aug.max_shift,
                            aug.img_rows, aug.img_cols, aug.mptr, aug.midx, aug.mval, aug.pixel_row, aug.pixel_col)
                return aug.mptr, aug.midx, aug.mval, view1d(aug.brows, 0, rows.shape[0])
        return data.csr_ptr, data.csr_idx, data.csr_val, rows
    if aug is not None:
        if aug.max_rotate > 0 or aug.elastic_alpha > 0:  # fastgd.augment's sampling map
            augment_rows_split(data.X, rows, data.x_scale, x0, aug.seed, pos0, aug.max_shift, aug.max_rotate,
                               aug.elastic_alpha, aug.img_rows, aug.img_cols, aug.aug_work)
            return data.csr_ptr, data.csr_idx, data.csr_val, rows
        if aug.max_shift > 0:
            gather_dense_shifted(data.X, rows, data.x_scale, x0, aug.seed, pos0, aug.max_shift, aug.img_rows,
                                 aug.img_cols)
            return data.csr_ptr, data.csr_idx, data.csr_val, rows
    gather_dense(data.X, rows, data.x_scale, x0)
    return data.csr_ptr, data.csr_idx, data.csr_val, rows


@njit(**JIT)
def layer_forward(net, s, x, B, l):
    """Layer l of B samples from its input x (bmax, sizes[l]): z = x W + b, then the activation
    (hidden layers: in place, into s.acts; the last one: z into s.zlast, a into s.acts)."""
    bmax = s.zlast.shape[0]
    L = net.layout.shape[0]
    W, b = _layer_views(net.params, net.layout, l)
    a = _acts(s.acts, s.act_off, s.sizes, l + 1, bmax)
    z = s.zlast if l == L - 1 else a
    if s.use_blas[l]:
        dense_forward_blas(x, B, W, b, z, s.n_split)
    else:
        dense_forward_loops(x, B, W, b, z)
    for i in range(B):
        activation_forward(z, a, i, net.kinds[l])


@njit(**JIT)
def network_forward(net, data, rows, s, aug, pos0):
    """Forward pass of the samples X[rows] (epoch positions pos0, pos0 + 1, ...): activations
    into s.acts (hidden layers in place of their z), the last pre-activation into s.zlast; with
    dropout, the masks and masked activations into aug. Returns the input layer's CSR view
    (see input_rows) for the update."""
    B = rows.shape[0]
    bmax = s.zlast.shape[0]
    L = net.layout.shape[0]
    ptr, idx, val, in_rows = input_rows(data, rows, s, aug, pos0)
    first_unit = 0
    for l in range(L):
        a = _acts(s.acts, s.act_off, s.sizes, l + 1, bmax)
        if l == 0 and data.csr_ptr.shape[0] > 0:
            W, b = _layer_views(net.params, net.layout, l)
            z = s.zlast if l == L - 1 else a  # hidden layers turn z into a in place
            dense_forward_sparse(ptr, idx, val, data.x_scale, in_rows, W, b, z)
            for i in range(B):
                activation_forward(z, a, i, net.kinds[l])
        else:
            layer_forward(net, s, _layer_input(s, aug, l, bmax), B, l)
        if aug is not None:
            if aug.dropout > 0 and l < L - 1:
                dropout_rows(a, _acts(aug.masks, s.act_off, s.sizes, l + 1, bmax),
                             _acts(aug.dropped, s.act_off, s.sizes, l + 1, bmax), B, aug.seed, pos0, first_unit,
                             aug.dropout, aug.drop_scale)
                first_unit += s.sizes[l + 1]
    return ptr, idx, val, in_rows


@njit(**JIT)
def output_delta(net, data, rows, s):
    """Per-sample losses (from the pre-activations), correct argmax predictions, and dL/dz of
    the output layer into delta0 (bmax, n_out). Returns (loss sum, n_correct)."""
    B = rows.shape[0]
    bmax = s.zlast.shape[0]
    L = net.layout.shape[0]
    out = _acts(s.acts, s.act_off, s.sizes, L, bmax)
    d = view2d(s.delta0, 0, bmax, s.sizes[L])
    loss_sum = 0.0
    correct = 0
    out_kind = net.kinds[L - 1]
    if data.loss == MSE and out_kind != SOFTMAX:
        # loss_forward_backward's MSE case written out over the rows: its per-row calls cost more
        # than their arithmetic (lesson network: 3.5 -> 1.3 ms an epoch); the same operations
        n = out.shape[1]
        t = data.targets
        for i in range(B):
            r = rows[i]
            o = i * n
            sq = vsplat(0, out)
            for j0 in range(0, n, VL):
                m = min(VL, n - j0)
                av = vload(out, o + j0, m)
                diff = vsub(av, vload(t, r * n + j0, m))
                sq = vfma(sq, diff, diff)
                vstore(d, o + j0, m, dact_vec(av, diff, out_kind))
            loss_sum += 0.5 * float(vsum(sq))
            if argmax_row(out, i) == data.labels[r]:
                correct += 1
        return loss_sum, correct
    for i in range(B):
        r = rows[i]
        loss_sum += loss_forward_backward(s.zlast, out, d, i, data.targets, r, data.loss, out_kind)
        if argmax_row(out, i) == data.labels[r]:
            correct += 1
    return loss_sum, correct


@njit(**JIT)
def backward_update(net, data, target, coef, rows, s, aug, ptr, idx, val, in_rows):
    """Hidden deltas with the pre-update weights, layer by layer from the top, each layer's
    update (target -= coef * x.T @ d) right after its delta below was computed. A dropped unit
    passes no gradient back (dL/da times its mask before the activation derivative)."""
    B = rows.shape[0]
    bmax = s.zlast.shape[0]
    L = net.layout.shape[0]
    d = view2d(s.delta0, 0, bmax, s.sizes[L])
    use_d0 = True
    for l in range(L - 1, -1, -1):
        W, _ = _layer_views(net.params, net.layout, l)
        tW, tb = _layer_views(target, net.layout, l)
        n_in = s.sizes[l]
        a_in = _acts(s.acts, s.act_off, s.sizes, l, bmax)
        x = _layer_input(s, aug, l, bmax)
        cur = d
        if l > 0:  # the previous layer's delta, from W before its update
            d = view2d(s.delta1 if use_d0 else s.delta0, 0, bmax, n_in)
            kind = net.kinds[l - 1]
            masked = False
            if aug is not None:
                masked = aug.dropout > 0
            if masked:
                kind = LINEAR  # the mask goes in before the derivative, applied below
            if s.use_blas[l]:
                dense_backward_dx_blas(cur, B, W, a_in, kind, d, s.n_split)
            else:
                dense_backward_dx_loops(cur, B, W, a_in, kind, d, s.gW)
            if aug is not None:
                if masked:
                    mask = _acts(aug.masks, s.act_off, s.sizes, l, bmax)
                    for i in range(B):
                        for j in range(n_in):
                            d[i, j] *= mask[i, j]
                        activation_backward(a_in, d, i, net.kinds[l - 1])
            use_d0 = not use_d0
        if l == 0 and data.csr_ptr.shape[0] > 0:
            dense_update_sparse(ptr, idx, val, data.x_scale, in_rows, cur, coef, tW, tb)
        elif s.use_blas[l]:
            dense_update_blas(x, cur, B, coef, tW, tb, s.gW, s.n_split)
        else:
            dense_update_loops(x, cur, B, coef, tW, tb)


@njit(**JIT)
def minibatch_step(net, data, target, coef, rows, s, aug, pos0):
    """Forward + loss + backward + update for one minibatch X[rows]: target -= coef * sum of
    gradients. Returns (sum of per-sample losses, correct argmax predictions), both with the
    weights before the update."""
    ptr, idx, val, in_rows = network_forward(net, data, rows, s, aug, pos0)
    loss_sum, correct = output_delta(net, data, rows, s)
    backward_update(net, data, target, coef, rows, s, aug, ptr, idx, val, in_rows)
    return loss_sum, correct


# ---- the optimiser step (StepRule, formulas in backends/base.py) ------------------------------
@njit(**JIT)
def sgd_range(P, G, V, k0, k1, lr, o, decay):
    """SGD with momentum/Nesterov/weight decay/L1 for P[k0:k1] from its mean gradient G, 16
    lanes at a time; G is zeroed for the next minibatch. `decay`: weights (wd, l1), not biases.
    V is the velocity (unused when o.momentum == 0)."""
    f = P.dtype.type
    zero = vsplat(0, P)
    mu = f(o.momentum)
    wd = f(o.weight_decay) if decay else f(0)
    l1 = f(o.l1) if decay else f(0)
    for k in range(k0, k1, VL):
        m = min(VL, k1 - k)
        w = vload(P, k, m)
        g = vload(G, k, m)
        if decay:
            g = vfma(g, wd, w)
            g = vfma(g, l1, vsign(w))
        if o.momentum > 0:
            v = vfma(g, mu, vload(V, k, m))  # mu * v + g
            vstore(V, k, m, v)
            step = vfma(g, mu, v) if o.nesterov else v
        else:
            step = g
        vstore(P, k, m, vfma(w, -lr, step))
        vstore(G, k, m, zero)


@njit(**JIT)
def adam_range(P, G, M, V, k0, k1, lr64, o, decay, bc1, bc2):
    """Adam / AdamW for P[k0:k1] (PyTorch semantics; bias corrections bc1, bc2 computed in
    double by the caller); G is zeroed. `decay`: weights (wd, l1), not biases."""
    f = P.dtype.type
    zero = vsplat(0, P)
    b1 = vsplat(f(o.beta1), P)
    b2 = vsplat(f(o.beta2), P)
    c1 = vsplat(f(1.0 - o.beta1), P)
    c2 = vsplat(f(1.0 - o.beta2), P)
    vbc1 = vsplat(f(bc1), P)
    vbc2 = vsplat(f(bc2), P)
    eps = vsplat(f(o.eps), P)
    vlr = vsplat(f(lr64), P)
    l1 = f(o.l1) if decay else f(0)
    wd = f(o.weight_decay) if decay and o.kind == ADAM else f(0)
    decoupled = f(lr64 * o.weight_decay) if decay and o.kind == ADAMW else f(0)
    for k in range(k0, k1, VL):
        n = min(VL, k1 - k)
        w = vload(P, k, n)
        g = vload(G, k, n)
        if decay:
            g = vfma(g, wd, w)
            g = vfma(g, l1, vsign(w))
            w = vfma(w, -decoupled, w)  # AdamW: W -= lr * wd * W first
        m = vadd(vmul(vload(M, k, n), b1), vmul(c1, g))
        v = vadd(vmul(vload(V, k, n), b2), vmul(c2, vmul(g, g)))
        vstore(M, k, n, m)
        vstore(V, k, n, v)
        step = vdiv(vmul(vlr, vdiv(m, vbc1)), vadd(vsqrt(vdiv(v, vbc2)), eps))
        vstore(P, k, n, vsub(w, step))
        vstore(G, k, n, zero)


@njit(**JIT)
def optimizer_update(params, layout, lr64, o, t):
    """One optimiser step over every layer (weights decayed, biases not) from the mean gradient
    in o.grad; t is the 1-based step number (Adam's bias corrections, in double). lr64: the
    step's learning rate as planned (float64), cast like the reference does."""
    lr = params.dtype.type(lr64)
    for l in range(layout.shape[0]):
        w_off, b_off, n_out = layout[l, 0], layout[l, 1], layout[l, 3]
        if o.kind == SGD:
            sgd_range(params, o.grad, o.state1, w_off, b_off, lr, o, True)
            sgd_range(params, o.grad, o.state1, b_off, b_off + n_out, lr, o, False)
        else:
            bc1 = 1.0 - o.beta1 ** t
            bc2 = 1.0 - o.beta2 ** t
            adam_range(params, o.grad, o.state1, o.state2, w_off, b_off, lr64, o, True, bc1, bc2)
            adam_range(params, o.grad, o.state1, o.state2, b_off, b_off + n_out, lr64, o, False, bc1, bc2)


# ---- entry points (called by numba_backend after validation) ---------------------------------
@njit(**JIT)
def train_epoch(net, data, order, lrs, batch_size, s, opt, aug):
    """Every minibatch of `order` in turn, in one compiled call. Returns (loss_sum, n_correct).

    opt None: plain SGD applied in place (sparse first-layer update); else each minibatch's mean
    gradient goes into opt.grad and one fused pass applies the optimiser step (opt.step + k + 1
    is the k-th step's number). aug None: no dropout or shifts. s.n_split > 1 splits each BLAS
    layer's gemms into that many row chunks on Numba's threads. Nothing survives between calls
    but net.params and the optimiser state, so an epoch run in slices gives the same bits."""
    n = order.shape[0]
    n_steps = (n + batch_size - 1) // batch_size
    f = net.params.dtype.type
    net = borrowed_net(net)
    data = borrowed_data(data)
    s = borrowed_scratch(s)
    order = borrow(order)
    loss_sum = 0.0
    correct = 0
    first = 0
    if aug is not None:
        first = aug.first_position
    for k in range(n_steps):
        start = k * batch_size
        stop = min(n, start + batch_size)
        lr = f(lrs[k])
        prefetch_rows(data.X, data.csr_ptr, data.csr_idx, data.csr_val, data.targets, data.labels,
                      view1d(order, stop, min(n, stop + batch_size) - stop))
        rows = view1d(order, start, stop - start)
        if opt is None:
            ls, c = minibatch_step(net, data, net.params, lr / f(stop - start), rows, s, aug, first + start)
        else:  # opt.grad -= (-1 / B) * sum = the mean gradient, then the step
            ls, c = minibatch_step(net, data, opt.grad, f(-1.0) / f(stop - start), rows, s, aug, first + start)
            optimizer_update(net.params, net.layout, lrs[k], opt, opt.step + k + 1)
        loss_sum += ls
        correct += c
    return loss_sum, correct


@njit(**JIT)
def _worker_scratch(s, w):
    return Scratch(s.acts[w], s.act_off, s.sizes, s.zlast[w], s.delta0[w], s.delta1[w], s.gW[w], s.use_blas, None)


@njit(parallel=True, **JIT)
def train_epoch_hogwild(net, data, order, lrs, batch_size, s):
    """Hogwild-style plain-SGD epoch: worker w runs its own contiguous share of the minibatches
    with the same `minibatch_step`, updating the shared parameters without locks (results depend
    on thread timing; opt-in only). Workspace arrays have a leading worker axis; n_split is None
    here, so no nested parallel region is compiled in."""
    n_workers = s.acts.shape[0]
    n = order.shape[0]
    n_steps = (n + batch_size - 1) // batch_size
    losses = np.zeros(n_workers)
    corrects = np.zeros(n_workers, dtype=np.int64)
    f = net.params.dtype.type
    for w in prange(n_workers):
        sw = _worker_scratch(s, w)
        for k in range(n_steps * w // n_workers, n_steps * (w + 1) // n_workers):
            start = k * batch_size
            stop = min(n, start + batch_size)
            prefetch_rows(data.X, data.csr_ptr, data.csr_idx, data.csr_val, data.targets, data.labels,
                          view1d(order, stop, min(n, stop + batch_size) - stop))
            ls, c = minibatch_step(net, data, net.params, f(lrs[k]) / f(stop - start),
                                   view1d(order, start, stop - start), sw, None, start)
            losses[w] += ls
            corrects[w] += c
    return losses.sum(), corrects.sum()


@njit(**JIT)
def loss_and_grad(net, data, grad, s):
    """Mean loss over all rows of X; the mean gradient is written into the zeroed `grad`."""
    n = data.X.shape[0]
    rows = np.arange(n)
    ls, _ = minibatch_step(net, data, grad, grad.dtype.type(-1.0) / grad.dtype.type(n), rows, s, None, 0)
    return ls / n


@njit(**JIT)
def forward_flat(net, X, x_scale, out):
    """out = output activations of the few rows of X (single-sample predict), on the caller's
    thread straight from net.params: each layer's z = x W + b by the loop kernel, then its
    activation, with buffers allocated here. Scratch, worker threads and chunking cost more than
    the arithmetic of a row (784-128-10: ~49 vs ~20 us per predict call through the chunked
    path)."""
    n = X.shape[0]
    L = net.layout.shape[0]
    x = np.empty((n, X.shape[1]), dtype=out.dtype)
    gather_dense(X, np.arange(n), x_scale, x)
    for l in range(L):
        W, b = _layer_views(net.params, net.layout, l)
        z = out if l == L - 1 else np.empty((n, W.shape[1]), dtype=out.dtype)
        dense_forward_loops(x, n, W, b, z)
        for i in range(n):
            activation_forward(z, z, i, net.kinds[l])
        x = z


@njit(parallel=True, **JIT)
def forward_chunks(net, data, out, chunk, s, losses, corrects, sparse):
    """Output activations of every row of X into out, in chunks of `chunk` rows, worker w taking
    chunks w, w + n_workers, ... (scratch arrays have a leading worker axis). With `losses`
    (n_chunks,) float64 (not None): each chunk's loss sum and correct count too, from the
    pre-activations like training (`evaluate`). With `sparse` (uint8 X, no CSR in data: per
    worker ptr (W, chunk + 1), idx and val (W, chunk * n_in + 1), and the 256 scaled pixel
    values), each chunk's non-zero pixels are listed first and the first layer reads only
    those (sparse_first_forward). Chunks are independent, so nothing depends on the thread
    count."""
    n = data.X.shape[0]
    n_workers = s.acts.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    L = net.layout.shape[0]
    n_out = s.sizes[L]
    for w in prange(n_workers):
        sw = _worker_scratch(s, w)
        for c in range(w, n_chunks, n_workers):
            start = c * chunk
            stop = min(n, start + chunk)
            rows = np.arange(start, stop)
            if sparse is not None:
                sparse_first_forward(net, data.X, start, stop, sw, sparse[0][w], sparse[1][w], sparse[2][w],
                                     sparse[3])
            else:
                network_forward(net, data, rows, sw, None, 0)
            if losses is not None:
                ls, cor = output_delta(net, data, rows, sw)
                losses[c] = ls
                corrects[c] = cor
            a = _acts(sw.acts, sw.act_off, sw.sizes, L, chunk)
            for i in range(stop - start):
                for j in range(n_out):
                    out[start + i, j] = a[i, j]


@njit(**JIT)
def sparse_first_forward(net, X, start, stop, s, ptr, idx, val, lut):
    """network_forward of the uint8 rows X[start:stop] (inference) with the first layer reading
    only their non-zero pixels, listed here (chunk_csr), through numba_sparse's sparse_forward or,
    at most 16 units wide, sparse_forward_narrow, as the team epoch does; lut (256,): the
    reference's pixel values."""
    B = stop - start
    bmax = s.zlast.shape[0]
    L = net.layout.shape[0]
    chunk_csr(X.reshape(-1), X.shape[1], start, stop, ptr, idx, val)
    W, b = _layer_views(net.params, net.layout, 0)
    a = _acts(s.acts, s.act_off, s.sizes, 1, bmax)
    z = s.zlast if L == 1 else a
    if s.sizes[1] <= VL:  # one vector per sample, as the team epoch's first layer
        sparse_forward_narrow(ptr, idx, val, lut, np.arange(B), W, b, z)
    else:
        zbuf, zoff = (s.zlast.reshape(-1), 0) if L == 1 else (s.acts, s.act_off[1])
        sparse_forward(ptr, idx, val, lut, np.arange(B), view1d(net.params, net.layout[0, 0], s.sizes[0] * s.sizes[1]),
                       b, zbuf, zoff)
    for i in range(B):
        activation_forward(z, a, i, net.kinds[0])
    for l in range(1, L):
        layer_forward(net, s, _acts(s.acts, s.act_off, s.sizes, l, bmax), B, l)


@njit(**JIT)
def _block_nonzeros_walked(x, o, k, idx, val, p):
    """The non-zero pixels of the 64 at x[o:o + 64] (row positions k..k + 63) appended at p: 64
    tested at once (nonzero_bits64), set bits walked. Returns the next p."""
    m = nonzero_bits64(x, o)
    while m != 0:
        j = np.int64(trailing_zeros(m))
        idx[p] = k + j
        val[p] = ld(x, o + j)
        p += 1
        m &= m - np.uint64(1)
    return p


@njit(**JIT)
def _block_nonzeros_packed(x, o, k, idx, val, p):
    """The same, packed in registers (AVX-512 VBMI2; uint16 indices): whole vectors stored, no
    loop over the bits. The lesson network's 10k-image inference lists ~1.5M pixels."""
    return nonzeros_packed64(x, o, k, idx, val, p)


# one of the two, fixed at import: the packed one compiles only where the CPU has VBMI2
_block_nonzeros = _block_nonzeros_packed if HAVE_COMPRESS else _block_nonzeros_walked


@njit(**JIT)
def chunk_csr(x, n_in, start, stop, ptr, idx, val):
    """The non-zero pixels of rows start..stop of the flat uint8 matrix x (rows of n_in) as a CSR
    of local rows 0.. (ptr (rows + 1), idx and val with room for rows * n_in + 1): 64 pixels
    tested at once (nonzero_bits64), set bits walked; the row's tail branch-free (a zero
    pixel's entry is written, then overwritten by the next one)."""
    p = 0
    ptr[0] = 0
    for r in range(start, stop):
        o = r * n_in
        k = 0
        while k + 64 <= n_in:
            p = _block_nonzeros(x, o + k, k, idx, val, p)
            k += 64
        while k < n_in:
            v = ld(x, o + k)
            idx[p] = k
            val[p] = v
            p += v != 0
            k += 1
        ptr[r - start + 1] = p


# ---- dropout masks and image shifts -----------------------------------------------------------
# fastgd._random's counter-based generator, in wrapping uint64 arithmetic throughout (mixing
# int64 with uint64 in Numba gives float64).
_MIX_C0 = np.uint64(0x9E3779B97F4A7C15)
_MIX_C1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_C2 = np.uint64(0x94D049BB133111EB)
_UNITS_PER_SAMPLE = np.uint64(1 << 20)  # fastgd._random.MAX_UNITS
SHIFT_STREAM = (1 << 20) - 1  # fastgd._random.SHIFT_STREAM
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(**JIT)
def mix64(x):
    """SplitMix64 of a uint64 (fastgd._random.mix64)."""
    z = x + _MIX_C0
    z = (z ^ (z >> np.uint64(30))) * _MIX_C1
    z = (z ^ (z >> np.uint64(27))) * _MIX_C2
    return z ^ (z >> np.uint64(31))


@njit(**JIT)
def counter_draw(seed, position, unit):
    """r(seed, p, j) = mix64(seed ^ mix64(p * 2**20 + j)) (fastgd._random.draw); seed uint64."""
    return mix64(seed ^ mix64(np.uint64(position) * _UNITS_PER_SAMPLE + np.uint64(unit)))


@njit(**JIT)
def sample_shift(seed, position, max_shift):
    """(dx, dy) of the sample at `position`, each in [-max_shift, max_shift] (fastgd._random.shifts)."""
    r = counter_draw(seed, position, SHIFT_STREAM)
    span = np.uint64(2 * max_shift + 1)
    dx = np.int64((r & _LOW32) % span) - max_shift
    dy = np.int64((r >> np.uint64(32)) % span) - max_shift
    return dx, dy


@njit(**JIT)
def dropout_rows(a, mask, dropped, B, seed, pos0, first_unit, rate, scale):
    """Inverted dropout of a hidden layer's activations a[:B]: mask[i, j] = scale when unit
    first_unit + j of the sample at position pos0 + i is kept, else 0; dropped = a * mask."""
    n = a.shape[1]
    zero = a.dtype.type(0)
    for i in range(B):
        for j in range(n):
            r = counter_draw(seed, pos0 + i, first_unit + j)
            m = scale if float(r >> np.uint64(40)) * (2.0 ** -24) >= rate else zero
            mask[i, j] = m
            dropped[i, j] = a[i, j] * m


@njit(**JIT)
def shifted_csr(csr_ptr, csr_idx, csr_val, rows, seed, pos0, max_shift, img_rows, img_cols, mptr, midx, mval,
                pixel_row, pixel_col):
    """The minibatch's non-zero pixels, each image moved by its sample's shift (pixels pushed off
    the image dropped), as a CSR of B rows in (mptr, midx, mval). pixel_row/pixel_col: each
    pixel's row and column (tables, not a division per pixel: that measured ~25 ms per epoch)."""
    q = 0
    mptr[0] = 0
    for i in range(rows.shape[0]):
        dx, dy = sample_shift(seed, pos0 + i, max_shift)
        r = rows[i]
        for p in range(csr_ptr[r], csr_ptr[r + 1]):
            pix = csr_idx[p]
            row = pixel_row[pix] + dy
            col = pixel_col[pix] + dx
            if 0 <= row < img_rows and 0 <= col < img_cols:
                midx[q] = row * img_cols + col
                mval[q] = csr_val[p]
                q += 1
        mptr[i + 1] = q


@njit(**JIT)
def gather_dense_shifted(X, rows, x_scale, x, seed, pos0, max_shift, img_rows, img_cols):
    """x[i] = X[rows[i]] scaled, moved by the sample's shift: out[r, c] = in[r - dy, c - dx]."""
    scale = x.dtype.type(x_scale)
    zero = x.dtype.type(0)
    for i in range(rows.shape[0]):
        src = rows[i]
        dx, dy = sample_shift(seed, pos0 + i, max_shift)
        for row in range(img_rows):
            sr = row - dy
            for col in range(img_cols):
                sc = col - dx
                if 0 <= sr < img_rows and 0 <= sc < img_cols:
                    x[i, row * img_cols + col] = x.dtype.type(X[src, sr * img_cols + sc]) * scale
                else:
                    x[i, row * img_cols + col] = zero


# ---- direct gemm ------------------------------------------------------------------------------
@njit(**JIT)
def _operand_ok(size, off, rows, cols, ld):
    return rows <= 0 or cols <= 0 or (off >= 0 and ld >= cols and off + (rows - 1) * ld + cols <= size)


@njit(**JIT)
def gemm(ta, tb, m, n, k, alpha, A, offa, lda, B, offb, ldb, beta, C, offc, ldc):
    """Row-major C[offc:] (m x n, row stride ldc) = alpha * op(A) @ op(B) + beta * C on flat arrays
    (numba_simd.gemm_raw; op = transpose when ta / tb). Nothing happens when m, n or k is 0.
    Under NUMBA_BOUNDSCHECK=1 every operand's range is checked first (IndexError)."""
    if m <= 0 or n <= 0 or k <= 0:
        return
    if BOUNDS:
        ra, ca = (k, m) if ta else (m, k)
        rb, cb = (n, k) if tb else (k, n)
        if not (_operand_ok(A.size, offa, ra, ca, lda) and _operand_ok(B.size, offb, rb, cb, ldb)
                and _operand_ok(C.size, offc, m, n, ldc)):
            raise IndexError("fastgd gemm: operand out of range")
    gemm_raw(ta, tb, m, n, k, alpha, A, offa, lda, B, offb, ldb, beta, C, offc, ldc)


# ---- the team epoch: one parallel region per call, two barriers per minibatch -------------------
# Worker w of nw computes the forward pass and every delta of its share of the minibatch's
# samples (rows B*w//nw .. B*(w+1)//nw) into those rows of the shared Team buffers (laid out like
# a Scratch: one (bmax, width) block per layer, so each update is one gemm over all B rows); after a barrier
# it applies the update of its share of every layer's weights (weight rows, for the sparse input
# layer through its own column index of the minibatch's pixels, numba_sparse; the biases on the
# last worker) from all workers' samples; a second barrier and the next minibatch follows. The
# per-gemm parallel regions this replaces launched ~6 times per minibatch, and on a loaded 2-core
# machine each launch could wait a scheduler slice (784-128-10 b32 measured 45 s per epoch on 2
# threads). The sparse input layer is the zero-skipping one at every width (numba_sparse), the
# pixel table precomputed in Team.lut.
# Nothing in the region may raise: a worker that left it early would leave the other waiting at
# a barrier for ever. So nothing in it allocates, every index is valid by construction (the
# Python side validates the plan), and a bounds-checked build (NUMBA_BOUNDSCHECK=1, whose checks
# raise IndexError) runs the team on one worker only (numba_backend.team_works).
@njit(parallel=True, **JIT)
def team_probe(nums, sizes):
    """Per iteration w of a prange over len(nums): the OpenMP thread number and team size that ran
    it. The team epoch is valid only if nums == arange(n) and sizes == n (one iteration each)."""
    for w in prange(nums.shape[0]):
        nums[w] = team_thread_num()
        sizes[w] = team_size()


@njit(**JIT)
def _team_scratch(t, w, s0):
    """Worker w's Scratch for the rows from s0 on (borrowed views): its per-layer offsets (in its
    row of t.woff), output z, output delta (the deltas block of the last layer) and
    transposed-weight scratch. Views are t.bm = ceil(bmax / nw) rows, inside each block."""
    n = t.act_off.shape[0]
    L = n - 2
    off = view1d(t.woff, w * n, n)
    for l in range(L + 1):
        off[l] = t.act_off[l] + s0 * t.sizes[l]
    off[L + 1] = t.act_off[L + 1]
    out = view1d(t.deltas, off[L], t.bm * t.sizes[L])
    return Scratch(t.acts, off, t.sizes, view2d(t.zlast, s0 * t.sizes[L], t.bm, t.sizes[L]), out, out,
                   view1d(t.WT, w * t.wt_size, t.wt_size), t.use_blas, None)


@njit(**JIT)
def team_deltas(net, t, s, Bw):
    """Hidden deltas of the worker's Bw samples from the top down, each into its rows of the
    layer's deltas block (layer l's at act_off[l]), with the pre-update weights."""
    bm = s.zlast.shape[0]
    L = net.layout.shape[0]
    for l in range(L - 1, 0, -1):
        W, _ = _layer_views(net.params, net.layout, l)
        cur = view2d(t.deltas, s.act_off[l + 1], bm, t.sizes[l + 1])
        dx = view2d(t.deltas, s.act_off[l], bm, t.sizes[l])
        a_in = _acts(s.acts, s.act_off, s.sizes, l, bm)
        if t.use_blas[l]:
            n_in, n_out = t.sizes[l], t.sizes[l + 1]
            gemm(False, True, Bw, n_in, n_out, 1.0, t.deltas, s.act_off[l + 1], n_out, net.params,
                 net.layout[l, 0], n_out, 0.0, t.deltas, s.act_off[l], n_in)
            for i in range(Bw):
                activation_backward(a_in, dx, i, net.kinds[l - 1])
        else:
            dense_backward_dx_loops(cur, Bw, W, a_in, net.kinds[l - 1], dx, s.gW)


@njit(**JIT)
def team_forward_blas(net, t, s, Bw, l, s0):
    """z = x @ W + b for the worker's Bw samples of a gemm-sized layer (activation applied by the caller)."""
    L = net.layout.shape[0]
    n_in, n_out = t.sizes[l], t.sizes[l + 1]
    if l == L - 1:
        zbuf, zoff = t.zlast, s0 * n_out
    else:
        zbuf, zoff = t.acts, s.act_off[l + 1]
    gemm(False, False, Bw, n_out, n_in, 1.0, t.acts, s.act_off[l], n_in, net.params, net.layout[l, 0], n_out,
         0.0, zbuf, zoff, n_out)
    b = view1d(net.params, net.layout[l, 1], n_out)
    for i in range(Bw):
        for j0 in range(0, n_out, VL):
            m = min(VL, n_out - j0)
            vstore(zbuf, zoff + i * n_out + j0, m, vadd(vload(zbuf, zoff + i * n_out + j0, m), vload(b, j0, m)))


@njit(**JIT)
def team_forward(net, data, rows, t, s, s0):
    """network_forward for the worker's samples (plain, no augmentation; the input gathered by
    input_rows); gemm layers call BLAS directly on the worker's rows."""
    B = rows.shape[0]
    bm = s.zlast.shape[0]
    L = net.layout.shape[0]
    ptr, idx, val, in_rows = input_rows(data, rows, s, None, 0)
    for l in range(L):
        W, b = _layer_views(net.params, net.layout, l)
        x = _acts(s.acts, s.act_off, s.sizes, l, bm)
        a = _acts(s.acts, s.act_off, s.sizes, l + 1, bm)
        z = s.zlast if l == L - 1 else a
        if l == 0 and data.csr_ptr.shape[0] > 0:  # numba_sparse, z flat at the worker's rows
            if t.sizes[1] <= VL:
                sparse_forward_narrow(ptr, idx, val, t.lut, in_rows, W, b, z, t.split, 0)
            else:
                zbuf, zoff = (t.zlast, s0 * t.sizes[1]) if L == 1 else (t.acts, s.act_off[1])
                sparse_forward(ptr, idx, val, t.lut, in_rows, view1d(net.params, net.layout[0, 0],
                                                                     t.sizes[0] * t.sizes[1]), b, zbuf, zoff)
        elif s.use_blas[l]:
            team_forward_blas(net, t, s, B, l, s0)
        else:
            dense_forward_loops(x, B, W, b, z)
        activation_forward_rows(z, a, B, net.kinds[l])


@njit(**JIT)
def team_update_loops(t, l, B, coef, tW, k0, k1):
    """tW[k0:k1] -= coef * sum over the minibatch's samples (in order) of x[i, k] * d[i]: four
    weight rows share each delta load (four FMA chains per 16-column block)."""
    n_in, n_out = tW.shape
    xo = t.act_off[l]
    do = t.act_off[l + 1]
    zero = vsplat(0, tW)
    for j0 in range(0, n_out, VL):
        m = min(VL, n_out - j0)
        k = k0
        while k + 4 <= k1:
            g0 = zero
            g1 = zero
            g2 = zero
            g3 = zero
            for i in range(B):
                dv = vload(t.deltas, do + i * n_out + j0, m)
                xr = xo + i * n_in + k
                g0 = vfma(g0, ld(t.acts, xr), dv)
                g1 = vfma(g1, ld(t.acts, xr + 1), dv)
                g2 = vfma(g2, ld(t.acts, xr + 2), dv)
                g3 = vfma(g3, ld(t.acts, xr + 3), dv)
            vstore(tW, k * n_out + j0, m, vfma(vload(tW, k * n_out + j0, m), -coef, g0))
            vstore(tW, (k + 1) * n_out + j0, m, vfma(vload(tW, (k + 1) * n_out + j0, m), -coef, g1))
            vstore(tW, (k + 2) * n_out + j0, m, vfma(vload(tW, (k + 2) * n_out + j0, m), -coef, g2))
            vstore(tW, (k + 3) * n_out + j0, m, vfma(vload(tW, (k + 3) * n_out + j0, m), -coef, g3))
            k += 4
        while k < k1:
            g0 = zero
            for i in range(B):
                g0 = vfma(g0, ld(t.acts, xo + i * n_in + k), vload(t.deltas, do + i * n_out + j0, m))
            vstore(tW, k * n_out + j0, m, vfma(vload(tW, k * n_out + j0, m), -coef, g0))
            k += 1


@njit(**JIT)
def team_update(net, data, order, start, B, t, w, nw, coef):
    """Worker w's share of the minibatch's update, every layer's weights from all B samples:
    weight rows k0..k1 of every layer (the sparse input layer's through the worker's column
    index in t.cs/es/ev/lo/hi, numba_sparse.sparse_update), the biases on the last worker."""
    L = net.layout.shape[0]
    sparse = data.csr_ptr.shape[0] > 0
    rows = view1d(order, start, B)
    for l in range(L):
        tW, tb = _layer_views(net.params, net.layout, l)
        n_in, n_out = t.sizes[l], t.sizes[l + 1]
        do = t.act_off[l + 1]
        if w == nw - 1:  # the biases, samples in order
            bias_update(view2d(t.deltas, do, B, n_out), B, coef, tb)
        k0 = n_in * w // nw
        k1 = n_in * (w + 1) // nw
        if l == 0 and sparse:  # numba_sparse: weight rows k0..k1 through this worker's column index
            nc = t.cs.shape[0] // nw
            ne = t.es.shape[0] // nw
            nb = t.lo.shape[0] // nw
            sparse_update(data.csr_ptr, data.csr_idx, data.csr_val, t.lut, rows, k0, k1, t.deltas, do, n_out, -coef,
                          view1d(net.params, net.layout[0, 0], n_in * n_out), view1d(t.cs, w * nc, nc),
                          view1d(t.es, w * ne, ne), view1d(t.ev, w * ne, ne), view1d(t.lo, w * nb, nb),
                          view1d(t.hi, w * nb, nb), view1d(t.slut, w * 256, 256))
            continue
        if k1 <= k0:
            continue
        if t.use_blas[l]:
            gemm(True, False, k1 - k0, n_out, B, -coef, t.acts, t.act_off[l] + k0, n_in,
                 t.deltas, do, n_out, 1.0, net.params, net.layout[l, 0] + k0 * n_out, n_out)
        else:
            team_update_loops(t, l, B, coef, tW, k0, k1)


@njit(parallel=True, **JIT)
def train_epoch_team(net, data, order, lrs, batch_size, t, losses, corrects, streamed):
    """Plain-SGD deterministic epoch on len(losses) workers in ONE parallel region, two team
    barriers per minibatch (see above). Worker w's loss sum and correct count go to losses[w],
    corrects[w]. Needs a prange whose iterations run one per OpenMP thread (team_probe) when
    len(losses) > 1. Per weight, the sparse and loop layers sum their samples in order whatever
    the worker count; gemm layers are one gemm over all the minibatch's rows. streamed: the
    rows lie in visiting order (fastgd.backends.pipeline), so the next minibatch's are not
    prefetched (the hardware prefetcher follows the stream)."""
    nw = losses.shape[0]
    n = order.shape[0]
    n_steps = (n + batch_size - 1) // batch_size
    f = net.params.dtype.type
    for w in prange(nw):  # borrowed views made inside: a parfor cannot take namedtuples built outside it
        bnet = borrowed_net(net)
        bdata = borrowed_data(data)
        bt = borrowed_team(t)
        border = borrow(order)
        ls = 0.0
        cor = 0
        s0_full = batch_size * w // nw
        s_full = _team_scratch(bt, w, s0_full)  # every step's but a short last one's
        for k in range(n_steps):
            start = k * batch_size
            stop = min(n, start + batch_size)
            B = stop - start
            s0 = B * w // nw
            Bw = B * (w + 1) // nw - s0
            nB = min(n, stop + batch_size) - stop
            if not streamed:
                prefetch_rows(bdata.X, bdata.csr_ptr, bdata.csr_idx, bdata.csr_val, bdata.targets, bdata.labels,
                              view1d(border, stop + nB * w // nw, nB * (w + 1) // nw - nB * w // nw))
            if Bw > 0:
                s = s_full if s0 == s0_full else _team_scratch(bt, w, s0)
                rows = view1d(border, start + s0, Bw)
                team_forward(bnet, bdata, rows, bt, s, s0)
                a, c = output_delta(bnet, bdata, rows, s)
                ls += a
                cor += c
                team_deltas(bnet, bt, s, Bw)
            team_barrier(nw)  # every delta from the pre-update weights
            team_update(bnet, bdata, border, start, B, bt, w, nw, f(lrs[k]) / f(B))
            team_barrier(nw)  # the next minibatch reads the updated weights
        losses[w] = ls
        corrects[w] = cor
