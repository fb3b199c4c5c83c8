"""The zero-skipping input layer of the Numba team epoch at every width (issue 11).

The input of MNIST-like data is mostly zeros (81%), so the first layer reads only each sample's
non-zero pixels, from the CSR index numba_backend builds once per fit (ptr int64, idx uint16 or
int32, val uint8), and scales them through a 256-entry table of exactly the reference's values
(lut[v] = dtype(v) * dtype(x_scale)). This is the Numba twin of the Cython kernels'
fgd_sparse_forward_* / fgd_csc_update_* (kernels/fastgd_simd.h):

Forward, one sample at a time: z = b + sum_k lut[val_k] W[idx_k, :], the width walked in groups
of 8 vectors of 16 lanes (one accumulator set: 8 independent FMA chains, each pixel's index and
value loaded once per 128 columns), the rest one vector at a time with 4 accumulators over
consecutive pixels. A sample's value depends only on its own pixels, so the worker split does not
change it.

Update, by weight row: a worker's weight rows i0..i1 get the minibatch's non-zero pixels of those
rows as columns (`csc_build`: per pixel row, its (sample, value) entries in ascending sample
order), then each touched weight row is read and written once per step:
W[i, :] += coef * sum_s lut[v_s] D[s, :], in slabs of 64 lanes (4 vectors, 2 accumulator sets:
8 chains), rows inner, so the slab of D every row reads stays in L1; the rest one vector at a
time. Layers of at most 16 units update sample by sample instead (`sparse_update_narrow`). Each
weight row sums its samples in a fixed order whatever the split, so the weights do not depend on
the number of workers.

The group loops are written out inside the callers: as separate functions LLVM left some of them
out of line (a call passing ~40 array fields per weight row cost more than the row's arithmetic,
784-512 at batch 32: 668 -> 197 ms per epoch for the update once written out), and Numba's IR
inlining (inline="always") put reference-count calls, spilling every accumulator, into the
inner loops.

Widths need not be multiples of 16: the last vector of a layer is masked (`vload`/`vstore` with
fewer lanes), nothing past the row is read or written.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numba.core import config

from .numba_simd import VL, ld, vadd, vfma, vload, vsplat, vstore

FASTMATH = {"nsz", "arcp", "contract"}  # as numba_kernels (no reassoc: see there)
#: The update's 128-lane slabs (one pass over the column index per 128 lanes instead of per 64)
#: when the minibatch's deltas for one slab take at most this many bytes (batch 32 float32: 16 KB).
SLAB8_BYTES = 1 << 15
JIT = dict(cache=not config.BOUNDSCHECK, nogil=True, fastmath=FASTMATH, error_model="numpy")


@njit(**JIT)
def scale_table(x_scale, like):
    """lut[v] = dtype(v) * dtype(x_scale) for v < 256 into `like` (256,): the reference's pixel."""
    scale = like.dtype.type(x_scale)
    for v in range(256):
        like[v] = like.dtype.type(v) * scale


# ---- forward ------------------------------------------------------------------------------------
@njit(**JIT)
def sparse_forward(ptr, idx, val, lut, rows, W, b, z, zo):
    """z[zo + i * n_out:][:n_out] = b + sum over the non-zero pixels k of input row rows[i] of
    lut[val_k] * W[idx_k, :], for every i < len(rows) (no activation). W flat (n_in * n_out,).
    128-lane groups: 8 vectors, one accumulator set (8 chains); the rest one vector at a time
    with 4 accumulators over consecutive pixels (4 chains)."""
    n_out = b.shape[0]
    nv = (n_out + VL - 1) // VL
    ml = n_out - (nv - 1) * VL
    zero = vsplat(0, b)
    for i in range(rows.shape[0]):
        r = ld(rows, i)
        p0 = ld(ptr, r)
        p1 = ld(ptr, r + 1)
        zi = zo + i * n_out
        jv = 0
        while jv + 8 <= nv:
            j0 = jv * VL
            m = ml if jv + 8 == nv else VL
            a0 = vload(b, j0, VL)
            a1 = vload(b, j0 + 16, VL)
            a2 = vload(b, j0 + 32, VL)
            a3 = vload(b, j0 + 48, VL)
            a4 = vload(b, j0 + 64, VL)
            a5 = vload(b, j0 + 80, VL)
            a6 = vload(b, j0 + 96, VL)
            a7 = vload(b, j0 + 112, m)
            for p in range(p0, p1):
                x = ld(lut, ld(val, p))
                o = np.int64(ld(idx, p)) * n_out + j0
                a0 = vfma(a0, x, vload(W, o, VL))
                a1 = vfma(a1, x, vload(W, o + 16, VL))
                a2 = vfma(a2, x, vload(W, o + 32, VL))
                a3 = vfma(a3, x, vload(W, o + 48, VL))
                a4 = vfma(a4, x, vload(W, o + 64, VL))
                a5 = vfma(a5, x, vload(W, o + 80, VL))
                a6 = vfma(a6, x, vload(W, o + 96, VL))
                a7 = vfma(a7, x, vload(W, o + 112, m))
            vstore(z, zi + j0, VL, a0)
            vstore(z, zi + j0 + 16, VL, a1)
            vstore(z, zi + j0 + 32, VL, a2)
            vstore(z, zi + j0 + 48, VL, a3)
            vstore(z, zi + j0 + 64, VL, a4)
            vstore(z, zi + j0 + 80, VL, a5)
            vstore(z, zi + j0 + 96, VL, a6)
            vstore(z, zi + j0 + 112, m, a7)
            jv += 8
        while jv < nv:
            j0 = jv * VL
            m = ml if jv + 1 == nv else VL
            a0 = vload(b, j0, m)
            c0 = zero
            e0 = zero
            f0 = zero
            p = p0
            while p + 4 <= p1:
                a0 = vfma(a0, ld(lut, ld(val, p)), vload(W, np.int64(ld(idx, p)) * n_out + j0, m))
                c0 = vfma(c0, ld(lut, ld(val, p + 1)), vload(W, np.int64(ld(idx, p + 1)) * n_out + j0, m))
                e0 = vfma(e0, ld(lut, ld(val, p + 2)), vload(W, np.int64(ld(idx, p + 2)) * n_out + j0, m))
                f0 = vfma(f0, ld(lut, ld(val, p + 3)), vload(W, np.int64(ld(idx, p + 3)) * n_out + j0, m))
                p += 4
            while p < p1:
                a0 = vfma(a0, ld(lut, ld(val, p)), vload(W, np.int64(ld(idx, p)) * n_out + j0, m))
                p += 1
            vstore(z, zi + j0, m, vadd(vadd(a0, c0), vadd(e0, f0)))
            jv += 1


@njit(**JIT)
def _sparse_forward_narrow(ptr, idx, val, lut, rows, W, b, z, n_out):
    """sparse_forward for a layer of at most 16 units, W (n_in, n_out) and z (rows, n_out) 2-D:
    the one vector per sample with 4 accumulators over consecutive pixels. The same arithmetic as
    sparse_forward's single-vector loop, yet in the team epoch of the lesson network that one
    measured ~2x this one's epoch time (123 vs 64 ms CPU per epoch, reproducible; not explained:
    perf counters are unavailable here)."""
    bv = vload(b, 0, n_out)
    zero = vsplat(0, b)
    for i in range(rows.shape[0]):
        r = ld(rows, i)
        p1 = ld(ptr, r + 1)
        acc0 = bv
        acc1 = zero
        acc2 = zero
        acc3 = zero
        p = ld(ptr, r)
        while p + 4 <= p1:
            acc0 = vfma(acc0, ld(lut, ld(val, p)), vload(W, np.int64(ld(idx, p)) * n_out, n_out))
            acc1 = vfma(acc1, ld(lut, ld(val, p + 1)), vload(W, np.int64(ld(idx, p + 1)) * n_out, n_out))
            acc2 = vfma(acc2, ld(lut, ld(val, p + 2)), vload(W, np.int64(ld(idx, p + 2)) * n_out, n_out))
            acc3 = vfma(acc3, ld(lut, ld(val, p + 3)), vload(W, np.int64(ld(idx, p + 3)) * n_out, n_out))
            p += 4
        while p < p1:
            acc0 = vfma(acc0, ld(lut, ld(val, p)), vload(W, np.int64(ld(idx, p)) * n_out, n_out))
            p += 1
        vstore(z, i * n_out, n_out, vadd(vadd(acc0, acc1), vadd(acc2, acc3)))


@njit(**JIT)
def _sparse_forward_narrow_split(ptr, idx, val, lut, rows, W, b, z, n_out, split, lower, upper, mids):
    """_sparse_forward_narrow with each row summed in two parts (numba_split): the pixels below
    `split` from the bias, the rest from zero, then added (lower + upper), so that the split
    epoch's two threads, each owning one part, give the bits of every other mode. lower / upper
    False leaves that part out (the split epoch's threads: one part each). mids: None, or per
    row its first entry at or above split (the split epoch's copy finds them; else a binary search).
    The two parts' loops are written out, as the module docstring explains: with one shared
    helper for the three sums the lower part measured 5.9 -> 8.1 ms per 6000 lesson steps."""
    bv = vload(b, 0, n_out)
    zero = vsplat(0, b)
    for i in range(rows.shape[0]):
        r = ld(rows, i)
        p0 = ld(ptr, r)
        p1 = ld(ptr, r + 1)
        if mids is None:
            mid = _first_at_least(idx, p0, p1, split)
        else:
            mid = ld(mids, r)
        lo = zero
        if lower:
            acc0 = bv
            acc1 = zero
            acc2 = zero
            acc3 = zero
            p = p0
            while p + 4 <= mid:
                acc0 = vfma(acc0, ld(lut, ld(val, p)), vload(W, np.int64(ld(idx, p)) * n_out, n_out))
                acc1 = vfma(acc1, ld(lut, ld(val, p + 1)), vload(W, np.int64(ld(idx, p + 1)) * n_out, n_out))
                acc2 = vfma(acc2, ld(lut, ld(val, p + 2)), vload(W, np.int64(ld(idx, p + 2)) * n_out, n_out))
                acc3 = vfma(acc3, ld(lut, ld(val, p + 3)), vload(W, np.int64(ld(idx, p + 3)) * n_out, n_out))
                p += 4
            while p < mid:
                acc0 = vfma(acc0, ld(lut, ld(val, p)), vload(W, np.int64(ld(idx, p)) * n_out, n_out))
                p += 1
            lo = vadd(vadd(acc0, acc1), vadd(acc2, acc3))
        if upper:
            acc0 = zero
            acc1 = zero
            acc2 = zero
            acc3 = zero
            p = mid
            while p + 4 <= p1:
                acc0 = vfma(acc0, ld(lut, ld(val, p)), vload(W, np.int64(ld(idx, p)) * n_out, n_out))
                acc1 = vfma(acc1, ld(lut, ld(val, p + 1)), vload(W, np.int64(ld(idx, p + 1)) * n_out, n_out))
                acc2 = vfma(acc2, ld(lut, ld(val, p + 2)), vload(W, np.int64(ld(idx, p + 2)) * n_out, n_out))
                acc3 = vfma(acc3, ld(lut, ld(val, p + 3)), vload(W, np.int64(ld(idx, p + 3)) * n_out, n_out))
                p += 4
            while p < p1:
                acc0 = vfma(acc0, ld(lut, ld(val, p)), vload(W, np.int64(ld(idx, p)) * n_out, n_out))
                p += 1
            hi = vadd(vadd(acc0, acc1), vadd(acc2, acc3))
            lo = vadd(lo, hi) if lower else hi
        vstore(z, i * n_out, n_out, lo)


@njit(**JIT)
def sparse_forward_narrow(ptr, idx, val, lut, rows, W, b, z, split=1 << 62, part=0, mids=None):
    """_sparse_forward_narrow, or with split < n_in _sparse_forward_narrow_split (part 0: both
    parts, 1: the lower only, 2: the upper only); at exactly 16 units with the width a constant
    (whole-vector loads, a shift for the row offset)."""
    if split >= W.shape[0]:
        if W.shape[1] == VL:
            _sparse_forward_narrow(ptr, idx, val, lut, rows, W, b, z, VL)
        else:
            _sparse_forward_narrow(ptr, idx, val, lut, rows, W, b, z, W.shape[1])
    elif part == 1:
        if W.shape[1] == VL:
            _sparse_forward_narrow_split(ptr, idx, val, lut, rows, W, b, z, VL, split, True, False, mids)
        else:
            _sparse_forward_narrow_split(ptr, idx, val, lut, rows, W, b, z, W.shape[1], split, True, False, mids)
    elif part == 2:
        if W.shape[1] == VL:
            _sparse_forward_narrow_split(ptr, idx, val, lut, rows, W, b, z, VL, split, False, True, mids)
        else:
            _sparse_forward_narrow_split(ptr, idx, val, lut, rows, W, b, z, W.shape[1], split, False, True, mids)
    elif W.shape[1] == VL:
        _sparse_forward_narrow_split(ptr, idx, val, lut, rows, W, b, z, VL, split, True, True, mids)
    else:
        _sparse_forward_narrow_split(ptr, idx, val, lut, rows, W, b, z, W.shape[1], split, True, True, mids)


# ---- update: the minibatch's pixels by weight row --------------------------------------------
@njit(**JIT)
def _first_at_least(idx, p0, p1, k):
    """The first p in [p0, p1) with idx[p] >= k (idx ascending there), or p1."""
    while p0 < p1:
        mid = (p0 + p1) >> 1
        if np.int64(ld(idx, mid)) < k:
            p0 = mid + 1
        else:
            p1 = mid
    return p0


@njit(**JIT)
def csc_build(ptr, idx, val, rows, i0, i1, cs, es, ev, lo, hi):
    """The non-zero pixels k in [i0, i1) of input rows rows[0..B), by pixel: pixel k's entries
    are es/ev[cs[k - i0]:cs[k - i0 + 1]] (sample number s < B, pixel value), s ascending.
    cs needs i1 - i0 + 2 slots, es/ev one per entry, lo/hi B slots (each sample's CSR range
    inside [i0, i1), found by binary search: a row's pixels are in ascending order)."""
    n = i1 - i0
    for j in range(n + 2):
        cs[j] = 0
    B = rows.shape[0]
    for s in range(B):
        r = ld(rows, s)
        p0 = ld(ptr, r)
        p1 = ld(ptr, r + 1)
        a = p0 if i0 <= 0 else _first_at_least(idx, p0, p1, i0)
        e = _first_at_least(idx, a, p1, i1)
        lo[s] = a
        hi[s] = e
        for p in range(a, e):
            cs[np.int64(ld(idx, p)) - i0 + 2] += 1
    for j in range(2, n + 2):
        cs[j] += cs[j - 1]
    for s in range(B):
        for p in range(lo[s], hi[s]):
            k = np.int64(ld(idx, p)) - i0 + 1
            q = cs[k]
            cs[k] = q + 1
            es[q] = s
            ev[q] = ld(val, p)


@njit(**JIT)
def csc_update(cs, es, ev, i0, i1, lut, D, do, n_out, coef, W, slab8):
    """W[i, :] += coef * sum over pixel i's entries (csc_build) of lut[v] * D[do + s * n_out:][:n_out]
    for i0 <= i < i1; W flat (n_in * n_out,). Slabs of 64 lanes (4 vectors, 2 chains of entries,
    8 FMA chains) outer, rows inner, so the slab of D all rows read stays in L1; the rest one
    vector at a time (4 chains)."""
    nv = (n_out + VL - 1) // VL
    ml = n_out - (nv - 1) * VL
    zero = vsplat(0, W)
    jv = 0
    while slab8 and jv + 8 <= nv:  # 128-lane slabs (8 chains of one entry each) when D's slab fits L1
        j0 = jv * VL
        m = ml if jv + 8 == nv else VL
        for i in range(i0, i1):
            q0 = np.int64(cs[i - i0])
            q1 = np.int64(cs[i - i0 + 1])
            if q1 <= q0:
                continue
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            a4 = zero
            a5 = zero
            a6 = zero
            a7 = zero
            for q in range(q0, q1):
                x = ld(lut, ld(ev, q))
                o = do + np.int64(ld(es, q)) * n_out + j0
                a0 = vfma(a0, x, vload(D, o, VL))
                a1 = vfma(a1, x, vload(D, o + 16, VL))
                a2 = vfma(a2, x, vload(D, o + 32, VL))
                a3 = vfma(a3, x, vload(D, o + 48, VL))
                a4 = vfma(a4, x, vload(D, o + 64, VL))
                a5 = vfma(a5, x, vload(D, o + 80, VL))
                a6 = vfma(a6, x, vload(D, o + 96, VL))
                a7 = vfma(a7, x, vload(D, o + 112, m))
            t = i * n_out + j0
            vstore(W, t, VL, vfma(vload(W, t, VL), coef, a0))
            vstore(W, t + 16, VL, vfma(vload(W, t + 16, VL), coef, a1))
            vstore(W, t + 32, VL, vfma(vload(W, t + 32, VL), coef, a2))
            vstore(W, t + 48, VL, vfma(vload(W, t + 48, VL), coef, a3))
            vstore(W, t + 64, VL, vfma(vload(W, t + 64, VL), coef, a4))
            vstore(W, t + 80, VL, vfma(vload(W, t + 80, VL), coef, a5))
            vstore(W, t + 96, VL, vfma(vload(W, t + 96, VL), coef, a6))
            vstore(W, t + 112, m, vfma(vload(W, t + 112, m), coef, a7))
        jv += 8
    while jv + 4 <= nv:
        j0 = jv * VL
        m = ml if jv + 4 == nv else VL
        for i in range(i0, i1):
            q0 = np.int64(cs[i - i0])
            q1 = np.int64(cs[i - i0 + 1])
            if q1 <= q0:
                continue
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            c0 = zero
            c1 = zero
            c2 = zero
            c3 = zero
            q = q0
            while q + 2 <= q1:
                x = ld(lut, ld(ev, q))
                o = do + np.int64(ld(es, q)) * n_out + j0
                y = ld(lut, ld(ev, q + 1))
                r = do + np.int64(ld(es, q + 1)) * n_out + j0
                a0 = vfma(a0, x, vload(D, o, VL))
                a1 = vfma(a1, x, vload(D, o + 16, VL))
                a2 = vfma(a2, x, vload(D, o + 32, VL))
                a3 = vfma(a3, x, vload(D, o + 48, m))
                c0 = vfma(c0, y, vload(D, r, VL))
                c1 = vfma(c1, y, vload(D, r + 16, VL))
                c2 = vfma(c2, y, vload(D, r + 32, VL))
                c3 = vfma(c3, y, vload(D, r + 48, m))
                q += 2
            if q < q1:
                x = ld(lut, ld(ev, q))
                o = do + np.int64(ld(es, q)) * n_out + j0
                a0 = vfma(a0, x, vload(D, o, VL))
                a1 = vfma(a1, x, vload(D, o + 16, VL))
                a2 = vfma(a2, x, vload(D, o + 32, VL))
                a3 = vfma(a3, x, vload(D, o + 48, m))
            t = i * n_out + j0
            vstore(W, t, VL, vfma(vload(W, t, VL), coef, vadd(a0, c0)))
            vstore(W, t + 16, VL, vfma(vload(W, t + 16, VL), coef, vadd(a1, c1)))
            vstore(W, t + 32, VL, vfma(vload(W, t + 32, VL), coef, vadd(a2, c2)))
            vstore(W, t + 48, m, vfma(vload(W, t + 48, m), coef, vadd(a3, c3)))
        jv += 4
    while jv < nv:
        j0 = jv * VL
        m = ml if jv + 1 == nv else VL
        for i in range(i0, i1):
            q0 = np.int64(cs[i - i0])
            q1 = np.int64(cs[i - i0 + 1])
            if q1 <= q0:
                continue
            a0 = zero
            c0 = zero
            e0 = zero
            f0 = zero
            q = q0
            while q + 4 <= q1:
                a0 = vfma(a0, ld(lut, ld(ev, q)), vload(D, do + np.int64(ld(es, q)) * n_out + j0, m))
                c0 = vfma(c0, ld(lut, ld(ev, q + 1)), vload(D, do + np.int64(ld(es, q + 1)) * n_out + j0, m))
                e0 = vfma(e0, ld(lut, ld(ev, q + 2)), vload(D, do + np.int64(ld(es, q + 2)) * n_out + j0, m))
                f0 = vfma(f0, ld(lut, ld(ev, q + 3)), vload(D, do + np.int64(ld(es, q + 3)) * n_out + j0, m))
                q += 4
            while q < q1:
                a0 = vfma(a0, ld(lut, ld(ev, q)), vload(D, do + np.int64(ld(es, q)) * n_out + j0, m))
                q += 1
            t = i * n_out + j0
            vstore(W, t, m, vfma(vload(W, t, m), coef, vadd(vadd(a0, c0), vadd(e0, f0))))
        jv += 1


@njit(**JIT)
def _sparse_update_narrow(ptr, idx, val, table, rows, i0, i1, D, do, n_out, W, mids):
    """sparse_update for a layer of at most 16 units (one vector per weight row): sample by
    sample, W[k] += table[v] * D[s] for each of its non-zero pixels k in [i0, i1), table[v] =
    coef * lut[v] (built once per step by sparse_update: a pixel then costs a broadcast load, not
    a multiply and a broadcast). At one vector per row the column index costs more than it
    saves (the lesson network at batch 10 measured ~2x slower per epoch with it, like the Cython
    backend's pad == 16 case)."""
    m = n_out
    for s in range(rows.shape[0]):
        r = ld(rows, s)
        p0 = ld(ptr, r)
        p1 = ld(ptr, r + 1)
        if mids is not None:  # [i0, i1) is [0, split) or [split, n_in): the row's split point
            a = p0 if i0 <= 0 else ld(mids, r)
            e = ld(mids, r) if i0 <= 0 else p1
        else:
            a = p0 if i0 <= 0 else _first_at_least(idx, p0, p1, i0)
            if a >= p1:
                continue
            e = p1 if np.int64(ld(idx, p1 - 1)) < i1 else _first_at_least(idx, a, p1, i1)
        d = vload(D, do + s * n_out, m)
        p = a
        # four rows loaded before any is stored (a sample's pixels are distinct rows), as
        # fgd_sparse_update16: the same operations per row
        while p + 4 <= e:
            o0 = np.int64(ld(idx, p)) * n_out
            o1 = np.int64(ld(idx, p + 1)) * n_out
            o2 = np.int64(ld(idx, p + 2)) * n_out
            o3 = np.int64(ld(idx, p + 3)) * n_out
            t0 = vfma(vload(W, o0, m), ld(table, ld(val, p)), d)
            t1 = vfma(vload(W, o1, m), ld(table, ld(val, p + 1)), d)
            t2 = vfma(vload(W, o2, m), ld(table, ld(val, p + 2)), d)
            t3 = vfma(vload(W, o3, m), ld(table, ld(val, p + 3)), d)
            vstore(W, o0, m, t0)
            vstore(W, o1, m, t1)
            vstore(W, o2, m, t2)
            vstore(W, o3, m, t3)
            p += 4
        while p < e:
            o = np.int64(ld(idx, p)) * n_out
            vstore(W, o, m, vfma(vload(W, o, m), ld(table, ld(val, p)), d))
            p += 1


@njit(**JIT)
def sparse_update_narrow(ptr, idx, val, table, rows, i0, i1, D, do, n_out, W, mids=None):
    """_sparse_update_narrow; at exactly 16 units with the width a constant (as the forward).
    mids: None, or per row its first entry at or above the split pixel, when [i0, i1) is one of
    the split epoch's two halves (no binary search per row)."""
    if n_out == VL:
        _sparse_update_narrow(ptr, idx, val, table, rows, i0, i1, D, do, VL, W, mids)
    else:
        _sparse_update_narrow(ptr, idx, val, table, rows, i0, i1, D, do, n_out, W, mids)


@njit(**JIT)
def sparse_update(ptr, idx, val, lut, rows, i0, i1, D, do, n_out, coef, W, cs, es, ev, lo, hi, table):
    """Weight rows i0..i1 of the sparse input layer: W[i] += coef * sum_s x[s, i] * D[s] over the
    minibatch's samples rows (D's rows at do, n_out wide), through the column index of those rows
    (cs/es/ev/lo/hi: this worker's scratch, see csc_build); layers of at most 16 units sample by
    sample instead, through table (256 entries of this worker's scratch: coef * lut)."""
    if i1 <= i0:
        return
    if n_out <= VL:
        for v in range(256):
            table[v] = coef * lut[v]
        sparse_update_narrow(ptr, idx, val, table, rows, i0, i1, D, do, n_out, W)
        return
    csc_build(ptr, idx, val, rows, i0, i1, cs, es, ev, lo, hi)
    csc_update(cs, es, ev, i0, i1, lut, D, do, n_out, coef, W, rows.shape[0] * 128 * D.itemsize <= SLAB8_BYTES)
