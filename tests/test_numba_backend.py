"""Numba-specific behaviour: the on-disk cache, thread counts, Hogwild mode, the compile-time
specialisation, the split gemm with fewer rows than threads (issue 12), interrupts, and the
layer paths the shared tests do not combine.

Agreement with the NumPy reference and the PyTorch oracle on every kernel path is tested for
every backend in test_backends.py; this file covers what only the Numba backend has.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np
import pytest

import fastgd
from fastgd.backends import EpochPlan, get_backend, numba_backend
from fastgd.backends import numba_kernels as K
from fastgd.backends.base import ADAM, SGD, StepRule
from fastgd.backends.numba_backend import NumbaBackend

from conftest import run_bounds_checked, tol
from test_backends import advance, assert_close, configure, make_problem, plan_for, state_of, train

# A child process: prepare() on a small uint8 problem, then print what the cache did.
CHILD = """
import json, sys, numpy as np, fastgd
from fastgd.backends import get_backend, EpochPlan
from fastgd.backends.base import StepRule
rng = np.random.default_rng(0)
net = fastgd.Network([20, 8, 4], "sigmoid", "sigmoid", dtype=np.float32, seed=0)
X = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)
labels = rng.integers(0, 4, size=12).astype(np.int32)
targets = np.eye(4, dtype=np.float32)[labels]
plan = EpochPlan(X=X, x_scale=1 / 255, targets=targets, labels=labels, order=np.arange(12), lrs=np.full(3, 0.5),
                 batch_size=4, loss="mse", threads=1, deterministic=True)
if sys.argv[1:] == ["optim"]:  # Adam with every augmentation: the other specialisation
    plan.rule = StepRule(1, weight_decay=1e-3, l1=1e-4, state=(np.zeros_like(net.params), np.zeros_like(net.params)))
    plan.dropout, plan.max_shift, plan.image_shape = 0.1, 1, (4, 5)
ws = get_backend("numba").prepare(net, plan)
print(json.dumps(dict(ws.info, returned=ws.compile_seconds)))
"""


def _run_child(cache_dir, mode):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("NUMBA_BOUNDSCHECK", None)  # a bounds-checked run does not use the disk cache
    src = Path(fastgd.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["plain", "optim"])
def test_second_process_loads_kernels_from_disk_cache(tmp_path, mode):
    first = _run_child(tmp_path, mode)
    assert first["compiled"] and first["cache_misses"] > 0 and first["cache_hits"] == 0
    index_files = [p.name for p in tmp_path.rglob("*.nbi")]
    # plain SGD runs the team epoch, the optimiser/augmentation specialisation the general one
    kernel = "numba_kernels.train_epoch_team-" if mode == "plain" else "numba_kernels.train_epoch-"
    assert any(kernel in p for p in index_files)
    assert any("forward_chunks" in p for p in index_files)
    second = _run_child(tmp_path, mode)
    assert not second["compiled"] and second["cache_misses"] == 0 and second["cache_hits"] > 0
    assert first["returned"] == first["seconds"] > 0
    assert second["returned"] == 0.0  # nothing compiled: the Trainer reports no compile time


# A child process: two epochs of the networks whose float32 weights differed between a process
# that had just compiled the kernels and one that loaded them from the disk cache, while Numba's
# fastmath included 'reassoc'; prints a digest of the weights per network.
TRAIN_CHILD = """
import hashlib, numpy as np, fastgd
rng = np.random.default_rng(1)
X = rng.standard_normal((600, 784)).astype(np.float32)
y = rng.integers(0, 10, size=600)
Xu = rng.integers(0, 256, size=(600, 784), dtype=np.uint8)
Xu[rng.random(Xu.shape) < 0.8] = 0
for sizes, act, out, loss, batch, data in (([784, 40, 17, 10], "sigmoid", "sigmoid", "cross_entropy", 32, X),
                                           ([784, 128, 10], "relu", "softmax", "cross_entropy", 32, Xu),
                                           ([784, 96, 64, 10], "relu", "softmax", "cross_entropy", 64, Xu)):
    net = fastgd.Network(sizes, activation=act, output=out, seed=0, dtype=np.float32)
    fastgd.Trainer(net, loss=loss, lr=0.1, batch_size=batch, epochs=2, backend="numba", seed=0,
                   threads=2).fit(data, y)
    print(hashlib.sha256(net.params.tobytes()).hexdigest())
"""


def test_a_cached_kernel_trains_bitwise_like_a_freshly_compiled_one(tmp_path):
    """The same seed gives the same weights whether this process compiled the kernels or loaded
    them from the disk cache (with 'reassoc' in fastmath it did not: LLVM reassociated the
    float32 sums differently in the two)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_BOUNDSCHECK", None)  # a bounds-checked run does not use the disk cache
    src = Path(fastgd.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    runs = []
    for _ in range(2):  # the first compiles and fills the cache, the second loads from it
        out = subprocess.run([sys.executable, "-c", TRAIN_CHILD], env=env, capture_output=True, text=True,
                             timeout=900)
        assert out.returncode == 0, out.stderr
        runs.append(out.stdout.split())
    assert any(tmp_path.rglob("*.nbi"))  # the second run did have a cache to load
    assert len(runs[0]) == 3 and runs[0] == runs[1]


def test_prepare_builds_the_workspace_and_leaves_the_network_untouched():
    net, X, scale, targets, labels = make_problem([30, 9, 4], 25, np.float64, seed=1, uint8=True)
    plan = configure(plan_for(X, scale, targets, labels, np.arange(25), 5, 0.5, "mse"), net, optimizer="adam",
                     dropout=0.2, state_fill=0.5)
    before, state = net.params.copy(), state_of(plan)
    ws = get_backend("numba").prepare(net, plan)
    np.testing.assert_array_equal(net.params, before)
    for s, s0 in zip(plan.rule.state, state):
        np.testing.assert_array_equal(s, s0)
    info = ws.info
    # the epoch, evaluate and forward kernels for these argument types exist now (compiled, or
    # loaded: a process that already has them counts neither a cache hit nor a miss)
    assert K.train_epoch.signatures and K.forward_chunks.signatures and K.csr_fill.signatures
    assert ws.compile_seconds == (info["seconds"] if info["compiled"] else 0.0)
    assert ws.csr_of is X and ws.csr[0].shape == (26,)  # the sparse index of this X, built now
    assert not ws.grad.any()


def test_thread_count_is_clipped_to_numbas_pool():
    limit = numba.config.NUMBA_NUM_THREADS
    assert numba_backend.set_threads(limit + 7) == limit
    assert numba.get_num_threads() == limit
    assert numba_backend.set_threads(1) == 1
    assert numba.get_num_threads() == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_hogwild_runs_one_worker_per_thread(threads):
    net, X, scale, targets, labels = make_problem([40, 8, 4], 64, np.float32, seed=2, uint8=True)
    plan = plan_for(X, scale, targets, labels, np.arange(64), 4, 0.5, "mse", threads, deterministic=False)
    b = NumbaBackend(blas_min_work=0)
    ws = b.prepare(net, plan)
    result = b.train_epoch(net, plan, ws)
    workers = min(threads, numba.config.NUMBA_NUM_THREADS)
    if workers > 1:
        assert (result.mode, result.threads_used) == ("hogwild", workers)
        assert ws.scratch.acts.shape[0] == workers  # one scratch row per worker
        assert ws.scratch.n_split is None  # no nested parallel region inside the epoch's
    else:
        assert (result.mode, result.threads_used) == ("serial", 1)


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
    ws = None
    for _ in range(3):
        plan = EpochPlan(X=X, x_scale=1 / 255, targets=targets, labels=y, order=rng.permutation(len(X)),
                         lrs=np.full(600, 3.0), batch_size=10, loss="mse", threads=2, deterministic=False)
        ws = ws or backend.prepare(net, plan)
        result = backend.train_epoch(net, plan, ws)
        losses.append(result.loss_sum / len(X))
        assert 0 <= result.n_correct <= len(X)
    assert losses[-1] < losses[0]
    accuracy = np.mean(np.argmax(backend.forward(net, X_test, 1 / 255, 2), axis=1) == y_test)
    assert accuracy > 0.8, accuracy


# ---- layer paths the shared tests do not combine ----------------------------------------------
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
                                                    ("tanh", "linear", "mse"),
                                                    ("leaky_relu", "sigmoid", "cross_entropy")])
def test_each_layer_path_matches_reference(path, dtype, uint8, activation, output, loss):
    blas_min_work, sparse_input = PATHS[path]
    backend = NumbaBackend(blas_min_work=blas_min_work, sparse_input=sparse_input)
    ref_net, X, scale, targets, labels = make_problem([33, 21, 12, 6], 47, dtype, seed=8, uint8=uint8,
                                                      activation=activation, output=output)
    net = ref_net.copy()
    order = np.random.default_rng(3).permutation(47)
    lr = 0.3 if output != "linear" else 0.03
    ref = train("numpy", ref_net, plan_for(X, scale, targets, labels, order, 6, lr, loss))
    got = train(backend, net, plan_for(X, scale, targets, labels, order, 6, lr, loss))
    assert_close(net.params, ref_net.params, dtype, "params")
    assert_close(got.loss_sum, ref.loss_sum, dtype, "loss sum")
    ref_out = get_backend("numpy").forward(ref_net, X, scale, 1)
    assert_close(backend.forward(ref_net, X, scale, 2), ref_out, dtype, "forward")
    ref_loss, ref_grad = get_backend("numpy").loss_and_grad(ref_net, X, scale, targets, loss)
    got_loss, got_grad = backend.loss_and_grad(ref_net, X, scale, targets, loss)
    assert_close(got_loss, ref_loss, dtype, "loss")
    assert_close(got_grad, ref_grad, dtype, "gradient")
    assert_close(backend.evaluate(ref_net, X, scale, targets, labels, loss, 2)[0],
                 get_backend("numpy").evaluate(ref_net, X, scale, targets, labels, loss, 1)[0], dtype, "evaluate")


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
@pytest.mark.parametrize("settings", [EVERYTHING, dict(optimizer="adam", weight_decay=0.02, dropout=0.5, max_shift=1,
                                                      image_shape=(8, 7))],
                         ids=["sgd-everything", "adam-dropout-shift"])
def test_optimiser_and_augmentation_on_every_layer_path(dtype, path, uint8, kwargs, settings):
    """The optimiser and augmentation on the sparse input layer (the shifted minibatch CSR), the
    dense gather (uint8 and float input, shifted in place) and the BLAS path, two epochs with a
    ragged last batch; the state is updated in place and carried over."""
    backend = NumbaBackend(**kwargs)
    ref_net, X, scale, targets, labels = make_problem([56, 9, 7, 4], 70, dtype, seed=5, uint8=uint8,
                                                      activation="relu", output="softmax")
    net = ref_net.copy()
    plans = [configure(plan_for(X, scale, targets, labels, np.random.default_rng(2).permutation(70), 8,
                                0.02 if "optimizer" in settings else 0.2, "cross_entropy", 2), net,
                       seed=2 ** 63 + 11, first_position=40, state_fill=0.01 if "momentum" in settings else 0.0,
                       **settings) for _ in range(2)]
    ws = backend.prepare(net, plans[1])
    for epoch in range(2):
        plans[0].seed = plans[1].seed = 2 ** 63 + 11 + epoch
        ref = train("numpy", ref_net, plans[0])
        got = backend.train_epoch(net, plans[1], ws)
        advance(plans[0])
        advance(plans[1])
    assert_close(net.params, ref_net.params, dtype, path)
    for s, s0 in zip(plans[1].rule.state, plans[0].rule.state):
        assert_close(s, s0, dtype, path + " state")
    assert_close(got.loss_sum, ref.loss_sum, dtype, path + " loss")
    assert got.n_correct == ref.n_correct or dtype == np.float32


def test_absent_features_are_none_so_their_code_is_pruned():
    """Plain SGD passes no optimiser and no augmentation (None): Numba compiles the same
    minibatch_step without their branches. Any other rule gets the Optim tuple."""
    net = fastgd.Network([10, 6, 3], dtype=np.float32)
    grad = np.zeros_like(net.params)
    assert NumbaBackend._optim(net, StepRule(SGD), grad) is None
    assert NumbaBackend._optim(net, StepRule(SGD, nesterov=True), grad) is None  # nesterov without momentum: plain
    opt = NumbaBackend._optim(net, StepRule(SGD, momentum=0.9, state=(np.zeros_like(net.params),)), grad)
    assert isinstance(opt, K.Optim) and opt.state1.shape == net.params.shape and opt.state2.size == 0
    opt = NumbaBackend._optim(net, StepRule(ADAM, step=7, state=(grad.copy(), grad.copy())), grad)
    assert opt.kind == ADAM and opt.step == 7
    plan = plan_for(np.zeros((4, 10), np.float32), 1.0, np.zeros((4, 3), np.float32), np.zeros(4, np.int32),
                    np.arange(4), 2, 0.1, "mse")
    assert NumbaBackend._augment(net, plan, None) is None


# ---- issue 12: a minibatch with fewer rows than threads ---------------------------------------
def test_split_gemm_with_fewer_rows_than_chunks_uses_no_stale_scratch():
    """split_dot_tn + split_apply on a one-row minibatch with 2 threads: the partial-gradient
    scratch holds garbage from before, and the update must equal the one-row outer product."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 30))
    d = rng.standard_normal((128, 20))
    for B in (1, 2, 3):
        parts = np.full(2 * 30 * 20, 7.0)  # stale values from an earlier, larger minibatch
        W = np.zeros((30, 20))
        chunks = K.n_parts(B, 2)
        K.split_dot_tn(x[:B], d[:B], parts, chunks)
        K.split_apply(W, 1.0, parts, chunks)
        np.testing.assert_allclose(W, -(x[:B].T @ d[:B]), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n", [129, 130])
def test_trainer_with_a_one_row_last_minibatch_matches_numpy(n):
    """The issue's case: Network([784, 512, 512, 10], float64), batch 128, threads 2, 129 rows
    (a last minibatch of one row, fewer rows than threads) trained the first layer wrong by
    0.125; 130 rows was right."""
    rng = np.random.default_rng(0)
    X = rng.random((n, 784))
    y = rng.integers(0, 10, size=n)
    nets = {}
    for backend in ("numpy", "numba"):
        net = fastgd.Network([784, 512, 512, 10], dtype=np.float64, seed=1)
        fastgd.Trainer(net, backend=backend, batch_size=128, threads=2, epochs=1, seed=0, lr=0.5).fit(X, y)
        nets[backend] = net
    for l in range(3):
        np.testing.assert_allclose(nets["numba"].weights[l], nets["numpy"].weights[l], rtol=1e-9, atol=1e-12,
                                   err_msg=f"layer {l}")


# ---- Ctrl-C ---------------------------------------------------------------------------------
def test_an_interrupt_during_a_kernel_surfaces_as_keyboard_interrupt():
    """A SIGINT landing while the sparse index is built (issue 12: 8 of 150 interrupts surfaced as
    "SystemError: CPUDispatcher(<function build_csr ...>) returned a result with an exception
    set", because the compiled function boxed its arrays through Python) is a KeyboardInterrupt,
    what the Trainer and the CLI handle. `_call` also unwraps such a SystemError."""
    X = np.random.default_rng(0).integers(0, 3, size=(3000, 784), dtype=np.uint8)
    b = NumbaBackend(sparse_input="always")
    b._csr(X[:10], False)  # compiled before timing anything
    caught = 0
    for delay in np.linspace(0.0005, 0.01, 12):
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        try:  # any other exception (the SystemError of issue 12) fails the test
            timer.start()
            for _ in range(200):
                b._csr(X, False)
            timer.join()
            time.sleep(0.05)  # the signal arrives by here if every call finished first
        except KeyboardInterrupt:
            caught += 1
        timer.join()
    assert caught == 12

    def raises_wrapped():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("CPUDispatcher(<function build_csr>) returned a result with an exception set") from exc

    with pytest.raises(KeyboardInterrupt):
        numba_backend._call(raises_wrapped)
    with pytest.raises(SystemError):  # other SystemErrors pass through unchanged
        numba_backend._call(lambda: (_ for _ in ()).throw(SystemError("other")))


def test_deterministic_blas_split_is_repeatable_and_matches_one_thread():
    """Deterministic mode with BLAS-sized layers splits each gemm into fixed row chunks, one per
    thread: the same weights every run, the same as one thread up to rounding, reported as
    "sync" on 2 threads."""
    backend = NumbaBackend(blas_min_work=0)
    results = []
    for threads in (1, 2, 2):
        net, X, scale, targets, labels = make_problem([60, 48, 32, 5], 90, np.float64, seed=4, uint8=True,
                                                      activation="relu", output="softmax")
        order = np.random.default_rng(1).permutation(90)
        result = train(backend, net, plan_for(X, scale, targets, labels, order, 16, 0.2, "cross_entropy", threads))
        # a bounds-checked build runs the team on one worker (numba_backend.team_works)
        two = ("serial", 1) if K.BOUNDS else ("sync", 2)
        assert (result.mode, result.threads_used) == (("serial", 1) if threads == 1 else two)
        results.append(net.params.copy())
    np.testing.assert_array_equal(results[1], results[2])
    assert_close(results[1], results[0], np.float64, "2 threads vs 1")


def test_bounds_checked_run_catches_out_of_range_access():
    """Under NUMBA_BOUNDSCHECK=1 the SIMD intrinsics check their ranges like Numba's indexing:
    a vector load past the end raises IndexError instead of reading out of bounds."""
    code = ("import numpy as np\n"
            "from numba import njit\n"
            "from fastgd.backends.numba_simd import vload, vstore\n"
            "@njit\n"
            "def f(a, off):\n"
            "    vstore(a, 0, 4, vload(a, off, 16))\n"
            "a = np.zeros(20)\n"
            "f(a, 4)\n"
            "try:\n"
            "    f(a, 5)\n"
            "except IndexError:\n"
            "    print('IndexError')\n")
    stdout = run_bounds_checked(code)
    assert stdout.strip() == "IndexError"
