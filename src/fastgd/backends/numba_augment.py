"""fastgd.augment's sampling map (rotation, shift, elastic distortion, bilinear) for the Numba kernels.

The same double-precision operations in the same order as the NumPy reference (fastgd/augment.py,
which documents the geometry) and the C version (kernels/fastgd_augment.h), compiled without
fastmath so LLVM contracts nothing into FMAs: the pixels equal the reference's bit for bit.

``augment_rows(X, rows, x_scale, x, seed, pos0, max_shift, max_rotate, alpha, img_rows, img_cols,
work)`` writes x[i] = the augmented image of input row X[rows[i]] at epoch position pos0 + i (the
drop-in for numba_kernels.gather_dense_shifted); ``work = make_work(img_rows, img_cols)``.
``augment_rows_split(..., works)`` does the same with the rows in len(works) chunks on Numba's
threads (works = make_works(n, img_rows, img_cols)); images are independent, so the result does
not depend on the split.

Numba's on-disk cache does not track calls across files: a cached kernel of numba_kernels.py that
calls these functions keeps the old code after an edit here until numba_kernels.py changes too or
its __pycache__ entries are removed (numba issues #1833, #9483).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.core import config

from .. import _random, augment

# No fastmath: every a * b + c stays two roundings, as in the reference. Said explicitly: a callee
# that leaves fastmath unset inherits its caller's (numba.core.cpu: flags.inherit_if_not_set), so
# called from the fastmath training kernels these compiled with FMAs, and the on-disk cache then
# handed that version to direct calls too.
JIT = dict(cache=not config.BOUNDSCHECK, nogil=True, fastmath=False, error_model="numpy")

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_UNITS = np.uint64(_random.MAX_UNITS)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT_STREAM = np.uint64(_random.SHIFT_STREAM)
_ROTATE_STREAM = np.uint64(_random.ROTATE_STREAM)
_ELASTIC_STREAM = _random.ELASTIC_STREAM
_POINTS = _random.ELASTIC_POINTS
GRID = augment.ELASTIC_GRID
_CELLS = float(augment.ELASTIC_CELLS)
_SIN = np.array(augment.SIN_COEFFS, dtype=np.float64)
_COS = np.array(augment.COS_COEFFS, dtype=np.float64)
_DEG2RAD = augment.DEG2RAD
_SIXTH = augment.SIXTH
_U24 = 2.0 ** -24


@njit(**JIT)
def _mix64(z):
    z = z + _C0
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


@njit(**JIT)
def _draw(seed, pos, unit):
    return _mix64(seed ^ _mix64(np.uint64(pos) * _UNITS + np.uint64(unit)))


@njit(**JIT)
def sample_params(seed, pos, max_shift, max_rotate, alpha, rows, cols, px, py):
    """The random geometry of the sample at `pos` (augment.sample_params): returns
    (cos, sin, cx - dx, cy - dy) and fills px, py (POINTS,) when alpha > 0. seed: uint64."""
    dx = np.int64(0)
    dy = np.int64(0)
    if max_shift > 0:
        r = _draw(seed, pos, _SHIFT_STREAM)
        span = np.uint64(2 * max_shift + 1)
        dx = np.int64((r & _LOW32) % span) - max_shift
        dy = np.int64((r >> np.uint64(32)) % span) - max_shift
    bx0 = 0.5 * float(cols - 1) - float(dx)
    by0 = 0.5 * float(rows - 1) - float(dy)
    cs = 1.0
    sn = 0.0
    if max_rotate > 0:
        u = float(_draw(seed, pos, _ROTATE_STREAM) >> np.uint64(40)) * _U24
        deg = (2.0 * u - 1.0) * max_rotate
        h = deg * _DEG2RAD * 0.5
        h2 = h * h
        ps = _SIN[10]
        pc = _COS[10]
        for k in range(9, -1, -1):
            ps = ps * h2 + _SIN[k]
            pc = pc * h2 + _COS[k]
        sh = h * ps
        cs = pc * pc - sh * sh
        sn = 2.0 * (sh * pc)
    if alpha > 0:
        for q in range(_POINTS):
            r = _draw(seed, pos, _ELASTIC_STREAM + q)
            ux = float((r & _LOW32) >> np.uint64(8)) * _U24
            uy = float(r >> np.uint64(40)) * _U24
            px[q] = (2.0 * ux - 1.0) * alpha
            py[q] = (2.0 * uy - 1.0) * alpha
    return cs, sn, bx0, by0


@njit(**JIT)
def _cell(i, scale):
    """Lattice cell of pixel i (scale = CELLS / n) and its four B-spline weights (augment.lattice)."""
    u = (float(i) + 0.5) * scale
    k = np.floor(u)
    t = u - k
    s = 1.0 - t
    t2 = t * t
    t3 = t2 * t
    return (int(k), ((s * s) * s) * _SIXTH, ((3.0 * t3 - 6.0 * t2) + 4.0) * _SIXTH,
            (((3.0 * t2 - 3.0 * t3) + 3.0 * t) + 1.0) * _SIXTH, t3 * _SIXTH)


def make_work(img_rows, img_cols):
    """Scratch for augment_rows: the zero-bordered source image, the coordinates of one output
    row, the field's column pass and the control points (float64, one per thread)."""
    return np.zeros((img_rows + 2) * (img_cols + 2) + 2 * img_cols + 2 * GRID * img_cols + 2 * _POINTS,
                    dtype=np.float64)


@njit(**JIT)
def warp(pad, rows, cols, cs, sn, bx0, by0, elastic, px, py, sxb, syb, rcx, rcy, out):
    """out (rows * cols) = the bilinear samples of the zero-bordered image pad at the sampling map
    of (cs, sn, bx0, by0) and, when elastic, the control points px, py (augment.sampling_coords,
    augment.bilinear; rcx, rcy (GRID, cols) and sxb, syb (cols,) are scratch)."""
    cx = 0.5 * float(cols - 1)
    cy = 0.5 * float(rows - 1)
    colsd = float(cols)
    rowsd = float(rows)
    cscale = _CELLS / colsd
    rscale = _CELLS / rowsd
    W = cols + 2
    zero = out.dtype.type(0)
    if elastic:  # the field's column pass
        for j in range(cols):
            k, w0, w1, w2, w3 = _cell(j, cscale)
            for i in range(GRID):
                b = i * GRID + k
                rcx[i, j] = ((w0 * px[b] + w1 * px[b + 1]) + w2 * px[b + 2]) + w3 * px[b + 3]
                rcy[i, j] = ((w0 * py[b] + w1 * py[b + 1]) + w2 * py[b + 2]) + w3 * py[b + 3]
    for r in range(rows):
        y = float(r) - cy
        bx = bx0 - sn * y
        by = by0 + cs * y
        for j in range(cols):
            x = float(j) - cx
            sxb[j] = cs * x + bx
            syb[j] = sn * x + by
        if elastic:  # the row pass
            k, w0, w1, w2, w3 = _cell(r, rscale)
            for j in range(cols):
                sxb[j] = sxb[j] + (((w0 * rcx[k, j] + w1 * rcx[k + 1, j]) + w2 * rcx[k + 2, j]) + w3 * rcx[k + 3, j])
                syb[j] = syb[j] + (((w0 * rcy[k, j] + w1 * rcy[k + 1, j]) + w2 * rcy[k + 2, j]) + w3 * rcy[k + 3, j])
        o = r * cols
        for j in range(cols):
            sx = sxb[j]
            sy = syb[j]
            if sx > -1.0 and sx < colsd and sy > -1.0 and sy < rowsd:
                fx0 = np.floor(sx)
                fy0 = np.floor(sy)
                fx = sx - fx0
                fy = sy - fy0
                i = (int(fy0) + 1) * W + (int(fx0) + 1)
                a = pad[i]
                b = pad[i + 1]
                c = pad[i + W]
                d = pad[i + W + 1]
                out[o + j] = out.dtype.type((1.0 - fy) * ((1.0 - fx) * a + fx * b) + fy * ((1.0 - fx) * c + fx * d))
            else:
                out[o + j] = zero


@njit(**JIT)
def augment_rows(X, rows, x_scale, x, seed, pos0, max_shift, max_rotate, alpha, img_rows, img_cols, work):
    """x[i] = X[rows[i]] scaled (x.dtype(X) * x.dtype(x_scale), as the reference's input), then
    augmented as the sample at epoch position pos0 + i (augment.augment_images with rotation or
    elastic distortion on). seed: uint64; work: make_work(img_rows, img_cols)."""
    scale = x.dtype.type(x_scale)
    W = img_cols + 2
    n_pad = (img_rows + 2) * W
    pad = work[:n_pad]
    sxb = work[n_pad:n_pad + img_cols]
    syb = work[n_pad + img_cols:n_pad + 2 * img_cols]
    q = n_pad + 2 * img_cols
    rcx = work[q:q + GRID * img_cols].reshape((GRID, img_cols))
    rcy = work[q + GRID * img_cols:q + 2 * GRID * img_cols].reshape((GRID, img_cols))
    q += 2 * GRID * img_cols
    px = work[q:q + _POINTS]
    py = work[q + _POINTS:q + 2 * _POINTS]
    for j in range(n_pad):
        pad[j] = 0.0
    elastic = alpha > 0
    for i in range(rows.shape[0]):
        src = rows[i]
        for r in range(img_rows):
            for c in range(img_cols):
                pad[(r + 1) * W + c + 1] = float(x.dtype.type(X[src, r * img_cols + c]) * scale)
        cs, sn, bx0, by0 = sample_params(seed, pos0 + i, max_shift, max_rotate, alpha, img_rows, img_cols, px, py)
        warp(pad, img_rows, img_cols, cs, sn, bx0, by0, elastic, px, py, sxb, syb, rcx, rcy, x[i])


def make_works(n, img_rows, img_cols):
    """Scratch for augment_rows_split: one make_work row per chunk."""
    return np.zeros((max(1, n), make_work(img_rows, img_cols).shape[0]), dtype=np.float64)


@njit(parallel=True, **JIT)
def augment_rows_split(X, rows, x_scale, x, seed, pos0, max_shift, max_rotate, alpha, img_rows, img_cols, works):
    """augment_rows with the rows in works.shape[0] chunks, one per Numba thread."""
    n_split = works.shape[0]
    n = rows.shape[0]
    for c in prange(n_split):
        r0 = n * c // n_split
        r1 = n * (c + 1) // n_split
        if r1 > r0:
            augment_rows(X, rows[r0:r1], x_scale, x[r0:r1], seed, pos0 + r0, max_shift, max_rotate, alpha, img_rows,
                         img_cols, works[c])
