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
import json, numpy as np, fastgd
from fastgd.backends import get_backend, EpochPlan
rng = np.random.default_rng(0)
net = fastgd.Network([20, 8, 4], "sigmoid", "sigmoid", dtype=np.float32, seed=0)
X = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)
labels = rng.integers(0, 4, size=12).astype(np.int32)
targets = np.eye(4, dtype=np.float32)[labels]
plan = EpochPlan(X=X, x_scale=1 / 255, targets=targets, labels=labels, order=np.arange(12), lrs=np.full(3, 0.5),
                 batch_size=4, loss="mse", threads=1, deterministic=True)
backend = get_backend("numba")
seconds = backend.prepare(net, plan)
print(json.dumps(dict(backend.last_prepare, returned=seconds)))
"""


def _run_child(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    src = Path(fastgd.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_kernels_from_disk_cache(tmp_path):
    first = _run_child(tmp_path)
    assert first["compiled"] and first["cache_misses"] > 0 and first["cache_hits"] == 0
    index_files = list(tmp_path.rglob("*.nbi"))
    assert any("train_epoch_serial" in p.name for p in index_files)
    assert any("forward_chunks" in p.name for p in index_files)
    second = _run_child(tmp_path)
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


def test_recipe_features_it_lacks_are_refused():
    net, X, scale, targets, labels = make_problem([10, 6, 3], 20, np.float32, seed=1)
    plan = plan_for(X, scale, targets, labels, np.arange(20), 5, 0.5, "mse")
    plan.momentum = 0.9
    plan.velocity = np.zeros_like(net.params)
    with pytest.raises(ValueError, match="momentum"):
        get_backend("numba").train_epoch(net, plan)


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
