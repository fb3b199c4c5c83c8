"""The Cython backend's "cols" epoch (kernels/dense_cols.pyx, kernels/fastgd_gemm.h: each thread
owns a column slice of every hidden layer for the whole call) against the NumPy reference, and
its routing: which calls take it, and that the others (float64, momentum/Adam, dropout, shifts,
sigmoid/tanh hidden layers, explicit hogwild) keep their modes. The cols epoch is float32
only, so the comparisons are float32-loose; float64 is checked to route elsewhere (and to stay
tight there)."""
import dataclasses

import numpy as np
import pytest

import fastgd
from fastgd import ops
from fastgd.backends import cython_backend
from fastgd.backends.base import EpochPlan
from fastgd._kernels import dense_cols

from test_backends import configure, train
from test_cython_backend import make_plan, problem

RTOL, ATOL = 2e-4, 2e-5


def cols_backend(cols=True):
    b = cython_backend.CythonBackend()
    b.cols = cols
    return b


def reference(net, plan):
    ref = net.copy()
    result = train("numpy", ref, plan)
    return ref.params, result


def check(net, plan, backend=None, mode="cols"):
    got = net.copy()
    result = train(backend or cols_backend(), got, plan)
    assert result.mode == mode
    ref_params, ref_result = reference(net, plan)
    np.testing.assert_allclose(got.params, ref_params, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.loss_sum, ref_result.loss_sum, rtol=1e-4)
    assert result.n_correct == ref_result.n_correct
    return result


# odd widths: padded slices of 16 lanes split unevenly across 2 and 3 threads, widths below one
# slice per thread (a thread with no columns), deep nets (several reductions), 1..7 outputs
SHAPES = [[784, 37, 10], [100, 130, 33, 7], [60, 200, 5], [50, 9, 3], [30, 70, 40, 20, 4], [20, 17, 1]]


@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("uint8", [True, False])
def test_cols_matches_reference(sizes, threads, uint8):
    net, X, scale, targets, labels = problem(sizes, 43, np.float32, seed=5, uint8=uint8, activation="relu",
                                             output="softmax" if sizes[-1] > 1 else "sigmoid")
    # batch 6 over 43 rows: the last minibatch has one row (fewer rows than threads)
    plan = make_plan(X, scale, targets, labels, 6, lr=0.2, loss="cross_entropy", threads=threads)
    result = check(net, plan)
    assert result.threads_used == threads


@pytest.mark.parametrize("batch", [1, 2, 5, 43, 64])
@pytest.mark.parametrize("threads", [2, 3])
def test_cols_batch_sizes(batch, threads):
    """Batch 1 (every minibatch has fewer rows than threads), 2, one minibatch holding every row
    (43), and a batch larger than the data (64)."""
    net, X, scale, targets, labels = problem([100, 130, 33, 7], 43, np.float32, seed=7, activation="relu",
                                             output="softmax")
    plan = make_plan(X, scale, targets, labels, batch, lr=0.1, loss="cross_entropy", threads=threads)
    check(net, plan)


@pytest.mark.parametrize("sizes", [[784, 200, 10], [300, 230, 40, 10]], ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("batch", [7, 20])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("uint8", [True, False])
def test_cols_forward_weights_walked_panel_by_panel(sizes, batch, threads, uint8):
    """Forward weight blocks of at least FGD_PANEL_MAJOR_MIN floats (784 x 208 and 784 x 96 or
    112; 300 x 240 and 300 x 128 or 112), which fastgd_gemm.h walks panel by panel, with last
    panels of 48 and 32 + 16 lanes; minibatches of more than FGD_MR rows and a last one of
    fewer (43 rows)."""
    net, X, scale, targets, labels = problem(sizes, 43, np.float32, seed=9, uint8=uint8, activation="relu",
                                             output="softmax")
    plan = make_plan(X, scale, targets, labels, batch, lr=0.1, loss="cross_entropy", threads=threads)
    check(net, plan)


@pytest.mark.parametrize("hidden", ["relu", "leaky_relu"])
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("softmax", "mse"), ("sigmoid", "mse"),
                                         ("sigmoid", "cross_entropy"), ("linear", "mse")])
def test_cols_activations_and_losses(hidden, output, loss):
    net, X, scale, targets, labels = problem([40, 50, 24, 6], 37, np.float32, seed=8, uint8=False,
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


def test_cols_through_the_trainer_and_large_net():
    """The issue-11 network (784-512-512-10) for a few steps through fastgd.Trainer, against the
    reference; the auto rule picks cols for it at batch 32 with 2 threads."""
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(200, 784), dtype=np.uint8)
    X[rng.random(X.shape) < 0.8] = 0
    y = rng.integers(0, 10, size=200)
    nets = {}
    for name in ("cython", "numpy"):
        net = fastgd.Network([784, 512, 512, 10], activation="relu", output="softmax", dtype="float32", seed=0)
        h = fastgd.Trainer(net, loss="cross_entropy", lr=0.05, batch_size=32, epochs=2, backend=name, threads=2,
                           seed=0).fit(X, y)
        nets[name] = (net, h)
    assert nets["cython"][1].records[-1]["mode"] == "cols"
    np.testing.assert_allclose(nets["cython"][0].params, nets["numpy"][0].params, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("recipe,dtype", [(dict(), np.float64), (dict(momentum=0.9), np.float32),
                                          (dict(optimizer="adam"), np.float32), (dict(dropout=0.2), np.float32),
                                          (dict(l2=0.01), np.float32)])
def test_other_calls_keep_their_modes(recipe, dtype):
    """Float64, momentum, Adam, dropout and weight decay never run cols, even when forced; they
    still match the reference (float64 tight)."""
    net, X, scale, targets, labels = problem([50, 40, 13, 5], 31, dtype, seed=3, activation="relu", output="softmax")
    plan, ref_plan = (configure(make_plan(X, scale, targets, labels, 7, lr=0.05, loss="cross_entropy", threads=2),
                                net, seed=4, **recipe) for _ in range(2))  # each run updates its rule's state
    b = cols_backend()
    b.sync_min_work = 0
    got = net.copy()
    result = train(b, got, plan)
    assert result.mode == "sync"
    ref_params, _ = reference(net, ref_plan)
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(got.params, ref_params, rtol=rtol, atol=atol)


@pytest.mark.parametrize("hidden", ["sigmoid", "tanh"])
def test_smooth_hidden_activations_route_elsewhere(hidden):
    net, X, scale, targets, labels = problem([50, 40, 5], 31, np.float32, seed=3, activation=hidden,
                                             output="softmax")
    plan = make_plan(X, scale, targets, labels, 7, lr=0.05, loss="cross_entropy", threads=2)
    b = cols_backend()
    b.sync_min_work = 0
    check(net, plan, b, mode="sync")


@pytest.mark.parametrize("augment", [dict(max_shift=1), dict(max_rotate=10.0), dict(elastic_alpha=1.0)],
                         ids=["shift", "rotate", "elastic"])
def test_image_augmentation_routes_elsewhere(augment):
    net, X, scale, targets, labels = problem([30, 40, 5], 31, np.float32, seed=3, activation="relu",
                                             output="softmax")
    plan = configure(make_plan(X, scale, targets, labels, 7, lr=0.05, loss="cross_entropy", threads=2), net,
                     image_shape=(5, 6), seed=4)
    plan = dataclasses.replace(plan, **augment)
    b = cols_backend()
    b.sync_min_work = 0
    assert train(b, net.copy(), plan).mode == "sync"


def test_auto_rule():
    """base.cols_pays decides: the work the cols epoch would run dense, or a small batch; small
    nets keep their modes, and cols=False turns it off."""
    b = cython_backend.CythonBackend()
    net = fastgd.Network([784, 512, 512, 10], activation="relu", output="softmax", dtype="float32", seed=0)
    small = fastgd.Network([784, 16, 16, 10], activation="relu", output="softmax", dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    Xf = rng.standard_normal((40, 784)).astype(np.float32)
    labels = rng.integers(0, 10, 40).astype(np.int32)
    targets = np.eye(10, dtype=np.float32)[labels]
    mid = fastgd.Network([784, 128, 10], activation="relu", output="softmax", dtype="float32", seed=0)
    for batch in (32, 128):
        plan = make_plan(Xf, 1.0, targets, labels, batch, loss="cross_entropy", threads=2)
        assert b._cols(net, plan, None, {})
        assert b._cols(net, plan, "sparse input", {})  # its layers past the first still reach the work
        assert b._cols(mid, plan, None, {})
        # the sparse first layer is most of its work: only a small batch pays (400 KB of weights)
        assert b._cols(mid, plan, "sparse input", {}) == (batch <= 64)
        assert not b._cols(small, plan, None, {})
    b.cols = False
    assert not b._cols(net, plan, None, {})


def test_kernel_rejects_bad_arguments():
    net = fastgd.Network([20, 17, 3], activation="relu", output="softmax", dtype="float32", seed=0)
    X = np.zeros((5, 20), np.float32)
    targets = np.zeros((5, 3), np.float32)
    labels = np.zeros(5, np.int32)
    order = np.arange(5, dtype=np.int64)
    lrs = np.full(2, 0.1)
    out = (np.zeros(2), np.zeros(2, np.int64))
    relu, softmax, ce = ops.ACTIVATION_CODES["relu"], ops.ACTIVATION_CODES["softmax"], ops.LOSS_CODES["cross_entropy"]

    def call(**kw):
        a = dict(params=net.params.copy(), layout=net.layout_array(), X=X, x_scale=1.0, order=order, targets=targets,
                 labels=labels, lrs=lrs, batch_size=4, hidden_act=relu, out_act=softmax, loss=ce, threads=2,
                 loss_out=out[0], correct_out=out[1])
        a.update(kw)
        return dense_cols.train_epoch_cols(*a.values())

    call()  # the good call works
    with pytest.raises(ValueError, match="outside"):
        call(order=np.array([0, 5], np.int64))
    with pytest.raises(ValueError, match="outside"):
        call(order=np.array([-1], np.int64))
    with pytest.raises(TypeError):
        call(X=np.zeros((5, 20), np.float64))
    with pytest.raises(ValueError, match="input width"):
        call(X=np.zeros((5, 21), np.float32))
    with pytest.raises(ValueError):
        call(lrs=np.full(1, 0.1))
    with pytest.raises(ValueError):
        call(hidden_act=ops.ACTIVATION_CODES["tanh"])
    with pytest.raises(ValueError):
        call(threads=0)
    with pytest.raises(ValueError):
        call(batch_size=0)
    with pytest.raises(ValueError, match="match X"):
        call(labels=np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="layout"):
        call(params=net.params[:-1].copy())
    with pytest.raises(ValueError):
        call(layout=net.layout_array()[::-1].copy())
    bad = net.layout_array()
    bad[1, 0] += 1  # overlapping / misplaced offsets
    with pytest.raises(ValueError, match="layout"):
        call(layout=bad)
    with pytest.raises(ValueError):
        call(layout=np.zeros((2, 5), np.int64))


@pytest.mark.parametrize("sizes", [[20, 40, 3], [20, 40, 33, 17, 3]])
def test_cols_profile_changes_nothing(sizes):
    """The measuring aid: with a profile the epoch gives the same weights bit for bit, and each
    thread's CPU seconds land in its phases (the GEMM phases get time; none is negative); a
    profile with too few slots is refused."""
    net = fastgd.Network(sizes, activation="relu", output="softmax", dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20)).astype(np.float32)
    labels = rng.integers(0, 3, 300).astype(np.int32)
    targets = np.eye(3, dtype=np.float32)[labels]
    order = rng.permutation(300).astype(np.int64)
    lrs = np.full(38, 0.05)
    codes = (ops.ACTIVATION_CODES["relu"], ops.ACTIVATION_CODES["softmax"], ops.LOSS_CODES["cross_entropy"])
    stride, phases = dense_cols.PROFILE_STRIDE, dense_cols.PROFILE_PHASES
    assert stride == len(phases) + 1

    def run(profile):
        params = net.params.copy()
        ran = dense_cols.train_epoch_cols(params, net.layout_array(), X, 1.0, order, targets, labels, lrs, 8,
                                          *codes, 2, np.zeros(2), np.zeros(2, np.int64), False, None, profile)
        return params, ran

    plain, _ = run(None)
    prof = np.zeros(stride * 2)
    profiled, ran = run(prof)
    np.testing.assert_array_equal(profiled, plain)
    p = prof.reshape(2, stride)[:ran]
    assert (p >= 0).all() and (p[:, -1] == 0).all()  # the timestamps slot is cleared
    for name in ("forward", "backward", "update_first"):
        assert (p[:, phases.index(name)] > 0).all(), name
    with pytest.raises(ValueError, match="profile"):
        run(np.zeros(stride * 2 - 1))


def test_cols_zero_skipping_first_layer_changes_nothing():
    """uint8 input with blank and full rows: the first layer skipping zeros per block of rows (the
    sparse input mode) and running dense give the same weights."""
    net, X, scale, targets, labels = problem([90, 40, 24, 6], 41, np.float32, seed=9, activation="relu",
                                             output="softmax", density=0.15)
    X[3] = 0
    X[10:17] = 0  # a whole block of blank rows
    X[20] = 255
    results = []
    for mode in ("sparse", "dense"):
        b = cols_backend()
        b.input_mode = mode
        got = net.copy()
        plan = make_plan(X, scale, targets, labels, 7, lr=0.3, loss="cross_entropy", threads=2)
        assert train(b, got, plan).mode == "cols"
        results.append(got.params)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)
    ref_params, _ = reference(net, plan)
    np.testing.assert_allclose(results[0], ref_params, rtol=RTOL, atol=ATOL)


def test_cols_buffers_reused_across_calls_and_shapes():
    """One workspace for several calls: slices of an epoch, then other thread counts and batch
    sizes (the kept buffers are remade when the shape changes)."""
    net, X, scale, targets, labels = problem([100, 130, 33, 7], 50, np.float32, seed=11, activation="relu",
                                             output="softmax")
    b = cols_backend()
    got, ref = net.copy(), net.copy()
    ws = None
    for threads, batch in [(2, 8), (2, 8), (3, 8), (2, 5), (1, 5)]:
        plan = make_plan(X, scale, targets, labels, batch, lr=0.1, loss="cross_entropy", threads=threads,
                         seed=threads * 10 + batch)
        if ws is None:
            ws = b.prepare(got, plan)
        assert b.train_epoch(got, plan, ws).mode == "cols"
        train("numpy", ref, plan)
    np.testing.assert_allclose(got.params, ref.params, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shuffled", [False, True])
def test_cols_float_rows_in_place_or_gathered(shuffled):
    """Float32 rows whose minibatches are runs of consecutive rows (an unshuffled epoch) are read
    in place; shuffled ones are gathered per step, in parallel with the previous step. Both match
    the reference."""
    net, X, scale, targets, labels = problem([70, 40, 24, 6], 45, np.float32, seed=13, uint8=False,
                                             activation="relu", output="softmax")
    plan = make_plan(X, scale, targets, labels, 6, lr=0.2, loss="cross_entropy", threads=2)
    if not shuffled:
        plan = dataclasses.replace(plan, order=np.arange(45, dtype=np.int64))
    check(net, plan)
