"""The counter-based random numbers behind dropout masks and image augmentation.

Every backend must draw exactly the same numbers, so they come from a stateless hash
(SplitMix64's finaliser) of (epoch seed, sample position in the epoch, unit index) instead of a
stateful generator. The compiled kernels implement these same few lines; tests compare them.

    r(seed, p, j) = mix64(seed XOR mix64(p * 2**20 + j))          (all uint64, wrapping)
    dropout: unit j (hidden units of all layers numbered consecutively) of the sample at
             position p is kept when (r >> 40) * 2**-24 >= rate
    shift:   with r = r(seed, p, SHIFT_STREAM) and span = 2k + 1,
             dx = (r & 0xFFFFFFFF) % span - k,  dy = (r >> 32) % span - k
    rotate:  u = (r(seed, p, ROTATE_STREAM) >> 40) * 2**-24, the angle's uniform number
    elastic: control point q (0 <= q < ELASTIC_POINTS) of the sample's displacement lattice
             (fastgd.augment) has r = r(seed, p, ELASTIC_STREAM + q) and the two uniforms
             ux = ((r & 0xFFFFFFFF) >> 8) * 2**-24 (column displacement), uy = (r >> 40) * 2**-24 (row)

The top units of every sample are reserved for these streams: hidden units (dropout) must number
fewer than FIRST_RESERVED.
"""
from __future__ import annotations

import numpy as np

MAX_UNITS = 1 << 20  # units per sample the counter layout leaves room for
SHIFT_STREAM = MAX_UNITS - 1  # the j reserved for a sample's shift
ROTATE_STREAM = MAX_UNITS - 2  # the j reserved for a sample's rotation angle
ELASTIC_GRID = 7  # control points per axis of the elastic lattice (fastgd.augment: 4 cells + 3)
ELASTIC_POINTS = ELASTIC_GRID * ELASTIC_GRID
ELASTIC_STREAM = ROTATE_STREAM - ELASTIC_POINTS  # control point q uses j = ELASTIC_STREAM + q
FIRST_RESERVED = ELASTIC_STREAM  # dropout units must stay below this

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def mix64(x):
    """SplitMix64: add the golden-ratio increment, then the finaliser (uint64 in, uint64 out)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _C0
        z = (z ^ (z >> np.uint64(30))) * _C1
        z = (z ^ (z >> np.uint64(27))) * _C2
        return z ^ (z >> np.uint64(31))


def draw(seed, positions, j):
    """r(seed, p, j) for arrays of positions p (shape (n, 1) against j of shape (m,) broadcasts)."""
    positions = np.asarray(positions, dtype=np.uint64)
    counter = positions * np.uint64(MAX_UNITS) + np.asarray(j, dtype=np.uint64)
    return mix64(np.uint64(seed) ^ mix64(counter))


def uniform(seed, positions, j):
    """Uniform numbers in [0, 1) with 24 random bits (exact in float32 and float64)."""
    return (draw(seed, positions, j) >> np.uint64(40)).astype(np.float64) * 2.0 ** -24


def dropout_keep(seed, positions, first_unit, n_units, rate):
    """Boolean keep-mask (len(positions), n_units) for hidden units first_unit .. first_unit+n_units-1."""
    u = uniform(seed, np.asarray(positions)[:, None], first_unit + np.arange(n_units))
    return u >= rate


def shifts(seed, positions, max_shift):
    """(dx, dy) int arrays in [-max_shift, max_shift] for each position."""
    r = draw(seed, positions, SHIFT_STREAM)
    span = np.uint64(2 * max_shift + 1)
    dx = ((r & np.uint64(0xFFFFFFFF)) % span).astype(np.int64) - max_shift
    dy = ((r >> np.uint64(32)) % span).astype(np.int64) - max_shift
    return dx, dy


def rotation_uniform(seed, positions):
    """The uniform number in [0, 1) (24 bits) that sets the rotation angle of each position."""
    return uniform(seed, positions, ROTATE_STREAM)


def elastic_uniforms(seed, positions):
    """(ux, uy), each (len(positions), ELASTIC_POINTS) uniforms in [0, 1) with 24 bits: the
    column and row displacements of every control point of each position's elastic lattice."""
    r = draw(seed, np.asarray(positions)[:, None], ELASTIC_STREAM + np.arange(ELASTIC_POINTS))
    ux = ((r & np.uint64(0xFFFFFFFF)) >> np.uint64(8)).astype(np.float64) * 2.0 ** -24
    uy = (r >> np.uint64(40)).astype(np.float64) * 2.0 ** -24
    return ux, uy


def shift_images(x, rows, cols, dx, dy):
    """Move each row-image of x (n, rows*cols) by (dx, dy) pixels, filling with zeros.

    out[r, c] = in[r - dy, c - dx]: a positive dx moves the picture right, a positive dy down.
    """
    n = x.shape[0]
    img = x.reshape(n, rows, cols)
    out = np.zeros_like(img)
    for i in range(n):
        sx, sy = int(dx[i]), int(dy[i])
        if abs(sx) >= cols or abs(sy) >= rows:  # moved off the image entirely (slices would wrap)
            continue
        src_r = slice(max(0, -sy), rows - max(0, sy))
        dst_r = slice(max(0, sy), rows - max(0, -sy))
        src_c = slice(max(0, -sx), cols - max(0, sx))
        dst_c = slice(max(0, sx), cols - max(0, -sx))
        out[i, dst_r, dst_c] = img[i, src_r, src_c]
    return out.reshape(n, rows * cols)
