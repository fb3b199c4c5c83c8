"""Numba-specific behaviour: the on-disk cache, thread counts, Hogwild mode, both layer paths.

Agreement with the NumPy reference and the PyTorch oracle is tested for every backend in
test_backends.py; this file covers what only the Numba backend has.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import fastgd
from fastgd.backends import EpochPlan, get_backend, numba_backend
from fastgd.backends.numba_backend import NumbaBackend

from conftest import tol
from test_backends import assert_close, make_problem, plan_for

# A child process: prepare() on a small uint8 problem, then print what the cache did.
CHILD = """
import json, sys, numpy as np, fastgd
from fastgd.backends import get_backend, EpochPlan
rng = np.random.default_rng(0)
net = fastgd.Network([20, 8, 4], "sigmoid", "sigmoid", dtype=np.float32, seed=0)
X = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)
labels = rng.integers(0, 4, size=12).astype(np.int32)
targets = np.eye(4, dtype=np.float32)[labels]
plan = EpochPlan(X=X, x_scale=1 / 255, targets=targets, labels=labels, order=np.arange(12), lrs=np.full(3, 0.5),
                 batch_size=4, loss="mse", threads=1, deterministic=True)
if sys.argv[1:] == ["recipe"]:  # every feature: the recipe kernel
    plan.momentum, plan.nesterov, plan.l2, plan.l1, plan.dropout = 0.9, True, 1e-3, 1e-4, 0.1
    plan.max_shift, plan.image_shape, plan.velocity = 1, (4, 5), np.zeros_like(net.params)
backend = get_backend("numba")
seconds = backend.prepare(net, plan)
print(json.dumps(dict(backend.last_prepare, returned=seconds)))
"""


def _run_child(cache_dir, mode):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    src = Path(fastgd.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode,kernel", [("plain", "train_epoch_serial"), ("recipe", "train_epoch_recipe")])
def test_second_process_loads_kernels_from_disk_cache(tmp_path, mode, kernel):
    first = _run_child(tmp_path, mode)
    assert first["compiled"] and first["cache_misses"] > 0 and first["cache_hits"] == 0
    index_files = list(tmp_path.rglob("*.nbi"))
    assert any(kernel in p.name for p in index_files)
    assert any("forward_chunks" in p.name for p in index_files)
    second = _run_child(tmp_path, mode)
    assert not second["compiled"] and second["cache_misses"] == 0 and second["cache_hits"] > 0
    assert first["returned"] == first["seconds"] > 0
    assert second["returned"] == 0.0  # nothing compiled: the Trainer reports no compile time


def test_prepare_leaves_the_network_untouched():
    net, X, scale, targets, labels = make_problem([30, 9, 4], 25, np.float64, seed=1, uint8=True)
    before = net.params.copy()
    seconds = get_backend("numba").prepare(net, plan_for(X, scale, targets, labels, np.arange(25), 5, 0.5, "mse"))
    assert seconds >= 0.0
    np.testing.assert_array_equal(net.params, before)


def test_thread_count_is_clipped_to_numbas_pool():
    limit = numba.config.NUMBA_NUM_THREADS
    assert numba_backend.set_threads(limit + 7) == limit
    assert numba.get_num_threads() == limit
    assert numba_backend.set_threads(1) == 1
    assert numba.get_num_threads() == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_hogwild_runs_one_worker_per_thread(threads):
    net, X, scale, targets, labels = make_problem([40, 8, 4], 64, np.float32, seed=2, uint8=True)
    plan = plan_for(X, scale, targets, labels, np.arange(64), 4, 0.5, "mse", threads)
    plan.deterministic = False
    kernel, _, blas_threads, workspace = NumbaBackend(blas_min_work=0)._epoch_call(net, plan)
    workers = min(threads, numba.config.NUMBA_NUM_THREADS)
    if workers > 1:
        assert kernel is numba_backend.K.train_epoch_hogwild
        assert workspace.acts.shape[0] == workers  # one scratch row per worker
        assert numba.get_num_threads() == workers
        assert blas_threads == 1  # BLAS stays single-threaded inside the parallel region
    else:
        assert kernel is numba_backend.K.train_epoch_serial


def _mnist_subset(n):
    from fastgd.datasets import load_mnist

    X, y, X_test, y_test = load_mnist()
    return X[:n], y[:n].astype(np.int32), X_test[:2000], y_test[:2000]


def test_hogwild_mode_still_learns():
    X, y, X_test, y_test = _mnist_subset(6000)
    net = fastgd.Network([784, 16, 16, 10], "sigmoid", "sigmoid", dtype=np.float32, seed=0)
    targets = np.eye(10, dtype=np.float32)[y]
    backend = get_backend("numba")
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(3):
        order = rng.permutation(len(X))
        plan = EpochPlan(X=X, x_scale=1 / 255, targets=targets, labels=y, order=order, lrs=np.full(600, 3.0),
                         batch_size=10, loss="mse", threads=2, deterministic=False)
        loss_sum, correct = backend.train_epoch(net, plan)
        losses.append(loss_sum / len(X))
        assert 0 <= correct <= len(X)
    assert losses[-1] < losses[0]
    accuracy = np.mean(np.argmax(backend.forward(net, X_test, 1 / 255, 2), axis=1) == y_test)
    assert accuracy > 0.8, accuracy


# ---- every layer path (sparse input, loops, BLAS) against the reference ----------------------
PATHS = {  # (blas_min_work, sparse_input)
    "sparse_then_loops": (1 << 62, "always"),
    "sparse_then_blas": (0, "always"),
    "dense_loops": (1 << 62, "never"),
    "dense_blas": (0, "never"),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("uint8", [False, True])
@pytest.mark.parametrize("activation,output,loss", [("sigmoid", "sigmoid", "mse"), ("relu", "softmax", "cross_entropy"),
                                                    ("tanh", "linear", "mse"), ("relu", "sigmoid", "cross_entropy")])
def test_each_layer_path_matches_reference(path, dtype, uint8, activation, output, loss):
    blas_min_work, sparse_input = PATHS[path]
    backend = NumbaBackend(blas_min_work=blas_min_work, sparse_input=sparse_input)
    ref_net, X, scale, targets, labels = make_problem([33, 21, 12, 6], 47, dtype, seed=8, uint8=uint8,
                                                      activation=activation, output=output)
    net = ref_net.copy()
    order = np.random.default_rng(3).permutation(47)
    lr = 0.3 if output != "linear" else 0.03
    ref = get_backend("numpy").train_epoch(ref_net, plan_for(X, scale, targets, labels, order, 6, lr, loss))
    got = backend.train_epoch(net, plan_for(X, scale, targets, labels, order, 6, lr, loss))
    assert_close(net.params, ref_net.params, dtype, "params")
    assert_close(got[0], ref[0], dtype, "loss sum")
    ref_out = get_backend("numpy").forward(ref_net, X, scale, 1)
    assert_close(backend.forward(ref_net, X, scale, 2), ref_out, dtype, "forward")
    ref_loss, ref_grad = get_backend("numpy").loss_and_grad(ref_net, X, scale, targets, loss)
    got_loss, got_grad = backend.loss_and_grad(ref_net, X, scale, targets, loss)
    assert_close(got_loss, ref_loss, dtype, "loss")
    assert_close(got_grad, ref_grad, dtype, "gradient")


def test_forward_does_not_depend_on_thread_count():
    net, X, scale, _, _ = make_problem([50, 30, 7], 1000, np.float32, seed=6, uint8=True)
    backend = NumbaBackend(forward_chunk=64)
    one = backend.forward(net, X, scale, 1)
    two = backend.forward(net, X, scale, 2)
    np.testing.assert_array_equal(one, two)
    rtol, atol = tol(np.float32)
    np.testing.assert_allclose(one, get_backend("numpy").forward(net, X, scale, 1), rtol=rtol, atol=atol)


def test_counter_generator_is_bit_exact_with_fastgd_random():
    """The kernels' SplitMix64 draws, dropout decisions and shifts equal fastgd._random's on many
    values, including seeds and positions past 2**63 and 2**32 (uint64 arithmetic throughout)."""
    from fastgd import _random
    from fastgd.backends import numba_kernels as K

    rng = np.random.default_rng(7)
    seeds = [0, 1, 12345, 2 ** 63 - 1, 2 ** 63 + 5, 2 ** 64 - 1] + [int(s) for s in rng.integers(0, 2 ** 63, 20)]
    positions = np.concatenate([np.arange(50), rng.integers(0, 2 ** 40, 50)]).astype(np.int64)
    units = np.array([0, 1, 15, 16, 1000, (1 << 20) - 1], dtype=np.int64)
    for seed in seeds:
        useed = np.uint64(seed)
        expected = _random.draw(seed, positions[:, None], units)
        got = np.array([[K.counter_draw(useed, int(p), int(j)) for j in units] for p in positions], dtype=np.uint64)
        np.testing.assert_array_equal(got, expected)
        for k in (1, 2, 3):
            dx, dy = _random.shifts(seed, positions, k)
            got = np.array([K.sample_shift(useed, int(p), k) for p in positions])
            np.testing.assert_array_equal(got[:, 0], dx)
            np.testing.assert_array_equal(got[:, 1], dy)
    a = rng.random((len(positions), 40))
    mask = np.empty_like(a)
    dropped = np.empty_like(a)
    K.dropout_rows(a, mask, dropped, len(positions), np.uint64(99), 7, 3, 0.3, 1 / 0.7)
    keep = _random.dropout_keep(99, 7 + np.arange(len(positions)), 3, 40, 0.3)
    np.testing.assert_array_equal(mask, keep * (1 / 0.7))
    np.testing.assert_array_equal(dropped, a * mask)


EVERYTHING = dict(momentum=0.9, nesterov=True, l2=0.01, l1=0.002, dropout=0.3, max_shift=2, image_shape=(7, 8))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("path,uint8,kwargs", [
    ("sparse", True, dict(sparse_input="always")),
    ("dense-uint8", True, dict(sparse_input="never")),
    ("dense-float", False, {}),
    ("blas", True, dict(blas_min_work=0)),
])
@pytest.mark.parametrize("settings", [EVERYTHING, dict(momentum=0.5, l2=0.02), dict(dropout=0.5, max_shift=1,
                                                                                  image_shape=(8, 7))],
                         ids=["everything", "momentum-l2", "dropout-shift"])
def test_recipe_matches_reference_on_every_layer_path(dtype, path, uint8, kwargs, settings):
    """Every recipe feature on the sparse input layer (shifted minibatch CSR), the dense gather
    (uint8 and float input, shifted in place) and the BLAS path, two epochs like the shared test,
    with a ragged last batch; the velocity is updated in place and carried over."""
    backend = NumbaBackend(**kwargs)
    ref_net, X, scale, targets, labels = make_problem([56, 9, 7, 4], 70, dtype, seed=5, uint8=uint8,
                                                      activation="relu", output="softmax")
    net = ref_net.copy()
    plans = []
    for _ in range(2):
        plan = plan_for(X, scale, targets, labels, np.random.default_rng(2).permutation(70), 8, 0.2,
                        "cross_entropy", 2)
        plan.seed, plan.first_position = 2 ** 63 + 11, 40
        for k, v in settings.items():
            setattr(plan, k, v)
        plan.velocity = np.zeros_like(net.params)
        plans.append(plan)
    for epoch in range(2):
        plans[0].seed = plans[1].seed = 2 ** 63 + 11 + epoch
        ref = get_backend("numpy").train_epoch(ref_net, plans[0])
        got = backend.train_epoch(net, plans[1])
    assert_close(net.params, ref_net.params, dtype, path)
    assert_close(plans[1].velocity, plans[0].velocity, dtype, path + " velocity")
    assert_close(got[0], ref[0], dtype, path + " loss")
    assert got[1] == ref[1] or dtype == np.float32


def test_plain_sgd_keeps_its_own_kernel_and_the_recipe_gets_the_recipe_kernel():
    from fastgd.backends import numba_kernels as K

    net, X, scale, targets, labels = make_problem([10, 6, 3], 20, np.float32, seed=1)
    backend = NumbaBackend()
    plan = plan_for(X, scale, targets, labels, np.arange(20), 5, 0.5, "mse")
    assert backend._epoch_call(net, plan)[0] is K.train_epoch_serial
    plan.dropout = 0.2
    assert backend._epoch_call(net, plan)[0] is K.train_epoch_recipe


def test_momentum_without_a_velocity_buffer_is_a_clear_error():
    net, X, scale, targets, labels = make_problem([10, 6, 3], 20, np.float32, seed=1)
    plan = plan_for(X, scale, targets, labels, np.arange(20), 5, 0.5, "mse")
    plan.momentum = 0.9
    with pytest.raises(ValueError, match="velocity"):
        get_backend("numba").train_epoch(net, plan)
    plan.velocity = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match="velocity"):
        get_backend("numba").train_epoch(net, plan)


def test_recipe_in_hogwild_mode_runs_the_deterministic_kernel():
    """Non-deterministic mode with a recipe runs the deterministic kernel (Hogwild is plain SGD
    only), so it gives the reference's numbers."""
    ref_net, X, scale, targets, labels = make_problem([20, 8, 4], 64, np.float64, seed=3, uint8=True,
                                                      activation="relu", output="softmax")
    net = ref_net.copy()
    plans = []
    for _ in range(2):
        plan = plan_for(X, scale, targets, labels, np.arange(64), 8, 0.1, "cross_entropy", 2)
        plan.deterministic = False
        plan.momentum, plan.dropout, plan.velocity = 0.9, 0.2, np.zeros_like(net.params)
        plans.append(plan)
    get_backend("numpy").train_epoch(ref_net, plans[0])
    get_backend("numba").train_epoch(net, plans[1])
    assert_close(net.params, ref_net.params, np.float64)


def test_prepare_with_a_recipe_leaves_the_network_and_velocity_untouched():
    net, X, scale, targets, labels = make_problem([20, 8, 4], 30, np.float32, seed=2, uint8=True)
    plan = plan_for(X, scale, targets, labels, np.arange(30), 10, 0.5, "mse")
    plan.momentum, plan.nesterov, plan.l2, plan.dropout = 0.9, True, 1e-3, 0.1
    plan.max_shift, plan.image_shape = 1, (4, 5)
    plan.velocity = np.zeros_like(net.params)
    before = net.params.copy()
    seconds = NumbaBackend().prepare(net, plan)
    assert seconds >= 0.0
    np.testing.assert_array_equal(net.params, before)
    assert not plan.velocity.any()


def test_deterministic_blas_split_is_repeatable_and_matches_one_thread():
    """Deterministic mode with BLAS-sized layers splits each gemm into fixed row chunks, one per
    thread: the same weights every run, and the same as one thread up to rounding."""
    backend = NumbaBackend(blas_min_work=0)
    results = []
    for threads in (1, 2, 2):
        net, X, scale, targets, labels = make_problem([60, 48, 32, 5], 90, np.float64, seed=4, uint8=True,
                                                      activation="relu", output="softmax")
        order = np.random.default_rng(1).permutation(90)
        backend.train_epoch(net, plan_for(X, scale, targets, labels, order, 16, 0.2, "cross_entropy", threads))
        results.append(net.params.copy())
    np.testing.assert_array_equal(results[1], results[2])
    assert_close(results[1], results[0], np.float64, "2 threads vs 1")
