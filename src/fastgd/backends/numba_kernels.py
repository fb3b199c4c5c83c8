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
* loops: 16-lane vectors held in registers (the `vload`/`vfma`/`vstore` intrinsics below; plain
  Numba loops reload and store accumulators behind runtime alias checks), four independent
  FMA chains per block, bias + activation + derivative fused into the same pass. The first
  layer of a uint8 input reads a CSR of its non-zero pixels (MNIST is 81% zeros), built once
  per input array, and scales pixels on the fly exactly like the reference
  (``dtype(pixel) * dtype(x_scale)``); its update touches only those pixels' weight rows.
* BLAS: ``np.dot`` on contiguous views (Numba calls SciPy's BLAS gemm) with the elementwise
  work fused around it; used when a layer's work per step (B * n_in * n_out) reaches
  ``blas_min_work``, since large layers must not fall behind BLAS.

Per-step overheads that were measured and removed: row views (atomic reference counts; the
views here are borrowed, see `view2d`), horizontal sums in the hidden deltas (transposed
weights instead), waiting for shuffled samples' data (prefetched one minibatch ahead).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

SIGMOID, RELU, TANH, LINEAR, SOFTMAX = 0, 1, 2, 3, 4
ACTIVATION_CODES = {"sigmoid": SIGMOID, "relu": RELU, "tanh": TANH, "linear": LINEAR, "softmax": SOFTMAX}
MSE, CROSS_ENTROPY = 0, 1
LOSS_CODES = {"mse": MSE, "cross_entropy": CROSS_ENTROPY}

# Reassociation lets LLVM vectorise the dot products and reductions; no 'nnan'/'ninf', because
# sigmoid relies on exp overflowing to inf (1 / (1 + inf) = 0) exactly like the reference.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
JIT = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


# ---- SIMD: 16-lane vectors in registers ------------------------------------------------------
# LLVM cannot prove that a row of weights and an accumulator row do not overlap, so a plain
# `for j in range(n_out): z[j] += v * W[k, j]` loop reloads and stores z every step behind
# runtime alias checks (measured ~10 cycles per 16-wide row update). These intrinsics keep
# accumulators in registers as LLVM vectors; loads and stores are masked, so a 16-column block
# may be partial (n - j0 < 16 lanes) without touching memory past it.
VL = 16
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


class Vec(types.Type):
    """VL lanes of a float type, held in SIMD registers (an LLVM vector)."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Vec{VL}[{dtype}]")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), VL))


def _splat(builder, x, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(_I32, VL), [0] * VL))


def _masked_access(context, builder, arrty, arr, off, n):
    """(pointer to element `off` of the array, lane mask lane < n, vector type)."""
    ary = context.make_array(arrty)(context, builder, arr)
    ptr = builder.gep(ary.data, [off])
    vty = ir.VectorType(context.get_value_type(arrty.dtype), VL)
    lanes = ir.Constant(ir.VectorType(_I64, VL), list(range(VL)))
    mask = builder.icmp_signed("<", lanes, _splat(builder, n, ir.VectorType(_I64, VL)))
    return ptr, mask, vty


def _masked_fn(builder, kind, vty, ptr):
    bits = vty.element.width if isinstance(vty.element, ir.IntType) else (32 if vty.element == ir.FloatType() else 64)
    mty = ir.VectorType(ir.IntType(1), VL)
    if kind == "load":
        fnty = ir.FunctionType(vty, [ptr.type, _I32, mty, vty])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vty, ptr.type, _I32, mty])
    return cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.{kind}.v{VL}f{bits}.p0")


def _check_array(arr):
    return isinstance(arr, types.Array) and arr.layout == "C" and isinstance(arr.dtype, types.Float)


@intrinsic
def vload(typingctx, arr, off, n):
    """Lanes arr.flat[off + l] for l < n, zero for the others (masked: never reads past n)."""
    if not _check_array(arr):
        return None

    def codegen(context, builder, sig, args):
        ptr, mask, vty = _masked_access(context, builder, sig.args[0], args[0],
                                        context.cast(builder, args[1], sig.args[1], types.intp),
                                        context.cast(builder, args[2], sig.args[2], types.int64))
        fn = _masked_fn(builder, "load", vty, ptr)
        return builder.call(fn, [ptr, ir.Constant(_I32, arr.dtype.bitwidth // 8), mask, ir.Constant(vty, None)])

    return Vec(arr.dtype)(arr, off, n), codegen


@intrinsic
def vstore(typingctx, arr, off, n, v):
    """arr.flat[off + l] = v[l] for l < n (masked: never writes past n)."""
    if not _check_array(arr) or not isinstance(v, Vec) or v.dtype != arr.dtype:
        return None

    def codegen(context, builder, sig, args):
        ptr, mask, vty = _masked_access(context, builder, sig.args[0], args[0],
                                        context.cast(builder, args[1], sig.args[1], types.intp),
                                        context.cast(builder, args[2], sig.args[2], types.int64))
        fn = _masked_fn(builder, "store", vty, ptr)
        builder.call(fn, [args[3], ptr, ir.Constant(_I32, arr.dtype.bitwidth // 8), mask])
        return context.get_dummy_value()

    return types.none(arr, off, n, v), codegen


@intrinsic
def vsplat(typingctx, x, like):
    """Every lane = x, in the element type of the array or vector `like`."""
    dtype = like.dtype

    def codegen(context, builder, sig, args):
        x = context.cast(builder, args[0], sig.args[0], dtype)
        return _splat(builder, x, ir.VectorType(context.get_value_type(dtype), VL))

    return Vec(dtype)(x, like), codegen


@intrinsic
def vfma(typingctx, acc, x, v):
    """acc + x * v, lane by lane; x is a scalar or a vector."""
    if not isinstance(acc, Vec) or not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        a, xv, vv = args
        if not isinstance(sig.args[1], Vec):
            xv = _splat(builder, context.cast(builder, xv, sig.args[1], sig.args[0].dtype), vv.type)
        return builder.fadd(a, builder.fmul(xv, vv, flags=("contract",)), flags=("contract",))

    return acc(acc, x, v), codegen


@intrinsic
def vadd(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def vsub(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fsub(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def vmul(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def vwhere_positive(typingctx, a, d):
    """d where a > 0, else 0 (ReLU's derivative applied to d)."""
    def codegen(context, builder, sig, args):
        zero = ir.Constant(args[0].type, None)
        return builder.select(builder.fcmp_ordered(">", args[0], zero), args[1], zero)

    return d(a, d), codegen


@intrinsic
def vsign(typingctx, v):
    """-1, 0 or 1 by the sign of each lane (np.sign; L1's subgradient)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        zero = ir.Constant(x.type, None)
        one = ir.Constant(x.type, [1.0] * VL)
        minus_one = ir.Constant(x.type, [-1.0] * VL)
        return builder.select(builder.fcmp_ordered(">", x, zero), one,
                              builder.select(builder.fcmp_ordered("<", x, zero), minus_one, zero))

    return v(v), codegen


@intrinsic
def vsum(typingctx, v):
    """Sum of the lanes (pairwise tree)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        width = VL
        while width > 1:
            half = width // 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, half), list(range(half))))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, half), list(range(half, width))))
            x = builder.fadd(lo, hi)
            width = half
        return builder.extract_element(x, ir.Constant(_I32, 0))

    return v.dtype(v), codegen



@intrinsic
def vexp(typingctx, v):
    """exp of every lane. float32: the Cephes expf polynomial with Cody-Waite range reduction
    in registers (relative error ~1e-7, the same formula as the Cython backend's fgd_expf; the
    input is clamped to [-87.3, 88.3], which keeps the limits sigmoid and softmax need);
    float64: LLVM's exp on the vector (libm accuracy)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        vty = x.type
        if vty.element != ir.FloatType():
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]), f"llvm.exp.v{VL}f64")
            return builder.call(fn, [x])

        def c(value):
            return ir.Constant(vty, [value] * VL)

        x = builder.select(builder.fcmp_ordered("<", x, c(-87.3)), c(-87.3), x)
        x = builder.select(builder.fcmp_ordered(">", x, c(88.3)), c(88.3), x)
        # Round with an intrinsic, not the (x + 1.5 * 2^23) - 1.5 * 2^23 trick: Numba's fastmath
        # pass puts 'reassoc' on every float instruction of the caller, which folds that away.
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]), f"llvm.rint.v{VL}f32")
        fk = builder.call(rint, [builder.fmul(x, c(1.44269504088896341))])
        r = builder.fadd(builder.fsub(x, builder.fmul(fk, c(0.693359375))), builder.fmul(fk, c(2.12194440e-4)))
        p = c(1.9875691500e-4)
        for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = builder.fadd(builder.fmul(p, r), c(coef))
        y = builder.fadd(builder.fadd(builder.fmul(builder.fmul(p, r), r), r), c(1.0))
        ity = ir.VectorType(_I32, VL)
        bits = builder.shl(builder.add(builder.fptosi(fk, ity), ir.Constant(ity, [127] * VL)),
                           ir.Constant(ity, [23] * VL))
        return builder.fmul(y, builder.bitcast(bits, vty))

    return v(v), codegen


@intrinsic
def vsigmoid(typingctx, v):
    """1 / (1 + exp(-v)) lane by lane (exp as in `vexp`)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        one = ir.Constant(args[0].type, [1.0] * VL)
        e = context.compile_internal(builder, lambda u: vexp(u), sig, [builder.fneg(args[0])])
        return builder.fdiv(one, builder.fadd(one, e))

    return v(v), codegen


@intrinsic
def view2d(typingctx, buf, off, rows, cols):
    """buf[off:off + rows * cols] as a C-contiguous (rows, cols) array borrowing buf's memory.

    Same as buf[off:...].reshape((rows, cols)) but built inline: reshape calls out to Numba's
    helper library, which cost ~5 ms per MNIST epoch at ~23 views per minibatch."""
    if not isinstance(buf, types.Array) or buf.ndim != 1 or buf.layout != "C":
        return None
    arrty = types.Array(buf.dtype, 2, "C")

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        off_, rows_, cols_ = (context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], sig.args[1:]))
        itemsize = ir.Constant(intp, context.get_abi_sizeof(context.get_value_type(buf.dtype)))
        out = context.make_array(arrty)(context, builder)
        # A borrowed view: no meminfo, so no reference counting (atomic increments and
        # decrements on every view). Only for views that never outlive `buf` inside a kernel.
        context.populate_array(out, data=builder.gep(src.data, [off_]), shape=[rows_, cols_],
                               strides=[builder.mul(cols_, itemsize), itemsize], itemsize=itemsize,
                               meminfo=None)
        return out._getvalue()

    return arrty(buf, off, rows, cols), codegen


@intrinsic
def view1d(typingctx, buf, off, n):
    """buf[off:off + n] as a borrowed view (no reference counting, like view2d)."""
    if not isinstance(buf, types.Array) or buf.ndim != 1 or buf.layout != "C":
        return None
    arrty = types.Array(buf.dtype, 1, "C")

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        off_, n_ = (context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], sig.args[1:]))
        itemsize = ir.Constant(context.get_value_type(types.intp),
                               context.get_abi_sizeof(context.get_value_type(buf.dtype)))
        out = context.make_array(arrty)(context, builder)
        context.populate_array(out, data=builder.gep(src.data, [off_]), shape=[n_], strides=[itemsize],
                               itemsize=itemsize, meminfo=None)
        return out._getvalue()

    return arrty(buf, off, n), codegen


@intrinsic
def prefetch(typingctx, arr, off):
    """Hint the CPU to fetch the cache line holding arr.flat[off] (no fault if out of range)."""
    if not isinstance(arr, types.Array) or arr.layout != "C":
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(arr, off), codegen


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
def activation_forward(z, a, i, kind):
    """a[i] = kind(z[i]) for one sample's row (z and a may be the same array)."""
    n = z.shape[1]
    o = i * n
    if kind == SIGMOID:
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            vstore(a, o + j0, m, vsigmoid(vload(z, o + j0, m)))
    elif kind == RELU:
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            zv = vload(z, o + j0, m)
            vstore(a, o + j0, m, vwhere_positive(zv, zv))
    elif kind == TANH:
        for j in range(n):
            a[i, j] = np.tanh(z[i, j])
    elif kind == LINEAR:
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            vstore(a, o + j0, m, vload(z, o + j0, m))
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
def activation_backward(a, d, i, kind):
    """d[i] = dL/dz given a[i] = f(z) and d[i] = dL/da on entry (one sample's row)."""
    n = a.shape[1]
    o = i * n
    if kind == SIGMOID:
        one = vsplat(1, a)
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            av = vload(a, o + j0, m)
            vstore(d, o + j0, m, vmul(vmul(vload(d, o + j0, m), av), vsub(one, av)))
    elif kind == RELU:
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            vstore(d, o + j0, m, vwhere_positive(vload(a, o + j0, m), vload(d, o + j0, m)))
    elif kind == TANH:
        one = vsplat(1, a)
        for j0 in range(0, n, VL):
            m = min(VL, n - j0)
            av = vload(a, o + j0, m)
            vstore(d, o + j0, m, vmul(vload(d, o + j0, m), vsub(one, vmul(av, av))))
    elif kind == SOFTMAX:  # Jacobian-vector product a * (d - <d, a>)
        s = a.dtype.type(0.0)
        for j in range(n):
            s += d[i, j] * a[i, j]
        for j in range(n):
            d[i, j] = a[i, j] * (d[i, j] - s)
    # LINEAR: unchanged


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
    """Index of the first largest entry of a[i], like np.argmax."""
    best = 0
    for j in range(1, a.shape[1]):
        if a[i, j] > a[i, best]:
            best = j
    return best


# ---- the input layer's non-zero list ----------------------------------------------------------
@njit(**JIT)
def build_csr(X, idx_dtype):
    """Non-zero pixels of uint8 rows as CSR: (row pointers int64, columns of idx_dtype (uint16
    when the width allows: less memory traffic per epoch, int32 otherwise), values uint8).

    Built once per input array (the backend caches it), so each epoch reads ~150 entries per
    MNIST image instead of scanning 784 bytes."""
    n, n_in = X.shape
    ptr = np.zeros(n + 1, dtype=np.int64)
    for r in range(n):
        c = 0
        for k in range(n_in):
            c += X[r, k] != 0
        ptr[r + 1] = ptr[r] + c
    idx = np.empty(ptr[n], dtype=idx_dtype)
    val = np.empty(ptr[n], dtype=np.uint8)
    for r in range(n):
        p = ptr[r]
        for k in range(n_in):
            if X[r, k] != 0:
                idx[p] = k
                val[p] = X[r, k]
                p += 1
    return ptr, idx, val


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
def dense_forward_sparse(csr_ptr, csr_idx, csr_val, x_scale, rows, W, b, z):
    """z[i] = b + sum over the non-zero pixels k of row rows[i] of x_k * W[k] (no activation).

    x_k = dtype(pixel) * dtype(x_scale) like the reference. Per 16-column block, four vector
    accumulators keep four independent FMA chains in flight (one chain stalls on latency)."""
    n_out = W.shape[1]
    scale = z.dtype.type(x_scale)
    for i in range(rows.shape[0]):
        r = rows[i]
        start = csr_ptr[r]
        end = csr_ptr[r + 1]
        for j0 in range(0, n_out, VL):
            m = min(VL, n_out - j0)
            acc0 = vload(b, j0, m)
            acc1 = vsplat(0, b)
            acc2 = acc1
            acc3 = acc1
            p = start
            while p + 4 <= end:
                acc0 = vfma(acc0, z.dtype.type(csr_val[p]) * scale, vload(W, csr_idx[p] * n_out + j0, m))
                acc1 = vfma(acc1, z.dtype.type(csr_val[p + 1]) * scale, vload(W, csr_idx[p + 1] * n_out + j0, m))
                acc2 = vfma(acc2, z.dtype.type(csr_val[p + 2]) * scale, vload(W, csr_idx[p + 2] * n_out + j0, m))
                acc3 = vfma(acc3, z.dtype.type(csr_val[p + 3]) * scale, vload(W, csr_idx[p + 3] * n_out + j0, m))
                p += 4
            while p < end:
                acc0 = vfma(acc0, z.dtype.type(csr_val[p]) * scale, vload(W, csr_idx[p] * n_out + j0, m))
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
    for k in range(n_in):
        for j in range(n_out):
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
        activation_backward(a_in, dx, i, in_kind)


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
def dense_update_sparse(csr_ptr, csr_idx, csr_val, x_scale, rows, d, coef, tW, tb):
    """The input layer's update from its non-zero pixels: only their rows of W are written,
    sample by sample in order."""
    n_out = tW.shape[1]
    B = rows.shape[0]
    scale = d.dtype.type(x_scale)
    for i in range(B):
        r = rows[i]
        for j0 in range(0, n_out, VL):
            m = min(VL, n_out - j0)
            di = vload(d, i * n_out + j0, m)
            for p in range(csr_ptr[r], csr_ptr[r + 1]):
                off = csr_idx[p] * n_out + j0
                v = coef * (d.dtype.type(csr_val[p]) * scale)
                vstore(tW, off, m, vfma(vload(tW, off, m), -v, di))
    bias_update(d, B, coef, tb)


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


@njit(parallel=True, **JIT)
def split_dot_tn(x, d, parts, n_split):
    """parts[c] = x[rows of chunk c].T @ d[rows of chunk c]: partial weight gradients."""
    n = x.shape[0]
    n_in = x.shape[1]
    n_out = d.shape[1]
    for c in prange(n_split):
        r0 = n * c // n_split
        r1 = n * (c + 1) // n_split
        g = view2d(parts, c * n_in * n_out, n_in, n_out)
        if r1 > r0:
            np.dot(x[r0:r1].T, d[r0:r1], g)
        else:
            g[:, :] = 0


@njit(parallel=True, **JIT)
def split_apply(tW, coef, parts, n_split):
    """tW -= coef * (parts[0] + parts[1] + ...), summed in a fixed order, rows on threads."""
    n_in, n_out = tW.shape
    size = n_in * n_out
    for c in prange(n_split):
        for k in range(n_in * c // n_split, n_in * (c + 1) // n_split):
            for j in range(n_out):
                g = parts[k * n_out + j]
                for q in range(1, n_split):
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
        split_dot_tn(x[:B], d[:B], gW, n_split)
        split_apply(tW, coef, gW, n_split)
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
def network_forward(params, layout, kinds, X, x_scale, csr_ptr, csr_idx, csr_val, rows, use_blas,
                    acts, act_off, sizes, zlast, n_split):
    """Forward pass of the samples X[rows]: activations into `acts`, last pre-activation into zlast.

    With a CSR of X (csr_ptr non-empty) the input layer reads only the non-zero pixels and
    acts[0] stays unused; otherwise the rows are gathered (uint8 scaled) into acts[0].
    """
    B = rows.shape[0]
    bmax = zlast.shape[0]
    L = layout.shape[0]
    sparse_input = csr_ptr.shape[0] > 0
    if not sparse_input:
        gather_dense(X, rows, x_scale, _acts(acts, act_off, sizes, 0, bmax))
    for l in range(L):
        W, b = _layer_views(params, layout, l)
        x = _acts(acts, act_off, sizes, l, bmax)
        a = _acts(acts, act_off, sizes, l + 1, bmax)
        z = zlast if l == L - 1 else a  # hidden layers turn z into a in place
        if l == 0 and sparse_input:
            dense_forward_sparse(csr_ptr, csr_idx, csr_val, x_scale, rows, W, b, z)
        elif use_blas[l]:
            dense_forward_blas(x, B, W, b, z, n_split)
        else:
            dense_forward_loops(x, B, W, b, z)
        for i in range(B):
            activation_forward(z, a, i, kinds[l])


@njit(**JIT)
def minibatch_step(params, target, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val, targets, labels,
                   rows, coef, use_blas, acts, act_off, sizes, zlast, delta0, delta1, gW, n_split):
    """Forward + backward + update for one minibatch X[rows]: target -= coef * sum of gradients.

    Returns (sum of per-sample losses, number of correct argmax predictions), both measured with
    the weights before the update.
    """
    B = rows.shape[0]
    bmax = zlast.shape[0]
    L = layout.shape[0]
    network_forward(params, layout, kinds, X, x_scale, csr_ptr, csr_idx, csr_val, rows, use_blas,
                    acts, act_off, sizes, zlast, n_split)
    n_out = sizes[L]
    out = _acts(acts, act_off, sizes, L, bmax)
    d = view2d(delta0, 0, bmax, n_out)
    loss_sum = 0.0
    correct = 0
    for i in range(B):
        r = rows[i]
        loss_sum += loss_forward_backward(zlast, out, d, i, targets, r, loss, kinds[L - 1])
        if argmax_row(out, i) == labels[r]:
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
            d = view2d(other, 0, bmax, n_in)
            if use_blas[l]:
                dense_backward_dx_blas(cur, B, W, x, kinds[l - 1], d, n_split)
            else:
                dense_backward_dx_loops(cur, B, W, x, kinds[l - 1], d, gW)
            use_d0 = not use_d0
        if l == 0 and csr_ptr.shape[0] > 0:
            dense_update_sparse(csr_ptr, csr_idx, csr_val, x_scale, rows, cur, coef, tW, tb)
        elif use_blas[l]:
            dense_update_blas(x, cur, B, coef, tW, tb, gW, n_split)
        else:
            dense_update_loops(x, cur, B, coef, tW, tb)
    return loss_sum, correct


@njit(**JIT)
def train_epoch_serial(params, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val, targets, labels, order, lrs,
                       batch_size, use_blas, acts, act_off, sizes, zlast, delta0, delta1, gW, n_split):
    """Every minibatch of `order` in turn, in one compiled call. Returns (loss_sum, n_correct).

    n_split > 1 splits each BLAS layer's gemms into that many row chunks on Numba's threads."""
    n = order.shape[0]
    n_steps = (n + batch_size - 1) // batch_size
    loss_sum = 0.0
    correct = 0
    for s in range(n_steps):
        start = s * batch_size
        stop = min(n, start + batch_size)
        coef = params.dtype.type(lrs[s]) / params.dtype.type(stop - start)
        prefetch_rows(X, csr_ptr, csr_idx, csr_val, targets, labels, view1d(order, stop, min(n, stop + batch_size) - stop))
        ls, c = minibatch_step(params, params, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val, targets,
                               labels, view1d(order, start, stop - start), coef, use_blas, acts, act_off, sizes, zlast,
                               delta0, delta1, gW, n_split)
        loss_sum += ls
        correct += c
    return loss_sum, correct


@njit(parallel=True, **JIT)
def train_epoch_hogwild(params, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val, targets, labels, order,
                        lrs, batch_size, use_blas, acts, act_off, sizes, zlast, delta0, delta1, gW):
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
        for s in range(n_steps * w // n_workers, n_steps * (w + 1) // n_workers):
            start = s * batch_size
            stop = min(n, start + batch_size)
            coef = params.dtype.type(lrs[s]) / params.dtype.type(stop - start)
            prefetch_rows(X, csr_ptr, csr_idx, csr_val, targets, labels, view1d(order, stop, min(n, stop + batch_size) - stop))
            ls, c = minibatch_step(params, params, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val,
                                   targets, labels, view1d(order, start, stop - start), coef, use_blas, acts[w], act_off, sizes,
                                   zlast[w], delta0[w], delta1[w], gW[w], None)
            losses[w] += ls
            corrects[w] += c
    return losses.sum(), corrects.sum()


@njit(**JIT)
def loss_and_grad(params, grad, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val, targets, labels, use_blas,
                  acts, act_off, sizes, zlast, delta0, delta1, gW):
    """Mean loss over all rows of X; the mean gradient is written into the zeroed `grad`."""
    n = X.shape[0]
    coef = grad.dtype.type(-1.0) / grad.dtype.type(n)  # grad -= (-1 / n) * sum = mean gradient
    ls, _ = minibatch_step(params, grad, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val, targets, labels,
                           np.arange(n), coef, use_blas, acts, act_off, sizes, zlast, delta0, delta1, gW, None)
    return ls / n


@njit(parallel=True, **JIT)
def forward_chunks(params, layout, kinds, X, x_scale, csr_ptr, csr_idx, csr_val, out, chunk, use_blas,
                   acts, act_off, sizes, zlast):
    """Output activations of every row of X, in chunks of `chunk` rows, worker w taking chunks
    w, w + n_workers, ... (workspace arrays have a leading worker axis). Chunks are independent,
    so the result does not depend on the thread count."""
    n = X.shape[0]
    n_workers = acts.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    L = layout.shape[0]
    n_out = sizes[L]
    for w in prange(n_workers):
        for c in range(w, n_chunks, n_workers):
            start = c * chunk
            stop = min(n, start + chunk)
            network_forward(params, layout, kinds, X, x_scale, csr_ptr, csr_idx, csr_val, np.arange(start, stop),
                            use_blas, acts[w], act_off, sizes, zlast[w], None)
            a = _acts(acts[w], act_off, sizes, L, chunk)
            for i in range(stop - start):
                for j in range(n_out):
                    out[start + i, j] = a[i, j]


# ---- the training recipe (momentum, weight decay, dropout, image shifts) ---------------------
# A separate epoch kernel (`train_epoch_recipe`), so the plain-SGD kernels above stay exactly as
# they were; the backend picks one per call. The counter-based generator is fastgd._random's,
# in wrapping uint64 arithmetic throughout (mixing int64 with uint64 in Numba gives float64).
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


@njit(**JIT)
def optimizer_range(P, G, V, k0, k1, lr, mu, use_velocity, nesterov, l2, l1, decay):
    """The recipe's step for P[k0:k1] from its mean gradient G (base.py's order of operations),
    16 lanes at a time; G is zeroed for the next minibatch. `decay`: weights (l2, l1 apply), not
    biases. (Scalar loops measured ~13 us per lesson-network step: the flags kept LLVM from
    vectorising them.)"""
    zero = vsplat(0, P)
    for k in range(k0, k1, VL):
        m = min(VL, k1 - k)
        w = vload(P, k, m)
        g = vload(G, k, m)
        if decay:
            g = vfma(g, l2, w)
            g = vfma(g, l1, vsign(w))
        if use_velocity:
            v = vfma(g, mu, vload(V, k, m))  # mu * v + g
            vstore(V, k, m, v)
            step = vfma(g, mu, v) if nesterov else v
        else:
            step = g
        vstore(P, k, m, vfma(w, -lr, step))
        vstore(G, k, m, zero)


@njit(**JIT)
def optimizer_update(params, grad, velocity, layout, lr, momentum, nesterov, l2, l1):
    """params -= lr * step over every layer (weights decayed, biases not), velocity in place."""
    f = params.dtype.type
    mu = f(momentum)
    use_velocity = momentum > 0
    for l in range(layout.shape[0]):
        w_off, b_off, n_out = layout[l, 0], layout[l, 1], layout[l, 3]
        optimizer_range(params, grad, velocity, w_off, b_off, lr, mu, use_velocity, nesterov, f(l2), f(l1), True)
        optimizer_range(params, grad, velocity, b_off, b_off + n_out, lr, mu, use_velocity, nesterov, f(0), f(0),
                        False)


@njit(**JIT)
def network_forward_recipe(params, layout, kinds, X, x_scale, csr_ptr, csr_idx, csr_val, rows, use_blas,
                           acts, act_off, sizes, zlast, n_split, masks, dropped, dropout, drop_scale, seed, pos0,
                           max_shift, img_rows, img_cols, mptr, midx, mval, brows, pixel_row, pixel_col):
    """`network_forward` with image shifts on the input and inverted dropout on hidden layers
    (acts keep the activations before masking; `dropped` holds what the next layer reads).
    Returns the input layer's CSR and rows (the shifted minibatch CSR when shifting sparse input)."""
    B = rows.shape[0]
    bmax = zlast.shape[0]
    L = layout.shape[0]
    sparse_input = csr_ptr.shape[0] > 0
    ptr, idx, val, in_rows = csr_ptr, csr_idx, csr_val, rows
    if sparse_input:
        if max_shift > 0:
            shifted_csr(csr_ptr, csr_idx, csr_val, rows, seed, pos0, max_shift, img_rows, img_cols, mptr, midx, mval,
                        pixel_row, pixel_col)
            ptr, idx, val, in_rows = mptr, midx, mval, view1d(brows, 0, B)
    elif max_shift > 0:
        gather_dense_shifted(X, rows, x_scale, _acts(acts, act_off, sizes, 0, bmax), seed, pos0, max_shift,
                             img_rows, img_cols)
    else:
        gather_dense(X, rows, x_scale, _acts(acts, act_off, sizes, 0, bmax))
    first_unit = 0
    for l in range(L):
        W, b = _layer_views(params, layout, l)
        if dropout > 0 and l > 0:
            x = _acts(dropped, act_off, sizes, l, bmax)
        else:
            x = _acts(acts, act_off, sizes, l, bmax)
        a = _acts(acts, act_off, sizes, l + 1, bmax)
        z = zlast if l == L - 1 else a
        if l == 0 and sparse_input:
            dense_forward_sparse(ptr, idx, val, x_scale, in_rows, W, b, z)
        elif use_blas[l]:
            dense_forward_blas(x, B, W, b, z, n_split)
        else:
            dense_forward_loops(x, B, W, b, z)
        for i in range(B):
            activation_forward(z, a, i, kinds[l])
        if dropout > 0 and l < L - 1:
            dropout_rows(a, _acts(masks, act_off, sizes, l + 1, bmax), _acts(dropped, act_off, sizes, l + 1, bmax),
                         B, seed, pos0, first_unit, dropout, drop_scale)
            first_unit += sizes[l + 1]
    return ptr, idx, val, in_rows


@njit(**JIT)
def minibatch_step_recipe(params, target, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val, targets,
                          labels, rows, coef, use_blas, acts, act_off, sizes, zlast, delta0, delta1, gW, n_split,
                          masks, dropped, dropout, drop_scale, seed, pos0, max_shift, img_rows, img_cols, mptr, midx,
                          mval, brows, pixel_row, pixel_col):
    """`minibatch_step` with dropout and shifts: a dropped unit passes no gradient back (dL/da
    times the mask before the activation derivative), and each layer's weight gradient uses
    the masked activations it read."""
    B = rows.shape[0]
    bmax = zlast.shape[0]
    L = layout.shape[0]
    ptr, idx, val, in_rows = network_forward_recipe(
        params, layout, kinds, X, x_scale, csr_ptr, csr_idx, csr_val, rows, use_blas, acts, act_off, sizes, zlast,
        n_split, masks, dropped, dropout, drop_scale, seed, pos0, max_shift, img_rows, img_cols, mptr, midx, mval,
        brows, pixel_row, pixel_col)
    n_out = sizes[L]
    out = _acts(acts, act_off, sizes, L, bmax)
    d = view2d(delta0, 0, bmax, n_out)
    loss_sum = 0.0
    correct = 0
    for i in range(B):
        r = rows[i]
        loss_sum += loss_forward_backward(zlast, out, d, i, targets, r, loss, kinds[L - 1])
        if argmax_row(out, i) == labels[r]:
            correct += 1
    use_d0 = True
    for l in range(L - 1, -1, -1):
        W, _ = _layer_views(params, layout, l)
        tW, tb = _layer_views(target, layout, l)
        n_in = sizes[l]
        a_in = _acts(acts, act_off, sizes, l, bmax)
        if dropout > 0 and l > 0:
            x = _acts(dropped, act_off, sizes, l, bmax)
        else:
            x = a_in
        cur = d
        if l > 0:
            other = delta1 if use_d0 else delta0
            d = view2d(other, 0, bmax, n_in)
            kind = kinds[l - 1]
            if dropout > 0:
                kind = LINEAR  # the mask goes in before the derivative, applied below
            if use_blas[l]:
                dense_backward_dx_blas(cur, B, W, a_in, kind, d, n_split)
            else:
                dense_backward_dx_loops(cur, B, W, a_in, kind, d, gW)
            if dropout > 0:
                mask = _acts(masks, act_off, sizes, l, bmax)
                for i in range(B):
                    for j in range(n_in):
                        d[i, j] *= mask[i, j]
                    activation_backward(a_in, d, i, kinds[l - 1])
            use_d0 = not use_d0
        if l == 0 and csr_ptr.shape[0] > 0:
            dense_update_sparse(ptr, idx, val, x_scale, in_rows, cur, coef, tW, tb)
        elif use_blas[l]:
            dense_update_blas(x, cur, B, coef, tW, tb, gW, n_split)
        else:
            dense_update_loops(x, cur, B, coef, tW, tb)
    return loss_sum, correct


@njit(**JIT)
def train_epoch_recipe(params, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val, targets, labels, order, lrs,
                       batch_size, use_blas, acts, act_off, sizes, zlast, delta0, delta1, gW, n_split,
                       grad, velocity, momentum, nesterov, l2, l1,
                       masks, dropped, dropout, seed, first_position, max_shift, img_rows, img_cols,
                       mptr, midx, mval, brows):
    """`train_epoch_serial` with the training recipe (base.py): momentum/Nesterov and L2/L1 make
    the update dense, so each minibatch's mean gradient goes into `grad` and one fused pass then
    updates every parameter (and `velocity`, in place); without them the update stays sparse and
    in place. Dropout masks and shifts are keyed by (seed, first_position + index in order, unit)."""
    n = order.shape[0]
    n_steps = (n + batch_size - 1) // batch_size
    f = params.dtype.type
    optimiser = momentum > 0 or l2 > 0 or l1 > 0
    drop_scale = f(1.0 / (1.0 - dropout))
    n_pixels = img_rows * img_cols if max_shift > 0 and csr_ptr.shape[0] > 0 else 0
    pixel_row = np.empty(n_pixels, dtype=np.int64)
    pixel_col = np.empty(n_pixels, dtype=np.int64)
    for pix in range(n_pixels):
        pixel_row[pix] = pix // img_cols
        pixel_col[pix] = pix % img_cols
    loss_sum = 0.0
    correct = 0
    for s in range(n_steps):
        start = s * batch_size
        stop = min(n, start + batch_size)
        lr = f(lrs[s])
        if optimiser:
            target = grad
            coef = f(-1.0) / f(stop - start)  # grad -= (-1 / B) * sum = the mean gradient
        else:
            target = params
            coef = lr / f(stop - start)
        prefetch_rows(X, csr_ptr, csr_idx, csr_val, targets, labels, view1d(order, stop, min(n, stop + batch_size) - stop))
        ls, c = minibatch_step_recipe(params, target, layout, kinds, loss, X, x_scale, csr_ptr, csr_idx, csr_val,
                                      targets, labels, view1d(order, start, stop - start), coef, use_blas, acts,
                                      act_off, sizes, zlast, delta0, delta1, gW, n_split, masks, dropped, dropout,
                                      drop_scale, seed, first_position + start, max_shift, img_rows, img_cols, mptr,
                                      midx, mval, brows, pixel_row, pixel_col)
        if optimiser:
            optimizer_update(params, grad, velocity, layout, lr, momentum, nesterov, l2, l1)
        loss_sum += ls
        correct += c
    return loss_sum, correct
