"""The "cols" training epoch of the Numba backend: the twin of the Cython backend's
(kernels/dense_cols.pyx, kernels/fastgd_gemm.h), for float32 plain SGD on networks with
relu / leaky_relu / linear hidden layers and a softmax / sigmoid / linear output.

Why: in the team epoch (numba_kernels.train_epoch_team) every worker streams ALL the weights
every step (its share of the samples through every layer). Here worker t owns a fixed slice of
every hidden layer's output columns for the whole call, so its part of the weights stays in its
own L2 cache (784-512-512-10: ~1.3 MB per worker of two).

Worker t of T, columns c in its slice of hidden layer h (``splits``), one step of B rows, each
phase for every worker, ``|`` a team barrier (numba_simd.team_barrier):
  forward h = 0:      A_0[:, c] = act(X W_0[:, c] + b_0[c])                                          |
  forward h = 1..H-1: A_h[:, c] = act(A_{h-1} W_h[:, c] + b_h[c])                                  |
  output, rows s of t: Zo = A_{H-1} Wo + bo; output activation, loss, Do = dL/dz                   |
  top:   D_{H-1}[:, c] = (Do Wo[c, :]^T) * act'(A_{H-1}[:, c]); Wo[c, :] += coef A_{H-1}[:, c]^T Do
  l = H-1..1: PT_t = W_l[:, c] D_l[:, c]^T (this worker's part of dA_{l-1}^T, pre-update weights);
              W_l[:, c] += coef A_{l-1}^T D_l[:, c]                                               |
              D_{l-1}[:, c'] = (sum_u PT_u[c', :])^T * act'(A_{l-1}[:, c'])  (c': t's columns of l-1)
  W_0[:, c] += coef X^T D_0[:, c]
No barrier ends the step: the next step's first phase writes only this worker's columns of A_0,
which only this worker reads after the last barrier. The input rows are gathered (scaled) one
step ahead, into the other of two buffers, by all workers after the first barrier.

Sparse input (uint8 mostly zeros, as the backend decides by density) skips zeros in the first
layer as the Cython twin does: each block of 4 rows sums over the pixels non-zero in any of its
rows, and the update's each block of 4 weight rows over the samples in which any of its pixels
is non-zero (`build_lists`, `gemm_klist`): a weight row is loaded once per 4 samples, where
sample-by-sample zero skipping loaded it once per sample from L2 (measured ~20 GFLOP/s).

Each worker copies its slices of the hidden layers' weights (whole 16-column blocks,
`column_splits`) into its own block of `wp` when the call starts and back when it ends. Every
buffer the tiles stream has a leading dimension of an odd number of 16-float vectors (`padded`):
at 512 floats (2 KB) the rows of a B panel fall into 8 of L1's 64 sets and evict each other
(a 32 x 256 x 512 forward tile: 79 GFLOP/s at row stride 512 in params, 141 at 272 packed).
The dense products are
`gemm_tiles`: 6 rows x 4 vectors of 16 lanes held in 24 accumulators over blocks of K, the
SGD step fused into the weight-gradient tile, the bias and activation, or the activation
derivative, applied to each finished panel while it is still in cache.

Deterministic for a given worker count, not bitwise equal across counts (the input deltas of a
layer sum the workers' partial products). Nothing in the parallel region may raise (see
numba_kernels' team epoch): the Python side validates, buffers are sized by `make_cols`.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange, types
from numba.core import config
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import overload

from fastgd.ops import LEAKY_RELU, LEAKY_SLOPE, LINEAR, RELU, SIGMOID, SOFTMAX

from .numba_kernels import (JIT, activation_forward, argmax_row, borrowed_data, borrowed_net, gather_dense,
                            loss_forward_backward)
from .numba_simd import (VL, borrow, ld, nonzero_bits64, team_barrier, vadd, vfma, vload, vmul, vsplat, vstore,
                         vwhere_positive, vwhere_positive_else, view1d, view2d)

HIDDEN_KINDS = (RELU, LEAKY_RELU, LINEAR)
OUTPUT_KINDS = (SOFTMAX, SIGMOID, LINEAR)

# gemm_tiles epilogues: what a tile does with its accumulators
STORE, ACC, BIAS_ACT, DACT = 0, 1, 2, 3
#: rows of a GEMM's B panel per block: 128 x 64 float32 = 32 KB, inside a 48 KB L1
KC = 128

#: The call's buffers (make_cols). Hidden layer h (width sizes[h + 1]): activations and deltas
#: at a_off[h] in acts / deltas (B x lda[h]); wp: worker t's copy of W_h[:, its columns]
#: (sizes[h] x wp_ld[h * T + t]) at wp_off[h * T + t]; zo/ao/dout (B x n_out): the output's z, activation
#: and delta (flat); woT (n_out x width of the top hidden layer): the output weights transposed; dt:
#: per worker, its columns' deltas transposed (dt_size each: widest slice x bp); pt: per layer
#: l >= 1 and worker, its partial dA_{l-1}^T (sizes[l] x bp) at pt_off[l * T + t]; xbuf: two
#: steps' input rows (B x n_in each, scaled); splits: (H, T + 1) column boundaries; kl_f/kn_f,
#: kl_u/kn_u: per worker, the zero-skipping first layer's lists (build_lists; sparse input only).
Cols = namedtuple("Cols", "acts deltas a_off lda sizes zo ao dout woT dt dt_size bp pt pt_off xbuf splits "
                          "kl_f kn_f kl_u kn_u wp wp_off wp_ld")


@njit(**JIT)
def borrowed_cols(c):
    return Cols(borrow(c.acts), borrow(c.deltas), borrow(c.a_off), borrow(c.lda), borrow(c.sizes), borrow(c.zo),
                borrow(c.ao), borrow(c.dout), borrow(c.woT), borrow(c.dt), c.dt_size, c.bp, borrow(c.pt),
                borrow(c.pt_off), borrow(c.xbuf), borrow(c.splits), borrow(c.kl_f), borrow(c.kn_f), borrow(c.kl_u),
                borrow(c.kn_u), borrow(c.wp), borrow(c.wp_off), borrow(c.wp_ld))


# ---- activations of the hidden layers, on vectors ------------------------------------------
@njit(**JIT)
def act_v(z, kind):
    """relu / leaky_relu / linear of a vector."""
    if kind == RELU:
        return vwhere_positive(z, z)
    if kind == LEAKY_RELU:
        return vwhere_positive_else(z, z, vmul(z, vsplat(LEAKY_SLOPE, z)))
    return z


@njit(**JIT)
def dact_v(d, a, kind):
    """d * act'(z) from the activation's output a (a > 0 exactly where z > 0 for both)."""
    if kind == RELU:
        return vwhere_positive(a, d)
    if kind == LEAKY_RELU:
        return vwhere_positive_else(a, d, vmul(d, vsplat(LEAKY_SLOPE, d)))
    return d


@njit(**JIT)
def dact(d, a, kind):
    """The scalar dact_v."""
    if kind == RELU:
        return d if a > 0 else a * 0  # a is 0 there
    if kind == LEAKY_RELU:
        return d if a > 0 else d * LEAKY_SLOPE
    return d


# ---- the GEMM -------------------------------------------------------------------------------
@njit(**JIT)
def _start(C, c, m, fresh):
    """A tile's accumulator: zero for the first K block (and for ACC, whose every block adds
    coef * its part to C), else the raw sum the blocks before stored in C."""
    if fresh:
        return vsplat(0, C)
    return vload(C, c, m)


@njit(**JIT)
def _put(acc, C, c, m, add, coef):
    """A tile's accumulator into C[c:c + m]: the raw sum, or (add) C += coef * acc."""
    if add:
        vstore(C, c, m, vfma(vload(C, c, m), coef, acc))
    else:
        vstore(C, c, m, acc)


@njit(**JIT)
def _finish(C, c, ldc, M, n, epi, E, e, lde, act):
    """The epilogue of a finished block of raw sums, rows < M and columns < n of C from c (E's
    element at e + i*lde + j): BIAS_ACT C = act(C + E), DACT C = C * act'(from E, the
    activations); other epilogues leave it as it is."""
    if epi != BIAS_ACT and epi != DACT:
        return
    for i in range(M):
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            q = c + i * ldc + j0
            y = vload(C, q, m)
            x = vload(E, e + i * lde + j0, m)
            vstore(C, q, m, act_v(vadd(y, x), act) if epi == BIAS_ACT else dact_v(y, x, act))


@njit(**JIT)
def gemm_tiles(M, N, K, A, ao, rsa, csa, Bm, bo, ldb, C, co, ldc, epi, E, eo, lde, coef, act):
    """For i < M, j < N: acc = sum_{k < K} A[ao + i*rsa + k*csa] * Bm[bo + k*ldb + j], then
    C[co + i*ldc + j] by `epi`: STORE C = acc; ACC C += coef * acc; BIAS_ACT C = act(acc + E);
    DACT C = acc * act'(from E, the activations) (E's element at eo + i*lde + j). A is read by scalar
    broadcasts at any strides (A or its transpose are both plain calls), Bm by 16-lane vectors.

    Panels of 4 vectors (64 columns) of Bm, then 2, then one at a time (the last one masked
    when N is not a multiple of 16: nothing past column N is read or written); each panel in
    blocks of KC rows, which stay in L1 while every row tile runs over them (the weights would
    otherwise stream from L2 once per tile). Tiles of 6 rows keep 6 x (panel width)
    accumulators in registers for the block (24 for 4 vectors: 4 loads of Bm and 6 broadcasts
    of A per 24 FMAs; 4-row tiles measured ~85 vs ~120 GFLOP/s for 6 on 784-512 shapes), then
    tiles of 2 rows, then a single row. Between blocks the raw sums wait in C (ACC: each block
    adds coef * its part); BIAS_ACT and DACT are applied to the panel once it is complete
    (_finish: written once, rather than inside every tile, that tile code compiled ~4x
    bigger and slower)."""
    nf = N // VL
    ml = N - nf * VL
    add = epi == ACC
    jv = 0
    while jv < nf or (jv == nf and ml > 0):
        width = 4 if jv + 4 <= nf else (2 if jv + 2 <= nf else 1)
        m = VL if jv < nf else ml
        j0 = jv * VL
        for k0 in range(0, K, KC):
            kc = min(KC, K - k0)
            fresh = k0 == 0 or add
            bk0 = bo + k0 * ldb + j0
            i = 0
            while i < M:
                rows = 6 if i + 6 <= M else (2 if i + 2 <= M else 1)
                a0 = ao + i * rsa + k0 * csa
                c = co + i * ldc + j0
                if rows == 6 and width == 4:
                    c00 = _start(C, c, VL, fresh)
                    c01 = _start(C, c + 16, VL, fresh)
                    c02 = _start(C, c + 32, VL, fresh)
                    c03 = _start(C, c + 48, VL, fresh)
                    c10 = _start(C, c + ldc, VL, fresh)
                    c11 = _start(C, c + ldc + 16, VL, fresh)
                    c12 = _start(C, c + ldc + 32, VL, fresh)
                    c13 = _start(C, c + ldc + 48, VL, fresh)
                    c20 = _start(C, c + 2 * ldc, VL, fresh)
                    c21 = _start(C, c + 2 * ldc + 16, VL, fresh)
                    c22 = _start(C, c + 2 * ldc + 32, VL, fresh)
                    c23 = _start(C, c + 2 * ldc + 48, VL, fresh)
                    c30 = _start(C, c + 3 * ldc, VL, fresh)
                    c31 = _start(C, c + 3 * ldc + 16, VL, fresh)
                    c32 = _start(C, c + 3 * ldc + 32, VL, fresh)
                    c33 = _start(C, c + 3 * ldc + 48, VL, fresh)
                    c40 = _start(C, c + 4 * ldc, VL, fresh)
                    c41 = _start(C, c + 4 * ldc + 16, VL, fresh)
                    c42 = _start(C, c + 4 * ldc + 32, VL, fresh)
                    c43 = _start(C, c + 4 * ldc + 48, VL, fresh)
                    c50 = _start(C, c + 5 * ldc, VL, fresh)
                    c51 = _start(C, c + 5 * ldc + 16, VL, fresh)
                    c52 = _start(C, c + 5 * ldc + 32, VL, fresh)
                    c53 = _start(C, c + 5 * ldc + 48, VL, fresh)
                    for k in range(kc):
                        bk = bk0 + k * ldb
                        b0 = vload(Bm, bk, VL)
                        b1 = vload(Bm, bk + 16, VL)
                        b2 = vload(Bm, bk + 32, VL)
                        b3 = vload(Bm, bk + 48, VL)
                        ak = a0 + k * csa
                        x = ld(A, ak)
                        c00 = vfma(c00, x, b0)
                        c01 = vfma(c01, x, b1)
                        c02 = vfma(c02, x, b2)
                        c03 = vfma(c03, x, b3)
                        x = ld(A, ak + rsa)
                        c10 = vfma(c10, x, b0)
                        c11 = vfma(c11, x, b1)
                        c12 = vfma(c12, x, b2)
                        c13 = vfma(c13, x, b3)
                        x = ld(A, ak + 2 * rsa)
                        c20 = vfma(c20, x, b0)
                        c21 = vfma(c21, x, b1)
                        c22 = vfma(c22, x, b2)
                        c23 = vfma(c23, x, b3)
                        x = ld(A, ak + 3 * rsa)
                        c30 = vfma(c30, x, b0)
                        c31 = vfma(c31, x, b1)
                        c32 = vfma(c32, x, b2)
                        c33 = vfma(c33, x, b3)
                        x = ld(A, ak + 4 * rsa)
                        c40 = vfma(c40, x, b0)
                        c41 = vfma(c41, x, b1)
                        c42 = vfma(c42, x, b2)
                        c43 = vfma(c43, x, b3)
                        x = ld(A, ak + 5 * rsa)
                        c50 = vfma(c50, x, b0)
                        c51 = vfma(c51, x, b1)
                        c52 = vfma(c52, x, b2)
                        c53 = vfma(c53, x, b3)
                    _put(c00, C, c, VL, add, coef)
                    _put(c01, C, c + 16, VL, add, coef)
                    _put(c02, C, c + 32, VL, add, coef)
                    _put(c03, C, c + 48, VL, add, coef)
                    _put(c10, C, c + ldc, VL, add, coef)
                    _put(c11, C, c + ldc + 16, VL, add, coef)
                    _put(c12, C, c + ldc + 32, VL, add, coef)
                    _put(c13, C, c + ldc + 48, VL, add, coef)
                    _put(c20, C, c + 2 * ldc, VL, add, coef)
                    _put(c21, C, c + 2 * ldc + 16, VL, add, coef)
                    _put(c22, C, c + 2 * ldc + 32, VL, add, coef)
                    _put(c23, C, c + 2 * ldc + 48, VL, add, coef)
                    _put(c30, C, c + 3 * ldc, VL, add, coef)
                    _put(c31, C, c + 3 * ldc + 16, VL, add, coef)
                    _put(c32, C, c + 3 * ldc + 32, VL, add, coef)
                    _put(c33, C, c + 3 * ldc + 48, VL, add, coef)
                    _put(c40, C, c + 4 * ldc, VL, add, coef)
                    _put(c41, C, c + 4 * ldc + 16, VL, add, coef)
                    _put(c42, C, c + 4 * ldc + 32, VL, add, coef)
                    _put(c43, C, c + 4 * ldc + 48, VL, add, coef)
                    _put(c50, C, c + 5 * ldc, VL, add, coef)
                    _put(c51, C, c + 5 * ldc + 16, VL, add, coef)
                    _put(c52, C, c + 5 * ldc + 32, VL, add, coef)
                    _put(c53, C, c + 5 * ldc + 48, VL, add, coef)
                elif rows == 6 and width == 2:
                    c00 = _start(C, c, VL, fresh)
                    c01 = _start(C, c + 16, VL, fresh)
                    c10 = _start(C, c + ldc, VL, fresh)
                    c11 = _start(C, c + ldc + 16, VL, fresh)
                    c20 = _start(C, c + 2 * ldc, VL, fresh)
                    c21 = _start(C, c + 2 * ldc + 16, VL, fresh)
                    c30 = _start(C, c + 3 * ldc, VL, fresh)
                    c31 = _start(C, c + 3 * ldc + 16, VL, fresh)
                    c40 = _start(C, c + 4 * ldc, VL, fresh)
                    c41 = _start(C, c + 4 * ldc + 16, VL, fresh)
                    c50 = _start(C, c + 5 * ldc, VL, fresh)
                    c51 = _start(C, c + 5 * ldc + 16, VL, fresh)
                    for k in range(kc):
                        bk = bk0 + k * ldb
                        b0 = vload(Bm, bk, VL)
                        b1 = vload(Bm, bk + 16, VL)
                        ak = a0 + k * csa
                        x = ld(A, ak)
                        c00 = vfma(c00, x, b0)
                        c01 = vfma(c01, x, b1)
                        x = ld(A, ak + rsa)
                        c10 = vfma(c10, x, b0)
                        c11 = vfma(c11, x, b1)
                        x = ld(A, ak + 2 * rsa)
                        c20 = vfma(c20, x, b0)
                        c21 = vfma(c21, x, b1)
                        x = ld(A, ak + 3 * rsa)
                        c30 = vfma(c30, x, b0)
                        c31 = vfma(c31, x, b1)
                        x = ld(A, ak + 4 * rsa)
                        c40 = vfma(c40, x, b0)
                        c41 = vfma(c41, x, b1)
                        x = ld(A, ak + 5 * rsa)
                        c50 = vfma(c50, x, b0)
                        c51 = vfma(c51, x, b1)
                    _put(c00, C, c, VL, add, coef)
                    _put(c01, C, c + 16, VL, add, coef)
                    _put(c10, C, c + ldc, VL, add, coef)
                    _put(c11, C, c + ldc + 16, VL, add, coef)
                    _put(c20, C, c + 2 * ldc, VL, add, coef)
                    _put(c21, C, c + 2 * ldc + 16, VL, add, coef)
                    _put(c30, C, c + 3 * ldc, VL, add, coef)
                    _put(c31, C, c + 3 * ldc + 16, VL, add, coef)
                    _put(c40, C, c + 4 * ldc, VL, add, coef)
                    _put(c41, C, c + 4 * ldc + 16, VL, add, coef)
                    _put(c50, C, c + 5 * ldc, VL, add, coef)
                    _put(c51, C, c + 5 * ldc + 16, VL, add, coef)
                elif rows == 6:  # one vector, masked to m lanes
                    c00 = _start(C, c, m, fresh)
                    c10 = _start(C, c + ldc, m, fresh)
                    c20 = _start(C, c + 2 * ldc, m, fresh)
                    c30 = _start(C, c + 3 * ldc, m, fresh)
                    c40 = _start(C, c + 4 * ldc, m, fresh)
                    c50 = _start(C, c + 5 * ldc, m, fresh)
                    for k in range(kc):
                        bk = bk0 + k * ldb
                        b0 = vload(Bm, bk, m)
                        ak = a0 + k * csa
                        x = ld(A, ak)
                        c00 = vfma(c00, x, b0)
                        x = ld(A, ak + rsa)
                        c10 = vfma(c10, x, b0)
                        x = ld(A, ak + 2 * rsa)
                        c20 = vfma(c20, x, b0)
                        x = ld(A, ak + 3 * rsa)
                        c30 = vfma(c30, x, b0)
                        x = ld(A, ak + 4 * rsa)
                        c40 = vfma(c40, x, b0)
                        x = ld(A, ak + 5 * rsa)
                        c50 = vfma(c50, x, b0)
                    _put(c00, C, c, m, add, coef)
                    _put(c10, C, c + ldc, m, add, coef)
                    _put(c20, C, c + 2 * ldc, m, add, coef)
                    _put(c30, C, c + 3 * ldc, m, add, coef)
                    _put(c40, C, c + 4 * ldc, m, add, coef)
                    _put(c50, C, c + 5 * ldc, m, add, coef)
                elif rows == 2 and width == 4:
                    c00 = _start(C, c, VL, fresh)
                    c01 = _start(C, c + 16, VL, fresh)
                    c02 = _start(C, c + 32, VL, fresh)
                    c03 = _start(C, c + 48, VL, fresh)
                    c10 = _start(C, c + ldc, VL, fresh)
                    c11 = _start(C, c + ldc + 16, VL, fresh)
                    c12 = _start(C, c + ldc + 32, VL, fresh)
                    c13 = _start(C, c + ldc + 48, VL, fresh)
                    for k in range(kc):
                        bk = bk0 + k * ldb
                        b0 = vload(Bm, bk, VL)
                        b1 = vload(Bm, bk + 16, VL)
                        b2 = vload(Bm, bk + 32, VL)
                        b3 = vload(Bm, bk + 48, VL)
                        ak = a0 + k * csa
                        x = ld(A, ak)
                        c00 = vfma(c00, x, b0)
                        c01 = vfma(c01, x, b1)
                        c02 = vfma(c02, x, b2)
                        c03 = vfma(c03, x, b3)
                        x = ld(A, ak + rsa)
                        c10 = vfma(c10, x, b0)
                        c11 = vfma(c11, x, b1)
                        c12 = vfma(c12, x, b2)
                        c13 = vfma(c13, x, b3)
                    _put(c00, C, c, VL, add, coef)
                    _put(c01, C, c + 16, VL, add, coef)
                    _put(c02, C, c + 32, VL, add, coef)
                    _put(c03, C, c + 48, VL, add, coef)
                    _put(c10, C, c + ldc, VL, add, coef)
                    _put(c11, C, c + ldc + 16, VL, add, coef)
                    _put(c12, C, c + ldc + 32, VL, add, coef)
                    _put(c13, C, c + ldc + 48, VL, add, coef)
                elif rows == 2 and width == 2:
                    c00 = _start(C, c, VL, fresh)
                    c01 = _start(C, c + 16, VL, fresh)
                    c10 = _start(C, c + ldc, VL, fresh)
                    c11 = _start(C, c + ldc + 16, VL, fresh)
                    for k in range(kc):
                        bk = bk0 + k * ldb
                        b0 = vload(Bm, bk, VL)
                        b1 = vload(Bm, bk + 16, VL)
                        ak = a0 + k * csa
                        x = ld(A, ak)
                        c00 = vfma(c00, x, b0)
                        c01 = vfma(c01, x, b1)
                        x = ld(A, ak + rsa)
                        c10 = vfma(c10, x, b0)
                        c11 = vfma(c11, x, b1)
                    _put(c00, C, c, VL, add, coef)
                    _put(c01, C, c + 16, VL, add, coef)
                    _put(c10, C, c + ldc, VL, add, coef)
                    _put(c11, C, c + ldc + 16, VL, add, coef)
                elif rows == 2:
                    c00 = _start(C, c, m, fresh)
                    c10 = _start(C, c + ldc, m, fresh)
                    for k in range(kc):
                        bk = bk0 + k * ldb
                        b0 = vload(Bm, bk, m)
                        ak = a0 + k * csa
                        x = ld(A, ak)
                        c00 = vfma(c00, x, b0)
                        x = ld(A, ak + rsa)
                        c10 = vfma(c10, x, b0)
                    _put(c00, C, c, m, add, coef)
                    _put(c10, C, c + ldc, m, add, coef)

                else:  # the last row, one vector at a time
                    for v in range(width):
                        mv = VL if width > 1 else m
                        c00 = _start(C, c + v * VL, mv, fresh)
                        for k in range(kc):
                            c00 = vfma(c00, ld(A, a0 + k * csa), vload(Bm, bk0 + k * ldb + v * VL, mv))
                        _put(c00, C, c + v * VL, mv, add, coef)
                i += rows
        _finish(C, co + j0, ldc, M, VL * width if width > 1 else m, epi, E, eo + j0, lde, act)
        jv += width


# ---- the zero-skipping first layer: row blocks' and pixel blocks' index lists -------------------
def nz_bits(X, off):
    """uint64 whose bit j says X.flat[off + j] != 0, for uint8 X (numba_simd.nonzero_bits64)."""


@overload(nz_bits, jit_options=dict(cache=not config.BOUNDSCHECK))
def _nz_bits(X, off):
    if X.dtype == types.uint8:
        return lambda X, off: nonzero_bits64(X, off)
    return lambda X, off: np.uint64(0)  # float input has no lists (never called)


_BLOCK_BITS = np.uint64(0x1111111111111111)


@njit(**JIT)
def build_lists(X, rows, Bc, kl_f, kn_f, kl_u, kn_u, bmax):
    """The step's index lists for the zero-skipping first layer, from its uint8 rows X[rows]:
    for each block of 4 rows rb, the pixels non-zero in any of them (kl_f[rb * n_in:][:kn_f[rb]],
    ascending: the forward's k list); for each block of 4 pixels pb, the samples (ascending) in
    which any of them is non-zero (kl_u[pb * bmax:][:kn_u[pb]]: the update's k list). 64 pixels
    tested at once; the row's tail pixel by pixel."""
    n_in = X.shape[1]
    nbf = (Bc + 3) // 4
    nbu = (n_in + 3) // 4
    for pb in range(nbu):
        kn_u[pb] = 0
    one = np.uint64(1)
    for rb in range(nbf):
        q = 0
        s1 = min(Bc, 4 * rb + 4)
        k = 0
        while k + 64 <= n_in:
            m = np.uint64(0)
            for s in range(4 * rb, s1):
                ms = nz_bits(X, rows[s] * n_in + k)
                m |= ms
                # the update's lists: pixel blocks with a non-zero pixel of sample s
                b4 = (ms | (ms >> one) | (ms >> np.uint64(2)) | (ms >> np.uint64(3))) & _BLOCK_BITS
                while b4 != 0:
                    pb = (k + np.int64(trailing_zeros(b4))) >> 2
                    kl_u[pb * bmax + kn_u[pb]] = s
                    kn_u[pb] += 1
                    b4 &= b4 - one
            while m != 0:
                kl_f[rb * n_in + q] = k + np.int64(trailing_zeros(m))
                q += 1
                m &= m - one
            k += 64
        while k < n_in:  # the tail, in whole blocks of 4 pixels (k is a multiple of 64 here)
            k1 = min(n_in, k + 4)
            for s in range(4 * rb, s1):
                hit = False
                for p in range(k, k1):
                    hit |= X[rows[s], p] != 0
                if hit:
                    pb = k >> 2
                    kl_u[pb * bmax + kn_u[pb]] = s
                    kn_u[pb] += 1
            for p in range(k, k1):
                hit = False
                for s in range(4 * rb, s1):
                    hit |= X[rows[s], p] != 0
                if hit:
                    kl_f[rb * n_in + q] = p
                    q += 1
            k = k1
        kn_f[rb] = q


@njit(**JIT)
def gemm_klist(M, N, kl, kls, kn, A, ao, rsa, csa, Bm, bo, ldb, C, co, ldc, epi, E, eo, lde, coef, act):
    """gemm_tiles with the sum over a list of k per block of 4 rows: rows 4b..4b+3 sum over
    k = kl[b * kls + q], q < kn[b] (the zero-skipping first layer: a k missing from a block's list
    is a zero in all its rows). A block with an empty list still runs its epilogue (a forward's
    bias), except with ACC (nothing to add). Tiles of 4 rows x 4 vectors, the rest 4 x 1 (the
    last vector masked), the last rows one at a time; BIAS_ACT / DACT applied to each finished
    block of rows (_finish). epi is ACC, BIAS_ACT or DACT (no STORE)."""
    nf = N // VL
    ml = N - nf * VL
    zero = vsplat(0, C)
    add = epi == ACC
    for b in range((M + 3) // 4):
        n = kn[b]
        if n == 0 and epi == ACC:
            continue
        i = 4 * b
        kb = b * kls
        rows = min(4, M - i)
        a0 = ao + i * rsa
        jv = 0
        while rows == 4 and jv + 4 <= nf:
            j0 = jv * VL
            c00 = c01 = c02 = c03 = zero
            c10 = c11 = c12 = c13 = zero
            c20 = c21 = c22 = c23 = zero
            c30 = c31 = c32 = c33 = zero
            for q in range(n):
                k = np.int64(ld(kl, kb + q))
                bk = bo + k * ldb + j0
                b0 = vload(Bm, bk, VL)
                b1 = vload(Bm, bk + 16, VL)
                b2 = vload(Bm, bk + 32, VL)
                b3 = vload(Bm, bk + 48, VL)
                ak = a0 + k * csa
                x = ld(A, ak)
                c00 = vfma(c00, x, b0)
                c01 = vfma(c01, x, b1)
                c02 = vfma(c02, x, b2)
                c03 = vfma(c03, x, b3)
                x = ld(A, ak + rsa)
                c10 = vfma(c10, x, b0)
                c11 = vfma(c11, x, b1)
                c12 = vfma(c12, x, b2)
                c13 = vfma(c13, x, b3)
                x = ld(A, ak + 2 * rsa)
                c20 = vfma(c20, x, b0)
                c21 = vfma(c21, x, b1)
                c22 = vfma(c22, x, b2)
                c23 = vfma(c23, x, b3)
                x = ld(A, ak + 3 * rsa)
                c30 = vfma(c30, x, b0)
                c31 = vfma(c31, x, b1)
                c32 = vfma(c32, x, b2)
                c33 = vfma(c33, x, b3)
            c = co + i * ldc + j0
            _put(c00, C, c, VL, add, coef)
            _put(c01, C, c + 16, VL, add, coef)
            _put(c02, C, c + 32, VL, add, coef)
            _put(c03, C, c + 48, VL, add, coef)
            _put(c10, C, c + ldc, VL, add, coef)
            _put(c11, C, c + ldc + 16, VL, add, coef)
            _put(c12, C, c + ldc + 32, VL, add, coef)
            _put(c13, C, c + ldc + 48, VL, add, coef)
            _put(c20, C, c + 2 * ldc, VL, add, coef)
            _put(c21, C, c + 2 * ldc + 16, VL, add, coef)
            _put(c22, C, c + 2 * ldc + 32, VL, add, coef)
            _put(c23, C, c + 2 * ldc + 48, VL, add, coef)
            _put(c30, C, c + 3 * ldc, VL, add, coef)
            _put(c31, C, c + 3 * ldc + 16, VL, add, coef)
            _put(c32, C, c + 3 * ldc + 32, VL, add, coef)
            _put(c33, C, c + 3 * ldc + 48, VL, add, coef)
            jv += 4
        while rows == 4 and (jv < nf or (jv == nf and ml > 0)):
            j0 = jv * VL
            m = VL if jv < nf else ml
            c00 = c10 = c20 = c30 = zero
            for q in range(n):
                k = np.int64(ld(kl, kb + q))
                b0 = vload(Bm, bo + k * ldb + j0, m)
                ak = a0 + k * csa
                c00 = vfma(c00, ld(A, ak), b0)
                c10 = vfma(c10, ld(A, ak + rsa), b0)
                c20 = vfma(c20, ld(A, ak + 2 * rsa), b0)
                c30 = vfma(c30, ld(A, ak + 3 * rsa), b0)
            c = co + i * ldc + j0
            _put(c00, C, c, m, add, coef)
            _put(c10, C, c + ldc, m, add, coef)
            _put(c20, C, c + 2 * ldc, m, add, coef)
            _put(c30, C, c + 3 * ldc, m, add, coef)
            jv += 1
        if rows < 4:  # the last block's rows, one at a time
            for r in range(i, i + rows):
                for jv in range(nf + (ml > 0)):
                    j0 = jv * VL
                    m = VL if jv < nf else ml
                    acc = zero
                    for q in range(n):
                        k = np.int64(ld(kl, kb + q))
                        acc = vfma(acc, ld(A, ao + r * rsa + k * csa), vload(Bm, bo + k * ldb + j0, m))
                    _put(acc, C, co + r * ldc + j0, m, add, coef)
        _finish(C, co + i * ldc, ldc, rows, N, epi, E, eo + i * lde, lde, act)


# ---- the phases -------------------------------------------------------------------------------
@njit(**JIT)
def bias_cols(b, bo, D, do, ld_, c0, c1, Bc, coef):
    """b[bo + j] += coef * sum over rows s < Bc (in order) of D[do + s*ld_ + j], c0 <= j < c1."""
    zero = vsplat(0, b)
    for j0 in range(c0, c1, VL):
        m = min(VL, c1 - j0)
        acc = zero
        for s in range(Bc):
            acc = vadd(acc, vload(D, do + s * ld_ + j0, m))
        vstore(b, bo + j0, m, vfma(vload(b, bo + j0, m), coef, acc))


@njit(**JIT)
def worker_lists(c, t, n_in):
    """Worker t's copies of the first layer's lists (kl_f, kn_f, kl_u, kn_u), as flat views."""
    bmax = c.zo.shape[0] // c.sizes[c.sizes.shape[0] - 1]
    nbf = (bmax + 3) // 4
    nbu = (n_in + 3) // 4
    return (view1d(c.kl_f, t * nbf * n_in, nbf * n_in), view1d(c.kn_f, t * nbf, nbf),
            view1d(c.kl_u, t * nbu * bmax, nbu * bmax), view1d(c.kn_u, t * nbu, nbu))


@njit(**JIT)
def forward_first(net, data, c, rows, Bc, t, xo, kind):
    """A_0[:, c0:c1] of worker t's columns from the step's rows in xbuf at xo; with sparse
    input, each block of 4 rows summing over the pixels non-zero in any of them (the worker's
    lists for the step are built here, and serve its update too)."""
    c0 = c.splits[t]
    c1 = c.splits[t + 1]
    n_in, la = c.sizes[0], c.lda[0]
    w_off, w_ld, b_off = c.wp_off[t], c.wp_ld[t], net.layout[0, 1]
    zero = net.params.dtype.type(0)
    if data.csr_ptr.shape[0] > 0:
        kl_f, kn_f, kl_u, kn_u = worker_lists(c, t, n_in)
        build_lists(data.X, rows, Bc, kl_f, kn_f, kl_u, kn_u, c.zo.shape[0] // c.sizes[c.sizes.shape[0] - 1])
        if c1 > c0:
            gemm_klist(Bc, c1 - c0, kl_f, n_in, kn_f, c.xbuf, xo, n_in, 1, c.wp, w_off, w_ld, c.acts,
                       c.a_off[0] + c0, la, BIAS_ACT, net.params, b_off + c0, 0, zero, kind)
    elif c1 > c0:
        gemm_tiles(Bc, c1 - c0, n_in, c.xbuf, xo, n_in, 1, c.wp, w_off, w_ld, c.acts, c.a_off[0] + c0, la,
                   BIAS_ACT, net.params, b_off + c0, 0, zero, kind)


@njit(**JIT)
def forward_hidden(net, c, h, Bc, t, T, kind):
    """A_h[:, c0:c1] = act(A_{h-1} W_h[:, c0:c1] + b_h[c0:c1]) for worker t's columns (h >= 1)."""
    c0 = c.splits[h * (T + 1) + t]
    c1 = c.splits[h * (T + 1) + t + 1]
    if c1 <= c0:
        return
    n_in = c.sizes[h]
    gemm_tiles(Bc, c1 - c0, n_in, c.acts, c.a_off[h - 1], c.lda[h - 1], 1, c.wp, c.wp_off[h * T + t],
               c.wp_ld[h * T + t], c.acts, c.a_off[h] + c0, c.lda[h], BIAS_ACT, net.params, net.layout[h, 1] + c0, 0,
               net.params.dtype.type(0), kind)


@njit(**JIT)
def output_rows(net, data, c, rows, s0, s1):
    """The output layer for rows s0..s1 of the step: z, activation, loss, delta (not yet / B).
    Returns (loss sum, correct argmax predictions)."""
    L = net.layout.shape[0]
    n_h, n_o = c.sizes[L - 1], c.sizes[L]
    if s1 <= s0:
        return 0.0, 0
    la = c.lda[L - 2]
    gemm_tiles(s1 - s0, n_o, n_h, c.acts, c.a_off[L - 2] + s0 * la, la, 1, net.params, net.layout[L - 1, 0], n_o,
               c.zo, s0 * n_o, n_o, BIAS_ACT, net.params, net.layout[L - 1, 1], 0, net.params.dtype.type(0), LINEAR)
    bmax = c.zo.shape[0] // n_o
    zo, ao, do = view2d(c.zo, 0, bmax, n_o), view2d(c.ao, 0, bmax, n_o), view2d(c.dout, 0, bmax, n_o)
    ls = 0.0
    cor = 0
    out_kind = net.kinds[L - 1]
    for s in range(s0, s1):
        r = rows[s]
        activation_forward(zo, ao, s, out_kind)
        ls += loss_forward_backward(zo, ao, do, s, data.targets, r, data.loss, out_kind)
        if argmax_row(ao, s) == data.labels[r]:
            cor += 1
    return ls, cor


@njit(**JIT)
def backward_top(net, c, Bc, t, T, coef, kind):
    """The top hidden layer's deltas for worker t's columns from the output delta (through the
    output weights before their update), then its rows of the output weights updated; the output
    bias by the last worker."""
    L = net.layout.shape[0]
    h = L - 2
    n_h, n_o = c.sizes[L - 1], c.sizes[L]
    wo, bo = net.layout[L - 1, 0], net.layout[L - 1, 1]
    c0 = c.splits[h * (T + 1) + t]
    c1 = c.splits[h * (T + 1) + t + 1]
    dflat = c.dout
    if c1 > c0:
        for i in range(c0, c1):
            for j in range(n_o):
                c.woT[j * n_h + i] = net.params[wo + i * n_o + j]
        la = c.lda[h]
        gemm_tiles(Bc, c1 - c0, n_o, dflat, 0, n_o, 1, c.woT, c0, n_h, c.deltas, c.a_off[h] + c0, la, DACT, c.acts,
                   c.a_off[h] + c0, la, coef, kind)
        gemm_tiles(c1 - c0, n_o, Bc, c.acts, c.a_off[h] + c0, 1, la, dflat, 0, n_o, net.params, wo + c0 * n_o, n_o,
                   ACC, net.params, 0, 0, coef, LINEAR)
    if t == T - 1:
        bias_cols(net.params, bo, dflat, 0, n_o, 0, n_o, Bc, coef)


@njit(**JIT)
def backward_partial(net, c, l, Bc, t, T, coef):
    """Layer l >= 1, worker t's columns: its part of dA_{l-1}^T into pt (from the weights before
    their update), then the update of its weight block and biases. A barrier must follow
    before reduce_deltas."""
    c0 = c.splits[l * (T + 1) + t]
    c1 = c.splits[l * (T + 1) + t + 1]
    if c1 <= c0:
        return
    n_in, la, lp = c.sizes[l], c.lda[l], c.lda[l - 1]
    w_off, w_ld = c.wp_off[l * T + t], c.wp_ld[l * T + t]
    bp = c.bp
    dto = t * c.dt_size
    for j in range(c0, c1):
        for s in range(Bc):
            c.dt[dto + (j - c0) * bp + s] = c.deltas[c.a_off[l] + s * la + j]
    gemm_tiles(n_in, Bc, c1 - c0, c.wp, w_off, w_ld, 1, c.dt, dto, bp, c.pt, c.pt_off[l * T + t], bp, STORE, c.pt, 0,
               0, coef, LINEAR)
    gemm_tiles(n_in, c1 - c0, Bc, c.acts, c.a_off[l - 1], 1, lp, c.deltas, c.a_off[l] + c0, la, c.wp, w_off, w_ld,
               ACC, net.params, 0, 0, coef, LINEAR)
    bias_cols(net.params, net.layout[l, 1], c.deltas, c.a_off[l], la, c0, c1, Bc, coef)


@njit(**JIT)
def reduce_deltas(c, l, Bc, t, T, kind):
    """D_{l-1}[:, c'] for worker t's columns c' of hidden layer l-1: the workers' partials summed
    (in worker order), times the activation derivative."""
    c0 = c.splits[(l - 1) * (T + 1) + t]
    c1 = c.splits[(l - 1) * (T + 1) + t + 1]
    n = c.lda[l - 1]
    bp = c.bp
    o = c.a_off[l - 1]
    p0 = c.pt_off[l * T]
    for j in range(c0, c1):
        q = p0 + j * bp
        for s in range(Bc):
            v = ld(c.pt, q + s)
            for u in range(1, T):
                v += ld(c.pt, c.pt_off[l * T + u] + j * bp + s)
            r = o + s * n + j
            c.deltas[r] = dact(v, ld(c.acts, r), kind)


@njit(**JIT)
def update_first(net, data, c, Bc, t, xo, coef):
    """W_0[:, c0:c1] += coef X^T D_0[:, c0:c1] and its biases, for worker t's columns (sparse
    input: each block of 4 weight rows summing over the samples in which any of its pixels is
    non-zero; rows zero in every sample are not touched)."""
    c0 = c.splits[t]
    c1 = c.splits[t + 1]
    if c1 <= c0:
        return
    n_in, la = c.sizes[0], c.lda[0]
    w_off, w_ld = c.wp_off[t], c.wp_ld[t]
    if data.csr_ptr.shape[0] > 0:
        _, _, kl_u, kn_u = worker_lists(c, t, n_in)
        gemm_klist(n_in, c1 - c0, kl_u, c.zo.shape[0] // c.sizes[c.sizes.shape[0] - 1], kn_u, c.xbuf, xo, 1, n_in,
                   c.deltas, c.a_off[0] + c0, la, c.wp, w_off, w_ld, ACC, net.params, 0, 0, coef, LINEAR)
    else:
        gemm_tiles(n_in, c1 - c0, Bc, c.xbuf, xo, 1, n_in, c.deltas, c.a_off[0] + c0, la, c.wp, w_off, w_ld,
                   ACC, net.params, 0, 0, coef, LINEAR)
    bias_cols(net.params, net.layout[0, 1], c.deltas, c.a_off[0], la, c0, c1, Bc, coef)


@njit(**JIT)
def copy_weights(net, c, t, T, back):
    """Worker t's slices of the hidden layers' weights: from the parameters into its block of wp
    (back=False), or back (back=True)."""
    for h in range(c.splits.shape[0] // (T + 1)):
        c0 = c.splits[h * (T + 1) + t]
        c1 = c.splits[h * (T + 1) + t + 1]
        n_out = c.sizes[h + 1]
        w, o, ld_ = net.layout[h, 0] + c0, c.wp_off[h * T + t], c.wp_ld[h * T + t]
        for i in range(c.sizes[h]):
            if back:
                net.params[w + i * n_out:w + i * n_out + c1 - c0] = c.wp[o + i * ld_:o + i * ld_ + c1 - c0]
            else:
                c.wp[o + i * ld_:o + i * ld_ + c1 - c0] = net.params[w + i * n_out:w + i * n_out + c1 - c0]


@njit(**JIT)
def gather_share(data, c, rows, t, T, xo):
    """Worker t's share of the dense rows X[rows] (scaled like the reference) into xbuf at xo."""
    B = rows.shape[0]
    n_in = c.sizes[0]
    s0 = B * t // T
    s1 = B * (t + 1) // T
    if s1 > s0:
        gather_dense(data.X, view1d(rows, s0, s1 - s0), data.x_scale, view2d(c.xbuf, xo + s0 * n_in, s1 - s0, n_in))


@njit(parallel=True, **JIT)
def train_epoch_cols(net, data, order, lrs, batch_size, c, losses, corrects):
    """Plain-SGD epoch on len(losses) workers in ONE parallel region (see the module docstring).
    Worker t's loss sum and correct count go to losses[t], corrects[t]. Needs a prange whose
    iterations run one per OpenMP thread (numba_kernels.team_probe) when len(losses) > 1."""
    T = losses.shape[0]
    n = order.shape[0]
    n_steps = (n + batch_size - 1) // batch_size
    f = net.params.dtype.type
    for t in prange(T):  # borrowed views made inside: a parfor cannot take namedtuples built outside it
        bnet = borrowed_net(net)
        bdata = borrowed_data(data)
        bc = borrowed_cols(c)
        border = borrow(order)
        L = bnet.layout.shape[0]
        hidden = bnet.kinds[0]
        step_in = batch_size * bc.sizes[0]  # one step's rows in xbuf
        ls = 0.0
        cor = 0
        copy_weights(bnet, bc, t, T, False)
        gather_share(bdata, bc, view1d(border, 0, min(n, batch_size)), t, T, 0)
        team_barrier(T)
        for k in range(n_steps):
            start = k * batch_size
            Bc = min(n, start + batch_size) - start
            rows = view1d(border, start, Bc)
            coef = -(f(lrs[k]) / f(Bc))
            xo = (k % 2) * step_in
            forward_first(bnet, bdata, bc, rows, Bc, t, xo, hidden)
            team_barrier(T)
            if k + 1 < n_steps:  # the next step's rows, into the other buffer
                nB = min(n, start + 2 * batch_size) - start - Bc
                gather_share(bdata, bc, view1d(border, start + Bc, nB), t, T, ((k + 1) % 2) * step_in)
            for h in range(1, L - 1):
                forward_hidden(bnet, bc, h, Bc, t, T, hidden)
                team_barrier(T)
            a, b = output_rows(bnet, bdata, bc, rows, Bc * t // T, Bc * (t + 1) // T)
            ls += a
            cor += b
            team_barrier(T)
            backward_top(bnet, bc, Bc, t, T, coef, hidden)
            for l in range(L - 2, 0, -1):
                backward_partial(bnet, bc, l, Bc, t, T, coef)
                team_barrier(T)
                reduce_deltas(bc, l, Bc, t, T, hidden)
            update_first(bnet, bdata, bc, Bc, t, xo, coef)
        copy_weights(bnet, bc, t, T, True)
        losses[t] = ls
        corrects[t] = cor


# ---- Python side: when it applies, and its buffers --------------------------------------------
def column_splits(sizes, T):
    """(H, T + 1) int64, flat: worker t's columns of hidden layer h are [splits[h, t],
    splits[h, t + 1]), whole 16-column blocks. Fixed by the shapes alone: the split decides
    how each layer's input deltas are summed, so a split that followed the weights' address
    (to keep two workers off one cache line) made results differ between runs."""
    H = len(sizes) - 2
    out = np.zeros((H, T + 1), dtype=np.int64)
    for h in range(H):
        n = int(sizes[h + 1])
        nb = (n + VL - 1) // VL
        for t in range(1, T + 1):
            out[h, t] = min(n, VL * (nb * t // T))
    return out.reshape(-1)


def padded(n):
    """The leading dimension for rows of n floats: the least odd multiple of 16 >= n, so rows
    spread over all of L1's sets (a power-of-two stride maps them onto a few)."""
    m = max(1, -(-int(n) // VL))
    return VL * (m + 1 - m % 2)


def make_cols(net, bmax, T, csr):
    """Cols buffers for minibatches of up to bmax rows on T workers (csr: the backend's CSR of
    uint8 input when it is sparse enough to skip zeros; empty arrays for the dense path)."""
    sizes = np.asarray(net.sizes, dtype=np.int64)
    L = len(sizes) - 1
    H = L - 1
    dtype = net.dtype
    bmax, T = int(bmax), int(T)
    lda = np.array([padded(n) for n in sizes[1:L]], dtype=np.int64)
    a_off = np.concatenate([[0], np.cumsum(lda * bmax)]).astype(np.int64)
    splits = column_splits(sizes, T)
    widths = np.diff(splits.reshape(H, T + 1), axis=1).reshape(-1)
    wp_ld = np.array([padded(w) for w in widths], dtype=np.int64)
    wp_size = wp_ld * np.repeat(sizes[:H], T)
    wp_off = np.concatenate([[0], np.cumsum(wp_size)[:-1]]).astype(np.int64)
    bp = padded(bmax)
    widest = int(max(widths.max(), 1))
    pt_off = np.zeros(L * T, dtype=np.int64)
    total = 0
    for l in range(1, L - 1):
        for t in range(T):
            pt_off[l * T + t] = total
            total += int(sizes[l]) * bp
    sparse = csr[0].shape[0] > 0
    nbf, nbu = (bmax + 3) // 4, (int(sizes[0]) + 3) // 4
    lists = (nbf * int(sizes[0]), nbf, nbu * bmax, nbu) if sparse else (0, 0, 0, 0)
    n_o = int(sizes[-1])
    return Cols(np.zeros(int(a_off[-1]), dtype=dtype), np.zeros(int(a_off[-1]), dtype=dtype), a_off, lda, sizes,
                np.zeros(bmax * n_o, dtype=dtype), np.zeros(bmax * n_o, dtype=dtype), np.zeros(bmax * n_o, dtype=dtype),
                np.zeros(n_o * int(sizes[L - 1]), dtype=dtype), np.zeros(T * widest * bp, dtype=dtype), widest * bp, bp,
                np.zeros(max(total, 1), dtype=dtype), pt_off,
                np.zeros(2 * bmax * int(sizes[0]), dtype=dtype), splits,
                *(np.zeros(T * size, dtype=np.int32) for size in lists),
                np.zeros(max(int(wp_size.sum()), 1), dtype=dtype), wp_off, wp_ld)
