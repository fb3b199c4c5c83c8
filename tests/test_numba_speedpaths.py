"""The Numba backend's speed paths against the NumPy reference: the team epoch (one parallel
region, GOMP barriers, samples split for forward/deltas, weight rows/columns split for the update),
the direct gemm, the column-blocked sparse input layer, borrowed arrays and unchecked loads.

Every case trains with the NumPy reference and with Numba on the same plan and compares the
weights (float64 tight, float32 loose, conftest.tol): odd widths, batch 1, minibatches with fewer
rows than threads, a last minibatch of one row, uint8 sparse / uint8 dense / float input, one and
two threads, gemm and loop layers.
"""

import numba
import numpy as np
import pytest

import fastgd
from fastgd.backends import get_backend, numba_backend
from fastgd.backends import numba_kernels as K
from fastgd.backends.numba_backend import NumbaBackend
from fastgd.backends.numba_simd import borrow, ld

from conftest import run_bounds_checked
from test_backends import UINT8_SCALE, assert_close, make_problem, plan_for, train

LOOPS = 1 << 62  # blas_min_work that keeps every layer on the loop path
TWO = min(2, numba.config.NUMBA_NUM_THREADS)


def run_both(sizes, n, dtype, batch, threads, uint8, backend, order_seed=1, activation="relu", output="softmax",
             loss="cross_entropy", lr=0.3, epochs=2):
    """Train NumPy and `backend` on the same problem and plan; returns (numpy net, numba net, last result)."""
    nets, result = {}, None
    for name in ("numpy", "numba"):
        net, X, scale, targets, labels = make_problem(sizes, n, dtype, seed=3, uint8=uint8, activation=activation,
                                                      output=output)
        order = np.random.default_rng(order_seed).permutation(n)
        b = get_backend("numpy") if name == "numpy" else backend
        plan = plan_for(X, scale, targets, labels, order, batch, lr, loss, threads)
        ws = b.prepare(net, plan)
        for _ in range(epochs):
            r = b.train_epoch(net, plan, ws)
        if name == "numba":
            result, team = r, ws.team
        nets[name] = net
    return nets["numpy"], nets["numba"], result, team


CASES = [  # sizes, rows, batch
    ([784, 37, 10], 23, 5),       # last minibatch of 3 rows
    ([100, 130, 33, 7], 17, 4),   # last minibatch of one row
    ([100, 130, 33, 7], 9, 1),    # batch 1: fewer rows than threads every step
    ([60, 48, 32, 5], 21, 16),    # a minibatch of 5 rows after one of 16
    ([50, 11, 7], 13, 4),         # a first layer under 16 units (numba_sparse's narrow kernels), last minibatch of 1
    ([70, 200, 9], 10, 3),        # 128-lane forward groups and update slabs plus a 4-vector slab and single vectors
    ([60, 16, 16, 5], 13, 4),     # 16-unit layers (the width-16 specialisations), last minibatch of one row
    ([60, 16, 16, 5], 3, 1),      # the same at batch 1
]


def two_workers():
    """Whether the team can run two workers here (so plain SGD on a narrow sparse first layer at
    2 threads runs the split epoch)."""
    return numba_backend.set_threads(2) == 2 and numba_backend.team_works(2)


def team_backend(**kw):
    """NumbaBackend(**kw) on its team / serial paths: the cols epoch, which the auto rule picks for
    some of these shapes, has tests/test_numba_cols.py."""
    b = NumbaBackend(**kw)
    b.cols = False
    return b


BACKENDS = {
    "loops": lambda: team_backend(blas_min_work=LOOPS),                                   # sparse input when uint8
    "loops_dense": lambda: team_backend(blas_min_work=LOOPS, sparse_input="never"),
    "gemm": lambda: team_backend(blas_min_work=0, sparse_input="never"),                  # every layer through gemm
    "gemm_sparse": lambda: team_backend(blas_min_work=0, sparse_input="always"),          # sparse input + gemm layers
    # loop layers on two workers (sparse input layer: its update split by weight rows, numba_sparse)
    "loops_team": lambda: team_backend(blas_min_work=LOOPS, team_min_work=0),
    # a BLAS-sized input layer still reads its non-zero pixels in the team (density decides)
    "sparse_wide": lambda: team_backend(blas_min_work=0),
}
TEAM_PATHS = ("gemm", "gemm_sparse", "loops_team", "sparse_wide")  # more than one worker


# float input has no sparse index: "gemm_sparse" only with uint8
INPUTS = [(path, uint8) for path in sorted(BACKENDS) for uint8 in (True, False) if uint8 or path != "gemm_sparse"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("path,uint8", INPUTS)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("threads", [1, 2])
def test_team_epoch_matches_numpy(dtype, path, uint8, case, threads):
    sizes, n, batch = CASES[case]
    # standard-normal float input takes bigger steps than [0, 1] pixels: a smaller rate keeps
    # float32 well conditioned (weights of ~60 lost 3 digits against the reference at 0.3)
    ref, net, result, team = run_both(sizes, n, dtype, batch, threads, uint8, BACKENDS[path](),
                                      lr=0.3 if uint8 else 0.05)
    assert team is not None  # the team epoch ran
    # one worker in a bounds-checked build (team_works: a raising worker would strand the other)
    workers = min(threads, numba.config.NUMBA_NUM_THREADS) if path in TEAM_PATHS and not K.BOUNDS else 1
    expected = ("sync", workers) if workers > 1 else ("serial", 1)
    if path == "loops" and uint8 and threads == 2 and sizes[1] <= 16 and two_workers():
        expected = ("split", 2)  # numba_split, on the one-worker team's buffers
    assert (result.mode, result.threads_used) == expected
    assert team.woff.shape[0] // team.act_off.shape[0] == workers
    if path in ("sparse_wide", "gemm_sparse", "loops_team", "loops") and uint8:  # numba_sparse's input layer ran
        assert team.lut[255] == dtype(255) * dtype(UINT8_SCALE) and team.cs.shape[0] == workers * (sizes[0] + 2)
    for l in range(len(sizes) - 1):
        assert_close(net.weights[l], ref.weights[l], dtype, f"weights {l}")
        assert_close(net.biases[l], ref.biases[l], dtype, f"biases {l}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lesson_network_sigmoid_mse_uint8_matches_numpy(dtype):
    """The lesson configuration (sigmoid/MSE, batch 10, sparse uint8 input, 2 threads: the split
    epoch where the team can run two workers, else the serial team)."""
    ref, net, result, team = run_both([784, 16, 16, 10], 41, dtype, 10, 2, True, NumbaBackend(), activation="sigmoid",
                                      output="sigmoid", loss="mse", lr=3.0)
    assert (result.mode, result.threads_used) == (("split", 2) if two_workers() else ("serial", 1))
    assert_close(net.params, ref.params, dtype, "lesson")


def test_team_with_two_threads_is_repeatable_and_matches_one_thread():
    """Two workers: the same bits on every run (fixed sample split, fixed summation order), and
    the one-worker result up to rounding (gemm rows may round differently in smaller blocks)."""
    results = []
    for threads in (1, 2, 2):
        net, X, scale, targets, labels = make_problem([50, 40, 6], 30, np.float64, seed=5, uint8=True,
                                                      activation="relu", output="softmax")
        plan = plan_for(X, scale, targets, labels, np.arange(30), 8, 0.2, "cross_entropy", threads)
        train(NumbaBackend(blas_min_work=0, sparse_input="always"), net, plan)
        results.append(net.params.copy())
    np.testing.assert_array_equal(results[1], results[2])
    assert_close(results[1], results[0], np.float64)


def test_optimiser_and_augmentation_do_not_take_the_team_path():
    net, X, scale, targets, labels = make_problem([20, 8, 4], 12, np.float64, uint8=True)
    plan = plan_for(X, scale, targets, labels, np.arange(12), 4, 0.5, "mse")
    b = NumbaBackend()
    ws = b.prepare(net, plan)
    b.train_epoch(net, plan, ws)
    assert ws.team is not None
    plan.dropout = 0.2
    b.train_epoch(net, plan, ws)
    assert ws.team is None
    assert NumbaBackend(team_epoch=False)._team(plan_for(X, scale, targets, labels, np.arange(12), 4, 0.5, "mse"),
                                                False) is False


def test_team_probe_runs_one_iteration_per_thread():
    """The team barrier needs each prange iteration on its own OpenMP thread."""
    numba_backend.set_threads(TWO)
    assert numba_backend.team_works(1)
    nums, sizes = np.full(TWO, -1, dtype=np.int64), np.zeros(TWO, dtype=np.int64)
    K.team_probe(nums, sizes)
    if numba.threading_layer() == "omp":
        np.testing.assert_array_equal(nums, np.arange(TWO))
        np.testing.assert_array_equal(sizes, TWO)
        assert numba_backend.team_works(TWO) == (TWO == 1 or not K.BOUNDS)  # bounds-checked: one worker
    else:  # another layer: no barrier, the backend falls back to the per-gemm split
        assert not numba_backend.team_works(TWO) or TWO == 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm_matches_numpy_with_offsets_strides_and_beta(dtype, ta, tb):
    rng = np.random.default_rng(0)
    m, n, k = 5, 7, 3
    lda, ldb, ldc = (m if ta else k) + 2, (k if tb else n) + 1, n + 3
    ra = k if ta else m
    rb = n if tb else k
    A = rng.standard_normal(4 + ra * lda).astype(dtype)
    B = rng.standard_normal(2 + rb * ldb).astype(dtype)
    C = rng.standard_normal(1 + m * ldc).astype(dtype)
    a = A[4:].reshape(ra, lda)[:, :(m if ta else k)]
    b = B[2:].reshape(rb, ldb)[:, :(k if tb else n)]
    opa = a.T if ta else a
    opb = b.T if tb else b
    want = C.copy()
    want[1:].reshape(m, ldc)[:, :n] = 0.5 * (opa @ opb) - 2.0 * C[1:].reshape(m, ldc)[:, :n]
    K.gemm(ta, tb, m, n, k, 0.5, A, 4, lda, B, 2, ldb, -2.0, C, 1, ldc)
    assert_close(C, want, dtype)
    before = C.copy()
    K.gemm(ta, tb, m, n, 0, 1.0, A, 4, lda, B, 2, ldb, 0.0, C, 1, ldc)  # k = 0: nothing happens
    np.testing.assert_array_equal(C, before)


def test_borrow_and_ld_read_the_same_values():
    from numba import njit

    @njit
    def f(a, b):
        v = borrow(a)
        s = 0.0
        for i in range(v.shape[0]):
            s += ld(v, i) * b[i]
        return s

    a = np.arange(5.0)
    assert f(a, np.ones(5)) == 10.0


def test_sparse_input_layer_blocks_match_the_formula():
    """dense_forward_sparse / dense_update_sparse (column blocks outermost, pixel tables) on a
    width that is not a multiple of 16, against dense NumPy arithmetic."""
    rng = np.random.default_rng(2)
    X = rng.integers(0, 256, size=(9, 40), dtype=np.uint8)
    X[rng.random(X.shape) < 0.7] = 0
    X[3] = 0  # a row with no pixel
    ptr, idx, val = K.build_csr(X, np.uint16)
    W = rng.standard_normal((40, 37))
    b = rng.standard_normal(37)
    rows = np.array([3, 0, 8, 8, 5])
    z = np.zeros((5, 37))
    K.dense_forward_sparse(ptr, idx, val, 1 / 255, rows, W, b, z)
    x = X[rows] * (1 / 255)
    np.testing.assert_allclose(z, x @ W + b, rtol=1e-12, atol=1e-12)
    d = rng.standard_normal((5, 37))
    W2, b2 = W.copy(), b.copy()
    K.dense_update_sparse(ptr, idx, val, 1 / 255, rows, d, 0.1, W2, b2)
    np.testing.assert_allclose(W2, W - 0.1 * x.T @ d, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b2, b - 0.1 * d.sum(0), rtol=1e-12, atol=1e-12)


def test_trainer_mnist_shaped_two_threads_matches_numpy():
    """784-512-512-10-like shapes through the Trainer with 2 threads (gemm layers, team of two),
    a last minibatch of one row, float64."""
    rng = np.random.default_rng(0)
    X = rng.random((65, 784))
    y = rng.integers(0, 10, size=65)
    nets = {}
    for backend in ("numpy", "numba"):
        net = fastgd.Network([784, 96, 64, 10], dtype=np.float64, seed=1)
        fastgd.Trainer(net, backend=backend, batch_size=32, threads=2, epochs=1, seed=0, lr=0.5).fit(X, y)
        nets[backend] = net
    for l in range(3):
        np.testing.assert_allclose(nets["numba"].weights[l], nets["numpy"].weights[l], rtol=1e-9, atol=1e-12)


def test_bounds_checked_gemm_raises_index_error():
    code = ("import numpy as np\n"
            "from fastgd.backends import numba_kernels as K\n"
            "A = np.ones(6); B = np.ones(6); C = np.zeros(4)\n"
            "K.gemm(False, False, 2, 2, 3, 1.0, A, 0, 3, B, 0, 2, 0.0, C, 0, 2)\n"
            "assert (C == 3).all()\n"
            "try:\n"
            "    K.gemm(False, False, 2, 2, 3, 1.0, A, 1, 3, B, 0, 2, 0.0, C, 0, 2)\n"
            "except IndexError:\n"
            "    print('IndexError')\n")
    stdout = run_bounds_checked(code)
    assert stdout.strip() == "IndexError"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_out", [1, 10, 16, 17, 37, 100, 128, 131, 150, 200, 259])
@pytest.mark.parametrize("idx_dtype", [np.uint16, np.int32])
def test_wide_sparse_input_layer_matches_the_formula(dtype, n_out, idx_dtype):
    """numba_sparse: the grouped forward (8-vector groups, then single vectors) and the update by
    weight row through the column index, on widths around the group sizes, with rows without
    pixels, a repeated row, and the weight rows split in two ranges (two workers) or one."""
    from fastgd.backends import numba_sparse as S
    rng = np.random.default_rng(n_out)
    n_in = 53
    X = rng.integers(0, 256, size=(12, n_in), dtype=np.uint8)
    X[rng.random(X.shape) < 0.75] = 0
    X[4] = 0  # a row with no pixel
    X[7] = 255  # a dense row
    ptr, idx, val = K.build_csr(X, idx_dtype)
    scale = 1 / 255
    lut = np.zeros(256, dtype=dtype)
    S.scale_table(scale, lut)
    np.testing.assert_array_equal(lut, np.arange(256).astype(dtype) * dtype(scale))
    W = rng.standard_normal(n_in * n_out).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    for rows in (np.array([4, 0, 7, 7, 11, 2]), np.array([9]), np.array([4])):
        B = rows.shape[0]
        zo = 3  # an offset into the output buffer, as the team's per-worker rows have
        z = np.full(zo + B * n_out + 5, 7.0, dtype=dtype)
        S.sparse_forward(ptr, idx, val, lut, rows, W, b, z, zo)
        x = X[rows].astype(dtype) * dtype(scale)
        np.testing.assert_allclose(z[zo:zo + B * n_out].reshape(B, n_out), x @ W.reshape(n_in, n_out) + b, **tol)
        assert (z[:zo] == 7).all() and (z[zo + B * n_out:] == 7).all()  # nothing written past the rows
        if n_out <= 16:  # the 2-D one-vector kernel the team uses at these widths
            z2 = np.full((B + 1, n_out), 7.0, dtype=dtype)
            S.sparse_forward_narrow(ptr, idx, val, lut, rows, W.reshape(n_in, n_out), b, z2)
            np.testing.assert_allclose(z2[:B], x @ W.reshape(n_in, n_out) + b, **tol)
            assert (z2[B] == 7).all()
        do = 2
        D = rng.standard_normal(do + B * n_out).astype(dtype)
        want = W.reshape(n_in, n_out) - dtype(0.25) * (x.T @ D[do:].reshape(B, n_out))
        for split in ([0, n_in], [0, 20, n_in], [0, 0, n_in]):
            W2 = W.copy()
            for i0, i1 in zip(split[:-1], split[1:]):
                cs = np.full(i1 - i0 + 2, -1, dtype=np.int32)
                es = np.full(B * n_in, -1, dtype=np.int32)
                ev = np.zeros(B * n_in, dtype=np.uint8)
                lo, hi = np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.int64)
                table = np.full(256, np.nan, dtype=dtype)
                S.sparse_update(ptr, idx, val, lut, rows, i0, i1, D, do, n_out, dtype(-0.25), W2, cs, es, ev, lo, hi,
                                table)
            np.testing.assert_allclose(W2.reshape(n_in, n_out), want, **tol)
            if n_out > 16:  # 64-lane slabs only (the update's choice for bigger minibatches)
                W3 = W.copy()
                for i0, i1 in zip(split[:-1], split[1:]):
                    cs = np.zeros(i1 - i0 + 2, dtype=np.int32)
                    es, ev = np.zeros(B * n_in, dtype=np.int32), np.zeros(B * n_in, dtype=np.uint8)
                    lo, hi = np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.int64)
                    S.csc_build(ptr, idx, val, rows, i0, i1, cs, es, ev, lo, hi)
                    S.csc_update(cs, es, ev, i0, i1, lut, D, do, n_out, dtype(-0.25), W3, False)
                np.testing.assert_allclose(W3.reshape(n_in, n_out), want, **tol)
            untouched = (X[rows] == 0).all(axis=0)  # weight rows of pixels zero in every sample: bit for bit
            np.testing.assert_array_equal(W2.reshape(n_in, n_out)[untouched], W.reshape(n_in, n_out)[untouched])


def test_bounds_checked_build_runs_the_team_on_one_worker():
    """Under NUMBA_BOUNDSCHECK=1 an index check may raise inside the team region, and a worker
    leaving it early would leave the other at a barrier for ever: no team of two there."""
    code = ("from fastgd.backends import numba_backend as nb, numba_kernels as K\n"
            "print(K.BOUNDS, nb.team_works(1), nb.team_works(2))\n")
    stdout = run_bounds_checked(code)
    assert stdout.split() == ["True", "True", "False"]


@pytest.mark.parametrize("threads", [1, 2])
def test_training_leaves_the_callers_floating_point_mode_alone(threads):
    """train_epoch flushes denormals on the calling thread while it runs (a saturated sigmoid
    network otherwise slows down several-fold) and restores the caller's mode afterwards."""
    tiny = np.array([1e-39], dtype=np.float32)
    assert tiny[0] != 0 and (tiny * np.float32(1.0))[0] != 0, "denormals already flushed before training"
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(64, 30)).astype(np.uint8)
    y = np.arange(64) % 3
    net = fastgd.Network([30, 9, 3], activation="sigmoid", output="sigmoid", dtype=np.float32, seed=0)
    fastgd.Trainer(net, loss="mse", lr=3.0, batch_size=5, epochs=2, backend="numba", threads=threads,
                   seed=0).fit(X, y)
    assert np.isfinite(net.params).all()
    again = np.array([1e-39], dtype=np.float32)
    assert again[0] != 0 and (again * np.float32(1.0))[0] != 0, "train_epoch left FTZ/DAZ on"


# ---- inference: each chunk's non-zero pixels listed on the fly -------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", [[784, 37, 10], [100, 130, 33, 7], [60, 200, 5], [130, 64, 10], [70, 17],
                                   [784, 16, 16, 10], [90, 11, 4], [50, 16]])
@pytest.mark.parametrize("threads", [1, TWO])
def test_sparse_inference_matches_reference(dtype, sizes, threads):
    """uint8 inference lists each chunk's non-zero pixels in the kernel (first layers of at most
    16 units through the one-vector loop) (no CSR of the whole input): forward and evaluate equal the reference
    and the dense path. 11 rows in chunks of 4 / 5 / 11 / 256: a last chunk of 3 rows, chunks
    fewer than workers; an all-zero row, a full row, a pixel in the last (tail) position."""
    rng = np.random.default_rng(8)
    net = fastgd.Network(sizes, "relu", "softmax", dtype=dtype, seed=1)
    X = rng.integers(1, 256, (11, sizes[0]), dtype=np.uint8)
    X[rng.random(X.shape) > 0.25] = 0
    X[2] = 0
    X[5] = 255
    X[9, -1] = 7
    labels = rng.integers(0, sizes[-1], 11).astype(np.int32)
    targets = np.eye(sizes[-1], dtype=dtype)[labels]
    ref = get_backend("numpy")
    want = ref.forward(net, X, UINT8_SCALE)
    want_loss, want_correct = ref.evaluate(net, X, UINT8_SCALE, targets, labels, "cross_entropy")
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (2e-4, 2e-5)
    for chunk in (4, 5, 11, 256):
        b = NumbaBackend(forward_chunk=chunk)
        assert b._sparse_forward(net, X)
        got = b.forward(net, X, UINT8_SCALE, threads)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        loss, correct = b.evaluate(net, X, UINT8_SCALE, targets, labels, "cross_entropy", threads)
        np.testing.assert_allclose(loss, want_loss, rtol=rtol)
        assert correct == want_correct
        dense = NumbaBackend(forward_chunk=chunk, sparse_input="never")
        assert not dense._sparse_forward(net, X)
        np.testing.assert_allclose(dense.forward(net, X, UINT8_SCALE, threads), got, rtol=rtol, atol=atol)
    # the rule: dense uint8 input, float input and a strided view stay dense
    assert not NumbaBackend()._sparse_forward(net, np.full((5, sizes[0]), 3, np.uint8))
    assert not NumbaBackend(sparse_input="always")._sparse_forward(net, X.astype(dtype))
    assert not NumbaBackend()._sparse_forward(net, np.asfortranarray(X))


# the ways of listing one 64-pixel block this machine can run (packed in registers: VBMI2 only)
BLOCK_LISTINGS = {"walked": K._block_nonzeros_walked, **({"packed": K._block_nonzeros_packed} if K.HAVE_COMPRESS else {})}


@pytest.mark.parametrize("how", sorted(BLOCK_LISTINGS))
def test_block_listing_matches_numpy(how):
    """One 64-pixel block's non-zeros appended at p: an empty block, a full one, only the first or
    the second 32, the first and the last pixel alone, random densities; row positions up to
    the largest a uint16 holds. Entries before p stay untouched."""
    block = BLOCK_LISTINGS[how]
    rng = np.random.default_rng(5)
    blocks = [np.zeros(64), np.full(64, 255), np.r_[np.ones(32), np.zeros(32)], np.r_[np.zeros(32), np.ones(32)],
              np.eye(64)[0], np.eye(64)[63]] + [rng.integers(1, 256, 64) * (rng.random(64) < d) for d in (0.1, 0.5, 0.9)]
    x = np.concatenate(blocks).astype(np.uint8)
    for b in range(len(blocks)):
        for k in (0, 64 * b, 65536 - 64):
            idx = np.full(64 + 7, 7777, np.uint16)
            val = np.full(64 + 7, 77, np.uint8)
            p = block(x, 64 * b, k, idx, val, 7)
            nz = np.flatnonzero(x[64 * b:64 * b + 64])
            assert p == 7 + nz.size
            np.testing.assert_array_equal(idx[7:p], k + nz)
            np.testing.assert_array_equal(val[7:p], x[64 * b + nz])
            assert (idx[:7] == 7777).all() and (val[:7] == 77).all()


def test_chunk_csr_matches_numpy():
    rng = np.random.default_rng(4)
    for shape in [(7, 784), (5, 63), (3, 64), (4, 65), (6, 129), (3, 1), (4, 128), (4, 65536)]:
        X = rng.integers(0, 256, shape, dtype=np.uint8)
        X[rng.random(shape) < 0.7] = 0
        X[1] = 0  # an all-zero row
        X[2] = 200  # a full one
        if shape[0] > 3 and shape[1] >= 64:  # in each block only the second 32 pixels (or only the first)
            X[3] = 0
            for b in range(0, shape[1] - 63, 64):
                X[3, b + (32 if b % 128 == 0 else 0):b + (64 if b % 128 == 0 else 32)] = 9
        for start, stop in ((0, shape[0]), (1, shape[0] - 1), (2, 3)):
            n = stop - start
            ptr = np.full(n + 1, -1, np.int64)
            idx = np.zeros(n * shape[1] + 1, np.uint16)
            val = np.zeros(n * shape[1] + 1, np.uint8)
            K.chunk_csr(X.reshape(-1), shape[1], start, stop, ptr, idx, val)
            part = X[start:stop]
            rows, cols = np.nonzero(part)
            np.testing.assert_array_equal(ptr, np.r_[0, np.cumsum(np.count_nonzero(part, axis=1))])
            np.testing.assert_array_equal(idx[:ptr[-1]], cols)
            np.testing.assert_array_equal(val[:ptr[-1]], part[rows, cols])


# ---- the team epoch over rows copied in visiting order (fastgd.backends.pipeline) ----------
@pytest.mark.parametrize("sizes,n,batch", [([784, 16, 16, 10], 41, 10), ([50, 11, 7], 13, 4),
                                           ([70, 200, 9], 33, 8), ([40, 33, 7], 17, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_copied_rows_train_bitwise_like_rows_in_place(sizes, n, batch, threads):
    """permute_sparse copies each call's CSR rows, targets and labels in visiting order (with
    overlap_gather, part by part on another thread while the kernel trains on the part before):
    the same weights, loss and accuracy to the bit as reading the rows where they lie, on a
    shuffled order with a short last minibatch, over two epochs and a Trainer-style split call."""
    outcomes = []
    for permute, overlap in ((False, False), (True, False), (True, True)):
        net, X, scale, targets, labels = make_problem(sizes, n, np.float32, seed=7, uint8=True, activation="sigmoid",
                                                      output="sigmoid")
        b = NumbaBackend(blas_min_work=LOOPS)
        b.permute_sparse, b.overlap_gather = permute, overlap
        b.split = False  # 2 threads on a narrow first layer would run the split epoch (tested below)
        order = np.random.default_rng(2).permutation(n)
        plan = plan_for(X, scale, targets, labels, order, batch, 0.5, "mse", threads)
        ws = b.prepare(net, plan)
        results = [b.train_epoch(net, plan, ws)]
        steps = plan.n_steps
        head = plan_for(X, scale, targets, labels, order[:batch * (steps // 2)], batch, 0.5, "mse", threads)
        tail = plan_for(X, scale, targets, labels, order[batch * (steps // 2):], batch, 0.5, "mse", threads)
        results += [b.train_epoch(net, head, ws), b.train_epoch(net, tail, ws)]
        assert ws.team is not None and (ws.csr[0].shape[0] > 0)
        outcomes.append((net.params.copy(), [(r.loss_sum, r.n_correct) for r in results]))
    for params, results in outcomes[1:]:
        np.testing.assert_array_equal(params, outcomes[0][0])
        assert results == outcomes[0][1]


def test_gather_csr_rows_matches_numpy():
    rng = np.random.default_rng(5)
    X = rng.integers(0, 256, (30, 70), dtype=np.uint8)
    X[rng.random(X.shape) < 0.8] = 0
    X[3] = 0  # an empty row
    for idx_dtype in (np.uint16, np.int32):
        ptr, idx, val = K.build_csr(X, idx_dtype)
        order = np.r_[rng.permutation(30), [3, 3, 0]].astype(np.int64)  # repeats and an empty row
        nnz = int(K.csr_rows_nnz(ptr, order))
        assert nnz == np.count_nonzero(X[order])
        pos0 = 5
        out_ptr = np.full(order.size + 1, -1, np.int64)
        out_idx = np.zeros(pos0 + nnz + 3, idx_dtype)
        out_val = np.zeros(pos0 + nnz + 3, np.uint8)
        end = K.gather_csr_rows(ptr, idx, val, order, 0, order.size, out_ptr, out_idx, out_val, pos0)
        assert end == pos0 + nnz
        rows, cols = np.nonzero(X[order])
        np.testing.assert_array_equal(out_ptr, pos0 + np.r_[0, np.cumsum(np.count_nonzero(X[order], axis=1))])
        np.testing.assert_array_equal(out_idx[pos0:end], cols)
        np.testing.assert_array_equal(out_val[pos0:end], X[order][rows, cols])
        assert not out_idx[end:].any() and not out_idx[:pos0].any()  # nothing written outside
        # rows a..b of the order (the split epoch's calls), the same as that slice copied alone
        a, b = 4, 21
        part = np.full(b - a + 1, -1, np.int64)
        part_idx, part_val = np.zeros_like(out_idx), np.zeros_like(out_val)
        part_end = K.gather_csr_rows(ptr, idx, val, order, a, b, part, part_idx, part_val, 0)
        expect = np.full(b - a + 1, -1, np.int64)
        expect_idx, expect_val = np.zeros_like(out_idx), np.zeros_like(out_val)
        assert part_end == K.gather_csr_rows(ptr, idx, val, order[a:b].copy(), 0, b - a, expect, expect_idx,
                                             expect_val, 0)
        np.testing.assert_array_equal(part, expect)
        np.testing.assert_array_equal(part_idx, expect_idx)
        np.testing.assert_array_equal(part_val, expect_val)


def test_bounds_checked_copy_elems_raises_index_error():
    code = ("import numpy as np\n"
            "from numba import njit\n"
            "from fastgd.backends.numba_simd import copy_elems\n"
            "@njit\n"
            "def f(d, do, s, so, n):\n"
            "    copy_elems(d, do, s, so, n)\n"
            "d = np.zeros(6, np.uint16); s = np.arange(6, dtype=np.uint16)\n"
            "f(d, 1, s, 2, 4)\n"
            "assert list(d) == [0, 2, 3, 4, 5, 0]\n"
            "for args in ((d, 3, s, 0, 4), (d, 0, s, 3, 4)):\n"
            "    try:\n"
            "        f(*args)\n"
            "    except IndexError:\n"
            "        print('IndexError')\n")
    stdout = run_bounds_checked(code)
    assert stdout.split() == ["IndexError", "IndexError"]


# ---- few-row inference (single-sample predict) ----------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes,activation,output", [([784, 16, 16, 10], "sigmoid", "sigmoid"),
                                                     ([20, 9, 3], "relu", "softmax"),
                                                     ([70, 200, 9], "tanh", "linear"),
                                                     ([13, 17, 33, 5], "leaky_relu", "softmax")])
@pytest.mark.parametrize("uint8", [True, False])
def test_flat_forward_matches_reference(dtype, sizes, activation, output, uint8):
    """One or two rows run numba_kernels.forward_flat on the caller's thread from net.params:
    the reference's outputs, and the chunked path's (flat_forward_max_work=0)."""
    net = fastgd.Network(sizes, activation, output, dtype=dtype, seed=3)
    rng = np.random.default_rng(1)
    if uint8:
        X = rng.integers(0, 256, (2, sizes[0]), dtype=np.uint8)
        X[rng.random(X.shape) < 0.6] = 0
        scale = UINT8_SCALE
    else:
        X, scale = rng.standard_normal((2, sizes[0])).astype(dtype), 1.0
    ref = get_backend("numpy").forward(net, X, scale)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    b = NumbaBackend()
    for rows in (X[:1], X):
        assert rows.shape[0] * net.n_params <= b.flat_forward_max_work
        before = len(K.forward_flat.signatures)
        out = b.forward(net, rows, scale, 2)
        assert out.dtype == dtype and out.shape == (rows.shape[0], sizes[-1])
        np.testing.assert_allclose(out, ref[:rows.shape[0]], **tol)
        assert len(K.forward_flat.signatures) >= max(before, 1)
    chunked = NumbaBackend()
    chunked.flat_forward_max_work = 0
    np.testing.assert_allclose(chunked.forward(net, X, scale, 2), ref, **tol)


def test_flat_forward_rejects_a_row_of_the_wrong_width():
    net = fastgd.Network([20, 9, 3], "relu", "softmax", dtype=np.float32, seed=0)
    with pytest.raises(ValueError, match="rows of 20 values"):
        NumbaBackend().forward(net, np.zeros((1, 21), np.float32), 1.0, 1)


# ---- the split epoch (numba_split): a narrow sparse first layer's rows on two threads ----------
def _split_problem(sizes, n, dtype, seed=31):
    net, X, scale, targets, labels = make_problem(sizes, max(n, 8), dtype, seed=seed, uint8=True)
    X[0] = 0  # a row with no non-zero pixel
    X[1, :sizes[0] // 2] = 0  # only upper pixels (the split lies near the middle)
    X[2, sizes[0] // 2:] = 0  # only lower pixels
    return net, X, scale, targets, labels


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes,batch,n", [([60, 16, 5], 6, 61), ([60, 13, 7], 1, 9), ([60, 16, 16, 10], 10, 47),
                                           ([60, 9, 3], 4, 3), ([60, 10], 7, 29)])
def test_split_epoch_gives_the_bits_of_one_worker(dtype, sizes, batch, n):
    """2 threads on a sparse first layer of at most 16 units run the split epoch (where the team
    can run two workers): odd widths, batch 1, a last minibatch of one row, fewer rows than a
    minibatch, learning rates changing every step, an order with repeats and missing rows, a
    single-layer network. Bitwise the weights, loss and accuracy of one thread; close to NumPy."""
    net, X, scale, targets, labels = _split_problem(sizes, n, dtype)
    order = np.random.default_rng(5).integers(0, X.shape[0], size=n)
    runs = {}
    for threads in (2, 1):
        mine = net.copy()
        b = NumbaBackend(blas_min_work=LOOPS)
        # where the split cannot run (the bounds-checked build), 2 threads must still be one
        # kernel call: the pipelined copy's parts sum the loss in another order
        b.overlap_gather = False
        plan = plan_for(X, scale, targets, labels, order, batch, 0.5, "mse", threads)
        plan.lrs = np.linspace(0.6, 0.1, plan.n_steps)
        ws = b.prepare(mine, plan)
        results = [b.train_epoch(mine, plan, ws), b.train_epoch(mine, plan, ws)]
        runs[threads] = (mine.params.copy(), [(r.loss_sum, r.n_correct, r.mode) for r in results], ws)
    if runs[2][2].split_works:
        assert [m for _, _, m in runs[2][1]] == ["split", "split"]
    np.testing.assert_array_equal(runs[2][0], runs[1][0])
    assert [r[:2] for r in runs[2][1]] == [r[:2] for r in runs[1][1]]
    ref = net.copy()
    plan = plan_for(X, scale, targets, labels, order, batch, 0.5, "mse", 1)
    plan.lrs = np.linspace(0.6, 0.1, plan.n_steps)
    numpy_backend = get_backend("numpy")
    ws = numpy_backend.prepare(ref, plan)
    numpy_backend.train_epoch(ref, plan, ws)
    numpy_backend.train_epoch(ref, plan, ws)
    assert_close(runs[2][0], ref.params, dtype, "split epoch")


def test_split_kernel_given_one_thread_runs_both_halves(monkeypatch):
    """In a parallel region of one thread (team_size() == 1) the split kernel's worker 0 runs the
    upper half too instead of waiting for a worker that never comes: the one-worker bits. Also
    the split kernel's path in the bounds-checked build, where the team never runs two workers."""
    net, X, scale, targets, labels = _split_problem([60, 16, 16, 10], 37, np.float32)
    order = np.random.default_rng(6).permutation(X.shape[0])
    plan = plan_for(X, scale, targets, labels, order, 5, 0.5, "mse", 1)
    serial = net.copy()
    b = NumbaBackend(blas_min_work=LOOPS)
    expected = b.train_epoch(serial, plan, b.prepare(serial, plan))
    assert expected.mode == "serial"
    mine = net.copy()
    ws = b.prepare(mine, plan)
    assert ws.team.split < 60  # the team sums in two parts even on one worker
    model = K.Net(mine.params, mine.layout_array(), numba_backend.kinds_of(mine))
    from fastgd import ops
    data = b._data(plan.X, plan.x_scale, ws.csr, plan.targets, plan.labels, ops.LOSS_CODES["mse"], mine.dtype)
    monkeypatch.setattr(numba_backend, "set_threads", lambda n: numba.set_num_threads(1) or 1)
    result = b._train_split(mine, plan, ws, model, data)
    np.testing.assert_array_equal(mine.params, serial.params)
    assert (result.loss_sum, result.n_correct) == (expected.loss_sum, expected.n_correct)


def test_split_profile_counts_every_phase_and_keeps_the_bits():
    """The split epoch's optional phase profile (split_profile, bench/split_profile.py): the
    same bits as without it; where the split runs on two threads (not in the bounds-checked
    build), every work phase of both threads counted (on x86, where the cycle counter ticks) and
    no slot outside base.SPLIT_PROFILE_PHASES written, and a profile of the wrong size refused."""
    from fastgd.backends.base import SPLIT_PROFILE_PHASES, SPLIT_PROFILE_SLOTS
    from fastgd.backends.numba_simd import _X86
    net, X, scale, targets, labels = _split_problem([60, 16, 16, 10], 47, np.float32)
    order = np.random.default_rng(7).permutation(X.shape[0])
    runs = []
    for profile in (None, np.zeros(SPLIT_PROFILE_SLOTS, dtype=np.int64)):
        b = NumbaBackend(blas_min_work=LOOPS)
        b.overlap_gather = False  # one kernel call where the split cannot run (as above)
        b.split_profile = profile
        mine = net.copy()
        plan = plan_for(X, scale, targets, labels, order, 5, 0.5, "mse", 2)
        ws = b.prepare(mine, plan)
        if profile is not None:
            profile.fill(0)  # prepare's warm-up epoch ran with it too
        result = b.train_epoch(mine, plan, ws)
        runs.append((mine.params, result.loss_sum, result.n_correct, result.mode))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1:] == runs[1][1:]
    if not ws.split_works:
        assert runs[1][3] != "split" and not profile.any()
        return
    assert runs[1][3] == "split"
    if _X86:
        work = [1, 3, 4, 5, 6, 16, 17, 19]  # sums, forward, loss, deltas, updates, the copy
        assert all(profile[k] > 0 for k in work), profile
    assert not profile[[k for k in range(SPLIT_PROFILE_SLOTS) if k not in SPLIT_PROFILE_PHASES]].any()
    b.split_profile = np.zeros(SPLIT_PROFILE_SLOTS - 1, dtype=np.int64)
    with pytest.raises(ValueError, match="split_profile"):
        b.train_epoch(net.copy(), plan, ws)


def test_split_epoch_only_where_it_applies():
    """A first layer wider than 16 units, dense input, momentum or split = False keep the other
    epochs on 2 threads."""
    net16, X, scale, targets, labels = _split_problem([60, 16, 5], 30, np.float32)
    cases = [(net16, {"split": False}, {}), (net16, {"sparse_input": "never"}, {}),
             (net16, {}, dict(momentum=0.9)), (_split_problem([60, 17, 5], 30, np.float32)[0], {}, {})]
    for net, knobs, recipe in cases:
        b = NumbaBackend(blas_min_work=LOOPS)
        for k, v in knobs.items():
            setattr(b, k, v)
        plan = plan_for(X, scale, targets, labels, np.arange(30), 5, 0.5, "mse", 2)
        if recipe:
            from test_backends import configure
            configure(plan, net, **recipe)
        mine = net.copy()
        result = b.train_epoch(mine, plan, b.prepare(mine, plan))
        assert result.mode != "split", (knobs, recipe)
