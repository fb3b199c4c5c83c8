"""Image augmentation beyond shifts: small rotations and elastic distortions (issue 15).

This module is the NumPy reference and the one home of the geometry; the compiled versions
(kernels/fastgd_augment.h for Cython, fastgd/backends/numba_augment.py for Numba) perform the
same double-precision operations in the same order, without fused multiply-adds, so all three
produce the same augmented pixels bit for bit (float64 and float32 alike: the pixel is computed
in double and rounded once to the network's dtype).

One sampling map per training sample
------------------------------------
The sample at epoch position p (key (plan.seed, p), the same key as dropout masks and shifts:
fastgd._random) is an image of `rows` x `cols` pixels whose values are the scaled input row
(uint8 * x_scale computed in the network's dtype, exactly what the un-augmented input would be).
Output pixel (r, c) reads the source image at

    (sx, sy) = R(theta) ((c, r) - centre) + centre - (dx, dy) + alpha * field(r, c)

with bilinear interpolation between the four pixels around (sx, sy) and zero outside the image:

    centre = ((cols - 1) / 2, (rows - 1) / 2); x = c - cx, y = r - cy
    sx = cos * x + ((cx - dx) - sin * y)  [+ ex(r, c)]
    sy = sin * x + ((cy - dy) + cos * y)  [+ ey(r, c)]
    x0 = floor(sx), y0 = floor(sy), fx = sx - x0, fy = sy - y0, a..d the source pixels
    (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1), 0 outside the image:
    v = (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)
    a pixel with not (-1 < sx < cols and -1 < sy < rows) is 0 without further work (all four
    neighbours lie outside then).

* (dx, dy): the integer shift of fastgd._random.shifts (0 when max_shift is 0), so a positive dx
  moves the picture right, as the shift-only path does. With rotation and elastic distortion off,
  the old shift-only code (_random.shift_images) runs unchanged, so shift-only results are
  bitwise what they were.
* theta: degrees = (2u - 1) * max_rotate with u = _random.rotation_uniform (24 bits), so theta
  is uniform in [-max_rotate, max_rotate); radians = degrees * DEG2RAD. With rows pointing down
  the screen, a positive theta turns the picture counter-clockwise as displayed. max_rotate is
  at most 180. cos and sin come from a fixed polynomial (`rotation` below: Taylor series of the
  half angle, error < 1e-15), not the platform's libm, so every implementation gets the same
  bits. max_rotate == 0: cos = 1, sin = 0, nothing drawn.
* field: a cubic B-spline over a lattice of ELASTIC_CELLS x ELASTIC_CELLS cells spanning the
  image (ELASTIC_GRID = ELASTIC_CELLS + 3 = 7 control points per axis, 49 per sample); control
  point (i, j) holds the displacement (2 ux - 1, 2 uy - 1) * alpha with ux, uy from
  _random.elastic_uniforms (24 bits each, one draw per point). Pixel row r sits at lattice
  coordinate u = (r + 0.5) * (ELASTIC_CELLS / rows), cell k = floor(u), t = u - k, and takes
  the weights of control rows k .. k + 3
      w0 = ((s * s) * s) * SIXTH, w1 = ((3 t^3 - 6 t^2) + 4) * SIXTH,
      w2 = (((3 t^2 - 3 t^3) + 3 t) + 1) * SIXTH, w3 = t^3 * SIXTH
      (s = 1 - t, t^3 = (t * t) * t, SIXTH = 1.0 / 6.0 as a double)
  (columns alike). The field is evaluated columns first:
      Rc[i, c] = ((wc0 P[i, kc] + wc1 P[i, kc + 1]) + wc2 P[i, kc + 2]) + wc3 P[i, kc + 3]
      e(r, c)  = ((wr0 Rc[kr, c] + wr1 Rc[kr + 1, c]) + wr2 Rc[kr + 2, c]) + wr3 Rc[kr + 3, c]
  B-spline weights are >= 0 and sum to 1, so |ex|, |ey| <= alpha: alpha is the largest
  displacement in pixels. The field is smooth (C2), with a correlation length of about a cell
  (7 pixels on MNIST); its standard deviation is about 0.28 alpha per axis. alpha ~ 5 on MNIST
  is about the strength of Simard et al.'s alpha = 34, sigma = 4 Gaussian-blurred field, at a
  fraction of its cost (49 random pairs and ~30 flops per pixel instead of a blur of a
  per-pixel field). alpha == 0: no field, nothing drawn.

All coordinate and interpolation arithmetic is float64, one IEEE operation at a time in the
order written above (the C version switches off FMA contraction, Numba runs without fastmath).

Cost (bench/augment_cost.py, MNIST, float32 out, thread CPU time on the shared 2-core test
machine under load, 08:46): the C version ~1.6-1.7 us per image with rotation + shift, ~3.0-3.2 us
with the elastic field (portable C loops ~2.7 / ~4.3-4.5); Numba ~4.3-4.6 / ~6.0-6.4; this
reference ~60-140 us. That is several times the lesson network's whole training step (~0.5 us per
sample): bilinear resampling costs tens of instructions per output pixel, 784 pixels per image.
The C version samples with AVX-512 gathers where the compiler targets them (portable loops
otherwise) and skips the output pixels that cannot reach the image's non-zero box (their exact
value is +0; -0.0 pixels count as content), which changes no bit.
"""
from __future__ import annotations

import math

import numpy as np

from . import _random

#: Cells per axis of the elastic lattice; the lattice has ELASTIC_CELLS + 3 control points per axis.
ELASTIC_CELLS = _random.ELASTIC_GRID - 3
ELASTIC_GRID = _random.ELASTIC_GRID
#: math.pi / 180, written out so that the C and Numba versions use the same double
DEG2RAD = 0.017453292519943295
#: Taylor coefficients (-1)^k / (2k + 1)! and (-1)^k / (2k)!, k = 0..10, correctly rounded
SIN_COEFFS = (1.0, -0.16666666666666666, 0.008333333333333333, -0.0001984126984126984, 2.7557319223985893e-06,
              -2.505210838544172e-08, 1.6059043836821613e-10, -7.647163731819816e-13, 2.8114572543455206e-15,
              -8.22063524662433e-18, 1.9572941063391263e-20)
COS_COEFFS = (1.0, -0.5, 0.041666666666666664, -0.001388888888888889, 2.48015873015873e-05,
              -2.755731922398589e-07, 2.08767569878681e-09, -1.1470745597729725e-11, 4.779477332387385e-14,
              -1.5619206968586225e-16, 4.110317623312165e-19)
MAX_ROTATE = 180.0  # degrees
SIXTH = 0.16666666666666666  # 1.0 / 6.0, the B-spline weights' common factor


def rotation(degrees):
    """(cos, sin) of `degrees` (float64 scalars or arrays, |degrees| <= 180) by the fixed
    polynomial every implementation shares: h = radians / 2, sh = h * S(h^2), ch = C(h^2) by
    Horner from the highest coefficient, cos = ch * ch - sh * sh, sin = 2 * (sh * ch)."""
    h = np.asarray(degrees, dtype=np.float64) * DEG2RAD * 0.5
    h2 = h * h
    p = np.float64(SIN_COEFFS[-1])
    q = np.float64(COS_COEFFS[-1])
    for k in range(len(SIN_COEFFS) - 2, -1, -1):
        p = p * h2 + SIN_COEFFS[k]
        q = q * h2 + COS_COEFFS[k]
    sh = h * p
    return q * q - sh * sh, 2.0 * (sh * q)


def bspline_weights(t):
    """The four uniform cubic B-spline weights at fraction t in [0, 1) (see the module docstring)."""
    s = 1.0 - t
    t2 = t * t
    t3 = t2 * t
    return (((s * s) * s) * SIXTH, ((3.0 * t3 - 6.0 * t2) + 4.0) * SIXTH,
            (((3.0 * t2 - 3.0 * t3) + 3.0 * t) + 1.0) * SIXTH, t3 * SIXTH)


def lattice(n):
    """For the n pixels of one axis: (k, (w0, w1, w2, w3)), each pixel's lattice cell and weights."""
    u = (np.arange(n, dtype=np.float64) + 0.5) * (ELASTIC_CELLS / n)
    k = np.floor(u)
    return k.astype(np.int64), bspline_weights(u - k)


def sample_params(seed, positions, max_shift, max_rotate, alpha):
    """The random geometry of the samples at `positions`: dict with dx, dy (int64), cos, sin
    (float64) of shape (n,), and px, py (n, ELASTIC_GRID, ELASTIC_GRID) float64 control-point
    displacements (None when alpha is 0)."""
    positions = np.asarray(positions, dtype=np.int64)
    n = len(positions)
    if max_shift > 0:
        dx, dy = _random.shifts(seed, positions, max_shift)
    else:
        dx = dy = np.zeros(n, dtype=np.int64)
    if max_rotate > 0:
        u = _random.rotation_uniform(seed, positions)
        cos, sin = rotation((2.0 * u - 1.0) * float(max_rotate))
    else:
        cos, sin = np.ones(n), np.zeros(n)
    px = py = None
    if alpha > 0:
        ux, uy = _random.elastic_uniforms(seed, positions)
        px = ((2.0 * ux - 1.0) * float(alpha)).reshape(n, ELASTIC_GRID, ELASTIC_GRID)
        py = ((2.0 * uy - 1.0) * float(alpha)).reshape(n, ELASTIC_GRID, ELASTIC_GRID)
    return dict(dx=dx, dy=dy, cos=np.asarray(cos, dtype=np.float64), sin=np.asarray(sin, dtype=np.float64),
                px=px, py=py)


def elastic_field(P, rows, cols):
    """The displacement (n, rows, cols) of control-point lattices P (n, GRID, GRID), columns first."""
    kc, wc = lattice(cols)
    kr, wr = lattice(rows)
    rc = ((wc[0] * P[:, :, kc] + wc[1] * P[:, :, kc + 1]) + wc[2] * P[:, :, kc + 2]) + wc[3] * P[:, :, kc + 3]
    wr = [w[None, :, None] for w in wr]
    return ((wr[0] * rc[:, kr, :] + wr[1] * rc[:, kr + 1, :]) + wr[2] * rc[:, kr + 2, :]) + wr[3] * rc[:, kr + 3, :]


def sampling_coords(params, rows, cols):
    """(sx, sy), each (n, rows, cols) float64: where every output pixel reads its source."""
    cx, cy = 0.5 * (cols - 1), 0.5 * (rows - 1)
    x = (np.arange(cols, dtype=np.float64) - cx)[None, None, :]
    y = (np.arange(rows, dtype=np.float64) - cy)[None, :, None]
    cos, sin = params["cos"][:, None, None], params["sin"][:, None, None]
    bx = (cx - params["dx"].astype(np.float64))[:, None, None] - sin * y
    by = (cy - params["dy"].astype(np.float64))[:, None, None] + cos * y
    sx = cos * x + bx
    sy = sin * x + by
    if params["px"] is not None:
        sx = sx + elastic_field(params["px"], rows, cols)
        sy = sy + elastic_field(params["py"], rows, cols)
    return sx, sy


def bilinear(img, sx, sy):
    """Bilinear samples (float64) of images img (n, rows, cols) at (sx, sy) (n, rows, cols), zero
    outside the image, in the module docstring's operation order."""
    n, rows, cols = img.shape
    pad = np.zeros((n, rows + 2, cols + 2), dtype=np.float64)
    pad[:, 1:-1, 1:-1] = img
    inside = (sx > -1.0) & (sx < cols) & (sy > -1.0) & (sy < rows)
    sx = np.where(inside, sx, 0.0)
    sy = np.where(inside, sy, 0.0)
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = sx - x0, sy - y0
    xi = x0.astype(np.int64) + 1  # indices into the zero-padded image
    yi = y0.astype(np.int64) + 1
    b = np.arange(n)[:, None, None]
    a, bb = pad[b, yi, xi], pad[b, yi, xi + 1]
    c, d = pad[b, yi + 1, xi], pad[b, yi + 1, xi + 1]
    v = (1.0 - fy) * ((1.0 - fx) * a + fx * bb) + fy * ((1.0 - fx) * c + fx * d)
    return np.where(inside, v, 0.0)


def augment_images(x, rows, cols, seed, positions, max_shift=0, max_rotate=0.0, alpha=0.0):
    """The training inputs x (n, rows * cols) (scaled, the network's dtype) of the samples at
    epoch `positions`, shifted, rotated and distorted as the module docstring defines; same
    dtype. Shifts alone take _random.shift_images' path (bitwise the pre-issue-15 results)."""
    x = np.asarray(x)
    n = x.shape[0]
    if max_rotate == 0 and alpha == 0:
        if max_shift == 0:
            return x
        dx, dy = _random.shifts(seed, positions, max_shift)
        return _random.shift_images(x, rows, cols, dx, dy)
    params = sample_params(seed, positions, max_shift, max_rotate, alpha)
    sx, sy = sampling_coords(params, rows, cols)
    img = x.reshape(n, rows, cols).astype(np.float64)
    return bilinear(img, sx, sy).astype(x.dtype).reshape(n, rows * cols)


def check(max_rotate, alpha, image_shape=None, n_in=None, what="plan"):
    """Validate augmentation settings: max_rotate in [0, 180] degrees and alpha >= 0, both finite
    real numbers; when either is on, image_shape must be (rows, cols) of positive integers with
    rows * cols == n_in. Raises ValueError; returns (float(max_rotate), float(alpha))."""
    out = []
    for name, value, hi in (("max_rotate", max_rotate, MAX_ROTATE), ("elastic_alpha", alpha, math.inf)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{what}.{name} must be a real number, got {value!r}")
        v = float(value)
        if not math.isfinite(v) or v < 0 or v > hi:
            bound = f"[0, {hi:g}]" if math.isfinite(hi) else ">= 0 and finite"
            raise ValueError(f"{what}.{name} must be {bound}, got {value!r}")
        out.append(v)
    if (out[0] > 0 or out[1] > 0) and n_in is not None:
        shape = image_shape
        ok = (isinstance(shape, (tuple, list)) and len(shape) == 2
              and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape))
        if not ok or int(shape[0]) * int(shape[1]) != n_in:
            raise ValueError(f"{what}.image_shape {shape!r} must be (rows, cols) of positive integers "
                             f"holding the {n_in} inputs when max_rotate or elastic_alpha is on")
    return out[0], out[1]
