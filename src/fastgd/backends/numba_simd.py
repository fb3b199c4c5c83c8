"""SIMD building blocks of the Numba kernels: 16-lane vectors held in registers, borrowed array
views and prefetch hints, as Numba intrinsics (LLVM IR written directly).

LLVM cannot prove that a row of weights and an accumulator row do not overlap, so a plain
`for j in range(n_out): z[j] += v * W[k, j]` loop reloads and stores z every step behind runtime
alias checks (measured ~10 cycles per 16-wide row update). These intrinsics keep accumulators in
registers as LLVM vectors; loads and stores are masked, so a 16-column block may be partial
(n - j0 < 16 lanes) without touching memory past it.

Bounds checks: with NUMBA_BOUNDSCHECK=1 (numba.config.BOUNDSCHECK) `vload`, `vstore`, `view1d`
and `view2d` check their ranges against the array's size and raise IndexError, as Numba's own
indexing does then; in the normal build they compile to the bare instructions.
"""
from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

VL = 16
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _boundscheck():
    return bool(config.BOUNDSCHECK)


def _check_range(context, builder, arrty, arr, off, n):
    """Raise IndexError unless 0 <= off and off + n <= arr.size (only with NUMBA_BOUNDSCHECK=1)."""
    ary = context.make_array(arrty)(context, builder, arr)
    size = ir.Constant(_I64, 1)
    for dim in cgutils.unpack_tuple(builder, ary.shape, arrty.ndim):
        size = builder.mul(size, dim)
    off = builder.sext(off, _I64) if off.type.width < 64 else off
    n = builder.sext(n, _I64) if n.type.width < 64 else n
    bad = builder.or_(builder.icmp_signed("<", off, ir.Constant(_I64, 0)),
                      builder.icmp_signed(">", builder.add(off, n), size))
    bad = builder.and_(bad, builder.icmp_signed(">", n, ir.Constant(_I64, 0)))
    with builder.if_then(bad, likely=False):
        context.call_conv.return_user_exc(builder, IndexError, ("fastgd kernel: index out of range",))


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


def _ptr_at(context, builder, arrty, arr, ity, i, n):
    """Pointer to element i (of Numba type ity) of the array arr (of type arrty), whose n elements
    from there are checked to lie inside it under NUMBA_BOUNDSCHECK=1."""
    i = context.cast(builder, i, ity, types.intp)
    if _boundscheck():
        _check_range(context, builder, arrty, arr, i, ir.Constant(_I64, n))
    return builder.gep(context.make_array(arrty)(context, builder, arr).data, [i])


def _element_ptr(context, builder, sig, args, n):
    """_ptr_at for an (arr, index) intrinsic's first two arguments."""
    return _ptr_at(context, builder, sig.args[0], args[0], sig.args[1], args[1], n)


def _check_array(arr):
    return isinstance(arr, types.Array) and arr.layout == "C" and isinstance(arr.dtype, types.Float)


@intrinsic
def vload(typingctx, arr, off, n):
    """Lanes arr.flat[off + l] for l < n, zero for the others (masked: never reads past n)."""
    if not _check_array(arr):
        return None

    def codegen(context, builder, sig, args):
        off_ = context.cast(builder, args[1], sig.args[1], types.intp)
        n_ = context.cast(builder, args[2], sig.args[2], types.int64)
        if _boundscheck():
            _check_range(context, builder, sig.args[0], args[0], off_, n_)
        ptr, mask, vty = _masked_access(context, builder, sig.args[0], args[0], off_, n_)
        fn = _masked_fn(builder, "load", vty, ptr)
        return builder.call(fn, [ptr, ir.Constant(_I32, arr.dtype.bitwidth // 8), mask, ir.Constant(vty, None)])

    return Vec(arr.dtype)(arr, off, n), codegen


@intrinsic
def vstore(typingctx, arr, off, n, v):
    """arr.flat[off + l] = v[l] for l < n (masked: never writes past n)."""
    if not _check_array(arr) or not isinstance(v, Vec) or v.dtype != arr.dtype:
        return None

    def codegen(context, builder, sig, args):
        off_ = context.cast(builder, args[1], sig.args[1], types.intp)
        n_ = context.cast(builder, args[2], sig.args[2], types.int64)
        if _boundscheck():
            _check_range(context, builder, sig.args[0], args[0], off_, n_)
        ptr, mask, vty = _masked_access(context, builder, sig.args[0], args[0], off_, n_)
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
def vwhere_positive_else(typingctx, a, x, y):
    """x where a > 0, else y, lane by lane (leaky ReLU's forward and derivative)."""
    def codegen(context, builder, sig, args):
        zero = ir.Constant(args[0].type, None)
        return builder.select(builder.fcmp_ordered(">", args[0], zero), args[1], args[2])

    return x(a, x, y), codegen


@intrinsic
def vdiv(typingctx, a, b):
    def codegen(context, builder, sig, args):
        return builder.fdiv(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def vsqrt(typingctx, v):
    """Square root of every lane (llvm.sqrt: IEEE-exact, like np.sqrt)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        vty = args[0].type
        bits = 32 if vty.element == ir.FloatType() else 64
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]), f"llvm.sqrt.v{VL}f{bits}")
        return builder.call(fn, [args[0]])

    return v(v), codegen


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
        # Round with an intrinsic, not the (x + 1.5 * 2^23) - 1.5 * 2^23 trick: with 'reassoc' in
        # the caller's fastmath flags (the kernels once had it) LLVM folds that trick away.
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
        if _boundscheck():
            _check_range(context, builder, sig.args[0], args[0], off_, builder.mul(rows_, cols_))
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
        if _boundscheck():
            _check_range(context, builder, sig.args[0], args[0], off_, n_)
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


@intrinsic
def copy_elems(typingctx, dst, dst_off, src, src_off, n):
    """dst.flat[dst_off:dst_off + n] = src.flat[src_off:src_off + n] for two C-contiguous
    arrays of one dtype, as one memcpy (the element loop Numba makes of a slice copy ran at
    ~1.4 ns per element, 7x the memcpy, in the row gather); ranges checked under
    NUMBA_BOUNDSCHECK=1."""
    if (not isinstance(dst, types.Array) or not isinstance(src, types.Array) or dst.layout != "C"
            or src.layout != "C" or dst.dtype != src.dtype):
        return None

    def codegen(context, builder, sig, args):
        count = context.cast(builder, args[4], sig.args[4], types.intp)
        d_off = context.cast(builder, args[1], sig.args[1], types.intp)
        s_off = context.cast(builder, args[3], sig.args[3], types.intp)
        if _boundscheck():
            _check_range(context, builder, sig.args[0], args[0], d_off, count)
            _check_range(context, builder, sig.args[2], args[2], s_off, count)
        d = builder.gep(context.make_array(sig.args[0])(context, builder, args[0]).data, [d_off])
        s = builder.gep(context.make_array(sig.args[2])(context, builder, args[2]).data, [s_off])
        cgutils.raw_memcpy(builder, d, s, count, context.get_abi_sizeof(context.get_data_type(sig.args[0].dtype)))
        return context.get_dummy_value()

    return types.none(dst, dst_off, src, src_off, n), codegen


@intrinsic
def nonzero_bits64(typingctx, arr, off):
    """uint64 whose bit j says arr.flat[off + j] != 0, for the 64 bytes from off of a uint8
    C-contiguous array (one vector compare: vptestmb with AVX-512BW)."""
    if not isinstance(arr, types.Array) or arr.layout != "C" or arr.dtype != types.uint8:
        return None

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(ir.IntType(8), 64)
        ptr = builder.bitcast(_element_ptr(context, builder, sig, args, 64), vty.as_pointer())
        v = builder.load(ptr, align=1)
        bits = builder.icmp_unsigned("!=", v, ir.Constant(vty, None))
        return builder.bitcast(bits, _I64)

    return types.uint64(arr, off), codegen


def _host_has(*features):
    """Whether Numba compiles for this machine's CPU (no NUMBA_CPU_NAME/NUMBA_CPU_FEATURES
    override) and that CPU has every one of `features` (LLVM's names)."""
    if config.CPU_NAME not in (None, "host") or config.CPU_FEATURES is not None:
        return False
    import llvmlite.binding as llb
    try:
        have = llb.get_host_cpu_features()
    except Exception:  # pragma: no cover - features unknown on this platform
        return False
    return all(have.get(f, False) for f in features)


#: Register compress (vpcompressb/w): AVX-512 VBMI2. Only then may `nonzeros_packed64` be compiled.
HAVE_COMPRESS = _host_has("avx512bw", "avx512vbmi2")


def _x86_compress(builder, vty, mask_ty):
    name = f"llvm.x86.avx512.mask.compress.v{vty.count}i{vty.element.width}"
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(vty, [vty, vty, mask_ty]), name)
    return fn


@intrinsic
def nonzeros_packed64(typingctx, x, off, first, idx, val, p):
    """The non-zero bytes among the 64 of the uint8 C-contiguous array x from off, packed: their
    values to val[p:], their indices (first + position in the block, as uint16) to idx[p:];
    returns p + their number. Whole vectors are stored (64 values, 2 x 32 indices), so idx and
    val need 64 slots from p (the chunk CSR's room: before a block at most its offset in the row
    is kept). Register compress (vpcompressb/w), then plain stores. Needs HAVE_COMPRESS."""
    if not (isinstance(x, types.Array) and x.layout == "C" and x.dtype == types.uint8
            and isinstance(idx, types.Array) and idx.layout == "C" and idx.dtype == types.uint16
            and isinstance(val, types.Array) and val.layout == "C" and val.dtype == types.uint8):
        return None

    def codegen(context, builder, sig, args):
        xa, o, f, ia, va, pos = args
        xt, ot, ft, it, vt, pt = sig.args

        def at(arrty, arr, ity, i, n):
            return _ptr_at(context, builder, arrty, arr, ity, i, n)

        b8 = ir.VectorType(ir.IntType(8), 64)
        w16 = ir.VectorType(ir.IntType(16), 32)
        i1x32 = ir.VectorType(ir.IntType(1), 32)
        v = builder.load(builder.bitcast(at(xt, xa, ot, o, 64), b8.as_pointer()), align=1)
        bits = builder.icmp_unsigned("!=", v, ir.Constant(b8, None))
        m = builder.bitcast(bits, _I64)
        lo = builder.trunc(m, _I32)
        hi = builder.trunc(builder.lshr(m, ir.Constant(_I64, 32)), _I32)
        pos = context.cast(builder, pos, pt, types.intp)
        pos_hi = builder.add(pos, builder.zext(builder.call(builder.module.declare_intrinsic("llvm.ctpop", [_I32]), [lo]), _I64))
        end = builder.add(pos, builder.call(builder.module.declare_intrinsic("llvm.ctpop", [_I64]), [m]))
        packed = builder.call(_x86_compress(builder, b8, bits.type), [v, ir.Constant(b8, None), bits])
        builder.store(packed, builder.bitcast(at(vt, va, types.intp, pos, 64), b8.as_pointer()), align=1)
        f16 = builder.trunc(context.cast(builder, f, ft, types.intp), ir.IntType(16))
        splat = builder.insert_element(ir.Constant(w16, ir.Undefined), f16, ir.Constant(_I32, 0))
        splat = builder.shuffle_vector(splat, ir.Constant(w16, ir.Undefined), ir.Constant(ir.VectorType(_I32, 32), [0] * 32))
        first = builder.add(ir.Constant(w16, list(range(32))), splat)
        second = builder.add(first, ir.Constant(w16, [32] * 32))
        compress16 = _x86_compress(builder, w16, i1x32)
        for lanes, half, start in ((first, lo, pos), (second, hi, pos_hi)):
            kept = builder.call(compress16, [lanes, ir.Constant(w16, None), builder.bitcast(half, i1x32)])
            builder.store(kept, builder.bitcast(at(it, ia, types.intp, start, 32), w16.as_pointer()), align=1)
        return end

    return types.int64(x, off, first, idx, val, p), codegen


# ---- an OpenMP team barrier and direct BLAS gemm -------------------------------------------
def _load_gomp():
    """Make libgomp's symbols visible to the JIT linker (Numba's "omp" threading layer and the
    Cython backend load the same library). False if it cannot be loaded: no team barrier then."""
    import ctypes.util

    import llvmlite.binding as llb
    for name in ("libgomp.so.1", ctypes.util.find_library("gomp")):
        if not name:
            continue
        try:
            llb.load_library_permanently(name)
            return True
        except Exception:  # pragma: no cover - no libgomp on this system
            continue
    return False  # pragma: no cover


HAVE_GOMP = _load_gomp()


def _int_call(name):
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, []), name)
        return builder.sext(builder.call(fn, []), _I64)
    return codegen


@intrinsic
def team_barrier(typingctx, workers):
    """GOMP_barrier(): wait until every thread of the current OpenMP team arrives. Only valid in
    a prange region of Numba's "omp" layer in which each thread runs exactly one iteration (see
    numba_kernels.team_probe); outside a team it returns at once. Not called at all when the
    team has `workers` <= 1: in a team of one, libgomp's barrier still cost ~0.37 us (the lesson
    network's epoch, two a step: 33.5 -> 29.1 ms without them)."""
    if not isinstance(workers, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        n = context.cast(builder, args[0], sig.args[0], types.int64)
        with builder.if_then(builder.icmp_signed(">", n, ir.Constant(_I64, 1))):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "GOMP_barrier")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(workers), codegen


@intrinsic
def team_thread_num(typingctx):
    """omp_get_thread_num() as int64."""
    return types.int64(), _int_call("omp_get_thread_num")


@intrinsic
def team_size(typingctx):
    """omp_get_num_threads() as int64 (1 outside an OpenMP team)."""
    return types.int64(), _int_call("omp_get_num_threads")


@intrinsic
def gemm_raw(typingctx, ta, tb, m, n, k, alpha, A, offa, lda, B, offb, ldb, beta, C, offc, ldc):
    """Row-major C[offc:] (m x n, row stride ldc) = alpha * op(A) @ op(B) + beta * C, op = transpose
    when ta / tb is true; A, B, C flat float arrays of one dtype with element offsets and row
    strides. Calls Numba's numba_xxgemm (SciPy's BLAS, the gemm np.dot uses) with the operands
    swapped for column-major order. No range check: use numba_kernels.gemm."""
    if not all(_check_array(x) and x.ndim == 1 for x in (A, B, C)) or not (A.dtype == B.dtype == C.dtype):
        return None
    dtype = C.dtype

    def codegen(context, builder, sig, args):
        (ta_, tb_, m_, n_, k_, alpha_, a_, offa_, lda_, b_, offb_, ldb_, beta_, c_, offc_, ldc_) = args
        st = sig.args
        intp = context.get_value_type(types.intp)
        vp = ir.IntType(8).as_pointer()
        ch = ir.IntType(8)
        fnty = ir.FunctionType(_I32, [ch, ch, ch, intp, intp, intp, vp, vp, intp, vp, intp, vp, vp, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")

        def ptr(arr, arrty, off, offty):
            ary = context.make_array(arrty)(context, builder, arr)
            return builder.bitcast(builder.gep(ary.data, [context.cast(builder, off, offty, types.intp)]), vp)

        def slot(value, ty):
            p = cgutils.alloca_once(builder, context.get_value_type(dtype))
            builder.store(context.cast(builder, value, ty, dtype), p)
            return builder.bitcast(p, vp)

        def trans(flag, ty):
            flag = context.cast(builder, flag, ty, types.boolean)
            return builder.select(flag, ir.Constant(ch, ord("t")), ir.Constant(ch, ord("n")))

        def ip(v, ty):
            return context.cast(builder, v, ty, types.intp)

        kind = ir.Constant(ch, ord("s" if dtype == types.float32 else "d"))
        builder.call(fn, [kind, trans(tb_, st[1]), trans(ta_, st[0]), ip(n_, st[3]), ip(m_, st[2]), ip(k_, st[4]),
                          slot(alpha_, st[5]), ptr(b_, st[9], offb_, st[10]), ip(ldb_, st[11]),
                          ptr(a_, st[6], offa_, st[7]), ip(lda_, st[8]), slot(beta_, st[12]),
                          ptr(c_, st[13], offc_, st[14]), ip(ldc_, st[15])])
        return context.get_dummy_value()

    return types.none(ta, tb, m, n, k, alpha, A, offa, lda, B, offb, ldb, beta, C, offc, ldc), codegen


@intrinsic
def ld(typingctx, arr, i):
    """arr[i] of a 1-D C-contiguous array without Numba's negative-index wraparound (a sign test
    and a conditional move per access, measured ~40% of the sparse input layer's time); i must
    be in range (checked under NUMBA_BOUNDSCHECK=1)."""
    if not isinstance(arr, types.Array) or arr.ndim != 1 or arr.layout != "C":
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_ptr(context, builder, sig, args, 1))

    return arr.dtype(arr, i), codegen


@intrinsic
def borrow(typingctx, arr):
    """The same array without its meminfo: a borrowed view whose reference counting compiles to
    a null test instead of atomic increments and decrements. Numba increfs an array every time
    a function reads it out of a namedtuple argument, and with dozens of such reads per layer
    per minibatch that measured ~2 us per lesson-network minibatch (more than its arithmetic).
    Only for arrays that outlive the kernel call (its arguments)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        out = context.make_array(sig.return_type)(context, builder)
        context.populate_array(out, data=src.data, shape=src.shape, strides=src.strides, itemsize=src.itemsize,
                               meminfo=None)
        return out._getvalue()

    return arr(arr), codegen


# ---- hand-offs between the split epoch's two threads (numba_split) ---------------------------
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _check_counter(arr, i):
    return (isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype == types.int64
            and isinstance(i, types.Integer))


@intrinsic
def counter_load(typingctx, arr, i):
    """arr[i] (int64) read with acquire ordering: what the thread that published it wrote
    before publishing is visible after this read. Never hoisted out of a loop."""
    if not _check_counter(arr, i):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_element_ptr(context, builder, sig, args, 1), "acquire", 8)

    return types.int64(arr, i), codegen


@intrinsic
def counter_publish(typingctx, arr, i, value):
    """arr[i] = value (int64) with release ordering: every write before it is visible to a
    thread that reads the value with counter_load."""
    if not _check_counter(arr, i) or not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(v, _element_ptr(context, builder, sig, args, 1), "release", 8)
        return context.get_dummy_value()

    return types.none(arr, i, value), codegen


@intrinsic
def cycles(typingctx):
    """A cycle count (llvm.readcyclecounter: the time-stamp counter on x86, 0 on a target without
    one), for the split epoch's optional phase profile: a clock call costs more than some phases."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@intrinsic
def spin_pause(typingctx):
    """x86 `pause` in a spin-wait loop (frees the core's resources; elsewhere nothing)."""
    def codegen(context, builder, sig, args):
        if _X86:  # LLVM's intrinsic: Numba's JIT has no parser for inline assembly
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def yield_core(typingctx):
    """sched_yield(): give the core to another runnable thread (a spin-wait that lasts, e.g.
    with more threads than cores, while the thread it waits for needs this core)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen
