"""Every backend against the NumPy reference and against the PyTorch oracle.

Parametrised over the backends that ship (conftest.BACKENDS), so the Cython and Numba backends
run exactly these tests; backend-specific tests live in their own files.
"""
import itertools

import numpy as np
import pytest

import fastgd
from fastgd.backends import EpochPlan, get_backend
from fastgd._checks import ACTIVATIONS, UINT8_SCALE

from conftest import BACKENDS, COMPILED_BACKENDS, tol

PAIRS = [("sigmoid", "mse"), ("linear", "mse"), ("softmax", "mse"), ("softmax", "cross_entropy"), ("sigmoid", "cross_entropy")]
COMBOS = [(act, out, loss) for act in ACTIVATIONS for out, loss in PAIRS]
DTYPES = [np.float64, np.float32]


def make_problem(sizes, n, dtype, seed=0, uint8=False, activation="sigmoid", output="sigmoid"):
    rng = np.random.default_rng(seed)
    net = fastgd.Network(sizes, activation, output, dtype=dtype, seed=seed)
    if uint8:
        X = rng.integers(0, 256, size=(n, sizes[0]), dtype=np.uint8)
        X[rng.random(X.shape) < 0.6] = 0  # sparse, like MNIST
        scale = UINT8_SCALE
    else:
        X = rng.standard_normal((n, sizes[0])).astype(dtype)
        scale = 1.0
    labels = rng.integers(0, sizes[-1], size=n).astype(np.int32)
    targets = np.eye(sizes[-1], dtype=dtype)[labels]
    return net, X, scale, targets, labels


def plan_for(X, scale, targets, labels, order, batch_size, lr, loss, threads=1):
    steps = -(-len(order) // batch_size)
    return EpochPlan(X=X, x_scale=scale, targets=targets, labels=labels, order=np.asarray(order, dtype=np.int64),
                     lrs=np.full(steps, lr), batch_size=batch_size, loss=loss, threads=threads, deterministic=True)


def assert_close(actual, expected, dtype, what=""):
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# ---- the independent oracle ----------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(12))
def test_one_step_matches_pytorch(backend, dtype, case, oracle):
    cases, arr = oracle
    c = cases[case]
    k = c["case"]
    net = fastgd.Network(c["sizes"], c["activation"], c["output"], dtype=dtype)
    for l in range(net.n_layers):
        net.weights[l] = arr[f"{k}_W{l}"]
        net.biases[l] = arr[f"{k}_b{l}"]
    X = arr[f"{k}_X"].astype(dtype)
    labels = arr[f"{k}_y"].astype(np.int32)
    targets = np.eye(c["sizes"][-1], dtype=dtype)[labels]
    n = X.shape[0]
    loss_sum, _ = get_backend(backend).train_epoch(
        net, plan_for(X, 1.0, targets, labels, np.arange(n), n, c["lr"], c["loss"]))
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(loss_sum / n, c["loss_value"], rtol=rtol * 10)
    for l in range(net.n_layers):
        np.testing.assert_allclose(net.weights[l], arr[f"{k}_W{l}_after"], rtol=rtol, atol=rtol, err_msg=f"W{l}")
        np.testing.assert_allclose(net.biases[l], arr[f"{k}_b{l}_after"], rtol=rtol, atol=rtol, err_msg=f"b{l}")


# ---- compiled backends against the reference ----------------------------------------------
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,output,loss", COMBOS)
def test_loss_and_grad_match_reference(backend, dtype, activation, output, loss):
    net, X, scale, targets, _ = make_problem([13, 17, 9, 5], 23, dtype, seed=3, activation=activation, output=output)
    ref_loss, ref_grad = get_backend("numpy").loss_and_grad(net, X, scale, targets, loss)
    got_loss, got_grad = get_backend(backend).loss_and_grad(net, X, scale, targets, loss)
    assert_close(got_loss, ref_loss, dtype, "loss")
    assert_close(got_grad, ref_grad, dtype, "gradient")


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("uint8", [False, True])
@pytest.mark.parametrize("output", ["sigmoid", "softmax", "linear"])
def test_forward_matches_reference(backend, dtype, uint8, output):
    net, X, scale, _, _ = make_problem([40, 33, 10], 57, dtype, seed=5, uint8=uint8, activation="tanh", output=output)
    ref = get_backend("numpy").forward(net, X, scale, 1)
    for threads in (1, 2):
        got = get_backend(backend).forward(net, X, scale, threads)
        assert got.dtype == net.dtype and got.shape == ref.shape
        assert_close(got, ref, dtype, f"threads={threads}")


SHAPES = {
    "lesson": ([784, 16, 16, 10], 95, 10),  # 9 full batches and a last one of 5
    "batch1": ([20, 7, 3], 9, 1),
    "single_sample": ([20, 7, 3], 1, 10),
    "width1": ([5, 1, 1], 30, 4),
    "odd_widths": ([37, 19, 23, 11], 61, 7),
    "wide_layer": ([64, 1031, 10], 40, 16),
    "deep": ([30, 12, 12, 12, 12, 6], 50, 8),
}


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("threads", [1, 2])
def test_epoch_matches_reference(backend, dtype, shape, threads):
    sizes, n, bs = SHAPES[shape]
    for (activation, output, loss), uint8 in zip(
            [("sigmoid", "sigmoid", "mse"), ("relu", "softmax", "cross_entropy"), ("tanh", "linear", "mse")],
            [True, False, True]):
        ref_net, X, scale, targets, labels = make_problem(sizes, n, dtype, seed=7, uint8=uint8,
                                                          activation=activation, output=output)
        net = ref_net.copy()
        order = np.random.default_rng(1).permutation(n)
        lr = 0.5 if output != "linear" else 0.05
        ref = get_backend("numpy").train_epoch(ref_net, plan_for(X, scale, targets, labels, order, bs, lr, loss))
        got = get_backend(backend).train_epoch(net, plan_for(X, scale, targets, labels, order, bs, lr, loss, threads))
        what = f"{activation}/{output}/{loss}"
        assert_close(net.params, ref_net.params, dtype, what)
        assert_close(got[0], ref[0], dtype, what + " loss sum")
        assert abs(got[1] - ref[1]) <= (0 if dtype == np.float64 else 1), what + " correct count"


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_valued_targets_and_partial_order(backend, dtype):
    """Soft targets (not one-hot), and an order that visits a subset of rows with repeats."""
    ref_net, X, scale, _, _ = make_problem([12, 8, 4], 30, dtype, seed=11)
    rng = np.random.default_rng(2)
    targets = rng.random((30, 4)).astype(dtype)
    labels = targets.argmax(axis=1).astype(np.int32)
    order = rng.integers(0, 30, size=17)
    net = ref_net.copy()
    ref = get_backend("numpy").train_epoch(ref_net, plan_for(X, scale, targets, labels, order, 4, 0.3, "mse"))
    got = get_backend(backend).train_epoch(net, plan_for(X, scale, targets, labels, order, 4, 0.3, "mse"))
    assert_close(net.params, ref_net.params, dtype)
    assert_close(got[0], ref[0], dtype)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_per_step_learning_rates_are_used(backend):
    ref_net, X, scale, targets, labels = make_problem([10, 6, 3], 40, np.float64, seed=4)
    net = ref_net.copy()
    plan = plan_for(X, scale, targets, labels, np.arange(40), 8, 1.0, "mse")
    plan.lrs = np.array([0.1, 2.0, 0.0, 0.7, 0.3])
    get_backend("numpy").train_epoch(ref_net, plan)
    get_backend(backend).train_epoch(net, plan)
    assert_close(net.params, ref_net.params, np.float64)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_deterministic_mode_is_repeatable_across_threads(backend):
    """Deterministic mode: the same weights whatever the thread count, run after run."""
    results = []
    for threads in (1, 2, 2):
        net, X, scale, targets, labels = make_problem([784, 16, 16, 10], 300, np.float32, seed=9, uint8=True)
        order = np.random.default_rng(0).permutation(300)
        get_backend(backend).train_epoch(net, plan_for(X, scale, targets, labels, order, 10, 3.0, "mse", threads))
        results.append(net.params.copy())
    np.testing.assert_allclose(results[1], results[2], rtol=0, atol=0)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


# ---- the training recipe ------------------------------------------------------------------
RECIPE_SETTINGS = {
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.8, nesterov=True),
    "l2": dict(l2=0.01),
    "l1": dict(l1=0.002),
    "dropout": dict(dropout=0.3),
    "shift": dict(max_shift=2, image_shape=(7, 8)),
}


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_recipe_features_match_reference_or_are_refused(backend):
    """Each recipe feature a backend declares gives the reference's numbers (deterministic mode);
    each one it does not declare is refused by the Trainer with a clear error, never ignored."""
    from fastgd.backends.base import RECIPE_FEATURES

    declared = set(getattr(get_backend(backend), "features", ()))
    cases = {**{f: [RECIPE_SETTINGS[f]] for f in RECIPE_FEATURES},
             "everything": [{k: v for s in RECIPE_SETTINGS.values() for k, v in s.items()}]}
    for name, [settings] in cases.items():
        needed = {name} if name != "everything" else set(RECIPE_FEATURES)
        if not needed <= declared:
            trainer_kwargs = {("augment_shift" if k == "max_shift" else k): v for k, v in settings.items()}
            with pytest.raises(ValueError, match="does not implement"):
                fastgd.Trainer(fastgd.Network([56, 9, 7, 4]), backend=backend, **trainer_kwargs)
            continue
        for dtype, threads in [(np.float64, 1), (np.float32, 2)]:
            ref_net, X, scale, targets, labels = make_problem([56, 9, 7, 4], 70, dtype, seed=2, uint8=True,
                                                              activation="relu", output="softmax")
            net = ref_net.copy()
            order = np.random.default_rng(3).permutation(70)
            plans = []
            for _ in range(2):
                plan = plan_for(X, scale, targets, labels, order, 8, 0.2, "cross_entropy", threads)
                plan.seed, plan.first_position = 12345, 100
                for k, v in settings.items():
                    setattr(plan, k, v)
                plan.velocity = np.zeros_like(net.params)
                plans.append(plan)
            for _ in range(2):  # two epochs, so the momentum buffer carries over
                ref = get_backend("numpy").train_epoch(ref_net, plans[0])
                got = get_backend(backend).train_epoch(net, plans[1])
            what = f"{name} {np.dtype(dtype).name} threads={threads}"
            assert_close(net.params, ref_net.params, dtype, what)
            if "momentum" in settings:
                assert_close(plans[1].velocity, plans[0].velocity, dtype, what + " velocity")
            assert_close(got[0], ref[0], dtype, what + " loss")
