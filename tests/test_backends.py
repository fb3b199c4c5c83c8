"""Every backend against the NumPy reference and against the PyTorch oracle, on the backend
contract (prepare -> Workspace, train_epoch -> EpochResult, evaluate, forward, loss_and_grad).

Parametrised over the backends that ship (conftest.BACKENDS), so the Cython and Numba backends
run exactly these tests; backend-specific tests live in their own files. The helpers here
(make_problem, plan_for, configure, train, tuned) are shared by those files.
"""
import dataclasses
import threading

import numpy as np
import pytest

import fastgd
from fastgd import ops
from fastgd.backends import EpochPlan, get_backend
from fastgd.backends.base import (AUGMENT_FEATURES, FEATURES, OPTIMIZER_CODES, EpochResult, StepRule, cols_pays,
                                  sparse_input_pays)
from fastgd._checks import UINT8_SCALE

from conftest import BACKENDS, COMPILED_BACKENDS, tol

PAIRS = [("sigmoid", "mse"), ("linear", "mse"), ("softmax", "mse"), ("softmax", "cross_entropy"),
         ("sigmoid", "cross_entropy")]
COMBOS = [(act, out, loss) for act in ops.HIDDEN for out, loss in PAIRS]
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


def plan_for(X, scale, targets, labels, order, batch_size, lr, loss, threads=1, deterministic=True):
    steps = -(-len(order) // batch_size)
    return EpochPlan(X=X, x_scale=scale, targets=targets, labels=labels, order=np.asarray(order, dtype=np.int64),
                     lrs=np.full(steps, float(lr)), batch_size=batch_size, loss=loss, threads=threads,
                     deterministic=deterministic)


def configure(plan, net, optimizer="sgd", momentum=0.0, nesterov=False, l2=0.0, weight_decay=None, l1=0.0,
              dropout=0.0, max_shift=0, image_shape=(0, 0), seed=None, first_position=None, state_fill=0.0,
              beta1=0.9, beta2=0.999, eps=1e-8, step=0):
    """Turn plan's optimiser and augmentation settings on; the rule's state arrays are fresh
    (filled with state_fill). `l2` is the old name of weight_decay."""
    wd = l2 if weight_decay is None else weight_decay
    kind = OPTIMIZER_CODES[optimizer]
    rule = StepRule(kind, momentum=momentum, nesterov=nesterov, weight_decay=wd, l1=l1, beta1=beta1, beta2=beta2,
                    eps=eps, step=step)
    state = tuple(np.full_like(net.params, state_fill) for _ in range(rule.n_state()))
    plan.rule = dataclasses.replace(rule, state=state)
    plan.dropout, plan.max_shift, plan.image_shape = dropout, max_shift, image_shape
    if seed is not None:
        plan.seed = seed
    if first_position is not None:
        plan.first_position = first_position
    return plan


def advance(plan):
    """The plan of the next epoch: the optimiser's step counter moved past this one's steps."""
    plan.rule = dataclasses.replace(plan.rule, step=plan.rule.step + plan.n_steps)
    return plan


def backend_of(backend):
    return get_backend(backend) if isinstance(backend, str) else backend


def train(backend, net, plan, ws=None):
    """One train_epoch call the way the Trainer makes it: prepare a workspace, then train."""
    b = backend_of(backend)
    if ws is None:
        ws = b.prepare(net, plan)
    result = b.train_epoch(net, plan, ws)
    assert isinstance(result, EpochResult)
    return result


def tuned(name, path):
    """A fresh backend object whose tuning knobs force one code path on tiny data:
    "sparse" (uint8 input through its CSR, loop layers), "dense" (gathered rows, loop layers),
    "blas" (every layer through gemm), "sync" (Cython: the threaded deterministic path)."""
    if name == "numpy":
        return get_backend("numpy")
    if name == "numba":
        from fastgd.backends.numba_backend import NumbaBackend

        return {"sparse": lambda: NumbaBackend(blas_min_work=1 << 62, sparse_input="always"),
                "dense": lambda: NumbaBackend(blas_min_work=1 << 62, sparse_input="never"),
                "blas": lambda: NumbaBackend(blas_min_work=0, sparse_input="never"),
                "sync": lambda: NumbaBackend(blas_min_work=1 << 62)}[path]()
    from fastgd.backends.cython_backend import CythonBackend

    b = CythonBackend()
    b.blas_min_work = 0 if path == "blas" else 1 << 62
    b.input_mode = {"sparse": "sparse", "dense": "dense"}.get(path, "auto")
    b.sync_min_work = 0  # threads > 1 run the sync path, not serial
    return b


def assert_close(actual, expected, dtype, what=""):
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def state_of(plan):
    return [s.copy() for s in plan.rule.state]


# ---- the table of ops and the contract ------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_implements_every_feature(backend):
    assert get_backend(backend).features == frozenset(FEATURES + AUGMENT_FEATURES)


def test_compiled_backends_use_the_ops_codes():
    """Numba imports its codes from fastgd.ops; the Cython extension was built from a .pxi
    generated from it (and its backend refuses to load on a mismatch)."""
    if "numba" in COMPILED_BACKENDS:
        from fastgd.backends import numba_kernels as K

        for name, code in ops.ACTIVATION_CODES.items():
            assert getattr(K, name.upper()) == code
        assert (K.MSE, K.CROSS_ENTROPY) == (ops.LOSS_CODES["mse"], ops.LOSS_CODES["cross_entropy"])
        assert K.LEAKY_SLOPE == ops.LEAKY_SLOPE
    if "cython" in COMPILED_BACKENDS:
        from fastgd._kernels import dense_sgd

        assert dense_sgd.ACT_CODES == ops.ACTIVATION_CODES
        assert dense_sgd.LOSS_CODES == ops.LOSS_CODES
        assert dense_sgd.OPTIMIZER_CODES == OPTIMIZER_CODES
        assert dense_sgd.LEAKY_SLOPE == ops.LEAKY_SLOPE


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
    result = train(backend, net, plan_for(X, 1.0, targets, labels, np.arange(n), n, c["lr"], c["loss"]))
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(result.loss_sum / n, c["loss_value"], rtol=rtol * 10)
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
@pytest.mark.parametrize("activation,output", [("tanh", "sigmoid"), ("leaky_relu", "softmax"), ("relu", "linear")])
def test_forward_matches_reference(backend, dtype, uint8, activation, output):
    net, X, scale, _, _ = make_problem([40, 33, 10], 57, dtype, seed=5, uint8=uint8, activation=activation,
                                       output=output)
    ref = get_backend("numpy").forward(net, X, scale, 1)
    for threads in (1, 2):
        got = get_backend(backend).forward(net, X, scale, threads)
        assert got.dtype == net.dtype and got.shape == ref.shape
        assert_close(got, ref, dtype, f"threads={threads}")


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("uint8", [False, True])
@pytest.mark.parametrize("output,loss", [("sigmoid", "mse"), ("softmax", "cross_entropy"),
                                         ("sigmoid", "cross_entropy"), ("linear", "mse")])
def test_evaluate_matches_reference_and_the_training_loss(backend, dtype, uint8, output, loss):
    """evaluate() gives the reference's loss sum (from pre-activations: a saturated sigmoid unit
    counts ~z, not a clipped log) and correct count, and equals the training loss of the same
    rows measured before an update (a train epoch with learning rate 0)."""
    net, X, scale, targets, labels = make_problem([30, 11, 6], 300, dtype, seed=9, uint8=uint8, activation="relu",
                                                  output=output)
    if output != "linear":
        net.biases[-1][:] = 40.0  # saturated outputs: the loss must come from z
    b = get_backend(backend)
    for threads in (1, 2):
        got = b.evaluate(net, X, scale, targets, labels, loss, threads)
        ref = get_backend("numpy").evaluate(net, X, scale, targets, labels, loss, 1)
        assert_close(got[0], ref[0], dtype, f"loss sum, threads={threads}")
        assert abs(got[1] - ref[1]) <= (0 if dtype == np.float64 else 2)
    result = train(b, net.copy(), plan_for(X, scale, targets, labels, np.arange(300), 32, 0.0, loss))
    assert_close(result.loss_sum, got[0], dtype, "evaluate vs training loss")


SHAPES = {
    "lesson": ([784, 16, 16, 10], 95, 10),  # 9 full batches and a last one of 5
    "batch1": ([20, 7, 3], 9, 1),
    "single_sample": ([20, 7, 3], 1, 10),
    "width1": ([5, 1, 1], 30, 4),
    "odd_widths": ([37, 19, 23, 11], 61, 7),
    "wide_layer": ([64, 1031, 10], 40, 16),
    "deep": ([30, 12, 12, 12, 12, 6], 50, 8),
    "last_batch_of_one": ([21, 9, 4], 25, 8),
    "sixteen_outputs": ([30, 16, 16], 23, 6),  # every lane of one vector: the output's 16-lane MSE
}


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("threads", [1, 2])
def test_epoch_matches_reference(backend, dtype, shape, threads):
    sizes, n, bs = SHAPES[shape]
    for (activation, output, loss), uint8 in zip(
            [("sigmoid", "sigmoid", "mse"), ("relu", "softmax", "cross_entropy"), ("tanh", "linear", "mse"),
             ("leaky_relu", "softmax", "cross_entropy")],
            [True, False, True, False]):
        ref_net, X, scale, targets, labels = make_problem(sizes, n, dtype, seed=7, uint8=uint8,
                                                          activation=activation, output=output)
        net = ref_net.copy()
        order = np.random.default_rng(1).permutation(n)
        lr = 0.5 if output != "linear" else 0.05
        ref = train("numpy", ref_net, plan_for(X, scale, targets, labels, order, bs, lr, loss))
        got = train(backend, net, plan_for(X, scale, targets, labels, order, bs, lr, loss, threads))
        what = f"{activation}/{output}/{loss}"
        assert_close(net.params, ref_net.params, dtype, what)
        assert_close(got.loss_sum, ref.loss_sum, dtype, what + " loss sum")
        assert abs(got.n_correct - ref.n_correct) <= (0 if dtype == np.float64 else 1), what + " correct count"
        assert got.mode in ("serial", "sync", "cols", "split") and 1 <= got.threads_used <= threads


# ---- every kernel path x every optimiser against the reference ------------------------------
CASES = {  # sizes, rows, batch size: odd widths, batch 1, a minibatch with fewer rows than
    # threads (the last one: one row), a last minibatch of one row
    "odd_widths": ([23, 19, 13, 5], 41, 6),
    "batch1": ([17, 9, 4], 7, 1),
    "fewer_rows_than_threads": ([20, 33, 4], 17, 16),
}
OPTIMIZERS = {
    "sgd": dict(optimizer="sgd"),
    "sgd_momentum": dict(optimizer="sgd", momentum=0.9, nesterov=True, l2=0.01, l1=0.001),
    "adam": dict(optimizer="adam", weight_decay=0.01, l1=0.001),
    "adamw": dict(optimizer="adamw", weight_decay=0.05, beta1=0.8, beta2=0.99, eps=1e-6),
}
INPUTS = {  # kernel path -> (backend knobs, uint8 input)
    "sparse_uint8": ("sparse", True),
    "dense_uint8": ("dense", True),
    "dense_float": ("dense", False),
    "blas_float": ("blas", False),
    "blas_uint8": ("blas", True),
}


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("path", sorted(INPUTS))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("threads", [1, 2])
def test_every_kernel_path_matches_reference(backend, dtype, case, path, optimizer, threads):
    """Two epochs (the optimiser state and its step counter carried across), per-step learning
    rates, against the NumPy reference: float64 within 1e-10, float32 loosely."""
    sizes, n, bs = CASES[case]
    knobs, uint8 = INPUTS[path]
    b = tuned(backend, knobs)
    activation, output, loss = ("leaky_relu", "softmax", "cross_entropy") if n % 2 else ("tanh", "sigmoid", "mse")
    ref_net, X, scale, targets, labels = make_problem(sizes, n, dtype, seed=n, uint8=uint8, activation=activation,
                                                      output=output)
    net = ref_net.copy()
    lr = 0.01 if optimizer.startswith("adam") else 0.2
    plans = []
    for _ in range(2):
        plan = plan_for(X, scale, targets, labels, np.random.default_rng(4).permutation(n), bs, lr, loss, threads)
        plan.lrs = np.linspace(lr, lr / 3, plan.n_steps)
        plans.append(configure(plan, ref_net, **OPTIMIZERS[optimizer], state_fill=0.0))
    ws = b.prepare(net, plans[1])
    for epoch in range(2):
        ref = train("numpy", ref_net, plans[0])
        got = b.train_epoch(net, plans[1], ws)
        advance(plans[0])
        advance(plans[1])
    what = f"{backend} {path} {optimizer} {case} threads={threads}"
    assert_close(net.params, ref_net.params, dtype, what)
    for s_got, s_ref in zip(plans[1].rule.state, plans[0].rule.state):
        assert_close(s_got, s_ref, dtype, what + " optimiser state")
    assert_close(got.loss_sum, ref.loss_sum, dtype, what + " loss")


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", [
    dict(optimizer="sgd", momentum=0.9),
    dict(optimizer="sgd", momentum=0.8, nesterov=True),
    dict(optimizer="sgd", l2=0.01),
    dict(optimizer="sgd", l1=0.002),
    dict(optimizer="sgd", dropout=0.3),
    dict(optimizer="sgd", max_shift=2, image_shape=(7, 8)),
    dict(optimizer="adam", dropout=0.2, max_shift=1, image_shape=(8, 7)),
    dict(optimizer="adamw", momentum=0.0, l1=0.001, dropout=0.3, max_shift=2, image_shape=(7, 8)),
    dict(optimizer="sgd", momentum=0.9, nesterov=True, l2=0.01, l1=0.002, dropout=0.3, max_shift=2,
         image_shape=(7, 8)),
], ids=["momentum", "nesterov", "l2", "l1", "dropout", "shift", "adam-augment", "adamw-augment", "everything"])
@pytest.mark.parametrize("uint8,threads", [(True, 1), (False, 2)])
def test_features_match_reference(backend, dtype, settings, uint8, threads):
    ref_net, X, scale, targets, labels = make_problem([56, 9, 7, 4], 70, dtype, seed=2, uint8=uint8,
                                                      activation="relu", output="softmax")
    net = ref_net.copy()
    order = np.random.default_rng(3).permutation(70)
    plans = [configure(plan_for(X, scale, targets, labels, order, 8, 0.05, "cross_entropy", threads), net,
                       seed=12345, first_position=100, **settings) for _ in range(2)]
    ws = get_backend(backend).prepare(net, plans[1])
    for _ in range(2):  # two epochs, so the optimiser state carries over
        ref = train("numpy", ref_net, plans[0])
        got = get_backend(backend).train_epoch(net, plans[1], ws)
        advance(plans[0])
        advance(plans[1])
    what = f"{settings} {np.dtype(dtype).name} threads={threads}"
    assert_close(net.params, ref_net.params, dtype, what)
    for s_got, s_ref in zip(plans[1].rule.state, plans[0].rule.state):
        assert_close(s_got, s_ref, dtype, what + " state")
    assert_close(got.loss_sum, ref.loss_sum, dtype, what + " loss")


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_a_feature_the_backend_does_not_declare_is_refused(backend):
    """train_epoch refuses a plan asking for a feature outside `features`, never ignores it."""
    b = tuned(backend, "dense")
    b.features = frozenset(FEATURES) - {"dropout", "adam"}
    net, X, scale, targets, labels = make_problem([12, 5, 3], 20, np.float64)
    for settings in (dict(dropout=0.2), dict(optimizer="adam")):
        plan = configure(plan_for(X, scale, targets, labels, np.arange(20), 5, 0.1, "mse"), net, **settings)
        with pytest.raises(ValueError, match="does not implement"):
            b.train_epoch(net, plan, b.prepare(net, plan))


# ---- determinism: threads, slices, concurrency, data changed in place ------------------------
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_deterministic_threads_are_bitwise_one_thread(backend, dtype, optimizer):
    """Deterministic mode at threads=2 on the threaded path (Cython's sync mode forced by its
    knob, and reported as such) gives bitwise the weights of one thread. Numba runs plain SGD on
    this narrow sparse first layer in the "split" epoch on two threads where its team can run two
    workers, everything else serially, and says so."""
    b = tuned(backend, "sync")
    results = []
    for threads in (1, 2, 2):
        net, X, scale, targets, labels = make_problem([784, 16, 16, 10], 300, dtype, seed=9, uint8=True)
        order = np.random.default_rng(0).permutation(300)
        plan = configure(plan_for(X, scale, targets, labels, order, 10, 3.0 if optimizer == "sgd" else 0.01, "mse",
                                  threads), net, optimizer=optimizer)
        result = train(b, net, plan)
        results.append((net.params.copy(), result))
    (p1, r1), (p2, r2), (p3, r3) = results
    if backend == "cython":
        expected = ("sync", 2)
    else:
        from fastgd.backends import numba_backend
        two = numba_backend.set_threads(2) == 2 and numba_backend.team_works(2)
        expected = ("split", 2) if two and optimizer == "sgd" else ("serial", 1)
    assert (r2.mode, r2.threads_used) == expected and (r1.mode, r1.threads_used) == ("serial", 1)
    np.testing.assert_array_equal(p2, p1)
    np.testing.assert_array_equal(p3, p2)
    assert r2.n_correct == r1.n_correct
    assert r2.loss_sum == pytest.approx(r1.loss_sum, rel=1e-6)


SLICE_SETTINGS = {
    "sgd": dict(),
    "momentum-augment": dict(momentum=0.9, nesterov=True, l2=0.01, dropout=0.2, max_shift=1, image_shape=(6, 7)),
    "adam": dict(optimizer="adam", weight_decay=0.01),
    "adamw-dropout": dict(optimizer="adamw", dropout=0.3),
}


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("settings", sorted(SLICE_SETTINGS))
@pytest.mark.parametrize("path,threads", [("sparse", 1), ("dense", 2), ("blas", 2)])
def test_an_epoch_in_slices_is_bitwise_one_call(backend, settings, path, threads):
    """CONTRACT 4: the Trainer may run an epoch as consecutive slices of the order (a multiple
    of batch_size each, lrs sliced, first_position and rule.step advanced). Deterministic mode
    gives bitwise the weights, optimiser state and loss of one call."""
    net0, X, scale, targets, labels = make_problem([42, 17, 6], 83, np.float32, seed=6, uint8=path != "blas",
                                                   activation="relu", output="softmax")
    order = np.random.default_rng(5).permutation(83)
    bs = 5
    runs = []
    for cuts in ([0, 83], [0, 10, 45, 80, 83], [0, 5, 10, 15, 83]):
        b = tuned(backend, path)
        net = net0.copy()
        full = configure(plan_for(X, scale, targets, labels, order, bs, 0.05, "cross_entropy", threads), net,
                         seed=77, first_position=0, **SLICE_SETTINGS[settings])
        full.lrs = np.linspace(0.05, 0.01, full.n_steps)
        ws = b.prepare(net, full)
        loss, correct = 0.0, 0
        for a, c in zip(cuts[:-1], cuts[1:]):
            part = dataclasses.replace(full, order=full.order[a:c], lrs=full.lrs[a // bs:-(-c // bs)],
                                       first_position=a,
                                       rule=dataclasses.replace(full.rule, step=full.rule.step + a // bs))
            result = b.train_epoch(net, part, ws)
            loss += result.loss_sum
            correct += result.n_correct
        runs.append((net.params.copy(), state_of(full), loss, correct))
    for params, state, loss, correct in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        for s, s0 in zip(state, runs[0][1]):
            np.testing.assert_array_equal(s, s0)
        assert correct == runs[0][3]
        assert loss == pytest.approx(runs[0][2], rel=1e-12)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("path", ["sparse", "dense", "blas"])
def test_two_trainers_in_two_threads_match_sequential_runs(backend, path):
    """One backend object, two fits at once in two Python threads (the kernels drop the GIL):
    bitwise the weights of the same fits run one after the other. Nothing per-run lives on the
    backend, so the two cannot see each other's rows."""
    b = tuned(backend, path)
    problems = [make_problem([60, 24, 5], 150, np.float64, seed=s, uint8=path != "blas") for s in (1, 2)]

    def fit(i, out):
        net0, X, scale, targets, labels = problems[i]
        net = net0.copy()
        plan = configure(plan_for(X, scale, targets, labels, np.arange(150), 7, 0.3, "mse", 1), net,
                         optimizer="adam" if i else "sgd", momentum=0.0 if i else 0.9)
        ws = b.prepare(net, plan)
        for _ in range(3):
            b.train_epoch(net, plan, ws)
            advance(plan)
        out[i] = net.params.copy()

    sequential, concurrent = {}, {}
    for i in (0, 1):
        fit(i, sequential)
    threads = [threading.Thread(target=fit, args=(i, concurrent)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        np.testing.assert_array_equal(concurrent[i], sequential[i])


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_a_new_fit_sees_data_changed_in_place(backend, path):
    """X[:] = other between fits: the next prepare() rebuilds the sparse index, so the second fit
    trains on the new pixels (as the reference does)."""
    b = tuned(backend, path)
    net0, X, scale, targets, labels = make_problem([40, 8, 3], 60, np.float64, seed=3, uint8=True)
    plan = plan_for(X, scale, targets, labels, np.arange(60), 6, 0.5, "mse")
    train(b, net0.copy(), plan)
    X[:] = np.random.default_rng(9).integers(0, 256, size=X.shape, dtype=np.uint8) * (X == 0)
    net, ref = net0.copy(), net0.copy()
    train(b, net, plan)
    train("numpy", ref, plan)
    assert_close(net.params, ref.params, np.float64)


@pytest.mark.parametrize("backend,optimizer", [(b, o) for b in COMPILED_BACKENDS for o in ("adam", "adamw")]
                         + ([("numba", "sgd")] if "numba" in COMPILED_BACKENDS else []))
def test_hogwild_request_with_a_stateful_optimizer(backend, optimizer):
    """deterministic=False allows Hogwild. Plain SGD may take it; Adam/AdamW (and on Numba any
    optimiser state or augmentation) run deterministic instead, say so in EpochResult.mode, and
    give the reference's numbers."""
    ref_net, X, scale, targets, labels = make_problem([20, 8, 4], 64, np.float64, seed=3, uint8=True,
                                                      activation="relu", output="softmax")
    net = ref_net.copy()
    plans = [configure(plan_for(X, scale, targets, labels, np.arange(64), 8, 0.01, "cross_entropy", 2,
                                deterministic=False), ref_net, optimizer=optimizer, dropout=0.2, seed=4)
             for _ in range(2)]
    train("numpy", ref_net, plans[0])
    result = train(backend, net, plans[1])
    assert result.mode in ("serial", "sync")
    assert_close(net.params, ref_net.params, np.float64)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_hogwild_plain_sgd_reports_hogwild(backend):
    net, X, scale, targets, labels = make_problem([20, 8, 4], 64, np.float32, seed=3, uint8=True)
    result = train(backend, net, plan_for(X, scale, targets, labels, np.arange(64), 4, 0.5, "mse", 2,
                                          deterministic=False))
    import numba

    if backend == "numba" and numba.config.NUMBA_NUM_THREADS < 2:
        pytest.fail("the Numba hogwild test needs NUMBA_NUM_THREADS >= 2")
    assert (result.mode, result.threads_used) == ("hogwild", 2)
    assert np.isfinite(net.params).all() and 0 <= result.n_correct <= 64


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_per_step_learning_rates_are_used(backend):
    ref_net, X, scale, targets, labels = make_problem([10, 6, 3], 40, np.float64, seed=4)
    net = ref_net.copy()
    plan = plan_for(X, scale, targets, labels, np.arange(40), 8, 1.0, "mse")
    plan.lrs = np.array([0.1, 2.0, 0.0, 0.7, 0.3])
    train("numpy", ref_net, plan)
    train(backend, net, plan)
    assert_close(net.params, ref_net.params, np.float64)


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
    ref = train("numpy", ref_net, plan_for(X, scale, targets, labels, order, 4, 0.3, "mse"))
    got = train(backend, net, plan_for(X, scale, targets, labels, order, 4, 0.3, "mse"))
    assert_close(net.params, ref_net.params, dtype)
    assert_close(got.loss_sum, ref.loss_sum, dtype)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_invalid_plans_are_refused_before_the_kernels(backend):
    """train_epoch calls plan.validate first: bad shapes, dtypes, indices and state arrays give
    ValueError/TypeError, never a crash."""
    net, X, scale, targets, labels = make_problem([10, 4, 2], 8, np.float32)
    good = plan_for(X, scale, targets, labels, np.arange(8), 4, 0.1, "mse")
    cases = {
        "float64 X for a float32 network": dict(X=X.astype(np.float64)),
        "X with the wrong width": dict(X=X[:, :9].copy()),
        "non-contiguous X": dict(X=np.asfortranarray(X)),
        "order out of range": dict(order=np.array([0, 8], dtype=np.int64), lrs=np.full(1, 0.1)),
        "negative order": dict(order=np.array([-1, 2], dtype=np.int64), lrs=np.full(1, 0.1)),
        "too few learning rates": dict(lrs=np.array([0.1])),
        "targets of the wrong shape": dict(targets=targets[:, :1].copy()),
        "zero batch size": dict(batch_size=0),
        "zero threads": dict(threads=0),
        "momentum without its state": dict(rule=StepRule(0, momentum=0.9)),
        "adam state of the wrong shape": dict(rule=StepRule(1, state=(np.zeros(3, np.float32),) * 2)),
    }
    for what, change in cases.items():
        plan = dataclasses.replace(good, **change)
        with pytest.raises((ValueError, TypeError)):
            get_backend(backend).train_epoch(net, plan, None)
            pytest.fail(what)


@pytest.mark.parametrize("sizes, batch, workers, sparse, expected", [
    ([784, 512, 512, 10], 128, 1, True, True),  # dense work: 128 x 270k
    ([100, 128, 128, 10], 128, 2, False, True),  # dense work: 128 x 31k, dense input
    ([784, 128, 10], 32, 2, True, True),  # small batch, 64 columns a worker
    ([784, 128, 10], 128, 2, True, False),  # 400 KB of weights, first layer zero-skipped
    ([784, 256, 10], 128, 2, True, True),  # 800 KB of weights
    ([784, 128, 10], 32, 1, True, False),  # one worker: only the dense-work rule
    ([784, 64, 10], 32, 2, True, False),  # 32 columns a worker: under 4 vectors
    ([784, 16, 16, 10], 10, 2, True, False),  # the lesson: narrower than 2 vectors a worker
    ([784, 48, 128, 10], 32, 2, True, False),  # the narrowest layer decides
])
def test_cols_pays(sizes, batch, workers, sparse, expected):
    """The compiled backends' auto rule for the cols epoch (base.cols_pays), one case per clause."""
    assert cols_pays(sizes, batch, workers, sparse) is expected


@pytest.mark.parametrize("rows", [1, 40, 512, 513, 10_000])
def test_sparse_input_pays_by_measured_density(rows):
    """Inference skips zeros when at most max_density of the pixels are non-zero: measured on
    the whole input up to 512 rows, on 16 runs of 32 rows beyond (the first and last included)."""
    rng = np.random.default_rng(rows)
    X = (rng.random((rows, 100)) < 0.3).astype(np.uint8) * 7  # ~30% non-zero
    assert sparse_input_pays(X, 0.4) and not sparse_input_pays(X, 0.2)
    X[:] = 0
    assert sparse_input_pays(X, 0.0)
    X[-1] = 1  # one full row: 1 / rows of the pixels, and in the last run when sampled
    assert not sparse_input_pays(X, 0.0) and sparse_input_pays(X, 1.0 / min(rows, 512) + 1e-9)
    assert not sparse_input_pays(X.astype(np.float32), 1.0)  # only uint8 input is ever sparse
    assert not sparse_input_pays(np.zeros((rows, 0), np.uint8), 1.0)

