"""The NumPy reference itself: gradients against central finite differences, float64."""
import numpy as np
import pytest

import fastgd
from fastgd.backends import get_backend
from fastgd._checks import ACTIVATIONS

OUTPUT_LOSS = [("sigmoid", "mse"), ("linear", "mse"), ("softmax", "mse"), ("softmax", "cross_entropy"),
               ("sigmoid", "cross_entropy")]


def numeric_grad(net, X, targets, loss, eps=1e-6):
    be = get_backend("numpy")
    grad = np.empty_like(net.params)
    for i in range(net.params.size):
        old = net.params[i]
        net.params[i] = old + eps
        up, _ = be.loss_and_grad(net, X, 1.0, targets, loss)
        net.params[i] = old - eps
        down, _ = be.loss_and_grad(net, X, 1.0, targets, loss)
        net.params[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output,loss", OUTPUT_LOSS)
@pytest.mark.parametrize("targets_kind", ["labels", "soft"])
def test_gradient_matches_finite_differences(activation, output, loss, targets_kind):
    rng = np.random.default_rng(42)
    net = fastgd.Network([6, 5, 4, 3], activation, output, dtype=np.float64, seed=1)
    net.params[...] += 0.3 * rng.standard_normal(net.n_params)  # away from symmetric starts
    X = rng.standard_normal((7, 6))
    if activation in ("relu", "leaky_relu"):
        X += 0.5  # keep pre-activations away from the kink at 0, where the derivative jumps
    if targets_kind == "labels":
        targets = np.eye(3)[rng.integers(0, 3, size=7)]
    else:
        targets = rng.random((7, 3))
        if output == "softmax" and loss == "cross_entropy":
            targets /= targets.sum(axis=1, keepdims=True)
    _, analytic = get_backend("numpy").loss_and_grad(net, X, 1.0, targets, loss)
    numeric = numeric_grad(net, X, targets, loss)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    assert np.abs(analytic).max() > 1e-3  # the check is not vacuous


def test_loss_values_by_hand():
    """A 1-layer network small enough to compute each loss by hand."""
    net = fastgd.Network([2, 2], activation="sigmoid", output="linear", dtype=np.float64)
    net.weights[0] = [[1.0, 0.0], [0.0, 2.0]]
    net.biases[0] = [0.5, -1.0]
    X = np.array([[1.0, 1.0]])
    t = np.array([[0.0, 1.0]])
    be = get_backend("numpy")
    z = np.array([1.5, 1.0])
    assert be.loss_and_grad(net, X, 1.0, t, "mse")[0] == pytest.approx(0.5 * (1.5 ** 2 + 0.0 ** 2))
    net.output = "softmax"
    expected_ce = -(z[1] - np.log(np.exp(z).sum()))
    assert be.loss_and_grad(net, X, 1.0, t, "cross_entropy")[0] == pytest.approx(expected_ce)
    net.output = "sigmoid"
    a = 1 / (1 + np.exp(-z))
    expected_bce = -(np.log(1 - a[0]) + np.log(a[1]))
    assert be.loss_and_grad(net, X, 1.0, t, "cross_entropy")[0] == pytest.approx(expected_bce)


def test_extreme_pre_activations_stay_finite():
    net = fastgd.Network([3, 4], activation="sigmoid", output="softmax", dtype=np.float32)
    net.weights[0] = np.full((3, 4), 200.0)
    net.weights[0][:, 0] = -200.0
    X = np.ones((2, 3), dtype=np.float32)
    t = np.eye(4, dtype=np.float32)[[0, 1]]
    for output, loss in [("softmax", "cross_entropy"), ("sigmoid", "cross_entropy"), ("sigmoid", "mse")]:
        net.output = output
        loss_value, grad = get_backend("numpy").loss_and_grad(net, X, 1.0, t, loss)
        assert np.isfinite(loss_value) and np.isfinite(grad).all(), (output, loss)
