"""Rotations and elastic distortions (issue 15): fastgd.augment (the NumPy reference and the
definition of the geometry), its Numba twin (backends/numba_augment.py) and its C twin
(kernels/fastgd_augment.h, compiled here into a small ctypes library), the counter-based streams
they draw from, EpochPlan.validate's checks and training with them in the NumPy backend."""
import ctypes
import dataclasses
import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import fastgd
from fastgd import _random, augment
from fastgd.backends import EpochPlan, get_backend
from fastgd.backends.base import AUGMENT_FEATURES

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def params(n=1, deg=0.0, dx=0, dy=0, px=None, py=None):
    cos, sin = augment.rotation(np.full(n, float(deg)))
    return dict(dx=np.full(n, dx, dtype=np.int64), dy=np.full(n, dy, dtype=np.int64), cos=cos, sin=sin,
                px=px, py=py)


def warp(img, p):
    """The reference's sampling map of params p applied to images img (n, rows, cols), float64."""
    n, rows, cols = img.shape
    return augment.bilinear(img.astype(np.float64), *augment.sampling_coords(p, rows, cols))


# ---- the polynomial rotation and the B-spline lattice -----------------------------------------
def test_coefficients_are_the_taylor_series():
    assert augment.SIN_COEFFS == tuple(float(Fraction((-1) ** k, math.factorial(2 * k + 1))) for k in range(11))
    assert augment.COS_COEFFS == tuple(float(Fraction((-1) ** k, math.factorial(2 * k))) for k in range(11))
    assert augment.DEG2RAD == math.pi / 180 and augment.SIXTH == 1.0 / 6.0


def test_rotation_is_cos_and_sin():
    deg = np.linspace(-180, 180, 3601)
    cos, sin = augment.rotation(deg)
    np.testing.assert_allclose(cos, np.cos(np.radians(deg)), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sin, np.sin(np.radians(deg)), rtol=0, atol=1e-15)
    c0, s0 = augment.rotation(0.0)
    assert c0 == 1.0 and s0 == 0.0


@pytest.mark.parametrize("n", [1, 2, 5, 28, 97])
def test_lattice_weights_are_a_partition_of_unity(n):
    k, w = augment.lattice(n)
    w = np.array(w)
    assert (w >= 0).all() and np.allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-15)
    assert k.min() >= 0 and k.max() <= augment.ELASTIC_CELLS - 1  # rows k .. k+3 exist in the 7-point lattice


def test_streams_do_not_overlap():
    assert _random.SHIFT_STREAM == _random.MAX_UNITS - 1 and _random.ROTATE_STREAM == _random.SHIFT_STREAM - 1
    assert _random.ELASTIC_STREAM + _random.ELASTIC_POINTS == _random.ROTATE_STREAM
    assert _random.FIRST_RESERVED == _random.ELASTIC_STREAM
    assert _random.ELASTIC_POINTS == augment.ELASTIC_GRID ** 2 == 49


# ---- geometry on known images -------------------------------------------------------------------
def test_zero_angle_and_zero_field_are_the_identity():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((3, 9, 11))
    zero = np.zeros((3, augment.ELASTIC_GRID, augment.ELASTIC_GRID))
    for p in (params(3), params(3, px=zero, py=zero)):
        np.testing.assert_array_equal(warp(img, p), img)
    x = rng.standard_normal((4, 99)).astype(np.float32)
    assert augment.augment_images(x, 9, 11, 5, np.arange(4)) is x  # nothing on: the input itself


def test_integer_shift_in_the_sampling_map_equals_the_shift_path():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((1, 6, 5))
    for dx, dy in [(2, -1), (-3, 0), (0, 4), (7, 7)]:
        want = _random.shift_images(img.reshape(1, -1), 6, 5, [dx], [dy]).reshape(1, 6, 5)
        np.testing.assert_array_equal(warp(img, params(dx=dx, dy=dy)), want)


def test_shift_only_keeps_the_old_path():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 30)).astype(np.float32)
    dx, dy = _random.shifts(9, np.arange(3, 9), 2)
    np.testing.assert_array_equal(augment.augment_images(x, 5, 6, 9, np.arange(3, 9), max_shift=2),
                                  _random.shift_images(x, 5, 6, dx, dy))


def test_quarter_turn_moves_a_pixel_counter_clockwise():
    img = np.zeros((1, 28, 28))
    img[0, 14, 20] = 1.0  # right of the centre (13.5, 13.5), on the row just below it
    out = warp(img, params(deg=90))
    # (x, y) = (6.5, 0.5) from the centre turns to (0.5, -6.5): above the centre, as displayed
    assert np.unravel_index(np.argmax(out[0]), (28, 28)) == (7, 14)
    np.testing.assert_allclose(out[0, 7, 14], 1.0, atol=1e-12)
    np.testing.assert_allclose(out.sum(), 1.0, atol=1e-12)
    back = warp(out, params(deg=-90))
    np.testing.assert_allclose(back, img, atol=1e-12)


def test_bar_turns_by_the_angle():
    img = np.zeros((1, 29, 29))  # odd size: the centre is pixel (14, 14)
    img[0, 14, 4:25] = 1.0  # a horizontal bar through the centre
    out = warp(img, params(deg=90))
    want = np.zeros_like(img)
    want[0, 4:25, 14] = 1.0
    np.testing.assert_allclose(out, want, atol=1e-12)
    for deg in (10.0, -25.0, 37.0):  # the bar's principal direction follows the angle
        out = warp(img, params(deg=deg))[0]
        r, c = np.nonzero(out > 1e-12)
        w = out[r, c]
        x, y = c - 14.0, r - 14.0
        cov = np.cov(np.vstack([x, y]), aweights=w)
        evals, evecs = np.linalg.eigh(cov)
        vx, vy = evecs[:, 1]
        got = math.degrees(math.atan2(-vy, vx))  # counter-clockwise as displayed (rows point down)
        got = (got + 90) % 180 - 90
        assert abs(got - deg) < 1.0, (deg, got)
        np.testing.assert_allclose(out.sum(), 21.0, rtol=0.02)


def test_rotation_roughly_preserves_mass():
    r, c = np.mgrid[0:28, 0:28]
    blob = np.exp(-((r - 12.0) ** 2 + (c - 15.0) ** 2) / 18.0)[None]
    for deg in (-30.0, 7.5, 45.0, 180.0):
        np.testing.assert_allclose(warp(blob, params(deg=deg)).sum(), blob.sum(), rtol=1e-3)


@pytest.mark.parametrize("alpha", [0.5, 3.0, 20.0])
def test_elastic_displacements_are_bounded_by_alpha_and_smooth(alpha):
    rows, cols = 28, 23
    p = augment.sample_params(11, np.arange(50), 0, 0.0, alpha)
    assert np.abs(p["px"]).max() <= alpha and np.abs(p["py"]).max() <= alpha
    sx, sy = augment.sampling_coords(p, rows, cols)
    ex = sx - np.arange(cols)[None, None, :]
    ey = sy - np.arange(rows)[None, :, None]
    assert np.abs(ex).max() <= alpha and np.abs(ey).max() <= alpha
    assert 0.15 * alpha < ex.std() < 0.4 * alpha and 0.15 * alpha < ey.std() < 0.4 * alpha  # ~0.28 alpha
    # smooth: neighbouring pixels move alike (a cell is ~6 pixels; the field is C2)
    assert np.abs(np.diff(ex, axis=2)).max() < 0.6 * alpha
    assert np.abs(np.diff(ey, axis=1)).max() < 0.6 * alpha


def test_elastic_distortion_keeps_a_blob_in_place_roughly():
    r, c = np.mgrid[0:28, 0:28]
    blob = np.exp(-((r - 13.5) ** 2 + (c - 13.5) ** 2) / 30.0).reshape(1, -1)
    out = augment.augment_images(np.repeat(blob, 20, axis=0), 28, 28, 3, np.arange(20), alpha=2.0)
    assert not np.allclose(out, blob)
    mass = out.sum(axis=1)  # a smooth map squeezes or stretches locally; on average it keeps the mass
    np.testing.assert_allclose(mass.mean(), blob.sum(), rtol=0.05)
    assert np.all(np.abs(mass / blob.sum() - 1) < 0.3)
    centroid_r = (out * r.reshape(1, -1)).sum(axis=1) / mass  # the blob moves by less than alpha
    centroid_c = (out * c.reshape(1, -1)).sum(axis=1) / mass
    assert np.abs(centroid_r - 13.5).max() < 2.0 and np.abs(centroid_c - 13.5).max() < 2.0


# ---- determinism: the key is (seed, position) -----------------------------------------------------
def test_augmentation_is_keyed_by_seed_and_position():
    rng = np.random.default_rng(4)
    x = rng.random((6, 7 * 9)).astype(np.float32)
    pos = np.arange(100, 106)
    kw = dict(max_shift=1, max_rotate=20.0, alpha=2.0)
    a = augment.augment_images(x, 7, 9, 77, pos, **kw)
    np.testing.assert_array_equal(a, augment.augment_images(x, 7, 9, 77, pos, **kw))
    for i in range(6):  # a sample's augmentation does not depend on its batch
        np.testing.assert_array_equal(a[i:i + 1], augment.augment_images(x[i:i + 1], 7, 9, 77, pos[i:i + 1], **kw))
    assert not np.array_equal(a, augment.augment_images(x, 7, 9, 78, pos, **kw))
    b = augment.augment_images(x, 7, 9, 77, pos + 1, **kw)
    assert all(not np.array_equal(a[i], b[i]) for i in range(6))


# ---- the compiled twins equal the reference ---------------------------------------------------------
CASES = [((28, 28), 2, 15.0, 0.0), ((28, 28), 0, 0.0, 4.0), ((28, 28), 1, 30.0, 5.0), ((5, 7), 0, 180.0, 40.0),
         ((1, 1), 3, 45.0, 1.0), ((3, 100), 2, 90.0, 2.5), ((130, 2), 1, 5.0, 0.7), ((11, 66), 1, 12.0, 3.0)]


def case_inputs(rng, shape, dtype, uint8, n=7):
    """n + 2 random images; most hold their non-zero pixels in a smaller box (the compiled versions
    skip the pixels that cannot reach it), one is all zeros, float ones hold some -0.0 too."""
    rows, cols = shape
    if uint8:
        X = rng.integers(0, 256, (n + 2, rows * cols), dtype=np.uint8)
        X[rng.random(X.shape) < 0.5] = 0
        scale = 1 / 255
    else:
        X = rng.standard_normal((n + 2, rows * cols)).astype(dtype)
        X[rng.random(X.shape) < 0.2] = -0.0
        scale = 1.0
    img = X.reshape(n + 2, rows, cols)
    for i in range(1, n + 2):
        r0, r1 = sorted(rng.integers(0, rows + 1, 2))
        c0, c1 = sorted(rng.integers(0, cols + 1, 2))
        keep = np.zeros((rows, cols), dtype=bool)
        keep[r0:r1 + 1, c0:c1 + 1] = True
        img[i][~keep] = 0
    img[2] = 0
    return X, scale


def reference(X, idx, scale, dtype, shape, seed, pos0, ms, mr, al):
    x = X[idx]
    x = x.astype(dtype) * np.dtype(dtype).type(scale) if X.dtype == np.uint8 else x
    return augment.augment_images(x, *shape, seed, pos0 + np.arange(len(idx)), ms, mr, al)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("uint8", [False, True])
def test_numba_equals_the_reference_bitwise(dtype, uint8):
    from fastgd.backends import numba_augment as NA

    rng = np.random.default_rng(5)
    for shape, ms, mr, al in CASES:
        X, scale = case_inputs(rng, shape, dtype, uint8)
        idx = np.array([3, 0, 8, 8, 1, 2, 5], dtype=np.int64)
        out = np.empty((len(idx), X.shape[1]), dtype=dtype)
        seed = int(rng.integers(0, 2 ** 63)) * 2 + 1  # uses the top bit too
        NA.augment_rows(X, idx, scale, out, np.uint64(seed), 17, ms, mr, al, *shape, NA.make_work(*shape))
        want = reference(X, idx, scale, dtype, shape, seed, 17, ms, mr, al)
        assert out.dtype == want.dtype
        np.testing.assert_array_equal(out.view(np.uint8), want.view(np.uint8), err_msg=str((shape, ms, mr, al)))
        for n_split in (2, 3, 9):  # chunks on Numba's threads, more chunks than rows too
            split = np.empty_like(out)
            NA.augment_rows_split(X, idx, scale, split, np.uint64(seed), 17, ms, mr, al, *shape,
                                  NA.make_works(n_split, *shape))
            np.testing.assert_array_equal(split.view(np.uint8), want.view(np.uint8))


POLLUTION_CHILD = r"""
import re, numpy as np, fastgd
from fastgd.backends import numba_augment as NA
rng = np.random.default_rng(0)
X = rng.random((40, 784))
y = rng.integers(0, 10, 40)
for dt in (np.float64,):  # the fastmath training kernels call numba_augment first
    net = fastgd.Network([784, 16, 10], dtype=dt, seed=0)
    fastgd.Trainer(net, backend="numba", epochs=1, batch_size=8, augment_shift=2, augment_rotate=15.0,
                   augment_elastic=3.0, image_shape=(28, 28)).fit(X.astype(dt), y)
fma = re.compile(r"\bv?f[n]?m(add|sub)[0-9]{3}[ps][sd]\b")
seen = 0
for disp in (NA.augment_rows, NA.warp, NA.sample_params, NA._cell):
    for sig in disp.signatures:
        seen += 1
        assert not fma.search(disp.inspect_asm(sig)), (disp.__name__, sig)
assert seen >= 4, seen
print("no fma in", seen)
"""


def test_numba_augment_stays_fma_free_when_called_from_fastmath_kernels(tmp_path):
    """numba_augment's functions called from the training kernels (fastmath) must not inherit
    fastmath: a callee that leaves it unset does, and the disk cache then handed the FMA version
    to every later call too (CI's first failure of the bitwise test above)."""
    pytest.importorskip("numba")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("NUMBA_BOUNDSCHECK", None)
    out = subprocess.run([sys.executable, "-c", POLLUTION_CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no fma in" in out.stdout


HARNESS = r"""
#include "fastgd_augment.h"
#define BATCH(T, S)                                                                              \
void aug_batch_##S(const T* X, const unsigned char* Xu8, T scale, const long long* idx, long n,     \
                   long rows, long cols, unsigned long long seed, unsigned long long pos0,           \
                   long long max_shift, double max_rotate, double alpha, double* work, T* out) {     \
    long n_in = rows * cols;                                                                      \
    for (long i = 0; i < n; i++)                                                                  \
        fgd_augment_image_##S(X ? X + idx[i] * n_in : 0, Xu8 ? Xu8 + idx[i] * n_in : 0, scale, rows, cols, \
                              seed, pos0 + i, max_shift, max_rotate, alpha, work, out + i * n_in); \
}
BATCH(float, f)
BATCH(double, d)
long aug_work(long rows, long cols) { return FGD_AUG_WORK(rows, cols); }
"""


def _compiles(cc, flags):
    return subprocess.run([cc, *flags, "-x", "c", "-", "-o", "/dev/null", "-c"], input=b"int x;\n",
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module", params=["native", "portable"])
def c_augment(request, tmp_path_factory):
    """kernels/fastgd_augment.h compiled as the Cython build compiles it (-O3 -march=native: FMA
    available, so a contraction would show; the AVX-512 sampling where the machine has it), and
    its portable loop (FGD_AUG_PORTABLE), loaded with ctypes."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None, "no C compiler: the Cython kernels cannot be built either"
    folder = tmp_path_factory.mktemp("augment_c")
    src = folder / "harness.c"
    src.write_text(HARNESS)
    flags = ["-O3", "-fPIC", "-shared"] + (["-march=native"] if _compiles(cc, ["-march=native"]) else [])
    if request.param == "portable":
        flags.append("-DFGD_AUG_PORTABLE")
    subprocess.run([cc, *flags, f"-I{KERNELS}", str(src), "-o", str(folder / "harness.so"), "-lm"], check=True)
    lib = ctypes.CDLL(str(folder / "harness.so"))
    P, L, U, D = ctypes.c_void_p, ctypes.c_long, ctypes.c_ulonglong, ctypes.c_double
    for name, T in (("aug_batch_f", ctypes.c_float), ("aug_batch_d", ctypes.c_double)):
        getattr(lib, name).argtypes = [P, P, T, P, L, L, L, U, U, ctypes.c_longlong, D, D, P, P]
        getattr(lib, name).restype = None
    lib.aug_work.argtypes, lib.aug_work.restype = [L, L], L

    def run(X, idx, scale, dtype, shape, seed, pos0, ms, mr, al):
        dtype = np.dtype(dtype)
        out = np.empty((len(idx), X.shape[1]), dtype=dtype)
        work = np.empty(lib.aug_work(*shape))
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        fn = lib.aug_batch_f if dtype == np.float32 else lib.aug_batch_d
        if X.dtype == np.uint8:  # the scale as the network's dtype, like the kernels' lut
            fn(None, X.ctypes.data, float(dtype.type(scale)), idx.ctypes.data, len(idx), *shape, seed, pos0, ms, mr,
               al, work.ctypes.data, out.ctypes.data)
        else:
            fn(X.ctypes.data, None, 1.0, idx.ctypes.data, len(idx), *shape, seed, pos0, ms, mr, al,
               work.ctypes.data, out.ctypes.data)
        return out

    return run


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("uint8", [False, True])
def test_c_header_equals_the_reference_bitwise(c_augment, dtype, uint8):
    rng = np.random.default_rng(6)
    for shape, ms, mr, al in CASES:
        X, scale = case_inputs(rng, shape, dtype, uint8)
        idx = np.array([3, 0, 8, 8, 1, 2, 5], dtype=np.int64)
        seed = int(rng.integers(0, 2 ** 63)) * 2 + 1
        out = c_augment(X, idx, scale, dtype, shape, seed, 1 << 40, ms, mr, al)
        want = reference(X, idx, scale, dtype, shape, seed, 1 << 40, ms, mr, al)
        np.testing.assert_array_equal(out.view(np.uint8), want.view(np.uint8), err_msg=str((shape, ms, mr, al)))


# ---- EpochPlan.validate and the NumPy backend ------------------------------------------------------
def image_problem(dtype=np.float32, n=40, shape=(6, 7), uint8=True, seed=0):
    rng = np.random.default_rng(seed)
    n_in = shape[0] * shape[1]
    net = fastgd.Network([n_in, 9, 4], "sigmoid", "softmax", dtype=dtype, seed=seed)
    X = rng.integers(0, 256, (n, n_in), dtype=np.uint8) if uint8 else rng.random((n, n_in)).astype(dtype)
    labels = rng.integers(0, 4, n).astype(np.int32)
    bs = 8
    plan = EpochPlan(X=X, x_scale=1 / 255 if uint8 else 1.0, targets=np.eye(4, dtype=dtype)[labels], labels=labels,
                     order=rng.permutation(n).astype(np.int64), lrs=np.full(-(-n // bs), 0.5), batch_size=bs,
                     loss="cross_entropy", image_shape=shape, seed=123)
    return net, plan


@pytest.mark.parametrize("change,match", [
    (dict(max_rotate=-1.0), "max_rotate must be"),
    (dict(max_rotate=180.5), "max_rotate must be"),
    (dict(max_rotate=float("nan")), "max_rotate must be"),
    (dict(max_rotate=float("inf")), "max_rotate must be"),
    (dict(max_rotate="10"), "max_rotate must be a real number"),
    (dict(max_rotate=True), "max_rotate must be a real number"),
    (dict(max_rotate=None), "max_rotate must be a real number"),
    (dict(elastic_alpha=-0.5), "elastic_alpha must be"),
    (dict(elastic_alpha=float("nan")), "elastic_alpha must be"),
    (dict(elastic_alpha=float("inf")), "elastic_alpha must be"),
    (dict(elastic_alpha=[1.0]), "elastic_alpha must be a real number"),
    (dict(max_rotate=5.0, image_shape=(0, 0)), "image_shape"),
    (dict(elastic_alpha=2.0, image_shape=(7, 6, 1)), "image_shape"),
    (dict(elastic_alpha=2.0, image_shape=(7, 7)), "image_shape"),
    (dict(max_rotate=5.0, image_shape=(-6, -7)), "image_shape"),
    (dict(max_rotate=5.0, image_shape=(6.0, 7.0)), "image_shape"),
    (dict(max_rotate=5.0, image_shape=None), "image_shape"),
])
def test_bad_augmentation_settings_are_refused(change, match):
    net, plan = image_problem()
    bad = dataclasses.replace(plan, **change)
    with pytest.raises(ValueError, match=match):
        bad.validate(net)
    before = net.params.copy()
    with pytest.raises(ValueError, match=match):
        get_backend("numpy").train_epoch(net, bad, get_backend("numpy").prepare(net, plan))
    np.testing.assert_array_equal(net.params, before)


def test_good_augmentation_settings_pass():
    net, plan = image_problem()
    for change in (dict(max_rotate=180), dict(max_rotate=0.0, elastic_alpha=0), dict(elastic_alpha=np.float32(3)),
                   dict(max_rotate=np.int64(12), image_shape=[6, 7]), dict(max_rotate=0.0, image_shape=(0, 0))):
        dataclasses.replace(plan, **change).validate(net)


def test_dropout_units_stay_below_the_reserved_streams():
    n_hidden = _random.FIRST_RESERVED
    net = fastgd.Network([1, n_hidden, 1], dtype=np.float32, seed=0)
    plan = EpochPlan(X=np.zeros((2, 1), np.float32), x_scale=1.0, targets=np.zeros((2, 1), np.float32),
                     labels=np.zeros(2, np.int32), order=np.arange(2, dtype=np.int64), lrs=np.full(1, 0.1),
                     batch_size=2, loss="mse", dropout=0.5)
    with pytest.raises(ValueError, match="hidden units"):
        plan.validate(net)
    dataclasses.replace(plan, dropout=0.0).validate(net)


def test_numpy_backend_lists_the_features():
    assert set(AUGMENT_FEATURES) <= get_backend("numpy").features
    _, plan = image_problem()
    assert {"rotate", "elastic"} <= dataclasses.replace(plan, max_rotate=3.0, elastic_alpha=1.0).requested_features()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("uint8", [True, False])
def test_numpy_backend_trains_with_rotation_and_elastic(dtype, uint8):
    b = get_backend("numpy")
    net0, plan = image_problem(dtype, uint8=uint8)
    runs = {}
    for name, change in {"plain": dict(), "aug": dict(max_shift=1, max_rotate=20.0, elastic_alpha=2.0),
                         "aug2": dict(max_shift=1, max_rotate=20.0, elastic_alpha=2.0)}.items():
        net = net0.copy()
        p = dataclasses.replace(plan, **change)
        result = b.train_epoch(net, p, b.prepare(net, p))
        assert math.isfinite(result.loss_sum)
        runs[name] = (net.params.copy(), result)
    assert not np.array_equal(runs["plain"][0], net0.params)
    assert not np.array_equal(runs["aug"][0], runs["plain"][0])
    np.testing.assert_array_equal(runs["aug"][0], runs["aug2"][0])  # deterministic
    # the inputs it trained on are the reference's augmented images: one step by hand
    net = net0.copy()
    p = dataclasses.replace(plan, max_rotate=20.0, elastic_alpha=2.0, order=plan.order[:8], lrs=plan.lrs[:1])
    b.train_epoch(net, p, b.prepare(net, p))
    from fastgd.backends.numpy_backend import _rows, minibatch_forward_backward

    hand = net0.copy()
    x = _rows(plan.X, plan.order[:8], plan.x_scale, hand.dtype)
    x = augment.augment_images(x, 6, 7, plan.seed, np.arange(8), 0, 20.0, 2.0)
    grad = np.zeros_like(hand.params)
    minibatch_forward_backward(hand, x, plan.targets[plan.order[:8]], plan.loss, grad)
    hand.params -= hand.dtype.type(plan.lrs[0]) * grad
    np.testing.assert_array_equal(net.params, hand.params)


def test_sliced_epoch_equals_one_call():
    b = get_backend("numpy")
    net0, plan = image_problem(np.float64, n=48)
    plan = dataclasses.replace(plan, max_shift=2, max_rotate=10.0, elastic_alpha=1.5)
    whole = net0.copy()
    b.train_epoch(whole, plan, b.prepare(whole, plan))
    sliced = net0.copy()
    for a, z in ((0, 16), (16, 48)):
        p = dataclasses.replace(plan, order=plan.order[a:z], lrs=plan.lrs[a // 8:-(-z // 8)], first_position=a)
        b.train_epoch(sliced, p, b.prepare(sliced, p))
    np.testing.assert_array_equal(sliced.params, whole.params)

# ---- the compiled backends train on the reference's augmented images (phase 2) -------------------
def _compiled_backends():
    """The compiled backends built here (conftest), each of which must list AUGMENT_FEATURES."""
    from conftest import COMPILED_BACKENDS

    return COMPILED_BACKENDS


def _tuned(name, path):
    """A compiled backend forced onto one code path: "dense" (loops), "blas" (every layer gemm),
    "sparse" (asks for sparse input: rotation/elastic must still take the dense path)."""
    from test_backends import tuned

    return tuned(name, path)


AUG_SETTINGS = {
    "rotate": dict(max_rotate=25.0),
    "elastic": dict(elastic_alpha=2.5),
    "everything": dict(max_shift=2, max_rotate=30.0, elastic_alpha=1.5, dropout=0.2, momentum=0.9),
    "adam-rotate": dict(max_rotate=10.0, optimizer="adam"),
}


@pytest.mark.parametrize("backend", _compiled_backends())
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("settings,uint8,path,threads,bs,n", [
    ("rotate", True, "sparse", 1, 7, 36),      # asks for sparse input: resampling goes dense; last batch 1 row
    ("rotate", False, "dense", 2, 1, 9),       # batch 1: fewer rows than threads
    ("elastic", True, "sync", 2, 5, 31),       # threaded deterministic path, last minibatch of one row
    ("elastic", False, "blas", 2, 8, 27),
    ("everything", True, "dense", 2, 3, 10),
    ("everything", False, "sync", 2, 4, 13),
    ("adam-rotate", True, "blas", 1, 6, 25),
], ids=lambda v: str(v))
def test_compiled_backends_equal_the_reference(backend, dtype, settings, uint8, path, threads, bs, n):
    from test_backends import configure, make_problem, plan_for, train

    shape = (7, 9)
    ref, X, scale, targets, labels = make_problem([63, 11, 5], n, dtype, seed=8, uint8=uint8,
                                                  activation="relu", output="softmax")
    net = ref.copy()
    order = np.random.default_rng(9).permutation(n)
    s = dict(AUG_SETTINGS[settings])
    rot, alpha = s.pop("max_rotate", 0.0), s.pop("elastic_alpha", 0.0)
    plans = []
    for m in (ref, net):
        plan = configure(plan_for(X, scale, targets, labels, order, bs, 0.1, "cross_entropy", threads), m,
                         image_shape=shape, seed=31, first_position=4, **s)
        plan.max_rotate, plan.elastic_alpha = rot, alpha
        plans.append(plan)
    b = _tuned(backend, path)
    assert {"rotate", "elastic"} <= b.features
    want = train("numpy", ref, plans[0])
    got = train(b, net, plans[1])
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(net.params, ref.params, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.loss_sum, want.loss_sum, rtol=rtol)
    assert got.n_correct == want.n_correct or dtype == np.float32


@pytest.mark.parametrize("backend", _compiled_backends())
def test_compiled_augmentation_is_deterministic_in_slices(backend):
    from test_backends import configure, make_problem, plan_for

    net0, X, scale, targets, labels = make_problem([42, 9, 4], 40, np.float32, seed=6, uint8=True,
                                                   activation="relu", output="softmax")
    order = np.random.default_rng(5).permutation(40)
    runs = []
    for cuts in ([0, 40], [0, 10, 25, 40]):
        b = _tuned(backend, "sync")
        net = net0.copy()
        full = configure(plan_for(X, scale, targets, labels, order, 5, 0.05, "cross_entropy", 2), net,
                         image_shape=(6, 7), seed=3, max_shift=1)
        full.max_rotate, full.elastic_alpha = 20.0, 2.0
        ws = b.prepare(net, full)
        for a, c in zip(cuts[:-1], cuts[1:]):
            part = dataclasses.replace(full, order=full.order[a:c], lrs=full.lrs[a // 5:-(-c // 5)], first_position=a)
            b.train_epoch(net, part, ws)
        runs.append(net.params.copy())
    np.testing.assert_array_equal(runs[1], runs[0])


@pytest.mark.parametrize("backend", _compiled_backends())
def test_compiled_augmentation_runs_hogwild(backend):
    """Non-deterministic mode with rotation: each thread resamples with its own scratch (Cython
    Hogwild), or the backend falls back to its deterministic path (Numba)."""
    from test_backends import configure, make_problem, plan_for

    net, X, scale, targets, labels = make_problem([42, 9, 4], 60, np.float32, seed=6, uint8=True,
                                                  activation="relu", output="softmax")
    b = _tuned(backend, "dense")
    plan = configure(plan_for(X, scale, targets, labels, np.arange(60), 4, 0.05, "cross_entropy", 2,
                              deterministic=False), net, image_shape=(6, 7), seed=3)
    plan.max_rotate, plan.elastic_alpha = 20.0, 1.0
    before = net.params.copy()
    result = b.train_epoch(net, plan, b.prepare(net, plan))
    assert math.isfinite(result.loss_sum) and not np.array_equal(net.params, before)


def test_cython_problem_checks_its_augmentation_settings():
    """dense_sgd.Problem's own checks behind EpochPlan.validate: impossible image shapes or
    settings and too little per-thread scratch are ValueErrors, not out-of-bounds writes."""
    from conftest import COMPILED_BACKENDS

    if "cython" not in COMPILED_BACKENDS:
        pytest.fail("the cython backend ships but is not built")
    from fastgd._kernels import dense_sgd
    from fastgd.backends import cython_backend

    net = fastgd.Network([12, 4, 2], dtype=np.float64, seed=0)
    X = np.random.default_rng(0).standard_normal((8, 12))
    targets, labels = np.eye(2)[np.arange(8) % 2], (np.arange(8) % 2).astype(np.int32)
    lay = cython_backend._Layout(net, 4, 1 << 62)

    def problem(**kw):
        return dense_sgd.Problem(lay.table, lay.soff, 0, 0, 0, X, 1.0, None, targets, labels, **kw)

    for bad in (dict(max_rotate=5.0, image_rows=3, image_cols=5), dict(elastic_alpha=1.0),
                dict(max_rotate=181.0, image_rows=3, image_cols=4),
                dict(elastic_alpha=float("inf"), image_rows=3, image_cols=4),
                dict(elastic_alpha=float("nan"), image_rows=3, image_cols=4),
                dict(max_rotate=5.0, image_rows=3, image_cols=4, aug_threads=0)):
        with pytest.raises(ValueError):
            problem(**bad)
    prob = problem(max_rotate=5.0, image_rows=3, image_cols=4, aug_threads=1)
    params = lay.pad(net.params)
    with pytest.raises(ValueError, match="augmentation scratch"):
        dense_sgd.train_epoch(params, prob, np.arange(8, dtype=np.int64), np.zeros(2), 4, dense_sgd.StepConfig(),
                              None, None, lay.scratch(1), dense_sgd.MODES["sync"], 2, np.zeros(2),
                              np.zeros(2, dtype=np.int64))
    dense_sgd.train_epoch(params, prob, np.arange(8, dtype=np.int64), np.full(2, 0.1), 4, dense_sgd.StepConfig(),
                          None, None, lay.scratch(1), dense_sgd.MODES["serial"], 1, np.zeros(1),
                          np.zeros(1, dtype=np.int64))
    assert np.isfinite(params).all() and not np.array_equal(lay.pad(net.params), params)
