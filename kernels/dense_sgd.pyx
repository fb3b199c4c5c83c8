# cython: language_level=3
"""Compiled kernels of the Cython backend: fused dense forward/backward and whole-epoch SGD.

Everything here works on raw pointers into buffers that `fastgd.backends.cython_backend`
allocated and validated; nothing below checks shapes, so the entry points (`train_epoch`,
`loss_and_grad`, `forward`, `build_csr`) are only called from that module.

Padded layout. The backend copies the network's parameters into a working buffer in which
every layer's output width is rounded up to a multiple of VL (16) with zero columns: layer l
holds W_l (n_in x pad) then b_l (pad). Every inner loop then runs over whole blocks of 16
lanes with a compile-time trip count, which gcc turns into AVX-512/AVX2 registers, and odd
widths need no tail code. Padded columns stay zero: their deltas are never written (zero from
allocation), so their weight updates add exactly 0.

Per-layer table `lay` (int64, n_layers x LAY_COLS): w_off, b_off, n_in, n_out, pad, act_off
(offset of the layer's (batch x pad) output block in the activation and delta scratch),
blas (1: this layer calls sgemm/dgemm).

One minibatch is two phases: `minibatch_forward_backward` (forward, loss, all deltas with the
pre-update weights, for a range of the minibatch's samples) and `apply_step` (the update for a
range of weight rows: plain SGD fused into the gradient pass, or gradient then the recipe's
optimiser). `train_epoch` runs the phases for every minibatch serially, split across threads
with a barrier after each phase ("sync", deterministic), or one whole minibatch per thread
("hogwild").
"""
cimport cython
from cython.parallel cimport parallel
from libc.math cimport exp, log, logf, log1p, tanh, fabs, sqrt, pow
from libc.string cimport memcpy
from libc.stdint cimport int64_t, int32_t, uint8_t, uint16_t
from scipy.linalg.cython_blas cimport sgemm, dgemm

import numpy as np

cdef extern from "fastgd_simd.h":
    int FGD_DEBUG_BUILD
    int fgd_thread_num() noexcept nogil
    int fgd_num_threads() noexcept nogil
    void fgd_barrier() noexcept nogil
    float fgd_expf(float x) noexcept nogil
    double fgd_uniform(unsigned long long seed, unsigned long long pos,
                       unsigned long long unit) noexcept nogil
    void fgd_shift(unsigned long long seed, unsigned long long pos, long long k, long long* dx,
                   long long* dy) noexcept nogil
    void fgd_prefetch(const void* p, long nbytes) noexcept nogil
    void fgd_axpy16f(float* t, float x, const float* d) noexcept nogil
    void fgd_axpy16d(double* t, double x, const double* d) noexcept nogil
    void fgd_sparse_forward16f(const uint16_t* idx, const uint8_t* val, long nnz, const float* lut,
                               const float* W, const float* b, float* z) noexcept nogil
    void fgd_sparse_forward16d(const uint16_t* idx, const uint8_t* val, long nnz, const double* lut,
                               const double* W, const double* b, double* z) noexcept nogil
    void fgd_sparse_update16f(const uint16_t* idx, const uint8_t* val, long nnz, const float* lut,
                              const float* d, long i0, long i1, float* Tw) noexcept nogil
    void fgd_sparse_update16d(const uint16_t* idx, const uint8_t* val, long nnz, const double* lut,
                              const double* d, long i0, long i1, double* Tw) noexcept nogil

include "ops_codes.pxi"

ctypedef fused floating:
    float
    double

cdef enum:
    VL = 16            # lanes per column block: one AVX-512 float32 register (range
                       # steps below are written as the literal 16: Cython needs a literal)
    LAY_COLS = 7
    L_W = 0
    L_B = 1
    L_NIN = 2
    L_NOUT = 3
    L_PAD = 4
    L_ACT = 5
    L_BLAS = 6
    # scratch table `soff`: offsets of the per-thread blocks
    S_XBUF = 0
    S_ACTS = 1
    S_DELTAS = 2
    S_ZOUT = 3
    S_INP = 4          # dropout: masked hidden activations (the next layer's input)
    S_MASK = 5         # dropout: the multipliers (0 or 1/(1 - rate))
    S_SIZE = 6
    # optimiser kinds (fastgd.backends.base.OPTIMIZER_CODES; checked at import by cython_backend)
    OPT_SGD = 0
    OPT_ADAM = 1
    OPT_ADAMW = 2
    # epoch modes
    MODE_SERIAL = 0
    MODE_SYNC = 1
    MODE_HOGWILD = 2
    # hidden deltas of a layer with n_in x pad <= WT_MAX go through its transposed weights
    # (a stack buffer of WT_MAX values: 16 KB in float32)
    WT_MAX = 4096
    # prefetch distances, in samples: row data, and (further ahead) CSR row pointers
    ROWS_AHEAD = 20
    PTR_AHEAD = 40

# ACT_CODES, LOSS_CODES, LEAKY_SLOPE: the codes this module was compiled with, from ops_codes.pxi;
# cython_backend checks at import that they still equal fastgd.ops's (a stale build fails loudly).
DEBUG_BUILD = bool(FGD_DEBUG_BUILD)  # built with FASTGD_DEBUG_BUILD=1 (bounds checks on)
LANES = VL
LAYOUT_COLUMNS = LAY_COLS
SCRATCH_FIELDS = S_SIZE + 1
MODES = {"serial": MODE_SERIAL, "sync": MODE_SYNC, "hogwild": MODE_HOGWILD}
OPTIMIZER_CODES = {"sgd": OPT_SGD, "adam": OPT_ADAM, "adamw": OPT_ADAMW}


# ---- what one call sees: network, input, targets (plain C, shared by all threads) ------------
cdef struct Ctx:
    int n_layers
    int hidden_act
    int out_act
    int loss
    const int64_t* lay
    const uint8_t* xu8          # uint8 input rows, or NULL
    const void* xf              # floating input rows, or NULL
    int64_t n_in
    int64_t x_itemsize          # bytes per element of xf
    double x_scale
    const int64_t* csr_ptr      # non-zero pixels per row (sparse uint8 path), or NULL
    const uint16_t* csr_idx
    const uint8_t* csr_val
    const void* lut             # 256 floating: lut[v] = (floating)v * x_scale
    const void* targets         # (n, n_out) floating, or NULL (inference)
    int64_t n_out
    const int32_t* labels
    const int64_t* soff
    double dropout              # rate; 0: off
    double drop_scale           # 1 / (1 - rate)
    unsigned long long drop_seed  # the epoch's seed for dropout masks and shifts
    int64_t shift               # max image shift in pixels; 0: off (dense input path only)
    int64_t img_rows
    int64_t img_cols
    int64_t first_position      # epoch position of order[0] (keys dropout and shifts)


cdef struct Rule:
    # the optimiser step (base.StepRule; formulas in fastgd/backends/base.py)
    int kind                    # OPT_SGD | OPT_ADAM | OPT_ADAMW
    double momentum
    bint nesterov
    double weight_decay         # sgd/adam: in the gradient; adamw: decoupled. Weights only.
    double l1
    double beta1
    double beta2
    double eps
    int64_t step                # steps already taken: the call's k-th step is step + k + 1
    void* grad                  # padded gradient accumulator (zeros between steps), or NULL
    void* state1                # padded velocity (sgd) or first moment m (adam), or NULL
    void* state2                # padded second moment v (adam), or NULL


# ---- elementwise pieces ----------------------------------------------------------------------
cdef inline floating f_exp(floating x) noexcept nogil:
    if floating is float:
        return fgd_expf(x)
    else:
        return exp(x)


cdef inline void activation_forward(floating* z, int64_t n, int kind) noexcept nogil:
    """a = f(z) in place over n lanes (hidden and sigmoid/linear outputs; not softmax)."""
    cdef int64_t j
    if kind == ACT_SIGMOID:
        for j in range(n):
            z[j] = (<floating>1) / ((<floating>1) + f_exp(-z[j]))
    elif kind == ACT_RELU:
        for j in range(n):
            z[j] = z[j] if z[j] > 0 else <floating>0
    elif kind == ACT_TANH:
        for j in range(n):
            z[j] = tanh(z[j])
    elif kind == ACT_LEAKY_RELU:
        for j in range(n):
            z[j] = z[j] if z[j] > 0 else z[j] * <floating>FGD_LEAKY_SLOPE


cdef inline void activation_backward_row(const floating* a, floating* d, int64_t n,
                                         int kind) noexcept nogil:
    """d = dL/dz in place from dL/da (in d) and the activation's output a, over n lanes; one
    loop per kind so each vectorises."""
    cdef int64_t i
    if kind == ACT_SIGMOID:
        for i in range(n):
            d[i] = d[i] * a[i] * ((<floating>1) - a[i])
    elif kind == ACT_RELU:
        for i in range(n):
            d[i] = d[i] if a[i] > 0 else <floating>0
    elif kind == ACT_TANH:
        for i in range(n):
            d[i] = d[i] * ((<floating>1) - a[i] * a[i])
    elif kind == ACT_LEAKY_RELU:  # a > 0 exactly where z > 0 (the slope is positive)
        for i in range(n):
            d[i] = d[i] if a[i] > 0 else d[i] * <floating>FGD_LEAKY_SLOPE


cdef inline floating softplus(floating z) noexcept nogil:
    """log(1 + exp(z)) without overflow, as numpy.logaddexp(0, z)."""
    return (z if z > 0 else <floating>0) + log1p(exp(-fabs(z)))


# ---- dense layer forward: Z = act(A @ W + b), blocked over 4 rows x 16 columns --------------
cdef void dense_forward(const floating* A, int64_t lda, int64_t n_in, int64_t r0, int64_t r1,
                        const floating* W, const floating* b, int64_t pad, floating* Z,
                        int act) noexcept nogil:
    """Rows r0..r1 of Z (row stride pad) = act(A[r] @ W + b). Each row sums its even and odd
    inputs in two chains (bias starts the even one); 4 rows share each W load, so 8 FMA
    chains are in flight. Bias and activation are applied to each finished 16-lane block while
    it is still in registers. Every row, grouped or leftover, uses the same two chains, so its
    value does not depend on how rows were grouped (threads split rows)."""
    cdef floating e0[VL]
    cdef floating e1[VL]
    cdef floating e2[VL]
    cdef floating e3[VL]
    cdef floating o0[VL]
    cdef floating o1[VL]
    cdef floating o2[VL]
    cdef floating o3[VL]
    cdef const floating* w
    cdef const floating* v
    cdef const floating* a0
    cdef const floating* a1
    cdef const floating* a2
    cdef const floating* a3
    cdef floating* z
    cdef int64_t r, i, jb, jj, n_even = n_in - n_in % 2
    for jb in range(0, pad, 16):
        r = r0
        while r + 4 <= r1:
            a0 = A + r * lda
            a1 = a0 + lda
            a2 = a1 + lda
            a3 = a2 + lda
            for jj in range(VL):
                e0[jj] = b[jb + jj]
                e1[jj] = b[jb + jj]
                e2[jj] = b[jb + jj]
                e3[jj] = b[jb + jj]
                o0[jj] = 0
                o1[jj] = 0
                o2[jj] = 0
                o3[jj] = 0
            for i in range(0, n_even, 2):
                w = W + i * pad + jb
                v = w + pad
                for jj in range(VL):
                    e0[jj] += a0[i] * w[jj]
                    e1[jj] += a1[i] * w[jj]
                    e2[jj] += a2[i] * w[jj]
                    e3[jj] += a3[i] * w[jj]
                    o0[jj] += a0[i + 1] * v[jj]
                    o1[jj] += a1[i + 1] * v[jj]
                    o2[jj] += a2[i + 1] * v[jj]
                    o3[jj] += a3[i + 1] * v[jj]
            if n_even < n_in:
                w = W + n_even * pad + jb
                for jj in range(VL):
                    e0[jj] += a0[n_even] * w[jj]
                    e1[jj] += a1[n_even] * w[jj]
                    e2[jj] += a2[n_even] * w[jj]
                    e3[jj] += a3[n_even] * w[jj]
            for jj in range(VL):
                e0[jj] = e0[jj] + o0[jj]
                e1[jj] = e1[jj] + o1[jj]
                e2[jj] = e2[jj] + o2[jj]
                e3[jj] = e3[jj] + o3[jj]
            activation_forward(e0, VL, act)
            activation_forward(e1, VL, act)
            activation_forward(e2, VL, act)
            activation_forward(e3, VL, act)
            z = Z + r * pad + jb
            for jj in range(VL):
                z[jj] = e0[jj]
                z[pad + jj] = e1[jj]
                z[2 * pad + jj] = e2[jj]
                z[3 * pad + jj] = e3[jj]
            r += 4
        while r < r1:  # leftover rows: the same two chains per row as above
            a0 = A + r * lda
            for jj in range(VL):
                e0[jj] = b[jb + jj]
                o0[jj] = 0
            for i in range(0, n_even, 2):
                w = W + i * pad + jb
                v = w + pad
                for jj in range(VL):
                    e0[jj] += a0[i] * w[jj]
                    o0[jj] += a0[i + 1] * v[jj]
            if n_even < n_in:
                w = W + n_even * pad + jb
                for jj in range(VL):
                    e0[jj] += a0[n_even] * w[jj]
            for jj in range(VL):
                e0[jj] = e0[jj] + o0[jj]
            activation_forward(e0, VL, act)
            z = Z + r * pad + jb
            for jj in range(VL):
                z[jj] = e0[jj]
            r += 1


cdef inline void sparse_forward_row(const uint16_t* idx, const uint8_t* val, int64_t nnz,
                                    const floating* lut, const floating* W, const floating* b,
                                    int64_t pad, floating* z, int act) noexcept nogil:
    """One input row given by its non-zero pixels: z = act(sum_k x_k W[idx_k] + b), with
    x = lut[pixel] (the scaled value, exactly as the reference computes it). Four accumulators
    keep four FMA chains in flight (one chain would stall on FMA latency). Inline, so the call
    with pad == 16 compiles to constant strides."""
    cdef floating acc0[VL]
    cdef floating acc1[VL]
    cdef floating acc2[VL]
    cdef floating acc3[VL]
    cdef floating x0, x1, x2, x3
    cdef const floating* w0
    cdef const floating* w1
    cdef const floating* w2
    cdef const floating* w3
    cdef int64_t k, jb, jj
    for jb in range(0, pad, 16):
        for jj in range(VL):
            acc0[jj] = b[jb + jj]
            acc1[jj] = 0
            acc2[jj] = 0
            acc3[jj] = 0
        k = 0
        while k + 4 <= nnz:
            x0 = lut[val[k]]
            x1 = lut[val[k + 1]]
            x2 = lut[val[k + 2]]
            x3 = lut[val[k + 3]]
            w0 = W + <int64_t>idx[k] * pad + jb
            w1 = W + <int64_t>idx[k + 1] * pad + jb
            w2 = W + <int64_t>idx[k + 2] * pad + jb
            w3 = W + <int64_t>idx[k + 3] * pad + jb
            for jj in range(VL):
                acc0[jj] += x0 * w0[jj]
                acc1[jj] += x1 * w1[jj]
                acc2[jj] += x2 * w2[jj]
                acc3[jj] += x3 * w3[jj]
            k += 4
        while k < nnz:
            x0 = lut[val[k]]
            w0 = W + <int64_t>idx[k] * pad + jb
            for jj in range(VL):
                acc0[jj] += x0 * w0[jj]
            k += 1
        for jj in range(VL):
            acc0[jj] = (acc0[jj] + acc1[jj]) + (acc2[jj] + acc3[jj])
        activation_forward(acc0, VL, act)
        for jj in range(VL):
            z[jb + jj] = acc0[jj]


cdef inline void sparse_update_row(const uint16_t* idx, const uint8_t* val, int64_t nnz,
                                   const floating* lut, floating coef, const floating* d,
                                   int64_t pad, int64_t i0, int64_t i1,
                                   floating* Tw) noexcept nogil:
    """Tw[idx_k] += coef x_k d for the row's non-zero pixels with i0 <= idx_k < i1 (indices
    ascend). Inline, so the call with pad == 16 compiles to constant strides."""
    cdef int64_t k, k0 = 0, jb, jj
    cdef floating x
    cdef floating* t
    cdef floating dv[VL]  # the delta block, loaded once for all the row's pixels
    while k0 < nnz and idx[k0] < i0:
        k0 += 1
    for jb in range(0, pad, 16):
        for jj in range(VL):
            dv[jj] = d[jb + jj]
        k = k0
        while k < nnz and idx[k] < i1:
            x = coef * lut[val[k]]
            t = Tw + <int64_t>idx[k] * pad + jb
            if floating is float:
                fgd_axpy16f(t, x, dv)
            else:
                fgd_axpy16d(t, x, dv)
            k += 1


# ---- BLAS (large layers) ---------------------------------------------------------------------
cdef inline void gemm(char* ta, char* tb, int m, int n, int k, floating alpha, const floating* a,
                      int lda, const floating* b, int ldb, floating beta, floating* c,
                      int ldc) noexcept nogil:
    """Column-major C = alpha op(A) op(B) + beta C (row-major callers swap operands)."""
    if floating is float:
        sgemm(ta, tb, &m, &n, &k, &alpha, <float*>a, &lda, <float*>b, &ldb, &beta, c, &ldc)
    else:
        dgemm(ta, tb, &m, &n, &k, &alpha, <double*>a, &lda, <double*>b, &ldb, &beta, c, &ldc)


cdef void blas_forward(const floating* A, int64_t lda, int64_t n_in, int64_t rows,
                       const floating* W, const floating* b, int64_t pad, floating* Z,
                       int act) noexcept nogil:
    """Z (rows x pad) = act(A @ W + b): bias pre-filled so gemm adds onto it (beta = 1), then
    one activation pass over the tile gemm just wrote."""
    cdef int64_t r, j
    for r in range(rows):
        for j in range(pad):
            Z[r * pad + j] = b[j]
    # row-major Z = A W  <=>  column-major Z^T = W^T A^T
    gemm(b"N", b"N", <int>pad, <int>rows, <int>n_in, <floating>1, W, <int>pad, A, <int>lda,
         <floating>1, Z, <int>pad)
    if act != ACT_LINEAR:
        for r in range(rows):
            activation_forward(Z + r * pad, pad, act)


# ---- the output layer: activation, loss, delta, accuracy for one row ------------------------
cdef void output_row(floating* z, floating* a, const floating* t, int64_t n_out, int out_act,
                     int loss, floating* d, double* loss_sum, int64_t* correct,
                     int32_t label) noexcept nogil:
    """z: pre-activation row; writes a, and (when t is not NULL) the delta dL/dz into d, adds the
    row's loss to loss_sum and 1 to correct when argmax(a) == label."""
    cdef int64_t j, jj, best
    cdef floating m, s, e, l, top, dot
    cdef floating ev[VL]
    cdef floating sv[VL]
    if out_act == ACT_SOFTMAX:
        m = z[0]
        for j in range(1, n_out):
            if z[j] > m:
                m = z[j]
        if floating is float and n_out <= VL:
            # one 16-lane pass (z, a have >= 16 lanes: the padded row): exp vectorises,
            # lanes >= n_out count 0, and the sum is a tree instead of a 10-add chain
            for jj in range(VL):
                ev[jj] = f_exp(z[jj] - m) if jj < n_out else <floating>0
            for jj in range(8):
                sv[jj] = ev[jj] + ev[jj + 8]
            for jj in range(4):
                sv[jj] = sv[jj] + sv[jj + 4]
            s = (sv[0] + sv[2]) + (sv[1] + sv[3])
            e = (<floating>1) / s
            for jj in range(VL):
                a[jj] = ev[jj] * e
        else:
            s = 0
            for j in range(n_out):
                e = f_exp(z[j] - m)
                a[j] = e
                s += e
            for j in range(n_out):
                a[j] = a[j] / s
    elif out_act == ACT_SIGMOID:
        for j in range(n_out):
            a[j] = (<floating>1) / ((<floating>1) + f_exp(-z[j]))
    else:
        for j in range(n_out):
            a[j] = z[j]
    if t == NULL:
        return
    best = 0
    top = a[0]  # the best value so far, kept in a register (a[best] would be a load per step)
    for j in range(1, n_out):
        if a[j] > top:
            top = a[j]
            best = j
    if best == label:
        correct[0] += 1
    l = 0
    if loss == LOSS_MSE:
        for j in range(n_out):
            l += (a[j] - t[j]) * (a[j] - t[j])
        l = (<floating>0.5) * l
        if out_act == ACT_SOFTMAX:  # softmax Jacobian-vector product
            dot = 0
            for j in range(n_out):
                dot += (a[j] - t[j]) * a[j]
            for j in range(n_out):
                d[j] = a[j] * ((a[j] - t[j]) - dot)
        elif out_act == ACT_SIGMOID:
            for j in range(n_out):
                d[j] = (a[j] - t[j]) * a[j] * ((<floating>1) - a[j])
        else:
            for j in range(n_out):
                d[j] = a[j] - t[j]
    else:
        if out_act == ACT_SOFTMAX:  # log softmax from z: exact even where a underflows
            # s: the softmax's sum of exp(z - m) above; logf in float32 (a double log per
            # sample cost ~1 ms an epoch)
            if floating is float:
                s = logf(s)
            else:
                s = log(s)
            for j in range(n_out):
                l -= t[j] * ((z[j] - m) - s)
        else:  # sigmoid: log a = -softplus(-z), log(1 - a) = -softplus(z)
            for j in range(n_out):
                l += t[j] * softplus(-z[j]) + ((<floating>1) - t[j]) * softplus(z[j])
        for j in range(n_out):
            d[j] = a[j] - t[j]
    loss_sum[0] += l


# ---- input rows of coming minibatches: start fetching them while this one computes --------
cdef void prefetch_input(const Ctx* c, const int64_t* order, int64_t m, int64_t start,
                         int64_t stop) noexcept nogil:
    """Shuffled rows are scattered over tens of MB that the hardware prefetcher cannot predict.
    For the samples order[start:stop] (clipped to m), fetch the row data; for the samples
    PTR_AHEAD further on, fetch only their CSR row pointers, so that reading those pointers
    later (to find the row data) does not stall either."""
    cdef int64_t s, row, k0, k1, ahead
    if stop > m:
        stop = m
    for s in range(start, stop):
        row = order[s]
        if c.csr_ptr != NULL:
            k0 = c.csr_ptr[row]
            k1 = c.csr_ptr[row + 1]
            fgd_prefetch(c.csr_idx + k0, (k1 - k0) * 2)
            fgd_prefetch(c.csr_val + k0, k1 - k0)
            ahead = s + PTR_AHEAD
            if ahead < m:
                fgd_prefetch(c.csr_ptr + order[ahead], 16)
        elif c.xu8 != NULL:
            fgd_prefetch(c.xu8 + row * c.n_in, c.n_in)
        else:
            fgd_prefetch(<const char*>c.xf + row * c.n_in * c.x_itemsize, c.n_in * c.x_itemsize)
        if c.targets != NULL:  # the row's targets and label are scattered too
            fgd_prefetch(<const char*>c.targets + row * c.n_out * c.x_itemsize,
                         c.n_out * c.x_itemsize)
            fgd_prefetch(c.labels + row, 4)


# ---- image shifts (augmentation): out[r, c] = in[r - dy, c - dx], zeros elsewhere -----------
cdef void shifted_row(const Ctx* c, int64_t row, int64_t pos, const floating* lut,
                      floating* out) noexcept nogil:
    """The input row `row`, scaled, moved by the shift of epoch position `pos` (as
    fastgd._random.shift_images), into out (n_in values)."""
    cdef long long dx, dy
    cdef int64_t r, col, rows = c.img_rows, cols = c.img_cols
    cdef int64_t r_lo, r_hi, c_lo, c_hi
    cdef const uint8_t* su8
    cdef const floating* sf
    fgd_shift(c.drop_seed, <unsigned long long>pos, c.shift, &dx, &dy)
    for r in range(rows * cols):
        out[r] = 0
    r_lo = dy if dy > 0 else 0
    r_hi = rows + dy if dy < 0 else rows
    c_lo = dx if dx > 0 else 0
    c_hi = cols + dx if dx < 0 else cols
    if c.xu8 != NULL:
        su8 = c.xu8 + row * c.n_in
        for r in range(r_lo, r_hi):
            for col in range(c_lo, c_hi):
                out[r * cols + col] = lut[su8[(r - dy) * cols + col - dx]]
    else:
        sf = <const floating*>c.xf + row * c.n_in
        for r in range(r_lo, r_hi):
            for col in range(c_lo, c_hi):
                out[r * cols + col] = sf[(r - dy) * cols + col - dx]


# ---- one minibatch, phase A: forward, loss, deltas for samples s0..s1 ------------------------
# Scratch S of one minibatch of B samples (offsets in Ctx.soff; pad_l = layer l's padded width):
#   xbuf   (B, n_in)       the gathered input rows (dense input path)
#   acts   (B, pad_l)      per layer l: its activations (the output layer's block holds a)
#   deltas (B, pad_l)      per layer l: dL/dz_l
#   zout   (B, pad_last)   the output layer's pre-activations z
#   inp    (B, pad_l)      dropout: the masked hidden activations the next layer reads
#   mask   (B, pad_l)      dropout: 0 or 1/(1 - rate) per unit
cdef void network_forward(const Ctx* c, const floating* P, floating* S, const int64_t* rows,
                          int64_t first_row, int64_t s0, int64_t s1, bint training,
                          int64_t pos0) noexcept nogil:
    """acts/zout of samples s0..s1 (sample s is input row rows[s], or first_row + s when rows is
    NULL) with the current weights P: every layer's z = x W + b, hidden activations applied in
    the same pass (the output activation is output_delta's). When training with dropout, sample
    s sits at epoch position pos0 + s, which keys its masks."""
    cdef const int64_t* lay = c.lay
    cdef int L = c.n_layers
    cdef int l, act
    cdef int64_t s, row, i, k0, k1, n_in, pad, n_out, lda
    cdef floating scale = <floating>c.x_scale
    cdef const floating* lut = <const floating*>c.lut
    cdef floating* xbuf = S + c.soff[S_XBUF]
    cdef floating* acts = S + c.soff[S_ACTS]
    cdef floating* zout = S + c.soff[S_ZOUT]
    cdef floating* inp = S + c.soff[S_INP]
    cdef floating* mask = S + c.soff[S_MASK]
    cdef floating* hidden_in = inp if c.dropout > 0 else acts  # what the next layer reads
    cdef int64_t first_unit = 0
    cdef floating m
    cdef const floating* A
    cdef const floating* W
    cdef const floating* xf = <const floating*>c.xf
    cdef floating* Z
    cdef const uint8_t* src
    cdef bint blas
    cdef bint deltas = training

    for l in range(L):
        n_in = lay[l * LAY_COLS + L_NIN]
        pad = lay[l * LAY_COLS + L_PAD]
        W = P + lay[l * LAY_COLS + L_W]
        blas = lay[l * LAY_COLS + L_BLAS] != 0
        act = c.hidden_act if l < L - 1 else ACT_LINEAR  # the output activation comes below
        Z = zout if l == L - 1 else acts + lay[l * LAY_COLS + L_ACT]
        if l == 0:
            if c.csr_ptr != NULL:  # sparse uint8 rows: touch only the non-zero pixels' W rows
                for s in range(s0, s1):
                    row = rows[s] if rows != NULL else first_row + s
                    k0 = c.csr_ptr[row]
                    k1 = c.csr_ptr[row + 1]
                    if pad == VL:
                        if floating is float:
                            fgd_sparse_forward16f(c.csr_idx + k0, c.csr_val + k0, k1 - k0, lut,
                                                  W, W + n_in * VL, Z + s * VL)
                        else:
                            fgd_sparse_forward16d(c.csr_idx + k0, c.csr_val + k0, k1 - k0, lut,
                                                  W, W + n_in * VL, Z + s * VL)
                        activation_forward(Z + s * VL, VL, act)
                    else:
                        sparse_forward_row(c.csr_idx + k0, c.csr_val + k0, k1 - k0, lut, W,
                                           W + n_in * pad, pad, Z + s * pad, act)
            else:
                # dense input: gather the minibatch rows (uint8 scaled on the fly) into xbuf
                for s in range(s0, s1):
                    row = rows[s] if rows != NULL else first_row + s
                    if c.shift > 0:
                        shifted_row(c, row, pos0 + s, lut, xbuf + s * n_in)
                    elif c.xu8 != NULL:
                        src = c.xu8 + row * n_in
                        for i in range(n_in):
                            xbuf[s * n_in + i] = (<floating>src[i]) * scale
                    else:
                        for i in range(n_in):
                            xbuf[s * n_in + i] = xf[row * n_in + i]
                A = xbuf
                lda = n_in
        else:
            A = hidden_in + lay[(l - 1) * LAY_COLS + L_ACT]
            lda = lay[(l - 1) * LAY_COLS + L_PAD]
        if l > 0 or c.csr_ptr == NULL:
            if blas:
                blas_forward(A + s0 * lda, lda, n_in, s1 - s0, W, W + n_in * pad, pad,
                             Z + s0 * pad, act)
            else:
                dense_forward(A, lda, n_in, s0, s1, W, W + n_in * pad, pad, Z, act)
        if c.dropout > 0 and l < L - 1 and deltas:
            # inverted dropout: keep unit i of the sample at position p when its uniform number
            # is >= rate (fastgd._random), scaling kept units by 1/(1 - rate)
            n_out = lay[l * LAY_COLS + L_NOUT]
            for s in range(s0, s1):
                for i in range(n_out):
                    m = <floating>c.drop_scale if fgd_uniform(
                        c.drop_seed, <unsigned long long>(pos0 + s),
                        <unsigned long long>(first_unit + i)) >= c.dropout else <floating>0
                    mask[lay[l * LAY_COLS + L_ACT] + s * pad + i] = m
                    inp[lay[l * LAY_COLS + L_ACT] + s * pad + i] = Z[s * pad + i] * m
            first_unit += n_out



cdef void output_delta(const Ctx* c, floating* S, const int64_t* rows, int64_t first_row,
                       int64_t s0, int64_t s1, bint training, double* loss_sum,
                       int64_t* correct) noexcept nogil:
    """The output layer for samples s0..s1: a = out_act(zout) into its acts block; with targets
    (training, or evaluate), dL/dz into its deltas block, the per-sample loss from the
    pre-activations added to loss_sum and the correct argmax predictions to correct."""
    cdef const int64_t* lay = c.lay
    cdef int L = c.n_layers
    cdef int64_t s, row, n_out, pad
    cdef floating* acts = S + c.soff[S_ACTS]
    cdef floating* dlt = S + c.soff[S_DELTAS]
    cdef floating* zout = S + c.soff[S_ZOUT]
    cdef const floating* tg = <const floating*>c.targets
    cdef floating* Z
    cdef floating* D
    cdef double row_losses = 0  # summed here and added once: threads' slots share a cache line
    cdef int64_t n_correct = 0
    cdef bint deltas = training

    # output layer: activation, loss, delta, accuracy
    n_out = lay[(L - 1) * LAY_COLS + L_NOUT]
    pad = lay[(L - 1) * LAY_COLS + L_PAD]
    Z = acts + lay[(L - 1) * LAY_COLS + L_ACT]
    D = dlt + lay[(L - 1) * LAY_COLS + L_ACT]
    for s in range(s0, s1):
        row = rows[s] if rows != NULL else first_row + s
        output_row(zout + s * pad, Z + s * pad, tg + row * n_out if deltas else NULL, n_out,
                   c.out_act, c.loss, D + s * pad, &row_losses, &n_correct,
                   c.labels[row] if deltas else -1)
    if deltas:
        loss_sum[0] += row_losses
        correct[0] += n_correct


cdef void hidden_deltas(const Ctx* c, const floating* P, floating* S, int64_t s0,
                        int64_t s1) noexcept nogil:
    """deltas of every hidden layer for samples s0..s1, from the output layer's down, with the
    pre-update weights P: D_{l-1} = (D_l W_l^T) * f'(a_{l-1}) (times the dropout mask)."""
    cdef const int64_t* lay = c.lay
    cdef int L = c.n_layers
    cdef int l
    cdef int64_t s, i, jb, jj, n_in, pad, lda
    cdef floating* acts = S + c.soff[S_ACTS]
    cdef floating* dlt = S + c.soff[S_DELTAS]
    cdef floating* mask = S + c.soff[S_MASK]
    cdef const floating* W
    cdef floating* D
    cdef floating* Din
    cdef floating* Ain
    cdef floating* Min
    cdef floating acc[VL]
    cdef floating wt[WT_MAX]  # a small layer's weights, transposed (hidden_deltas_small)

    for l in range(L - 1, 0, -1):
        n_in = lay[l * LAY_COLS + L_NIN]
        pad = lay[l * LAY_COLS + L_PAD]
        W = P + lay[l * LAY_COLS + L_W]
        D = dlt + lay[l * LAY_COLS + L_ACT]
        Din = dlt + lay[(l - 1) * LAY_COLS + L_ACT]
        Ain = acts + lay[(l - 1) * LAY_COLS + L_ACT]
        Min = mask + lay[(l - 1) * LAY_COLS + L_ACT]
        lda = lay[(l - 1) * LAY_COLS + L_PAD]
        if lay[l * LAY_COLS + L_BLAS] != 0:
            # row-major Din = D W^T  <=>  column-major Din^T = W D^T (W^T stored as column-major)
            gemm(b"T", b"N", <int>n_in, <int>(s1 - s0), <int>pad, <floating>1, W, <int>pad,
                 D + s0 * pad, <int>pad, <floating>0, Din + s0 * lda, <int>lda)
            for s in range(s0, s1):
                if c.dropout > 0:  # dropped units pass no gradient back
                    for i in range(n_in):
                        Din[s * lda + i] = Din[s * lda + i] * Min[s * lda + i]
                activation_backward_row(Ain + s * lda, Din + s * lda, n_in, c.hidden_act)
        elif lda * pad <= WT_MAX:
            hidden_deltas_small(D, pad, lay[l * LAY_COLS + L_NOUT], W, n_in, lda, s0, s1, wt, Din)
            for s in range(s0, s1):
                if c.dropout > 0:  # dropped units pass no gradient back
                    for i in range(n_in):
                        Din[s * lda + i] = Din[s * lda + i] * Min[s * lda + i]
                activation_backward_row(Ain + s * lda, Din + s * lda, n_in, c.hidden_act)
        else:
            for s in range(s0, s1):
                for i in range(n_in):
                    for jj in range(VL):
                        acc[jj] = 0
                    for jb in range(0, pad, 16):
                        for jj in range(VL):
                            acc[jj] += D[s * pad + jb + jj] * W[i * pad + jb + jj]
                    # pairwise sum of the 16 lanes: a serial sum is a 16-add latency chain
                    for jj in range(8):
                        acc[jj] = acc[jj] + acc[jj + 8]
                    for jj in range(4):
                        acc[jj] = acc[jj] + acc[jj + 4]
                    Din[s * lda + i] = (acc[0] + acc[2]) + (acc[1] + acc[3])
                if c.dropout > 0:  # dropped units pass no gradient back
                    for i in range(n_in):
                        Din[s * lda + i] = Din[s * lda + i] * Min[s * lda + i]
                activation_backward_row(Ain + s * lda, Din + s * lda, n_in, c.hidden_act)



cdef inline void minibatch_forward_backward(const Ctx* c, const floating* P, floating* S,
                                            const int64_t* rows, int64_t first_row,
                                            int64_t s0, int64_t s1, bint training,
                                            double* loss_sum, int64_t* correct,
                                            int64_t pos0) noexcept nogil:
    """Phase A for samples s0..s1: forward, output delta (loss, accuracy), hidden deltas (only
    when training), all with the pre-update weights P."""
    network_forward(c, P, S, rows, first_row, s0, s1, training, pos0)
    output_delta(c, S, rows, first_row, s0, s1, training or c.targets != NULL, loss_sum, correct)
    if training:
        hidden_deltas(c, P, S, s0, s1)


cdef void hidden_deltas_small(const floating* D, int64_t pad, int64_t n_out, const floating* W,
                              int64_t n_in, int64_t lda, int64_t s0, int64_t s1, floating* wt,
                              floating* Din) noexcept nogil:
    """Din[s, 0:lda] = sum_j D[s, j] W[:, j] for rows s0..s1 (dL/da of the layer's input, before
    the activation derivative), through the transposed weights wt (n_out x lda, zero beyond
    n_in, built here): each sample is then n_out broadcast FMAs on whole 16-lane blocks instead
    of n_in horizontal sums. Even and odd j run in two chains; a row's value does not depend
    on s0..s1 (threads split rows). Padded lanes i >= n_in come out 0."""
    cdef floating e[VL]
    cdef floating o[VL]
    cdef int64_t s, i, j, ib, jj, n_even = n_out - n_out % 2
    cdef const floating* d
    cdef const floating* w0
    cdef const floating* w1
    for j in range(n_out):
        for i in range(n_in):
            wt[j * lda + i] = W[i * pad + j]
        for i in range(n_in, lda):
            wt[j * lda + i] = 0
    for s in range(s0, s1):
        d = D + s * pad
        for ib in range(0, lda, 16):
            for jj in range(VL):
                e[jj] = 0
                o[jj] = 0
            for j in range(0, n_even, 2):
                w0 = wt + j * lda + ib
                w1 = w0 + lda
                for jj in range(VL):
                    e[jj] += d[j] * w0[jj]
                    o[jj] += d[j + 1] * w1[jj]
            if n_even < n_out:
                w0 = wt + n_even * lda + ib
                for jj in range(VL):
                    e[jj] += d[n_even] * w0[jj]
            for jj in range(VL):
                Din[s * lda + ib + jj] = e[jj] + o[jj]


# ---- one minibatch, phase B: apply T += coef * A^T D to weight rows i0..i1 --------------------
cdef void minibatch_update(const Ctx* c, floating* T, const floating* S, const int64_t* rows,
                           int64_t B, floating coef, int part, int parts) noexcept nogil:
    """Adds coef * (sum over the minibatch of input^T delta) to the weights and biases in T
    (coef = -lr/B updates the parameters; coef = 1/B into a zeroed buffer gives the gradient).
    Work is split by weight rows into `parts`; part `part` is done here. Each row sums its
    samples in the same order whatever the split, so the result does not depend on `parts`."""
    cdef const int64_t* lay = c.lay
    cdef int L = c.n_layers
    cdef int l
    cdef int64_t s, row, i, i0, i1, jb, jj, k, k1, n_in, pad, lda
    cdef const floating* lut = <const floating*>c.lut
    cdef const floating* A
    cdef const floating* D
    cdef floating* Tw
    cdef floating* Tb
    cdef floating acc[VL]
    cdef floating scaled[256]  # coef * lut[v]: the sparse update's pixel factors this step
    cdef floating x

    for l in range(L):
        n_in = lay[l * LAY_COLS + L_NIN]
        pad = lay[l * LAY_COLS + L_PAD]
        Tw = T + lay[l * LAY_COLS + L_W]
        Tb = Tw + n_in * pad
        D = S + c.soff[S_DELTAS] + lay[l * LAY_COLS + L_ACT]
        i0 = n_in * part // parts
        i1 = n_in * (part + 1) // parts
        if part == parts - 1:  # biases: one part does them all (pad lanes, tiny)
            for jb in range(0, pad, 16):
                for jj in range(VL):
                    acc[jj] = 0
                for s in range(B):
                    for jj in range(VL):
                        acc[jj] += D[s * pad + jb + jj]
                for jj in range(VL):
                    Tb[jb + jj] += coef * acc[jj]
        if l == 0 and c.csr_ptr != NULL:
            # sparse input: only the rows of non-zero pixels change; samples in order
            if pad == VL:  # the step's coef * pixel value, by value (the same products)
                for k in range(256):
                    scaled[k] = coef * lut[k]
            for s in range(B):
                row = rows[s]
                k = c.csr_ptr[row]
                k1 = c.csr_ptr[row + 1]
                if pad == VL:
                    # i1 = 65536 (above every uint16 index): all of the row's pixels, unchecked
                    if floating is float:
                        fgd_sparse_update16f(c.csr_idx + k, c.csr_val + k, k1 - k, scaled,
                                             D + s * VL, i0, i1 if i1 < n_in else 65536, Tw)
                    else:
                        fgd_sparse_update16d(c.csr_idx + k, c.csr_val + k, k1 - k, scaled,
                                             D + s * VL, i0, i1 if i1 < n_in else 65536, Tw)
                else:
                    sparse_update_row(c.csr_idx + k, c.csr_val + k, k1 - k, lut, coef,
                                      D + s * pad, pad, i0, i1, Tw)
            continue
        if l == 0:
            A = S + c.soff[S_XBUF]
            lda = n_in
        else:
            # the layer's input: the hidden activations, masked when dropout is on
            A = (S + (c.soff[S_INP] if c.dropout > 0 else c.soff[S_ACTS])
                 + lay[(l - 1) * LAY_COLS + L_ACT])
            lda = lay[(l - 1) * LAY_COLS + L_PAD]
        if lay[l * LAY_COLS + L_BLAS] != 0:
            # row-major Tw[i0:i1] += coef A[:, i0:i1]^T D  <=>  column-major Tw^T += coef D^T A
            if i1 > i0:
                gemm(b"N", b"T", <int>pad, <int>(i1 - i0), <int>B, coef, D, <int>pad,
                     A + i0, <int>lda, <floating>1, Tw + i0 * pad, <int>pad)
            continue
        weight_update_rows(A, lda, D, pad, B, i0, i1, coef, Tw)


cdef void weight_update_rows(const floating* A, int64_t lda, const floating* D, int64_t pad,
                             int64_t B, int64_t i0, int64_t i1, floating coef,
                             floating* Tw) noexcept nogil:
    """Tw[i] += coef * sum_s A[s, i] D[s] for rows i0..i1. Each row sums its even and odd
    samples in two chains; four rows share each delta load, so eight FMA chains are in flight
    (the same shape as dense_forward, and likewise independent of how rows are grouped)."""
    cdef floating e0[VL]
    cdef floating e1[VL]
    cdef floating e2[VL]
    cdef floating e3[VL]
    cdef floating o0[VL]
    cdef floating o1[VL]
    cdef floating o2[VL]
    cdef floating o3[VL]
    cdef const floating* d
    cdef const floating* d1
    cdef const floating* a
    cdef const floating* a1
    cdef floating* t
    cdef int64_t i, s, jb, jj, b_even = B - B % 2
    for jb in range(0, pad, 16):
        i = i0
        while i + 4 <= i1:
            for jj in range(VL):
                e0[jj] = 0
                e1[jj] = 0
                e2[jj] = 0
                e3[jj] = 0
                o0[jj] = 0
                o1[jj] = 0
                o2[jj] = 0
                o3[jj] = 0
            for s in range(0, b_even, 2):
                d = D + s * pad + jb
                d1 = d + pad
                a = A + s * lda + i
                a1 = a + lda
                for jj in range(VL):
                    e0[jj] += a[0] * d[jj]
                    e1[jj] += a[1] * d[jj]
                    e2[jj] += a[2] * d[jj]
                    e3[jj] += a[3] * d[jj]
                    o0[jj] += a1[0] * d1[jj]
                    o1[jj] += a1[1] * d1[jj]
                    o2[jj] += a1[2] * d1[jj]
                    o3[jj] += a1[3] * d1[jj]
            if b_even < B:
                d = D + b_even * pad + jb
                a = A + b_even * lda + i
                for jj in range(VL):
                    e0[jj] += a[0] * d[jj]
                    e1[jj] += a[1] * d[jj]
                    e2[jj] += a[2] * d[jj]
                    e3[jj] += a[3] * d[jj]
            t = Tw + i * pad + jb
            for jj in range(VL):
                t[jj] += coef * (e0[jj] + o0[jj])
                t[pad + jj] += coef * (e1[jj] + o1[jj])
                t[2 * pad + jj] += coef * (e2[jj] + o2[jj])
                t[3 * pad + jj] += coef * (e3[jj] + o3[jj])
            i += 4
        while i < i1:  # leftover rows: the same two chains per row
            for jj in range(VL):
                e0[jj] = 0
                o0[jj] = 0
            for s in range(0, b_even, 2):
                d = D + s * pad + jb
                d1 = d + pad
                for jj in range(VL):
                    e0[jj] += A[s * lda + i] * d[jj]
                    o0[jj] += A[(s + 1) * lda + i] * d1[jj]
            if b_even < B:
                d = D + b_even * pad + jb
                for jj in range(VL):
                    e0[jj] += A[b_even * lda + i] * d[jj]
            t = Tw + i * pad + jb
            for jj in range(VL):
                t[jj] += coef * (e0[jj] + o0[jj])
            i += 1


# ---- one minibatch, the optimiser step (StepRule; formulas in fastgd/backends/base.py) ------
cdef void sgd_range(floating* W, floating* G, floating* V, int64_t n, floating lr,
                    const Rule* r, bint decay) noexcept nogil:
    """SGD with momentum/Nesterov/weight decay/L1 on n parameters from their mean gradient G;
    G is zeroed for the next step. `decay`: weights (weight decay, l1 apply), not biases."""
    cdef int64_t k
    cdef floating g, v, step, w
    cdef floating mu = <floating>r.momentum
    cdef floating wd = <floating>r.weight_decay
    cdef floating l1 = <floating>r.l1
    for k in range(n):
        w = W[k]
        g = G[k]
        if decay and r.weight_decay > 0:
            g = g + wd * w
        if decay and r.l1 > 0:
            g = g + l1 * ((<floating>(w > 0)) - (<floating>(w < 0)))
        if V != NULL:
            v = V[k] * mu + g
            V[k] = v
            step = g + mu * v if r.nesterov else v
        else:
            step = g
        W[k] = w - lr * step
        G[k] = 0


cdef void adam_range(floating* W, floating* G, floating* M, floating* V, int64_t n, double lr,
                     const Rule* r, bint decay, double bc1, double bc2) noexcept nogil:
    """Adam / AdamW (PyTorch semantics) on n parameters from their mean gradient G, with this
    step's bias corrections bc1 = 1 - beta1^t, bc2 = 1 - beta2^t (double); G is zeroed.
    `decay`: weights (weight decay, l1 apply), not biases."""
    cdef int64_t k
    cdef floating g, w, m, v
    cdef floating b1 = <floating>r.beta1
    cdef floating b2 = <floating>r.beta2
    cdef floating c1 = <floating>(1.0 - r.beta1)
    cdef floating c2 = <floating>(1.0 - r.beta2)
    cdef floating fbc1 = <floating>bc1
    cdef floating fbc2 = <floating>bc2
    cdef floating eps = <floating>r.eps
    cdef floating flr = <floating>lr
    cdef floating l1 = <floating>r.l1 if decay else 0
    cdef floating wd = <floating>r.weight_decay if decay and r.kind == OPT_ADAM else 0
    cdef floating decoupled = <floating>(lr * r.weight_decay) if decay and r.kind == OPT_ADAMW else 0
    for k in range(n):
        w = W[k]
        g = G[k] + wd * w
        g = g + l1 * ((<floating>(w > 0)) - (<floating>(w < 0)))
        w = w - decoupled * w  # AdamW: W -= lr * wd * W before the Adam step
        m = M[k] * b1 + c1 * g
        v = V[k] * b2 + c2 * (g * g)
        M[k] = m
        V[k] = v
        W[k] = w - flr * (m / fbc1) / (sqrt(v / fbc2) + eps)
        G[k] = 0


cdef void optimizer_range(floating* W, floating* G, floating* S1, floating* S2, int64_t n,
                          double lr, const Rule* r, bint decay, double bc1,
                          double bc2) noexcept nogil:
    if r.kind == OPT_SGD:
        sgd_range(W, G, S1, n, <floating>lr, r, decay)
    else:
        adam_range(W, G, S1, S2, n, lr, r, decay, bc1, bc2)


cdef void apply_step(const Ctx* c, floating* P, const floating* S, floating* G,
                     const int64_t* rows, int64_t B, double lr, int64_t t, int part, int parts,
                     const Rule* r) noexcept nogil:
    """The parameter update of one minibatch for weight rows of part `part` of `parts`: plain
    SGD fused into the gradient pass, or (G not NULL) the gradient into G and then the
    optimiser step (the t-th, 1-based) over the same rows, so no extra barrier is needed."""
    cdef const int64_t* lay = c.lay
    cdef int l
    cdef int64_t n_in, pad, i0, i1, w_off, o
    cdef floating* S1 = <floating*>r.state1
    cdef floating* S2 = <floating*>r.state2
    cdef double bc1, bc2
    if G == NULL:
        minibatch_update(c, P, S, rows, B, <floating>(-lr / B), part, parts)
        return
    # Adam's bias corrections of step t, in double (plain SGD above never pays for the pow)
    bc1 = 1.0 - pow(r.beta1, <double>t)
    bc2 = 1.0 - pow(r.beta2, <double>t)
    minibatch_update(c, G, S, rows, B, (<floating>1) / B, part, parts)
    for l in range(c.n_layers):
        n_in = lay[l * LAY_COLS + L_NIN]
        pad = lay[l * LAY_COLS + L_PAD]
        w_off = lay[l * LAY_COLS + L_W]
        i0 = n_in * part // parts
        i1 = n_in * (part + 1) // parts
        o = w_off + i0 * pad
        optimizer_range(P + o, G + o, S1 + o if S1 != NULL else NULL,
                        S2 + o if S2 != NULL else NULL, (i1 - i0) * pad, lr, r, True, bc1, bc2)
        if part == parts - 1:
            o = w_off + n_in * pad
            optimizer_range(P + o, G + o, S1 + o if S1 != NULL else NULL,
                            S2 + o if S2 != NULL else NULL, pad, lr, r, False, bc1, bc2)


# ---- Python entry points (called by cython_backend after validation) ------------------------
cdef class Problem:
    """What the kernels read besides the parameters: the padded layout table, the scratch
    offsets, activation and loss codes, the input (uint8 or floating rows, optionally the CSR
    of its non-zero pixels), targets and labels, and dropout / image-shift settings. Holds the
    arrays (so their memory outlives the call) and raw pointers to them in a C struct.

    Built by cython_backend after EpochPlan.validate: dtypes and shapes are trusted here, except
    that each entry point checks the floating type against the parameters'."""
    cdef Ctx c
    cdef object keep
    cdef readonly int itemsize       # bytes per floating element of X (float input), targets

    def __init__(self, int64_t[:, ::1] lay, const int64_t[::1] soff, int hidden_act, int out_act,
                 int loss, X, double x_scale, csr=None, targets=None, labels=None,
                 double dropout=0, unsigned long long seed=0, int64_t first_position=0,
                 int64_t shift=0, int64_t image_rows=0, int64_t image_cols=0):
        cdef const int64_t[::1] ptr
        cdef const uint16_t[::1] idx
        cdef const uint8_t[::1] val
        cdef const int32_t[::1] lab
        cdef Py_ssize_t address
        if not isinstance(X, np.ndarray) or X.ndim != 2 or not X.flags.c_contiguous:
            raise ValueError("X must be a C-contiguous 2-D array")
        if X.dtype != np.uint8 and X.dtype != np.float32 and X.dtype != np.float64:
            raise TypeError(f"X must be uint8, float32 or float64, got {X.dtype}")
        if X.shape[1] != lay[0, L_NIN]:
            raise ValueError("X does not have the network's input width")
        self.keep = (lay, soff, X, csr, targets, labels)
        self.itemsize = 0 if X.dtype == np.uint8 else X.dtype.itemsize
        c = &self.c
        c.n_layers = <int>lay.shape[0]
        c.hidden_act = hidden_act
        c.out_act = out_act
        c.loss = loss
        c.lay = &lay[0, 0]
        c.soff = &soff[0]
        c.n_in = X.shape[1]
        c.n_out = lay[lay.shape[0] - 1, L_NOUT]
        c.x_scale = x_scale
        address = X.ctypes.data
        c.xu8 = <const uint8_t*>address if X.dtype == np.uint8 else NULL
        c.xf = NULL if X.dtype == np.uint8 else <const void*>address
        c.x_itemsize = X.dtype.itemsize
        c.csr_ptr = NULL
        c.csr_idx = NULL
        c.csr_val = NULL
        if csr is not None:
            ptr, idx, val = csr
            if ptr.shape[0] < 1:  # its rows may be a permuted copy: X's rows are then unused
                raise ValueError("the CSR index has no row pointers")
            c.csr_ptr = &ptr[0]
            c.csr_idx = &idx[0] if idx.shape[0] > 0 else NULL
            c.csr_val = &val[0] if val.shape[0] > 0 else NULL
            if c.csr_idx == NULL:  # no non-zero pixel at all: pointers are never read
                c.csr_idx = <const uint16_t*>c.csr_ptr
                c.csr_val = <const uint8_t*>c.csr_ptr
        c.targets = NULL
        c.labels = NULL
        if targets is not None:
            if (not isinstance(targets, np.ndarray) or targets.ndim != 2 or targets.shape[1] != c.n_out
                    or not targets.flags.c_contiguous or targets.dtype not in (np.float32, np.float64)):
                raise ValueError("targets must be a C-contiguous float array of shape (rows, n_out)")
            address = targets.ctypes.data
            c.targets = <const void*>address
            self.itemsize = targets.dtype.itemsize
            lab = labels
            if lab.shape[0] != targets.shape[0]:
                raise ValueError("labels must hold one label per target row")
            c.labels = &lab[0] if lab.shape[0] > 0 else NULL
        c.lut = NULL
        c.dropout = dropout
        c.drop_scale = 1.0 / (1.0 - dropout) if dropout > 0 else 1.0
        c.drop_seed = seed
        c.first_position = first_position
        c.shift = shift
        c.img_rows = image_rows
        c.img_cols = image_cols
        if shift > 0 and (image_rows * image_cols != c.n_in or c.csr_ptr != NULL):
            raise ValueError("image shifts need image_rows * image_cols == n_in and dense input")


cdef class StepConfig:
    """The optimiser step of `train_epoch` (base.StepRule without its state arrays, which the
    entry point takes as a 2-D array): kind, momentum, nesterov, weight_decay, l1, beta1, beta2,
    eps, and `step`, the optimiser steps already taken (the call's k-th step is step + k + 1)."""
    cdef Rule r
    cdef readonly bint plain          # plain SGD: updated in place, no gradient buffer

    def __init__(self, int kind=OPT_SGD, double momentum=0, bint nesterov=False,
                 double weight_decay=0, double l1=0, double beta1=0.9, double beta2=0.999,
                 double eps=1e-8, int64_t step=0):
        if kind != OPT_SGD and kind != OPT_ADAM and kind != OPT_ADAMW:
            raise ValueError(f"unknown optimiser kind {kind}")
        self.r.kind = kind
        self.r.momentum = momentum
        self.r.nesterov = nesterov
        self.r.weight_decay = weight_decay
        self.r.l1 = l1
        self.r.beta1 = beta1
        self.r.beta2 = beta2
        self.r.eps = eps
        self.r.step = step
        self.r.grad = NULL
        self.r.state1 = NULL
        self.r.state2 = NULL
        self.plain = kind == OPT_SGD and momentum == 0 and weight_decay == 0 and l1 == 0

    @property
    def n_state(self):
        if self.r.kind == OPT_SGD:
            return 1 if self.r.momentum > 0 else 0
        return 2


cdef void set_lut(Ctx* c, floating* lut) noexcept nogil:
    """lut[v] = (floating)v * (floating)x_scale: exactly the reference's uint8 -> float."""
    cdef int v
    for v in range(256):
        lut[v] = (<floating>v) * (<floating>c.x_scale)
    c.lut = lut


def train_epoch(floating[::1] params, Problem problem, const int64_t[::1] order,
                const double[::1] lrs, int64_t batch_size, StepConfig rule,
                floating[:, ::1] state, floating[:, ::1] grad, floating[:, ::1] scratch,
                int mode, int threads, double[::1] loss_out, int64_t[::1] correct_out):
    """Every minibatch of `order` (rows of problem's X) in nogil code; per-thread loss sums and
    correct counts go to loss_out[t], correct_out[t]. Modes: serial (one thread; BLAS layers
    allowed), sync (deterministic: each step's samples split across threads for forward/deltas,
    then the weight rows split for the update; bitwise identical to serial), hogwild (each thread
    runs its own minibatches, lock-free on the shared weights).

    Buffers (padded like params, see _Layout): state (rule.n_state, size) the optimiser state,
    updated in place; grad (copies, size) zeros, the gradient accumulator of a non-plain rule
    (one row per thread in hogwild mode, else one); scratch (copies, scratch_size)."""
    cdef Ctx c = problem.c
    cdef Rule r = rule.r
    cdef floating* G0 = NULL
    cdef int64_t gstride = 0
    cdef int64_t m = order.shape[0]
    cdef int64_t n_steps = (m + batch_size - 1) // batch_size
    cdef floating* P = &params[0]
    cdef floating* S0 = &scratch[0, 0]
    cdef int64_t sstride = scratch.shape[1]
    cdef const int64_t* od = &order[0]
    cdef const double* lr = &lrs[0]
    cdef double* lo = &loss_out[0]
    cdef int64_t* co = &correct_out[0]
    cdef int64_t t0 = r.step + 1
    cdef int64_t pos0 = c.first_position
    cdef int tid, nt
    cdef int64_t step, B, B1, s0, s1
    cdef floating lut[256]
    if problem.itemsize != 0 and problem.itemsize != <int>sizeof(floating):
        raise TypeError("X/targets and params have different float types")
    if m == 0 or lrs.shape[0] < n_steps or loss_out.shape[0] < threads or correct_out.shape[0] < threads:
        raise ValueError("train_epoch: empty order, or too few learning rates or output slots")
    if not rule.plain:
        if grad is None or grad.shape[1] != params.shape[0] or grad.shape[0] < (threads if mode == MODE_HOGWILD else 1):
            raise ValueError("a non-plain step rule needs a gradient buffer per thread shaped like params")
        G0 = &grad[0, 0]
        gstride = grad.shape[1]
        if rule.n_state > 0:
            if state is None or state.shape[0] < rule.n_state or state.shape[1] != params.shape[0]:
                raise ValueError("the step rule's state must be (n_state, params.size)")
            r.state1 = &state[0, 0]
            r.state2 = &state[1, 0] if rule.n_state > 1 else NULL
    if mode == MODE_HOGWILD and not rule.plain and r.kind != OPT_SGD:
        raise ValueError("hogwild mode runs plain SGD and SGD with momentum/decay only")
    set_lut(&c, lut)
    if mode == MODE_SERIAL:
        with nogil:
            for step in range(n_steps):
                B = min(batch_size, m - step * batch_size)
                prefetch_input(&c, od, m, step * batch_size + ROWS_AHEAD,
                               (step + 1) * batch_size + ROWS_AHEAD)
                minibatch_forward_backward(&c, P, S0, od + step * batch_size, 0, 0, B, True,
                                           lo, co, pos0 + step * batch_size)
                apply_step(&c, P, S0, G0, od + step * batch_size, B, lr[step], t0 + step, 0, 1, &r)
        return
    with nogil, parallel(num_threads=threads):
        tid = fgd_thread_num()
        nt = fgd_num_threads()
        if mode == MODE_HOGWILD:
            step = tid
            while step < n_steps:
                B = min(batch_size, m - step * batch_size)
                prefetch_input(&c, od, m, (step + nt) * batch_size,
                               (step + nt + 1) * batch_size)
                minibatch_forward_backward(&c, P, S0 + tid * sstride, od + step * batch_size, 0,
                                           0, B, True, lo + tid, co + tid,
                                           pos0 + step * batch_size)
                apply_step(&c, P, S0 + tid * sstride, G0 + tid * gstride if G0 != NULL else NULL,
                           od + step * batch_size, B, lr[step], t0 + step, 0, 1, &r)
                step = step + nt
        else:
            for step in range(n_steps):
                B = min(batch_size, m - step * batch_size)
                s0 = B * tid // nt
                s1 = B * (tid + 1) // nt
                if step + 1 < n_steps:  # each thread fetches the rows it will compute next
                    B1 = min(batch_size, m - (step + 1) * batch_size)
                    prefetch_input(&c, od, m, (step + 1) * batch_size + B1 * tid // nt,
                                   (step + 1) * batch_size + B1 * (tid + 1) // nt)
                minibatch_forward_backward(&c, P, S0, od + step * batch_size, 0, s0, s1, True,
                                           lo + tid, co + tid, pos0 + step * batch_size)
                fgd_barrier()  # every delta is computed from the pre-update weights
                apply_step(&c, P, S0, G0, od + step * batch_size, B, lr[step], t0 + step, tid, nt,
                           &r)
                fgd_barrier()  # the next step reads the updated weights


def loss_and_grad(floating[::1] params, floating[::1] grad, Problem problem,
                  floating[:, ::1] scratch):
    """Loss summed over every row of problem's X (one minibatch) and its mean gradient added
    into the zeroed padded buffer `grad`. Returns the loss sum."""
    cdef Ctx c = problem.c
    cdef int64_t B = problem.keep[2].shape[0]
    cdef double loss_sum = 0
    cdef int64_t correct = 0
    cdef floating lut[256]
    order_arr = np.arange(B, dtype=np.int64)
    cdef const int64_t[::1] order = order_arr
    if (problem.itemsize != 0 and problem.itemsize != <int>sizeof(floating)) or c.targets == NULL:
        raise TypeError("loss_and_grad needs targets of the parameters' float type")
    set_lut(&c, lut)
    with nogil:
        minibatch_forward_backward(&c, &params[0], &scratch[0, 0], &order[0], 0, 0, B, True,
                                   &loss_sum, &correct, 0)
        minibatch_update(&c, &grad[0], &scratch[0, 0], &order[0], B, (<floating>1) / B, 0, 1)
    return loss_sum


def forward(floating[::1] params, Problem problem, int64_t chunk, floating[:, ::1] scratch,
            floating[:, ::1] out, double[::1] losses=None, int64_t[::1] corrects=None):
    """Output activations of every input row into out (n x n_out), `chunk` rows at a time, on
    one thread (callers run several calls on row ranges in parallel). With targets in `problem`,
    also each chunk's loss sum (from the pre-activations, the training formula) and correct
    count into losses[ch], corrects[ch] (evaluate)."""
    cdef Ctx c = problem.c
    cdef int64_t n = out.shape[0]
    cdef int64_t n_out = out.shape[1]
    cdef int64_t n_chunks = (n + chunk - 1) // chunk
    cdef floating* S0 = &scratch[0, 0]
    cdef floating* O = &out[0, 0]
    cdef int L = c.n_layers
    cdef int64_t pad = c.lay[(L - 1) * LAY_COLS + L_PAD]
    cdef int64_t act_off = c.lay[(L - 1) * LAY_COLS + L_ACT] + c.soff[S_ACTS]
    cdef int64_t ch, B, s, j
    cdef bint scored = c.targets != NULL
    cdef double* ls = NULL
    cdef int64_t* cs = NULL
    cdef floating lut[256]
    if problem.itemsize != 0 and problem.itemsize != <int>sizeof(floating):
        raise TypeError("X/targets and params have different float types")
    if problem.keep[2].shape[0] != n:
        raise ValueError("out must have one row per input row")
    if scored:
        if losses is None or corrects is None or losses.shape[0] < n_chunks or corrects.shape[0] < n_chunks:
            raise ValueError("evaluate needs one loss and one count slot per chunk")
        ls = &losses[0]
        cs = &corrects[0]
    set_lut(&c, lut)
    with nogil:
        for ch in range(n_chunks):
            B = min(chunk, n - ch * chunk)
            network_forward(&c, <const floating*>&params[0], S0, NULL, ch * chunk, 0, B, False, 0)
            if scored:
                ls[ch] = 0
                cs[ch] = 0
                output_delta(&c, S0, NULL, ch * chunk, 0, B, True, ls + ch, cs + ch)
            else:
                output_delta(&c, S0, NULL, ch * chunk, 0, B, False, NULL, NULL)
            for s in range(B):
                for j in range(n_out):
                    O[(ch * chunk + s) * n_out + j] = S0[act_off + s * pad + j]


def build_csr(const uint8_t[:, ::1] X):
    """Non-zero pixels of each row of a uint8 matrix: (ptr int64 (n+1), idx uint16, val uint8),
    row r's pixels are idx[ptr[r]:ptr[r+1]] (ascending) with values val[...]."""
    cdef int64_t n = X.shape[0], d = X.shape[1], r, i, k, nnz = 0
    if d > 65536:
        raise ValueError("build_csr stores column indices as uint16: at most 65536 columns")
    ptr_arr = np.empty(n + 1, dtype=np.int64)
    cdef int64_t[::1] ptr = ptr_arr
    with nogil:
        for r in range(n):
            ptr[r] = nnz
            for i in range(d):
                nnz += X[r, i] != 0
        ptr[n] = nnz
    idx_arr = np.empty(nnz, dtype=np.uint16)
    val_arr = np.empty(nnz, dtype=np.uint8)
    cdef uint16_t[::1] idx = idx_arr
    cdef uint8_t[::1] val = val_arr
    with nogil:
        k = 0
        for r in range(n):
            for i in range(d):
                if X[r, i] != 0:
                    idx[k] = <uint16_t>i
                    val[k] = X[r, i]
                    k += 1
    return ptr_arr, idx_arr, val_arr


def gather_csr_rows(const int64_t[::1] ptr, const uint16_t[::1] idx, const uint8_t[::1] val,
                    const int64_t[::1] order, int64_t[::1] out_ptr, uint16_t[::1] out_idx,
                    uint8_t[::1] out_val, int64_t pos0=0):
    """Copy the CSR rows order[0], order[1], ... into out_* in that order (out_ptr has
    len(order) + 1 entries; out_idx/out_val hold at least pos0 + the rows' total non-zeros),
    starting at entry pos0 (so that a later part of an epoch can be gathered separately).

    An epoch then reads its input front to back instead of hopping over 27 MB: one streaming
    copy with many cache misses in flight costs less than the stalls it removes."""
    cdef int64_t m = order.shape[0], s, row, k0, k1, k, pos = pos0
    cdef const uint16_t* src_idx = &idx[0] if idx.shape[0] > 0 else NULL
    cdef const uint8_t* src_val = &val[0] if val.shape[0] > 0 else NULL
    with nogil:
        for s in range(m):
            if s + 16 < m:
                row = order[s + 16]
                fgd_prefetch(&ptr[row], 16)
                if s + 8 < m and src_idx != NULL:
                    row = order[s + 8]
                    fgd_prefetch(src_idx + ptr[row], (ptr[row + 1] - ptr[row]) * 2)
                    fgd_prefetch(src_val + ptr[row], ptr[row + 1] - ptr[row])
            row = order[s]
            k0 = ptr[row]
            k1 = ptr[row + 1]
            out_ptr[s] = pos
            if k1 > k0:  # whole rows by memcpy: an element loop costs a cycle per pixel
                memcpy(&out_idx[pos], src_idx + k0, (k1 - k0) * sizeof(uint16_t))
                memcpy(&out_val[pos], src_val + k0, (k1 - k0) * sizeof(uint8_t))
                pos += k1 - k0
        out_ptr[m] = pos
    return pos


def csr_rows_nnz(const int64_t[::1] ptr, const int64_t[::1] order):
    """Total non-zeros of the CSR rows order[0], order[1], ... (sizes gather_csr_rows' output)."""
    cdef int64_t s, total = 0
    with nogil:
        for s in range(order.shape[0]):
            total += ptr[order[s] + 1] - ptr[order[s]]
    return total
