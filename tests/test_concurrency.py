"""Backends hold no per-run state: two Trainers in two threads, data changed in place between
fits, and an epoch run in slices all give bitwise the same result as the plain sequential run."""
import threading

import numpy as np
import pytest

from conftest import BACKENDS
from fastgd import Network, Trainer


def images(seed, n=600, n_in=64):
    """uint8 'images' with many zero pixels, the input the compiled backends cache as sparse rows."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, n_in)).astype(np.uint8)
    X[rng.random(X.shape) < 0.6] = 0
    y = (X[:, :10].argmax(axis=1)).astype(np.int64)
    return X, y


def train(backend, X, y, seed, threads=1, **kwargs):
    net = Network([X.shape[1], 32, 10], activation="relu", output="softmax", seed=seed)
    kwargs = {"lr": 0.05, **kwargs}
    Trainer(net, loss="cross_entropy", batch_size=8, epochs=2, backend=backend, seed=seed, threads=threads,
            **kwargs).fit(X, y)
    return net.params.copy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", [{}, dict(momentum=0.9, dropout=0.1), dict(optimizer="adam", lr=0.01)])
def test_two_trainers_in_two_threads_match_sequential_runs(backend, kwargs):
    jobs = [images(1), images(2, n=500)]
    sequential = [train(backend, X, y, seed=i, **kwargs) for i, (X, y) in enumerate(jobs)]
    results, errors = [None, None], []

    def run(i):
        try:
            X, y = jobs[i]
            for _ in range(2):  # twice, so the two runs overlap whatever the start-up order
                results[i] = train(backend, X, y, seed=i, **kwargs)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, sequential):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_fit_sees_data_changed_in_place(backend):
    """X[:] = other between two fits trains on `other` (no cache outlives the data it was built from)."""
    X, y = images(3)
    other, _ = images(4)
    net = Network([64, 32, 10], activation="relu", output="softmax", seed=0)
    trainer = Trainer(net, loss="cross_entropy", lr=0.05, batch_size=8, epochs=1, backend=backend, seed=0, threads=1)
    trainer.fit(X, y)
    start, rng_state = net.params.copy(), trainer._rng.bit_generator.state
    X[:] = other
    trainer.fit(X, y)
    fresh = Network([64, 32, 10], activation="relu", output="softmax", seed=0)
    fresh.params[...] = start
    check = Trainer(fresh, loss="cross_entropy", lr=0.05, batch_size=8, epochs=1, backend=backend, threads=1)
    check._rng.bit_generator.state = rng_state
    check.fit(other.copy(), y)
    np.testing.assert_array_equal(net.params, fresh.params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kwargs", [{}, dict(momentum=0.9, nesterov=True, l2=1e-3, dropout=0.2, augment_shift=1),
                                    dict(optimizer="adamw", lr=0.01)])
def test_sliced_epochs_equal_one_call(backend, threads, kwargs):
    """The Trainer runs each epoch in slices (for Ctrl-C); any slicing gives bitwise the same weights."""
    X, y = images(5, n=203)  # 203 rows, batch 8: a short last minibatch
    runs = []
    for slice_steps in (10 ** 9, 3, 1):
        net = Network([64, 32, 10], activation="relu", output="softmax", seed=0)
        trainer = Trainer(net, loss="cross_entropy", batch_size=8, epochs=2, backend=backend, seed=0,
                          threads=threads, **{"lr": 0.05, **kwargs})
        trainer.slice_steps = slice_steps
        history = trainer.fit(X, y)
        runs.append((net.params.copy(), history["train_loss"]))
    for params, losses in runs[1:]:
        np.testing.assert_array_equal(params, runs[0][0])
        assert losses == pytest.approx(runs[0][1], rel=1e-12)
