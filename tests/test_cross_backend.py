"""Compiled backends agree with each other (Cython vs Numba): deterministic mode, the same
visiting order, the same weights within the float tolerance, whatever the thread count.

Parametrised over pairs of conftest.COMPILED_BACKENDS, so it runs once both backends ship.
"""
import itertools

import numpy as np
import pytest

from fastgd.backends import get_backend

from conftest import COMPILED_BACKENDS
from test_backends import advance, assert_close, configure, make_problem, plan_for, train

PAIRS = list(itertools.combinations(COMPILED_BACKENDS, 2))
RECIPES = [("sigmoid", "sigmoid", "mse", 3.0), ("relu", "softmax", "cross_entropy", 0.5),
           ("tanh", "linear", "mse", 0.05), ("relu", "sigmoid", "cross_entropy", 0.5),
           ("leaky_relu", "softmax", "cross_entropy", 0.5)]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("activation,output,loss,lr", RECIPES)
def test_lesson_network_epochs_agree(pair, dtype, threads, activation, output, loss, lr):
    first_net, X, scale, targets, labels = make_problem([784, 16, 16, 10], 400, dtype, seed=12, uint8=True,
                                                        activation=activation, output=output)
    nets = {name: first_net.copy() for name in pair}
    results = {name: [] for name in pair}
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(400)
        for name in pair:
            plan = plan_for(X, scale, targets, labels, order, 10, lr, loss, threads)
            r = train(name, nets[name], plan)
            results[name].append((r.loss_sum, r.n_correct))
    a, b = pair
    what = f"{a} vs {b}, {activation}/{output}/{loss}"
    assert_close(nets[a].params, nets[b].params, dtype, what)
    for (loss_a, correct_a), (loss_b, correct_b) in zip(results[a], results[b]):
        assert_close(loss_a, loss_b, dtype, what + " loss sum")
        assert abs(correct_a - correct_b) <= (0 if dtype == np.float64 else 2), what + " correct count"
    assert_close(get_backend(a).forward(nets[a], X, scale, threads),
                 get_backend(b).forward(nets[a], X, scale, threads), dtype, what + " forward")


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_large_layers_agree(pair, dtype):
    """Layers wide enough for the BLAS paths, float (not uint8) input, a ragged last batch."""
    first_net, X, scale, targets, labels = make_problem([300, 256, 128, 10], 300, dtype, seed=13,
                                                        activation="relu", output="softmax")
    nets = {name: first_net.copy() for name in pair}
    order = np.random.default_rng(5).permutation(300)
    out = {name: train(name, nets[name], plan_for(X, scale, targets, labels, order, 64, 0.1, "cross_entropy", 2))
           for name in pair}
    a, b = pair
    assert_close(nets[a].params, nets[b].params, dtype, f"{a} vs {b}")
    assert_close(out[a].loss_sum, out[b].loss_sum, dtype, f"{a} vs {b} loss sum")


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("settings", [
    dict(momentum=0.9, nesterov=True, l2=2e-4),  # the `best` recipe's optimiser
    dict(momentum=0.8, l2=1e-3, l1=1e-4, dropout=0.2, max_shift=2, image_shape=(28, 28)),
    dict(optimizer="adam", weight_decay=1e-4),
    dict(optimizer="adamw", weight_decay=1e-2, l1=1e-5, dropout=0.1, max_shift=1, image_shape=(28, 28)),
], ids=["nesterov-l2", "everything", "adam", "adamw-augment"])
def test_lesson_network_recipe_epochs_agree(pair, dtype, threads, settings):
    """With an optimiser and augmentation on: the same weights, optimiser state and loss sums
    over two epochs, the state and step counter carried over between them."""
    first_net, X, scale, targets, labels = make_problem([784, 16, 16, 10], 400, dtype, seed=14, uint8=True,
                                                        activation="relu", output="softmax")
    nets = {name: first_net.copy() for name in pair}
    lr = 0.002 if "optimizer" in settings else 0.05
    plans = {name: configure(plan_for(X, scale, targets, labels, np.arange(400), 32, lr, "cross_entropy", threads),
                             first_net, **settings) for name in pair}
    results = {name: [] for name in pair}
    for epoch in range(2):
        order = np.random.default_rng(10 + epoch).permutation(400)
        for name in pair:
            plan = plans[name]
            plan.order, plan.seed, plan.first_position = order, 1000 + epoch, 0
            r = train(name, nets[name], plan)
            results[name].append((r.loss_sum, r.n_correct))
            advance(plan)
    a, b = pair
    what = f"{a} vs {b}, {sorted(settings)}"
    assert_close(nets[a].params, nets[b].params, dtype, what)
    for sa, sb in zip(plans[a].rule.state, plans[b].rule.state):
        assert_close(sa, sb, dtype, what + " optimiser state")
    for (loss_a, correct_a), (loss_b, correct_b) in zip(results[a], results[b]):
        assert_close(loss_a, loss_b, dtype, what + " loss sum")
        assert abs(correct_a - correct_b) <= (0 if dtype == np.float64 else 2), what + " correct count"


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_evaluate_agrees(pair, dtype):
    net, X, scale, targets, labels = make_problem([784, 16, 16, 10], 700, dtype, seed=15, uint8=True,
                                                  activation="leaky_relu", output="softmax")
    a, b = (get_backend(name).evaluate(net, X, scale, targets, labels, "cross_entropy", 2) for name in pair)
    assert_close(a[0], b[0], dtype, "loss sum")
    assert abs(a[1] - b[1]) <= (0 if dtype == np.float64 else 2)
