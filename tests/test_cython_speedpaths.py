"""The Cython backend's issue-11 speed paths against the NumPy reference: the zero-skipping
first layer at every padded width (forward in groups of 8/4/2/1 vectors, the update by weight
row through a per-step column index), chosen by the density of the data also when the layer is
BLAS-sized; its thread-count independence; and the predict fast path. Odd widths exercise every
group split (pad 16, 48 = 32 + 16, 80 = 64 + 16, 144 = 128 + 16, 208 = 128 + 64 + 16)."""
import numpy as np
import pytest

import fastgd
from fastgd.backends import cython_backend
from fastgd.ops import HIDDEN, OUTPUTS

from test_backends import configure, train
from test_cython_backend import make_plan, problem

WIDTHS = [[784, 37, 10], [100, 130, 33, 7], [60, 200, 5], [30, 70, 4], [50, 9, 3]]


def tol(dtype):
    return (1e-10, 1e-12) if dtype == np.float64 else (2e-4, 2e-5)


def cy(input_mode="auto", sync_min_work=0, blas_min_work=None):
    """The backend on its serial / sync paths (the cols epoch, which its auto rule would pick for
    some of these shapes, has tests/test_cython_team.py)."""
    b = cython_backend.CythonBackend()
    b.input_mode, b.sync_min_work, b.cols = input_mode, sync_min_work, False
    if blas_min_work is not None:
        b.blas_min_work = blas_min_work
    return b


def reference(net, plan):
    ref = net.copy()
    train("numpy", ref, plan)
    return ref.params


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", WIDTHS)
@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_first_layer_every_width_matches_reference(dtype, sizes, threads):
    net, X, scale, targets, labels = problem(sizes, 43, dtype, seed=5, activation="relu", output="softmax",
                                             density=0.25)
    X[4] = 0  # an all-zero image
    X[7] = 255  # and a full one
    # batch 6 over 43 rows: the last minibatch has one row (fewer rows than threads)
    plan = make_plan(X, scale, targets, labels, 6, lr=0.2, loss="cross_entropy", threads=threads)
    b = cy("sparse")
    got = net.copy()
    result = train(b, got, plan)
    assert result.mode == ("serial" if threads == 1 else "sync")
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(got.params, reference(net, plan), rtol=rtol, atol=atol)
    dense = net.copy()
    dense_result = train(cy("dense"), dense, plan)
    np.testing.assert_allclose(got.params, dense.params, rtol=rtol, atol=atol)
    np.testing.assert_allclose(result.loss_sum, dense_result.loss_sum, rtol=rtol)
    assert result.n_correct == dense_result.n_correct


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", [[784, 37, 10], [100, 130, 33, 7], [60, 200, 5]])
def test_sparse_path_is_bitwise_independent_of_threads(dtype, sizes):
    net, X, scale, targets, labels = problem(sizes, 37, dtype, seed=6, activation="relu", output="softmax")
    results = []
    for threads in (1, 2, 3):
        plan = make_plan(X, scale, targets, labels, 9, lr=0.2, loss="cross_entropy", threads=threads)
        got = net.copy()
        train(cy("sparse", blas_min_work=1 << 62), got, plan)
        results.append(got.params)
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_sparse_first_layer_with_batch_sizes(dtype, batch):
    """Batch 1, a small batch, and one minibatch holding every row (plus BLAS for layer 2)."""
    net, X, scale, targets, labels = problem([100, 130, 33, 7], 64, dtype, seed=7, activation="tanh", density=0.2)
    plan = make_plan(X, scale, targets, labels, batch, lr=0.1, threads=2)
    got = net.copy()
    train(cy("sparse", blas_min_work=1), got, plan)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(got.params, reference(net, plan), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer,kw", [("sgd", dict(momentum=0.9, weight_decay=1e-3)), ("adam", {})])
@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_update_into_gradient_buffer(dtype, optimizer, kw, threads):
    """A non-plain rule accumulates the sparse layer's gradient (coef 1/B) before its step."""
    net, X, scale, targets, labels = problem([90, 50, 6], 31, dtype, seed=8, activation="relu", output="softmax")
    plan = make_plan(X, scale, targets, labels, 4, lr=0.05, loss="cross_entropy", threads=threads)
    configure(plan, net, optimizer, **kw)
    ref_plan = make_plan(X, scale, targets, labels, 4, lr=0.05, loss="cross_entropy")
    configure(ref_plan, net, optimizer, **kw)
    got = net.copy()
    train(cy("sparse"), got, plan)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(got.params, reference(net, ref_plan), rtol=rtol, atol=atol)
    for a, r in zip(plan.rule.state, ref_plan.rule.state):
        np.testing.assert_allclose(a, r, rtol=rtol, atol=atol)


def test_sparse_hogwild_trains():
    net, X, scale, targets, labels = problem([784, 37, 10], 400, np.float32, seed=9, activation="relu",
                                             output="softmax", density=0.2)
    plan = make_plan(X, scale, targets, labels, 8, lr=0.05, loss="cross_entropy", threads=2, deterministic=False)
    got = net.copy()
    result = train(cy("sparse"), got, plan)
    assert result.mode == "hogwild"
    assert np.isfinite(got.params).all() and not np.array_equal(got.params, net.params)


@pytest.mark.parametrize("uint8,density,expect_sparse", [(True, 0.2, True), (True, 0.9, False), (False, 0.2, False)])
def test_auto_mode_picks_sparse_by_density_even_for_blas_sized_layers(uint8, density, expect_sparse):
    net, X, scale, targets, labels = problem([784, 128, 10], 64, np.float32, seed=10, uint8=uint8, density=density)
    b = cy("auto", blas_min_work=1)  # every layer BLAS-sized
    plan = make_plan(X, scale, targets, labels, 32, threads=1)
    ws = b.prepare(net, plan)
    assert (ws.csr is not None) == expect_sparse
    assert ws.layout.table[0, 6] == (0 if expect_sparse else 1)  # a sparse first layer never calls BLAS
    assert ws.layout.table[1, 6] == 1
    got = net.copy()
    b.train_epoch(got, plan, ws)
    rtol, atol = tol(np.float32)
    np.testing.assert_allclose(got.params, reference(net, plan), rtol=rtol, atol=atol)


def test_loss_and_grad_with_sparse_input_matches_reference():
    net, X, scale, targets, labels = problem([100, 130, 33, 7], 11, np.float64, seed=11, activation="relu",
                                             output="softmax")
    b = cy("sparse")
    loss, grad = b.loss_and_grad(net, X, scale, targets, "cross_entropy")
    ref_loss, ref_grad = fastgd.backends.get_backend("numpy").loss_and_grad(net, X, scale, targets, "cross_entropy")
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)




@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", [[784, 128, 10], [784, 37, 10], [100, 130, 33, 7], [5, 1], [3, 40, 17]])
@pytest.mark.parametrize("uint8", [True, False])
def test_flat_forward_matches_reference(dtype, sizes, uint8):
    """Few rows (single-sample predict) run on the flat parameters: the reference's outputs."""
    rng = np.random.default_rng(12)
    for k, (hidden, output) in enumerate([(h, o) for h in HIDDEN for o in OUTPUTS]):
        if sizes[-1] == 1 and output == "softmax":
            continue
        net = fastgd.Network(sizes, hidden, output, dtype=dtype, seed=k)
        if uint8:
            X = rng.integers(0, 256, size=(3, sizes[0]), dtype=np.uint8)
            X[:, ::3] = 0
            scale = 1 / 255
        else:
            X = rng.standard_normal((3, sizes[0])).astype(dtype)
            scale = 1.0
        b = cython_backend.CythonBackend()
        for rows in (X[:1], X):
            assert rows.shape[0] * net.n_params <= b.flat_forward_max_work or sizes[1] == 128
            got = b.forward(net, rows, scale, 2)
            ref = fastgd.backends.get_backend("numpy").forward(net, rows, scale)
            rtol, atol = (1e-12, 1e-13) if dtype == np.float64 else (2e-5, 2e-6)
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)
            b.flat_forward_max_work = 0  # the chunked padded path agrees too
            np.testing.assert_allclose(b.forward(net, rows, scale, 2), got, rtol=rtol, atol=atol)
            b.flat_forward_max_work = 1 << 18


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", WIDTHS + [[784, 16, 16, 10], [70, 3], [130, 64, 10]])
@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_inference_matches_reference(dtype, sizes, threads):
    """uint8 inference lists each chunk's non-zero pixels on the fly (no CSR of the whole input):
    forward and evaluate equal the reference and the dense path, whatever the chunking. 11
    rows in chunks of 4: a last chunk of 3; chunks of 5 on 2 threads: a part of one row."""
    net, X, scale, targets, labels = problem(sizes, 11, dtype, seed=9, activation="relu", output="softmax",
                                             density=0.25)
    X[2] = 0  # an all-zero row
    X[5] = 255  # a full one
    X[9, -1] = 7  # a pixel in the last (scalar tail) position
    ref = fastgd.backends.get_backend("numpy")
    want = ref.forward(net, X, scale)
    want_eval = ref.evaluate(net, X, scale, targets, labels, "cross_entropy")
    rtol, atol = tol(dtype)
    for chunk in (4, 5, 11, 256):
        b = cy("auto")
        b.flat_forward_max_work = 0
        b.forward_chunk = chunk
        assert b._sparse_forward(X)
        got = b.forward(net, X, scale, threads)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        loss, correct = b.evaluate(net, X, scale, targets, labels, "cross_entropy", threads)
        np.testing.assert_allclose(loss, want_eval[0], rtol=rtol)
        assert correct == want_eval[1]
        d = cy("dense")
        d.flat_forward_max_work = 0
        d.forward_chunk = chunk
        assert not d._sparse_forward(X)
        np.testing.assert_allclose(d.forward(net, X, scale, threads), got, rtol=rtol, atol=atol)
    # a dense uint8 input takes the dense path in auto mode; a float one never goes sparse
    assert not cy("auto")._sparse_forward(np.full((5, sizes[0]), 3, np.uint8))
    assert not cy("sparse")._sparse_forward(X.astype(dtype))


def test_sparse_inference_rejects_bad_buffers():
    from fastgd._kernels import dense_sgd
    net, X, scale, targets, labels = problem([30, 20, 4], 6, np.float32, seed=1, activation="relu",
                                             output="softmax", density=0.3)
    b = cy("sparse")
    lay = cython_backend._Layout(net, 4, b.blas_min_work, sparse_first=True)
    prob = b._problem(net, lay, X, scale)
    out = np.empty((6, 4), np.float32)
    good = dict(sparse_idx=np.empty(4 * 30 + 1, np.uint16), sparse_val=np.empty(4 * 30 + 1, np.uint8),
                sparse_ptr=np.empty(5, np.int64))
    dense_sgd.forward(lay.pad(net.params), prob, 4, lay.scratch(1), out, **good)
    np.testing.assert_allclose(out, fastgd.backends.get_backend("numpy").forward(net, X, scale), rtol=2e-4, atol=2e-5)
    for key in good:
        short = dict(good, **{key: good[key][:-1]})
        with pytest.raises(ValueError, match="too small"):
            dense_sgd.forward(lay.pad(net.params), prob, 4, lay.scratch(1), out, **short)
    with pytest.raises(ValueError, match="needs uint8 input"):
        Xf = (X * scale).astype(np.float32)
        dense_sgd.forward(lay.pad(net.params), b._problem(net, lay, Xf, 1.0), 4, lay.scratch(1), out, **good)


def test_build_csr_matches_numpy():
    from fastgd._kernels import dense_sgd
    rng = np.random.default_rng(4)
    # widths around the 64-pixel blocks, and 65536 (the largest indices a uint16 holds)
    for shape in [(7, 784), (5, 63), (3, 64), (4, 65), (6, 129), (2, 1), (3, 0), (0, 10), (4, 65536)]:
        X = rng.integers(0, 256, shape, dtype=np.uint8)
        X[rng.random(shape) < 0.7] = 0
        if shape[0] > 2:
            X[1] = 0
            X[2] = 200
        if shape[0] > 3 and shape[1] >= 64:  # in each block only the second 32 pixels (or only the first)
            X[3] = 0
            for b in range(0, shape[1] - 63, 64):
                X[3, b + (32 if b % 128 == 0 else 0):b + (64 if b % 128 == 0 else 32)] = 9
        ptr, idx, val = dense_sgd.build_csr(X)
        rows, cols = np.nonzero(X)
        np.testing.assert_array_equal(ptr, np.r_[0, np.cumsum(np.count_nonzero(X, axis=1))])
        np.testing.assert_array_equal(idx, cols)
        np.testing.assert_array_equal(val, X[rows, cols])
        assert idx.dtype == np.uint16 and val.dtype == np.uint8 and idx.size == val.size == ptr[-1]


def test_flat_forward_is_used_for_one_row_and_rejects_bad_input():
    net = fastgd.Network([20, 9, 3], "relu", "softmax", dtype=np.float32, seed=0)
    b = cython_backend.CythonBackend()
    x = np.random.default_rng(0).random((1, 20)).astype(np.float32)
    np.testing.assert_allclose(b.forward(net, x, 1.0, 1), net.predict_proba(x, backend="numpy"), rtol=1e-5)
    with pytest.raises(ValueError):
        b.forward(net, np.zeros((1, 21), np.float32), 1.0, 1)
    with pytest.raises(TypeError):
        b.forward(net, np.zeros((1, 20), np.float64), 1.0, 1)
    with pytest.raises(ValueError):
        b.forward(net, np.zeros((1, 20), np.float32), 1.0, 0)
    from fastgd._kernels import dense_sgd
    out = np.empty((1, 3), np.float32)
    with pytest.raises(ValueError):  # a layout that does not fit the parameters
        dense_sgd.forward_flat(net.params[:-1].copy(), net.layout_array(), x, 1.0, 0, 0, out, np.empty(200, np.float32))
    with pytest.raises(ValueError):  # a work buffer too small
        dense_sgd.forward_flat(net.params, net.layout_array(), x, 1.0, 0, 0, out, np.empty(5, np.float32))


# hidden deltas through the transposed weights (hidden_deltas_small) up to n_in_pad x pad = 8192:
# 512 x 16 sits at the limit (the 784-512-512-10 output layer), 528 x 16 just above it (the
# per-unit horizontal sums), 496 x 32 at the limit with two output blocks
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", [[40, 512, 10], [33, 511, 13], [40, 520, 10], [24, 490, 17]])
@pytest.mark.parametrize("uint8", [True, False])
def test_transposed_weight_deltas_at_the_limit_match_reference(dtype, sizes, uint8):
    net, X, scale, targets, labels = problem(sizes, 13, dtype, seed=3, uint8=uint8, activation="relu",
                                             output="softmax", density=0.4)
    rtol, atol = tol(dtype)
    results = []
    for threads, batch in ((1, 1), (2, 1), (1, 4), (2, 4)):
        # batch 1: one row per step (fewer rows than threads); batch 4 over 13 rows: the last
        # minibatch has one row
        plan = make_plan(X, scale, targets, labels, batch, lr=0.1, loss="cross_entropy", threads=threads)
        got = net.copy()
        result = train(cy(), got, plan)
        assert result.mode == ("serial" if threads == 1 else "sync")
        np.testing.assert_allclose(got.params, reference(net, plan), rtol=rtol, atol=atol)
        assert not np.array_equal(got.params, net.params)
        results.append(got.params)
    # own kernels only (no layer is BLAS-sized here): bitwise independent of the thread count
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[3], results[2])


# ---- image shifts on the sparse first layer: the rows are shifted as they are gathered ----------
def test_shifted_gather_moves_known_images():
    """gather_csr_rows with shifts equals the CSR of fastgd._random.shift_images' images: a
    single pixel at each corner and the centre, a full image, an empty one, on a non-square
    image, for every shift up to (and beyond) the image size."""
    from fastgd import _random
    from fastgd._kernels import dense_sgd

    rows, cols = 5, 7
    imgs = []
    for r, c in [(0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1), (2, 3)]:
        img = np.zeros((rows, cols), np.uint8)
        img[r, c] = 200
        imgs.append(img.ravel())
    imgs += [np.arange(1, rows * cols + 1, dtype=np.uint8), np.zeros(rows * cols, np.uint8)]
    X = np.array(imgs)
    ptr, idx, val = dense_sgd.build_csr(X)
    for max_shift in (1, 3, 8):
        for seed in range(6):
            order = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(X)), 3)).astype(np.int64)
            m = order.size
            out_ptr, out_idx, out_val = np.zeros(m + 1, np.int64), np.zeros(idx.size * 3, np.uint16), \
                np.zeros(idx.size * 3, np.uint8)
            end = dense_sgd.gather_csr_rows(ptr, idx, val, order, out_ptr, out_idx, out_val, 0, seed=seed,
                                            first_position=11, max_shift=max_shift, image_rows=rows,
                                            image_cols=cols)
            dx, dy = _random.shifts(seed, 11 + np.arange(m), max_shift)
            want = _random.shift_images(X[order], rows, cols, dx, dy)
            wptr, widx, wval = dense_sgd.build_csr(np.ascontiguousarray(want))
            assert end == wptr[-1]
            np.testing.assert_array_equal(out_ptr, wptr)
            np.testing.assert_array_equal(out_idx[:end], widx)
            np.testing.assert_array_equal(out_val[:end], wval)
    # a single pixel by hand: (r, c) = (2, 3) moved by the shift of its position
    dx, dy = _random.shifts(4, np.arange(1), 2)
    one = np.zeros(2, np.int64)
    got_idx = np.zeros(1, np.uint16)
    got_val = np.zeros(1, np.uint8)
    end = dense_sgd.gather_csr_rows(ptr, idx, val, np.array([4], np.int64), one, got_idx, got_val, seed=4,
                                    max_shift=2, image_rows=rows, image_cols=cols)
    assert end == 1 and got_idx[0] == (2 + dy[0]) * cols + 3 + dx[0] and got_val[0] == 200


def test_shifted_gather_checks_its_buffers():
    from fastgd._kernels import dense_sgd

    X = np.full((3, 12), 7, np.uint8)
    ptr, idx, val = dense_sgd.build_csr(X)
    order = np.arange(3, dtype=np.int64)
    with pytest.raises(ValueError, match="too small"):
        dense_sgd.gather_csr_rows(ptr, idx, val, order, np.zeros(4, np.int64), np.zeros(35, np.uint16),
                                  np.zeros(35, np.uint8), max_shift=1, image_rows=3, image_cols=4)
    with pytest.raises(ValueError, match="len\\(order\\) \\+ 1"):
        dense_sgd.gather_csr_rows(ptr, idx, val, order, np.zeros(3, np.int64), np.zeros(36, np.uint16),
                                  np.zeros(36, np.uint8))
    with pytest.raises(ValueError, match="image_rows"):
        dense_sgd.gather_csr_rows(ptr, idx, val, order, np.zeros(4, np.int64), np.zeros(36, np.uint16),
                                  np.zeros(36, np.uint8), max_shift=1, image_rows=0, image_cols=4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes,shape", [([35, 9, 3], (5, 7)), ([784, 37, 10], (28, 28)), ([42, 130, 5], (7, 6))])
@pytest.mark.parametrize("threads,sync_min_work,bs,n,dropout", [
    (1, 0, 6, 43, 0.0),          # serial; last minibatch of one row
    (2, 0, 1, 9, 0.2),           # sync, batch 1: fewer rows than threads
    (2, 0, 5, 31, 0.0),          # sync, last minibatch of one row
    (2, 1 << 62, 4, 70, 0.1),    # serial on a 2-thread plan: the rest of the rows gathered meanwhile
])
def test_sparse_shifted_epochs_match_reference(dtype, sizes, shape, threads, sync_min_work, bs, n, dropout):
    net, X, scale, targets, labels = problem(sizes, n, dtype, seed=9, activation="relu", output="softmax",
                                             density=0.3)
    X[2] = 255  # a full image: every shift drops pixels
    plan = make_plan(X, scale, targets, labels, bs, lr=0.2, loss="cross_entropy", threads=threads)
    configure(plan, net, max_shift=3, image_shape=shape, seed=77, first_position=5, dropout=dropout)
    b = cy("sparse", sync_min_work=sync_min_work)
    got = net.copy()
    ws = b.prepare(got, plan)
    result = b.train_epoch(got, plan, ws)
    assert ws.csr is not None and getattr(ws, "dense_buffers", None) is None  # the sparse path ran
    assert result.mode == ("sync" if threads == 2 and sync_min_work == 0 else "serial")
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(got.params, reference(net, plan), rtol=rtol, atol=atol)
    dense = net.copy()
    dense_result = train(cy("dense", sync_min_work=sync_min_work), dense, plan)
    np.testing.assert_allclose(got.params, dense.params, rtol=rtol, atol=atol)
    np.testing.assert_allclose(result.loss_sum, dense_result.loss_sum, rtol=rtol)


def test_sparse_shifted_epoch_in_slices_equals_one_call():
    """Positions carry across calls: an epoch in three calls (the Trainer's slices) trains like
    one, and a second epoch on the same workspace reuses its buffers."""
    import dataclasses

    net, X, scale, targets, labels = problem([48, 20, 4], 64, np.float32, seed=2, activation="relu",
                                             output="softmax", density=0.4)
    plan = make_plan(X, scale, targets, labels, 8, lr=0.1, loss="cross_entropy", threads=2)
    configure(plan, net, max_shift=2, image_shape=(6, 8), seed=5)
    runs = []
    for cuts in ([0, 64], [0, 16, 40, 64]):
        b = cy("sparse", sync_min_work=1 << 62)
        m = net.copy()
        ws = b.prepare(m, plan)
        for _ in range(2):
            for a, z in zip(cuts[:-1], cuts[1:]):
                part = dataclasses.replace(plan, order=plan.order[a:z], lrs=plan.lrs[a // 8:z // 8], first_position=a)
                b.train_epoch(m, part, ws)
        runs.append(m.params.copy())
    np.testing.assert_array_equal(runs[1], runs[0])
    assert not np.array_equal(runs[0], net.params)


@pytest.mark.parametrize("threads", [1, 2])
def test_training_leaves_the_callers_floating_point_mode_alone(threads):
    """The training kernel flushes denormals to zero on its threads (a saturated sigmoid network
    otherwise slows down several-fold) and must restore the caller's mode: afterwards a float32
    denormal on this thread still survives arithmetic."""
    tiny = np.array([1e-39], dtype=np.float32)
    assert tiny[0] != 0 and (tiny * np.float32(1.0))[0] != 0, "denormals already flushed before training"
    X = np.random.default_rng(0).integers(0, 256, size=(64, 30)).astype(np.uint8)
    labels = np.arange(64, dtype=np.int32) % 3
    targets = np.eye(3, dtype=np.float32)[labels]
    for mode_work in (0, 1 << 40):  # sync mode on 2 threads, then serial
        net = fastgd.Network([30, 9, 3], activation="sigmoid", output="sigmoid", dtype=np.float32, seed=0)
        plan = make_plan(X, np.float32(1 / 255), targets, labels, 5, lr=3.0, loss="mse", threads=threads)
        result = train(cy(sync_min_work=mode_work), net, plan)
        assert np.isfinite(net.params).all() and result.mode == ("sync" if threads == 2 and mode_work == 0 else "serial")
        again = np.array([1e-39], dtype=np.float32)
        assert again[0] != 0 and (again * np.float32(1.0))[0] != 0, "the kernel left FTZ/DAZ on"
