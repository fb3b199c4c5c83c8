"""The Numba backend's "cols" epoch (numba_cols: each worker owns a column slice of every hidden
layer for the whole call) against the NumPy reference, its GEMM tiles against NumPy, and its
routing. Float32 only (as the Cython twin, tests/test_cython_team.py), so the comparisons are
float32-loose; float64 and the other rules are checked to route elsewhere."""
import numba
import numpy as np
import pytest

import fastgd
from fastgd.backends import numba_cols as C
from fastgd.backends import numba_kernels as K
from fastgd.backends.base import EpochPlan
from fastgd.backends.numba_backend import NumbaBackend

import test_cython_team as cython_team
from test_backends import train
from test_cython_backend import make_plan, problem

RTOL, ATOL = cython_team.RTOL, cython_team.ATOL
# workers a team can have here: one in a bounds-checked build (numba_backend.team_works)
MAX_TEAM = 1 if K.BOUNDS else numba.config.NUMBA_NUM_THREADS


def cols_backend(cols=True, **kw):
    b = NumbaBackend(**kw)
    b.cols = cols
    return b


def check(net, plan, backend=None, mode="cols"):
    return cython_team.check(net, plan, backend or cols_backend(), mode)


# the Cython twin's shapes: odd widths, slices split unevenly across 2 and 3 workers, widths
# below one vector per worker (a worker with no columns), deep nets, 1..7 outputs
SHAPES = cython_team.SHAPES


@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("uint8", [True, False])
def test_cols_matches_reference(sizes, threads, uint8):
    net, X, scale, targets, labels = problem(sizes, 43, np.float32, seed=5, uint8=uint8, activation="relu",
                                             output="softmax" if sizes[-1] > 1 else "sigmoid")
    # batch 6 over 43 rows: the last minibatch has one row (fewer rows than workers)
    plan = make_plan(X, scale, targets, labels, 6, lr=0.2, loss="cross_entropy", threads=threads)
    result = check(net, plan)
    assert result.threads_used == min(threads, MAX_TEAM)


def _act(z, kind):
    from fastgd import ops
    if kind == ops.ACTIVATION_CODES["relu"]:
        return np.maximum(z, 0)
    if kind == ops.ACTIVATION_CODES["leaky_relu"]:
        return np.where(z > 0, z, z * np.float32(ops.LEAKY_SLOPE))
    return z


@pytest.mark.parametrize("M", [1, 2, 4, 5, 6, 7, 8, 10, 13, 32])
@pytest.mark.parametrize("N", [1, 16, 17, 32, 50, 80, 129])
@pytest.mark.parametrize("K", [1, 7, 300])
def test_gemm_tiles_matches_numpy(M, N, K):
    """Every tile shape (6, 4 and single rows; 4, 2 and single vectors, the last masked), K in
    one block and in several (KC), A read straight and transposed through its strides, offsets
    into every operand, and each epilogue; nothing outside C's M x N block written."""
    from fastgd import ops
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    ldb, ldc = N + 3, N + 5
    B = rng.standard_normal(2 + K * ldb).astype(np.float32)
    Bm = B[2:].reshape(K, ldb)[:, :N]
    for transposed in (False, True):
        rsa, csa = (1, M + 2) if transposed else (K + 1, 1)
        A = rng.standard_normal(3 + (M - 1) * rsa + (K - 1) * csa + 1).astype(np.float32)
        Am = np.lib.stride_tricks.as_strided(A[3:], shape=(M, K), strides=(4 * rsa, 4 * csa))
        want = Am.astype(np.float64) @ Bm.astype(np.float64)
        E = rng.standard_normal(4 + M * ldc).astype(np.float32)
        bias = E[4:4 + N]
        for epi in (C.STORE, C.ACC, C.BIAS_ACT, C.DACT):
            for kind in (ops.ACTIVATION_CODES["relu"], ops.ACTIVATION_CODES["leaky_relu"], ops.LINEAR):
                if epi in (C.STORE, C.ACC) and kind != ops.LINEAR:
                    continue
                out = rng.standard_normal(5 + M * ldc + 7).astype(np.float32)
                before = out.copy()
                coef = np.float32(-0.3)
                lde = 0 if epi == C.BIAS_ACT else ldc
                C.gemm_tiles(M, N, K, A, 3, rsa, csa, B, 2, ldb, out, 5, ldc, epi, E, 4, lde, coef, kind)
                got = out[5:5 + M * ldc].reshape(M, ldc)[:, :N]
                old = before[5:5 + M * ldc].reshape(M, ldc)[:, :N]
                if epi == C.STORE:
                    ref = want
                elif epi == C.ACC:
                    ref = old + coef * want
                elif epi == C.BIAS_ACT:
                    ref = _act(want + bias, kind)
                else:
                    a = E[4:4 + M * ldc].reshape(M, ldc)[:, :N]
                    ref = want * np.where(a > 0, 1.0, 0.0 if kind == ops.ACTIVATION_CODES["relu"] else
                                          (ops.LEAKY_SLOPE if kind == ops.ACTIVATION_CODES["leaky_relu"] else 1.0))
                np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.sqrt(K))
                mask = np.ones(out.shape, bool)
                mask[5:5 + M * ldc].reshape(M, ldc)[:, :N] = False
                np.testing.assert_array_equal(out[mask], before[mask])  # padding and margins untouched


@pytest.mark.parametrize("n1", [37, 100])
@pytest.mark.parametrize("n_in", [5, 64, 100, 130, 784])
@pytest.mark.parametrize("Bc", [1, 3, 4, 6, 9, 32, 150])
def test_first_layer_lists_and_klist_gemm(n_in, Bc, n1):
    """build_lists against NumPy (the union of each 4-row block's non-zero pixels; each 4-pixel
    block's samples, ascending), and gemm_klist through them equals the dense product: single
    vectors and 4-vector panels (n1), short and long lists (n_in for the forward, Bc for the
    update)."""
    rng = np.random.default_rng(n_in + Bc)
    X = rng.integers(0, 256, size=(50, n_in), dtype=np.uint8)
    X[rng.random(X.shape) < 0.8] = 0
    X[3] = 0  # a row without pixels
    rows = rng.integers(0, 50, size=Bc).astype(np.int64)
    rows[0] = 3
    bmax = Bc + 2
    nbf, nbu = (Bc + 3) // 4, (n_in + 3) // 4
    kl_f, kn_f = np.full(nbf * n_in, -1, np.int32), np.zeros(nbf, np.int32)
    kl_u, kn_u = np.full(nbu * bmax, -1, np.int32), np.full(nbu, 99, np.int32)
    C.build_lists(X, rows, Bc, kl_f, kn_f, kl_u, kn_u, bmax)
    Xr = X[rows] != 0
    for b in range(nbf):
        np.testing.assert_array_equal(kl_f[b * n_in:b * n_in + kn_f[b]], np.flatnonzero(Xr[4 * b:4 * b + 4].any(0)))
    for pb in range(nbu):
        np.testing.assert_array_equal(kl_u[pb * bmax:pb * bmax + kn_u[pb]],
                                      np.flatnonzero(Xr[:, 4 * pb:4 * pb + 4].any(1)))
    x = (X[rows].astype(np.float32) / np.float32(255)).ravel()
    W = rng.standard_normal(n_in * n1).astype(np.float32)
    b = rng.standard_normal(n1).astype(np.float32)
    z = np.zeros(Bc * n1, np.float32)
    C.gemm_klist(Bc, n1, kl_f, n_in, kn_f, x, 0, n_in, 1, W, 0, n1, z, 0, n1, C.BIAS_ACT, b, 0, 0, np.float32(0),
                 C.LINEAR)
    ref = x.reshape(Bc, n_in).astype(np.float64) @ W.reshape(n_in, n1) + b
    np.testing.assert_allclose(z.reshape(Bc, n1), ref, rtol=1e-4, atol=1e-4)
    D = rng.standard_normal(Bc * n1).astype(np.float32)
    W2 = W.copy()
    C.gemm_klist(n_in, n1, kl_u, bmax, kn_u, x, 0, 1, n_in, D, 0, n1, W2, 0, n1, C.ACC, W2, 0, 0, np.float32(-0.5),
                 C.LINEAR)
    ref = W.reshape(n_in, n1) - 0.5 * (x.reshape(Bc, n_in).T.astype(np.float64) @ D.reshape(Bc, n1))
    np.testing.assert_allclose(W2.reshape(n_in, n1), ref, rtol=1e-4, atol=1e-4)
    untouched = ~Xr.any(0)  # weight rows of pixels zero in every sample: bit for bit
    np.testing.assert_array_equal(W2.reshape(n_in, n1)[untouched], W.reshape(n_in, n1)[untouched])


@pytest.mark.parametrize("batch", [1, 2, 5, 43, 64])
@pytest.mark.parametrize("threads", [2, 3])
def test_cols_batch_sizes(batch, threads):
    """Batch 1 (every minibatch has fewer rows than workers), 2, one minibatch holding every row
    (43), and a batch larger than the data (64)."""
    net, X, scale, targets, labels = problem([100, 130, 33, 7], 43, np.float32, seed=7, activation="relu",
                                             output="softmax")
    plan = make_plan(X, scale, targets, labels, batch, lr=0.1, loss="cross_entropy", threads=threads)
    check(net, plan)


@pytest.mark.parametrize("hidden", ["relu", "leaky_relu"])
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("softmax", "mse"), ("sigmoid", "mse"),
                                         ("sigmoid", "cross_entropy"), ("linear", "mse")])
@pytest.mark.parametrize("uint8", [True, False])
def test_cols_activations_and_losses(hidden, output, loss, uint8):
    net, X, scale, targets, labels = problem([40, 50, 24, 6], 37, np.float32, seed=8, uint8=uint8,
                                             activation=hidden, output=output)
    plan = make_plan(X, scale, targets, labels, 5, lr=0.05, loss=loss, threads=2)
    check(net, plan)


def test_cols_per_step_learning_rates_and_repeated_rows():
    """A schedule (one rate per step) and an order with repeats and missing rows."""
    net, X, scale, targets, labels = problem([60, 48, 5], 40, np.float32, seed=12, activation="relu",
                                             output="softmax")
    order = np.random.default_rng(3).integers(0, 40, size=57).astype(np.int64)
    plan = EpochPlan(X=X, x_scale=scale, targets=targets, labels=labels, order=order,
                     lrs=np.linspace(0.5, 0.05, -(-57 // 6)), batch_size=6, loss="cross_entropy", threads=2)
    check(net, plan)


def test_cols_is_repeatable():
    """A fixed worker count gives the same bits on every run (fixed column split and summation
    order)."""
    results = []
    for _ in range(2):
        net, X, scale, targets, labels = problem([70, 96, 40, 5], 50, np.float32, seed=4, uint8=True,
                                                 activation="relu", output="softmax")
        plan = make_plan(X, scale, targets, labels, 8, lr=0.2, loss="cross_entropy", threads=2)
        train(cols_backend(), net, plan)
        results.append(net.params.copy())
    np.testing.assert_array_equal(results[0], results[1])


def test_cols_data_changed_in_place_between_calls():
    """The lists are built from the rows each step, so input changed in place between calls is
    read as it is now (the backend rebuilds its density decision per workspace, not per call)."""
    net, X, scale, targets, labels = problem([50, 64, 4], 30, np.float32, seed=9, uint8=True, activation="relu",
                                             output="softmax")
    plan = make_plan(X, scale, targets, labels, 7, lr=0.1, loss="cross_entropy", threads=2)
    b = cols_backend()
    ws = b.prepare(net, plan)
    ref = net.copy()
    numpy = fastgd.backends.get_backend("numpy")
    rws = numpy.prepare(ref, plan)
    for _ in range(2):
        b.train_epoch(net, plan, ws)
        numpy.train_epoch(ref, plan, rws)
        X[::3] = np.roll(X[::3], 5, axis=1)  # in place: the next call must see it
    np.testing.assert_allclose(net.params, ref.params, rtol=RTOL, atol=ATOL)


def test_cols_through_the_trainer_and_large_net():
    """The issue-11 network (784-512-512-10) for a few steps through fastgd.Trainer, against the
    reference; the auto rule picks cols for it at batch 32 with 2 threads (when the team can
    have two workers)."""
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(200, 784), dtype=np.uint8)
    X[rng.random(X.shape) < 0.8] = 0
    y = rng.integers(0, 10, size=200)
    nets = {}
    for name in ("numba", "numpy"):
        net = fastgd.Network([784, 512, 512, 10], activation="relu", output="softmax", dtype="float32", seed=0)
        h = fastgd.Trainer(net, loss="cross_entropy", lr=0.05, batch_size=32, epochs=2, backend=name, threads=2,
                           seed=0).fit(X, y)
        nets[name] = (net, h)
    if MAX_TEAM >= 2:
        assert nets["numba"][1].records[-1]["mode"] == "cols"
    np.testing.assert_allclose(nets["numba"][0].params, nets["numpy"][0].params, rtol=RTOL, atol=ATOL)


def test_routing():
    """cols only for float32 plain SGD with relu/leaky_relu/linear hidden layers and a
    softmax/sigmoid/linear output, uint8 or float32 input; the auto rule by width and work."""
    net, X, scale, targets, labels = problem([30, 70, 40, 4], 20, np.float32, seed=1, activation="relu",
                                             output="softmax")
    plan = make_plan(X, scale, targets, labels, 4, lr=0.1, loss="cross_entropy", threads=2)
    b = cols_backend()
    assert b._cols(net, plan, 2, b._csr(X, False))
    assert not cols_backend(False)._cols(net, plan, 2, b._csr(X, False))
    auto = cols_backend(None)
    assert not auto._cols(net, plan, 2, b._csr(X, False))  # 70/40 units: under 2 vectors per worker
    big = fastgd.Network([100, 128, 128, 10], activation="relu", output="softmax", dtype="float32", seed=0)
    plan_big = make_plan(np.zeros((20, 100), np.float32), 1.0, np.zeros((20, 10), np.float32), labels, 128, lr=0.1,
                         loss="cross_entropy", threads=2)
    assert auto._cols(big, plan_big, 2, b._csr(plan_big.X, False))  # 128 x 30k dense parameters >= 1M
    assert not auto._cols(big, plan_big, 1, b._csr(plan_big.X, False))  # one worker: the team
    f64 = fastgd.Network([30, 70, 40, 4], activation="relu", output="softmax", dtype="float64", seed=0)
    assert not b._cols(f64, plan, 2, b._csr(X, False))
    tanh = fastgd.Network([30, 70, 40, 4], activation="tanh", output="softmax", dtype="float32", seed=0)
    assert not b._cols(tanh, plan, 2, b._csr(X, False))
    shallow = fastgd.Network([30, 4], activation="relu", output="softmax", dtype="float32", seed=0)
    assert not b._cols(shallow, plan, 2, b._csr(X, False))


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(dropout=0.2)])
def test_optimiser_and_augmentation_route_elsewhere(kw):
    net, X, scale, targets, labels = problem([30, 70, 40, 4], 20, np.float32, seed=1, activation="relu",
                                             output="softmax")
    plan = make_plan(X, scale, targets, labels, 4, lr=0.1, loss="cross_entropy", threads=2)
    if "momentum" in kw:
        from fastgd.backends.base import SGD, StepRule
        plan.rule = StepRule(SGD, momentum=0.9, state=(np.zeros_like(net.params),))
    else:
        plan.dropout = kw["dropout"]
    result = train(cols_backend(), net.copy(), plan)
    assert result.mode != "cols"


def test_column_splits():
    """Slices of whole 16-column blocks covering every column once, fixed by the shapes (not by
    where the weights lie), and a layer narrower than the workers leaves some empty."""
    s = C.column_splits([20, 512, 100, 4], 2).reshape(2, 3)
    assert list(s[0]) == [0, 256, 512] and list(s[1]) == [0, 48, 100]
    s3 = C.column_splits([20, 8, 4], 3)
    assert list(s3) == [0, 0, 0, 8]


def test_buffers_have_odd_vector_strides():
    """Every row stride the tiles stream (activations, deltas, each worker's weight copy, the
    partials) is an odd number of 16-float vectors at least the row's width; the weight copies
    tile wp without overlapping."""
    net = fastgd.Network([784, 512, 96, 10], activation="relu", output="softmax", dtype="float32", seed=0)
    c = C.make_cols(net, 32, 2, (np.zeros(0), np.zeros(0), np.zeros(0)))
    assert [C.padded(n) for n in (1, 16, 17, 32, 48, 256, 512)] == [16, 16, 48, 48, 48, 272, 528]
    assert list(c.lda) == [528, 112] and c.bp == 48
    widths = np.diff(c.splits.reshape(2, 3), axis=1).reshape(-1)
    assert list(widths) == [256, 256, 48, 48] and list(c.wp_ld) == [272, 272, 48, 48]
    ends = c.wp_off + c.wp_ld * np.repeat(c.sizes[:2], 2)
    assert list(c.wp_off[1:]) == list(ends[:-1]) and ends[-1] == c.wp.size


def test_two_cols_epochs_in_two_threads_match_sequential_runs():
    """Two fits in two Python threads, each on a 2-worker cols team (each caller's OpenMP team
    has its own barrier): bitwise the sequential results."""
    import threading

    def job(seed):
        net, X, scale, targets, labels = problem([64, 96, 40, 5], 60, np.float32, seed=seed, uint8=seed % 2 == 0,
                                                 activation="relu", output="softmax")
        return net, make_plan(X, scale, targets, labels, 7, lr=0.1, loss="cross_entropy", threads=2)

    def run(seed):
        net, plan = job(seed)
        backend = cols_backend()
        ws = backend.prepare(net, plan)
        for _ in range(3):
            assert backend.train_epoch(net, plan, ws).mode == "cols"
        return net.params.copy()

    sequential = [run(s) for s in (2, 3)]
    results, errors = [None, None], []

    def target(i):
        try:
            for _ in range(2):  # twice, so the two runs overlap whatever the start-up order
                results[i] = run((2, 3)[i])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, sequential):
        np.testing.assert_array_equal(got, want)
