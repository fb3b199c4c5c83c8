"""Cython-specific behaviour the shared backend tests do not reach: the execution modes
(serial, deterministic sync threads, Hogwild), the sparse uint8 path, the BLAS path for large
layers, thread-count handling and rejection of bad input before the nogil kernels."""
import dataclasses

import numpy as np
import pytest

import fastgd
from fastgd.backends import EpochPlan, get_backend
from fastgd._checks import UINT8_SCALE

# The extension ships with the package: failing to load it is a failure, not a skip.
from fastgd.backends import cython_backend
from fastgd._kernels import dense_sgd

from test_backends import advance, configure, state_of, train


@pytest.fixture
def backend():
    """A fresh backend object, so changing its knobs cannot leak into other tests."""
    return cython_backend.CythonBackend()


def problem(sizes, n, dtype, seed=0, uint8=True, activation="sigmoid", output="sigmoid", density=0.3):
    rng = np.random.default_rng(seed)
    net = fastgd.Network(sizes, activation, output, dtype=dtype, seed=seed)
    if uint8:
        X = rng.integers(1, 256, size=(n, sizes[0]), dtype=np.uint8)
        X[rng.random(X.shape) >= density] = 0
        scale = UINT8_SCALE
    else:
        X = rng.standard_normal((n, sizes[0])).astype(dtype)
        scale = 1.0
    labels = rng.integers(0, sizes[-1], size=n).astype(np.int32)
    targets = np.eye(sizes[-1], dtype=dtype)[labels]
    return net, X, scale, targets, labels


def make_plan(X, scale, targets, labels, batch_size, lr=0.5, loss="mse", threads=1, deterministic=True, seed=1):
    order = np.random.default_rng(seed).permutation(X.shape[0]).astype(np.int64)
    steps = -(-len(order) // batch_size)
    return EpochPlan(X=X, x_scale=scale, targets=targets, labels=labels, order=order, lrs=np.full(steps, float(lr)),
                     batch_size=batch_size, loss=loss, threads=threads, deterministic=deterministic)


def run_epoch(backend, net, plan):
    """(params after one epoch on a copy of net, (loss_sum, n_correct)), via prepare + train_epoch."""
    net = net.copy()
    result = train(backend, net, plan)
    return net.params, (result.loss_sum, result.n_correct)


def test_auto_picks_cython():
    assert get_backend("auto").name == "cython"


def test_prepare_builds_the_index_and_reports_no_compile_time(backend):
    net, X, scale, targets, labels = problem([30, 8, 3], 20, np.float32)
    ws = backend.prepare(net, make_plan(X, scale, targets, labels, 5))
    assert ws.compile_seconds == 0.0  # compiled at install
    assert ws.csr_of is X and ws.csr[0][-1] == np.count_nonzero(X)
    assert backend.__dict__.keys() == cython_backend.CythonBackend().__dict__.keys()  # knobs only, no run state


def test_build_csr_lists_every_nonzero_pixel():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(37, 50), dtype=np.uint8)
    X[rng.random(X.shape) < 0.7] = 0
    X[5] = 0  # a row with no non-zero pixel at all
    ptr, idx, val = dense_sgd.build_csr(X)
    assert ptr[0] == 0 and ptr[-1] == np.count_nonzero(X)
    for r in range(X.shape[0]):
        cols = np.flatnonzero(X[r])
        np.testing.assert_array_equal(idx[ptr[r]:ptr[r + 1]], cols)
        np.testing.assert_array_equal(val[ptr[r]:ptr[r + 1]], X[r, cols])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
# first layers padded to 32 lanes (generic loops) and to exactly 16 (the one-vector-per-row kernels)
@pytest.mark.parametrize("sizes", [[90, 21, 10], [90, 16, 10], [90, 7, 5]])
def test_sparse_and_dense_input_paths_agree(backend, dtype, threads, sizes):
    net, X, scale, targets, labels = problem(sizes, 64, dtype, seed=2)
    X[3] = 0  # an all-zero image still trains the biases
    plan = make_plan(X, scale, targets, labels, 7, threads=threads)
    backend.sync_min_work = 0
    backend.input_mode = "dense"
    dense_params, dense_result = run_epoch(backend, net, plan)
    backend.input_mode = "sparse"
    sparse_params, sparse_result = run_epoch(backend, net, plan)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(sparse_params, dense_params, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(sparse_result[0], dense_result[0], rtol=rtol)
    ref = net.copy()
    train("numpy", ref, plan)
    np.testing.assert_allclose(sparse_params, ref.params, rtol=rtol * 10, atol=rtol)


def test_auto_input_mode_follows_density(backend):
    _, sparse_X, *_ = problem([50, 4, 2], 40, np.float32, density=0.2)
    _, dense_X, *_ = problem([50, 4, 2], 40, np.float32, density=0.9)
    assert backend._input_csr(sparse_X) is not None
    assert backend._input_csr(dense_X) is None
    backend.input_mode = "dense"
    assert backend._input_csr(sparse_X) is None


def test_sparse_index_is_rebuilt_for_a_new_array(backend):
    net, X, scale, targets, labels = problem([40, 6, 3], 30, np.float64, seed=4)
    backend.input_mode = "sparse"
    plan = make_plan(X, scale, targets, labels, 6)
    run_epoch(backend, net, plan)
    X2 = X.copy()
    X2[:, :20] = 0
    plan2 = make_plan(X2, scale, targets, labels, 6)
    got, _ = run_epoch(backend, net, plan2)
    ref = net.copy()
    train("numpy", ref, plan2)
    np.testing.assert_allclose(got, ref.params, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("uint8", [False, True])
def test_sync_threads_give_bitwise_identical_weights(backend, dtype, uint8):
    """Deterministic threads split samples, then weight rows; each row still sums its samples in
    the same order, so any thread count gives exactly the single-thread result."""
    net, X, scale, targets, labels = problem([70, 19, 13, 10], 83, dtype, seed=5, uint8=uint8)
    backend.sync_min_work = 0  # force the threaded path even for this small network
    results = [run_epoch(backend, net, make_plan(X, scale, targets, labels, 9, threads=t)) for t in (1, 2, 3)]
    for params, (loss_sum, correct) in results[1:]:
        np.testing.assert_array_equal(params, results[0][0])
        assert correct == results[0][1][1]
        np.testing.assert_allclose(loss_sum, results[0][1][0], rtol=1e-6)


def test_deterministic_plan_never_runs_hogwild(backend):
    net, X, scale, targets, labels = problem([20, 5, 3], 30, np.float32)
    backend.hogwild = True
    with pytest.raises(ValueError, match="deterministic"):
        train(backend, net.copy(), make_plan(X, scale, targets, labels, 5, threads=2, deterministic=True))


@pytest.mark.parametrize("threads,momentum", [(2, 0.0), (3, 0.0), (2, 0.9)])
def test_hogwild_mode_still_learns(backend, threads, momentum):
    """Lock-free threads: results depend on timing, so check learning, not exact weights."""
    rng = np.random.default_rng(0)
    centers = rng.integers(0, 256, size=(4, 64))
    labels = rng.integers(0, 4, size=2000).astype(np.int32)
    X = np.clip(centers[labels] + rng.normal(0, 40, size=(2000, 64)), 0, 255).astype(np.uint8)
    targets = np.eye(4, dtype=np.float32)[labels]
    net = fastgd.Network([64, 16, 4], "relu", "softmax", dtype=np.float32, seed=0)
    first = None
    state = None
    for epoch in range(3):
        plan = make_plan(X, UINT8_SCALE, targets, labels, 10, lr=0.1 * (1 - momentum), loss="cross_entropy",
                         threads=threads, deterministic=False, seed=epoch)
        configure(plan, net, momentum=momentum)
        if state is not None:  # the velocity carries over
            plan.rule = dataclasses.replace(plan.rule, state=state)
        state = plan.rule.state
        result = train(backend, net, plan)
        assert (result.mode, result.threads_used) == ("hogwild", threads)
        loss_sum, correct = result.loss_sum, result.n_correct
        first = loss_sum if first is None else first
        assert np.isfinite(net.params).all()
    assert loss_sum < 0.5 * first
    assert correct / len(labels) > 0.9


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blas_and_own_kernels_agree(dtype):
    """Layers above blas_min_work call sgemm/dgemm; the result matches the own-kernel path."""
    net, X, scale, targets, labels = problem([300, 130, 40, 10], 96, dtype, seed=6, uint8=False,
                                             activation="relu", output="softmax")
    results = []
    for min_work in (0, 1 << 62):
        b = cython_backend.CythonBackend()
        b.blas_min_work = min_work
        plan = make_plan(X, scale, targets, labels, 32, lr=0.1, loss="cross_entropy", threads=2)
        results.append(run_epoch(b, net, plan))
        forward = b.forward(net, X, scale, 2)
        np.testing.assert_allclose(forward, get_backend("numpy").forward(net, X, scale, 1),
                                   rtol=1e-10 if dtype == np.float64 else 1e-4, atol=1e-6)
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=rtol, atol=rtol * 0.1)
    np.testing.assert_allclose(results[0][1][0], results[1][1][0], rtol=rtol)


def test_more_threads_than_cores_and_than_samples(backend):
    net, X, scale, targets, labels = problem([30, 9, 4], 11, np.float64, seed=8)
    backend.sync_min_work = 0
    ref, _ = run_epoch(backend, net, make_plan(X, scale, targets, labels, 3, threads=1))
    got, _ = run_epoch(backend, net, make_plan(X, scale, targets, labels, 3, threads=8))
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(backend.forward(net, X, scale, 8), backend.forward(net, X, scale, 1), rtol=0, atol=0)


@pytest.mark.parametrize("threads", [0, -1])
def test_bad_thread_counts_are_rejected(backend, threads):
    net, X, scale, targets, labels = problem([10, 4, 2], 8, np.float32)
    with pytest.raises(ValueError, match="threads"):
        train(backend, net, make_plan(X, scale, targets, labels, 4, threads=threads))
    with pytest.raises(ValueError, match="threads"):
        backend.forward(net, X, scale, threads)


def test_empty_order_trains_nothing(backend):
    net, X, scale, targets, labels = problem([10, 4, 2], 8, np.float32)
    plan = make_plan(X, scale, targets, labels, 4)
    plan.order = np.zeros(0, dtype=np.int64)
    plan.lrs = np.zeros(0)
    before = net.params.copy()
    with pytest.raises(ValueError, match="empty"):  # EpochPlan.validate: the Trainer never sends one
        backend.train_epoch(net, plan, None)
    np.testing.assert_array_equal(net.params, before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("uint8,input_mode,threads", [(True, "sparse", 1), (True, "dense", 2), (False, "auto", 2)])
def test_image_shifts_match_reference(backend, dtype, uint8, input_mode, threads):
    """Shifted images (non-square, shifts up to 3 pixels on a 6 x 5 image) with dropout."""
    ref, X, scale, targets, labels = problem([30, 12, 4], 45, dtype, seed=15, uint8=uint8)
    net = ref.copy()
    backend.input_mode, backend.sync_min_work = input_mode, 0
    plans = []
    for _ in range(2):
        plan = make_plan(X, scale, targets, labels, 6, lr=0.3, threads=threads)
        plans.append(configure(plan, net, max_shift=3, image_shape=(6, 5), seed=4, first_position=10, dropout=0.1))
    ref_result = train("numpy", ref, plans[0])
    result = train(backend, net, plans[1])
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(net.params, ref.params, rtol=rtol, atol=atol)
    np.testing.assert_allclose(result.loss_sum, ref_result.loss_sum, rtol=rtol)


def test_bad_image_shape_is_rejected(backend):
    net, X, scale, targets, labels = problem([30, 12, 4], 8, np.float32)
    plan = make_plan(X, scale, targets, labels, 4)
    plan.max_shift, plan.image_shape = 1, (4, 5)
    with pytest.raises(ValueError, match="image_shape"):
        backend.train_epoch(net, plan, None)


RECIPES = [dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(l2=0.01), dict(l1=0.003),
           dict(dropout=0.3), dict(momentum=0.5, nesterov=True, l2=0.02, l1=0.01, dropout=0.2),
           dict(optimizer="adam", weight_decay=0.01, l1=0.001), dict(optimizer="adamw", dropout=0.2)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: "+".join(r))
@pytest.mark.parametrize("uint8,threads", [(True, 1), (False, 1), (True, 2), (False, 2)])
def test_optimiser_recipe_matches_reference(backend, dtype, recipe, uint8, threads):
    """Momentum/Nesterov/L2/L1/Adam/AdamW over two epochs (state and step counter carried
    across), serial and sync."""
    ref, X, scale, targets, labels = problem([50, 16, 13, 5], 61, dtype, seed=3, uint8=uint8)
    net = ref.copy()
    backend.sync_min_work = 0
    plans = []
    for _ in range(2):
        plan = make_plan(X, scale, targets, labels, 7, threads=threads)
        scale_lr = 0.05 if "optimizer" in recipe else 1.0
        plan.lrs = np.linspace(0.5, 0.1, plan.n_steps) * scale_lr
        plans.append(configure(plan, net, state_fill=0.01, seed=77, first_position=5, **recipe))
    ref_plan, plan = plans
    ws = backend.prepare(net, plan)
    for _ in range(2):
        ref_result = train("numpy", ref, ref_plan)
        result = backend.train_epoch(net, plan, ws)
        assert (result.mode, result.threads_used) == (("serial", 1) if threads == 1 else ("sync", 2))
        advance(ref_plan)
        advance(plan)
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(net.params, ref.params, rtol=rtol, atol=atol)
    for s, s0 in zip(plan.rule.state, ref_plan.rule.state):
        np.testing.assert_allclose(s, s0, rtol=rtol, atol=atol)
    np.testing.assert_allclose(result.loss_sum, ref_result.loss_sum, rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("input_mode,uint8", [("sparse", True), ("dense", True), ("dense", False)])
def test_rows_streamed_in_visiting_order_match_reference(backend, dtype, input_mode, uint8):
    """Each epoch copies its rows in visiting order; an order with repeats and missing rows
    must still train exactly the rows it names, and the copy must not change the arithmetic."""
    net, X, scale, targets, labels = problem([60, 16, 5], 40, dtype, seed=12, uint8=uint8)
    order = np.random.default_rng(3).integers(0, 40, size=57).astype(np.int64)
    plan = EpochPlan(X=X, x_scale=scale, targets=targets, labels=labels, order=order,
                     lrs=np.full(-(-57 // 6), 0.4), batch_size=6, loss="mse")
    backend.input_mode = input_mode
    streamed, streamed_result = run_epoch(backend, net, plan)
    backend.permute_sparse = backend.permute_dense = False
    direct, direct_result = run_epoch(backend, net, plan)
    np.testing.assert_array_equal(streamed, direct)
    assert streamed_result == direct_result
    ref = net.copy()
    ref_result = (train("numpy", ref, plan).loss_sum,)
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(streamed, ref.params, rtol=rtol, atol=rtol * 0.1)
    np.testing.assert_allclose(streamed_result[0], ref_result[0], rtol=rtol)


@pytest.mark.parametrize("blas_threading", ["openmp", "blas"])
def test_blas_layers_with_threads_are_repeatable(blas_threading):
    """BLAS-sized layers on 2 threads (our threads over single-threaded BLAS slices, or one
    thread over OpenBLAS's threads): the same weights run after run, close to 1 thread."""
    net, X, scale, targets, labels = problem([200, 96, 10], 70, np.float64, seed=13, activation="relu",
                                             output="softmax")
    results = []
    for threads in (1, 2, 2):
        b = cython_backend.CythonBackend()
        b.blas_min_work, b.blas_threading = 0, blas_threading
        plan = make_plan(X, scale, targets, labels, 16, lr=0.2, loss="cross_entropy", threads=threads)
        results.append(run_epoch(b, net, plan)[0])
    np.testing.assert_array_equal(results[1], results[2])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("threads", [1, 2])
def test_dropout_and_momentum_on_blas_layers_match_reference(threads):
    ref, X, scale, targets, labels = problem([120, 70, 33, 6], 50, np.float64, seed=14, activation="tanh",
                                             output="softmax")
    net = ref.copy()
    b = cython_backend.CythonBackend()
    b.blas_min_work = 0
    plans = []
    for _ in range(2):
        plan = make_plan(X, scale, targets, labels, 9, lr=0.1, loss="cross_entropy", threads=threads)
        plans.append(configure(plan, net, dropout=0.25, momentum=0.8, seed=99, first_position=3))
    ref_result = train("numpy", ref, plans[0])
    result = train(b, net, plans[1])
    np.testing.assert_allclose(net.params, ref.params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.loss_sum, ref_result.loss_sum, rtol=1e-10)


@pytest.mark.parametrize("recipe", [{}, dict(momentum=0.9, nesterov=True, l2=0.01, dropout=0.3),
                                    dict(optimizer="adamw", dropout=0.1)], ids=["plain", "recipe", "adamw"])
def test_overlapped_row_copy_changes_nothing(backend, recipe):
    """threads=2 on a one-thread epoch copies the rows part by part on a second thread while the
    kernel trains on the part before (34 steps: 5 kernel calls): bitwise the same epoch, with
    the steps' learning rates and dropout positions carried across the splits."""
    net, X, scale, targets, labels = problem([60, 16, 5], 203, np.float32, seed=4)

    def new_plan():
        plan = make_plan(X, scale, targets, labels, 6, threads=2, loss="cross_entropy")
        plan.lrs = np.linspace(0.5, 0.05, plan.n_steps)
        return configure(plan, net, state_fill=0.01, seed=9, first_position=11, **recipe)

    results = []
    backend.split = False  # plain SGD on 2 threads would run the split epoch (tested below)
    for overlap in (False, True):
        plan = new_plan()
        backend.overlap_gather = overlap
        params, result = run_epoch(backend, net, plan)
        results.append((params, result, state_of(plan)))
    (p0, r0, v0), (p1, r1, v1) = results
    np.testing.assert_array_equal(p1, p0)
    for a, b in zip(v1, v0):
        np.testing.assert_array_equal(a, b)
    assert r1 == r0
    ref = net.copy()
    train("numpy", ref, new_plan())
    np.testing.assert_allclose(p1, ref.params, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("blas", [False, True])
def test_sync_mode_with_fewer_rows_than_threads(dtype, blas):
    """Issue 12's class of bug on Cython: a minibatch with fewer rows than threads leaves some
    threads no samples (and BLAS slices with zero rows). Last minibatch of one row, 2 and 3
    threads, sync mode forced: the reference's weights, bitwise those of one thread."""
    ref, X, scale, targets, labels = problem([40, 33, 7], 17, dtype, seed=21, uint8=False, activation="relu",
                                             output="softmax")
    results = []
    for threads in (1, 2, 3):
        b = cython_backend.CythonBackend()
        b.sync_min_work, b.blas_min_work = 0, 0 if blas else 1 << 62
        plan = make_plan(X, scale, targets, labels, 16, lr=0.3, loss="cross_entropy", threads=threads)
        net = ref.copy()
        result = train(b, net, plan)
        assert result.mode == ("serial" if threads == 1 else "sync")
        results.append(net.params.copy())
    expected = ref.copy()
    train("numpy", expected, make_plan(X, scale, targets, labels, 16, lr=0.3, loss="cross_entropy"))
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(results[0], expected.params, rtol=rtol, atol=atol)
    if not blas:  # own kernels: bitwise; BLAS slices may round differently by thread count
        np.testing.assert_array_equal(results[1], results[0])
        np.testing.assert_array_equal(results[2], results[0])
    else:
        np.testing.assert_allclose(results[1], results[0], rtol=rtol, atol=atol)


def test_kernel_entry_points_check_what_they_are_given(backend):
    """The extension's own checks behind the backend's: a float type mismatch, a missing
    gradient buffer or state, too few learning rates are errors, not out-of-bounds reads."""
    net, X, scale, targets, labels = problem([10, 4, 2], 8, np.float64, uint8=False)
    lay = cython_backend._Layout(net, 4, 1 << 62)
    prob = dense_sgd.Problem(lay.table, lay.soff, 0, 0, 0, X, 1.0, None, targets, labels)
    params = lay.pad(net.params)
    order = np.arange(8, dtype=np.int64)
    out = (np.zeros(1), np.zeros(1, dtype=np.int64))
    with pytest.raises(TypeError):  # float64 data, float32 parameters
        dense_sgd.train_epoch(params.astype(np.float32), prob, order, np.zeros(2), 4, dense_sgd.StepConfig(),
                              None, None, lay.scratch(1).astype(np.float32), 0, 1, *out)
    with pytest.raises(ValueError, match="gradient"):
        dense_sgd.train_epoch(params, prob, order, np.zeros(2), 4, dense_sgd.StepConfig(1), None, None,
                              lay.scratch(1), 0, 1, *out)
    with pytest.raises(ValueError, match="state"):
        dense_sgd.train_epoch(params, prob, order, np.zeros(2), 4, dense_sgd.StepConfig(1), None,
                              np.zeros((1, lay.size)), lay.scratch(1), 0, 1, *out)
    with pytest.raises(ValueError, match="learning rates"):
        dense_sgd.train_epoch(params, prob, order, np.zeros(1), 4, dense_sgd.StepConfig(), None, None,
                              lay.scratch(1), 0, 1, *out)
    with pytest.raises(ValueError, match="kind"):
        dense_sgd.StepConfig(7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes,batch,n", [([60, 16, 5], 6, 61), ([60, 13, 7], 1, 9), ([60, 16, 16, 10], 10, 47),
                                           ([60, 9, 3], 4, 3), ([60, 10], 7, 29)])
def test_split_epoch_gives_the_bits_of_one_thread(backend, dtype, sizes, batch, n):
    """The "split" epoch (2 threads, the 16-lane sparse first layer's rows split at a pixel, the
    rows copied in-kernel as it goes): odd widths padded to 16, batch 1, a last minibatch of one
    row, fewer rows than a minibatch, learning rates changing every step, an order with repeats
    and missing rows. Bitwise the weights, loss and accuracy of one thread; close to NumPy."""
    net, X, scale, targets, labels = problem(sizes, max(n, 8), dtype, seed=31)
    X[0] = 0  # a row with no non-zero pixel
    X[1, :30] = 0  # only upper pixels (the split lies near the middle)
    X[2, 30:] = 0  # only lower pixels
    order = np.random.default_rng(5).integers(0, X.shape[0], size=n).astype(np.int64)

    def new_plan(threads):
        plan = EpochPlan(X=X, x_scale=scale, targets=targets, labels=labels, order=order,
                         lrs=np.linspace(0.6, 0.1, -(-n // batch)), batch_size=batch, loss="mse", threads=threads)
        return configure(plan, net, first_position=7)

    split_params, split_result = run_epoch(backend, net, new_plan(2))
    result = train(backend, net.copy(), new_plan(2))
    assert (result.mode, result.threads_used) == ("split", 2)
    serial_params, serial_result = run_epoch(backend, net, new_plan(1))
    np.testing.assert_array_equal(split_params, serial_params)
    assert split_result == serial_result
    ref = net.copy()
    ref_result = train("numpy", ref, new_plan(1))
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(split_params, ref.params, rtol=rtol, atol=atol)
    np.testing.assert_allclose(split_result[0], ref_result.loss_sum, rtol=rtol)
    assert split_result[1] == ref_result.n_correct


def test_split_epoch_only_where_it_applies(backend):
    """Momentum, dropout, dense input, a first layer wider than 16 units or split = False keep
    the other modes; each still matches the reference."""
    net16, X, scale, targets, labels = problem([60, 16, 5], 30, np.float32, seed=32)
    cases = [(net16, {}, {"split": False}), (net16, dict(momentum=0.9), {}), (net16, dict(dropout=0.2), {}),
             (net16, {}, {"input_mode": "dense"}),
             (problem([60, 17, 5], 30, np.float32, seed=32)[0], {}, {})]
    for net, recipe, knobs in cases:
        b = cython_backend.CythonBackend()
        for k, v in knobs.items():
            setattr(b, k, v)
        plan = configure(make_plan(X, scale, targets, labels, 5, threads=2), net, seed=3, **recipe)
        mine = net.copy()
        result = train(b, mine, plan)
        assert result.mode != "split", (recipe, knobs)
        ref = net.copy()
        train("numpy", ref, configure(make_plan(X, scale, targets, labels, 5), net, seed=3, **recipe))
        np.testing.assert_allclose(mine.params, ref.params, rtol=1e-4, atol=1e-5)


def test_split_profile_counts_every_phase_and_keeps_the_bits():
    """The split epoch's optional phase profile (split_profile, bench/split_profile.py): the
    same bits as without it; every work phase of both threads counted, no slot outside
    base.SPLIT_PROFILE_PHASES written; a profile of the wrong size refused."""
    from fastgd.backends.base import SPLIT_PROFILE_PHASES, SPLIT_PROFILE_SLOTS
    assert dense_sgd.SPLIT_PROFILE_SLOTS == SPLIT_PROFILE_SLOTS
    net, X, scale, targets, labels = problem([60, 16, 16, 10], 47, np.float32, seed=33)
    runs = []
    for profile in (None, np.zeros(SPLIT_PROFILE_SLOTS, dtype=np.int64)):
        b = cython_backend.CythonBackend()
        b.split_profile = profile
        mine = net.copy()
        result = train(b, mine, configure(make_plan(X, scale, targets, labels, 5, threads=2), net, seed=3))
        runs.append((mine.params, result.loss_sum, result.n_correct, result.mode))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1:] == runs[1][1:] and runs[0][3] == "split"
    work = [1, 3, 4, 5, 6, 16, 17, 19]  # sums, forward, loss, deltas, updates, the copy
    assert all(profile[k] > 0 for k in work), profile
    assert not profile[[k for k in range(SPLIT_PROFILE_SLOTS) if k not in SPLIT_PROFILE_PHASES]].any()
    b.split_profile = np.zeros(SPLIT_PROFILE_SLOTS - 1, dtype=np.int64)
    with pytest.raises(ValueError, match="profile"):
        train(b, net.copy(), configure(make_plan(X, scale, targets, labels, 5, threads=2), net, seed=3))


SPLIT_ONE_THREAD_SCRIPT = """
import numpy as np, fastgd
from fastgd.backends import EpochPlan, cython_backend
from fastgd._kernels import openmp_info
rng = np.random.default_rng(0)
X = rng.integers(0, 256, (50, 40), dtype=np.uint8); X[rng.random(X.shape) > 0.3] = 0
labels = rng.integers(0, 4, 50).astype(np.int32); targets = np.eye(4, dtype=np.float32)[labels]
net = fastgd.Network([40, 16, 4], "sigmoid", "sigmoid", dtype="float32", seed=1)
order = rng.permutation(50).astype(np.int64)
out = []
for threads in (2, 1):
    b, n = cython_backend.CythonBackend(), net.copy()
    plan = EpochPlan(X=X, x_scale=1 / 255, targets=targets, labels=labels, order=order, lrs=np.full(9, 0.5),
                     batch_size=6, loss="mse", threads=threads)
    r = b.train_epoch(n, plan, b.prepare(n, plan))
    out.append((n.params, r.mode))
assert out[0][1] == "split", out[0][1]
assert np.array_equal(out[0][0], out[1][0])
print("ok")
"""


def test_split_epoch_given_one_openmp_thread_runs_it_on_one(tmp_path):
    """OpenMP may give the split epoch's region one thread (OMP_THREAD_LIMIT=1 here): it then
    runs both halves itself, with the same bits, instead of waiting for a thread that never comes."""
    import os
    import subprocess
    import sys
    script = tmp_path / "split_one.py"
    script.write_text(SPLIT_ONE_THREAD_SCRIPT)
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_split_entry_point_checks_what_it_is_given(backend):
    """train_epoch_split refuses a problem without a split pixel, or stream buffers too small for
    the rows, before any thread starts."""
    net, X, scale, targets, labels = problem([40, 16, 3], 12, np.float32, seed=33)
    lay = cython_backend._Layout(net, 4, 1 << 62, sparse_first=True)
    csr = dense_sgd.build_csr(X)
    order = np.arange(12, dtype=np.int64)
    params = lay.pad(net.params)

    def call(split_pixel=20, nnz=None, rows=12):
        prob = dense_sgd.Problem(lay.table, lay.soff, 0, 0, 0, X, scale, csr, targets, labels, split_pixel=split_pixel)
        nnz = int(csr[0][-1]) if nnz is None else nnz
        dense_sgd.train_epoch_split(params, prob, order, np.full(3, 0.1), 4, lay.scratch(1),
                                    np.zeros(rows + 1, np.int64), np.zeros(rows + 1, np.int64),
                                    np.zeros(nnz, np.uint16), np.zeros(nnz, np.uint8),
                                    np.zeros((rows, 3), np.float32), np.zeros(rows, np.int32),
                                    np.arange(rows, dtype=np.int64), np.zeros(1), np.zeros(1, np.int64))

    call()  # the valid call runs
    with pytest.raises(ValueError, match="split_pixel"):
        call(split_pixel=-1)
    with pytest.raises(ValueError, match="stream"):
        call(nnz=int(csr[0][-1]) - 1)
    with pytest.raises(ValueError, match="stream rows"):
        call(rows=11)


def test_balanced_split_halves_the_non_zeros():
    from fastgd.backends.base import balanced_split
    idx = np.repeat(np.arange(10, dtype=np.uint16), [5, 0, 0, 5, 0, 0, 0, 10, 0, 0])
    assert balanced_split(idx, 10) == 4  # pixels 0..3 hold 10 of the 20
    assert balanced_split(idx, 10, share=0.9) == 8
    assert balanced_split(np.zeros(0, np.uint16), 10) == -1
    assert balanced_split(idx[:1], 1) == -1
    assert 1 <= balanced_split(np.zeros(7, np.uint16), 10) <= 9
