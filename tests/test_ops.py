"""The ops table (fastgd/ops.py): names and codes, reference formulas against finite differences,
leaky_relu end to end, and validation loss computed with the training formula in every backend."""
import numpy as np
import pytest

from conftest import BACKENDS
from fastgd import Network, Trainer, _checks, ops
from fastgd.backends import EpochPlan, StepRule, get_backend


def test_codes_are_stable_and_unique():
    # the compiled kernels switch on these integers: never renumber
    assert {n: a.code for n, a in ops.ACTIVATIONS.items()} == {
        "sigmoid": 0, "relu": 1, "tanh": 2, "linear": 3, "softmax": 4, "leaky_relu": 5}
    assert ops.LOSS_CODES == {"mse": 0, "cross_entropy": 1}
    assert _checks.ACTIVATIONS == ("sigmoid", "relu", "tanh", "leaky_relu")
    assert _checks.OUTPUTS == ("sigmoid", "linear", "softmax")
    assert (ops.LEAKY_RELU, ops.LEAKY_SLOPE, ops.CROSS_ENTROPY) == (5, 0.01, 1)


@pytest.mark.parametrize("name", [n for n, a in ops.ACTIVATIONS.items() if a.derivative is not None])
def test_derivatives_match_finite_differences(name):
    z = np.linspace(-3, 3, 41)[None, :] + 1e-3  # avoid the kink at exactly 0
    act = ops.ACTIVATIONS[name]
    a = act.forward(z)
    numeric = (act.forward(z + 1e-6) - act.forward(z - 1e-6)) / 2e-6
    np.testing.assert_allclose(act.derivative(z, a), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("loss,output", [(l, o) for l, L in ops.LOSSES.items() for o in L.outputs])
def test_loss_delta_is_the_gradient_of_the_loss(loss, output):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 4))
    t = np.eye(4)[[0, 2, 3]] if output == "softmax" else rng.random((3, 4))
    f = lambda zz: ops.loss_forward(loss, zz, ops.activation_forward(output, zz), t, output).sum()  # noqa: E731
    numeric = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        e = np.zeros_like(z)
        e[i] = 1e-6
        numeric[i] = (f(z + e) - f(z - e)) / 2e-6
    delta = ops.loss_delta(loss, z, ops.activation_forward(output, z), t, output)
    np.testing.assert_allclose(delta, numeric, rtol=1e-6, atol=1e-8)


def test_leaky_relu_gradient_in_the_reference_backend():
    rng = np.random.default_rng(1)
    net = Network([5, 6, 3], activation="leaky_relu", output="softmax", dtype=np.float64, seed=1)
    X, targets = rng.standard_normal((7, 5)), np.eye(3)[rng.integers(0, 3, 7)]
    b = get_backend("numpy")
    _, grad = b.loss_and_grad(net, X, 1.0, targets, "cross_entropy")
    numeric = np.empty_like(grad)
    for i in range(net.n_params):
        up, down = net.copy(), net.copy()
        up.params[i] += 1e-6
        down.params[i] -= 1e-6
        numeric[i] = (b.loss_and_grad(up, X, 1.0, targets, "cross_entropy")[0]
                      - b.loss_and_grad(down, X, 1.0, targets, "cross_entropy")[0]) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaky_relu_trains_like_the_reference(backend):
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((60, 8)), rng.integers(0, 3, 60)
    nets = []
    for b in ("numpy", backend):
        net = Network([8, 7, 3], activation="leaky_relu", output="softmax", dtype=np.float64, seed=3)
        Trainer(net, loss="cross_entropy", lr=0.1, batch_size=5, epochs=2, backend=b, seed=0, threads=1).fit(X, y)
        nets.append(net)
    np.testing.assert_allclose(nets[1].params, nets[0].params, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("output,loss", [("sigmoid", "cross_entropy"), ("softmax", "cross_entropy"),
                                         ("sigmoid", "mse"), ("linear", "mse")])
def test_validation_loss_is_the_training_formula(backend, dtype, output, loss):
    """evaluate() == the loss a no-op training epoch measures on the same rows, and both equal the
    float64 reference formula from pre-activations, even with saturated sigmoid units (issue 10:
    the old clipped-output formula gave ~708 per unit instead of ~z)."""
    rng = np.random.default_rng(4)
    net = Network([6, 5, 3], activation="tanh", output=output, dtype=dtype, seed=4)
    net.weights[1][:, 0] = 0.0
    net.biases[1][0] = 40.0  # output unit 0's pre-activation is 40 on every row: a saturated sigmoid
    X = rng.standard_normal((9, 6)).astype(dtype)
    y = rng.integers(1, 3, 9)  # target of unit 0 is 0
    targets = np.eye(3, dtype=dtype)[y]
    labels = y.astype(np.int32)
    b = get_backend(backend)
    loss_sum, correct = b.evaluate(net, X, 1.0, targets, labels, loss, 1)
    plan = EpochPlan(X=X, x_scale=1.0, targets=targets, labels=labels, order=np.arange(9, dtype=np.int64),
                     lrs=np.zeros(3), batch_size=3, loss=loss, rule=StepRule(0))
    result = b.train_epoch(net, plan, b.prepare(net, plan))
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert result.loss_sum == pytest.approx(loss_sum, rel=rtol)
    assert result.n_correct == correct
    ref = net.copy()  # the formula in float64 from the pre-activations
    ref64 = Network(net.sizes, activation=net.activation, output=output, dtype=np.float64)
    ref64.params[...] = ref.params
    from fastgd.backends.numpy_backend import network_forward

    zs, acts = network_forward(ref64, X.astype(np.float64))
    expected = ops.loss_forward(loss, zs[-1], acts[-1], targets.astype(np.float64), output).sum()
    assert loss_sum == pytest.approx(expected, rel=1e-10 if dtype == np.float64 else 1e-4)
    if output == "sigmoid" and loss == "cross_entropy":
        assert 40 < loss_sum / 9 < 50  # ~z = 40 for the saturated unit, not ~88 (float32) or ~708 (float64)
