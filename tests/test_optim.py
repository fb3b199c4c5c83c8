"""Optimisers: objects owning their state, the Trainer's keyword form, and Adam/AdamW in every
backend against PyTorch (tests/data/torch_adam.*, written by tests/make_torch_oracle.py)."""
import json

import numpy as np
import pytest

from conftest import BACKENDS, DATA, tol
from fastgd import Network, Trainer, optim
from fastgd.backends import OPTIMIZER_CODES, EpochPlan, StepRule, get_backend

from test_trainer import small_problem

ADAM_CASES = json.loads((DATA / "torch_adam.json").read_text())["cases"]
with np.load(DATA / "torch_adam.npz", allow_pickle=False) as _f:
    ADAM = {k: _f[k] for k in _f.files}


def _flat(net, k, suffix):
    """Case k's per-layer arrays (W{l}{suffix}, b{l}{suffix}) in fastgd's flat parameter layout."""
    out = np.empty(net.n_params, dtype=net.dtype)
    for l, (w_off, b_off, _, n_out) in enumerate(net.layout):
        out[w_off:b_off] = ADAM[f"case{k}_W{l}{suffix}"].ravel()
        out[b_off:b_off + n_out] = ADAM[f"case{k}_b{l}{suffix}"]
    return out


def _moments(net, k, which):
    out = np.empty(net.n_params, dtype=net.dtype)
    for l, (w_off, b_off, _, n_out) in enumerate(net.layout):
        out[w_off:b_off] = ADAM[f"case{k}_{which}_W{l}"].ravel()
        out[b_off:b_off + n_out] = ADAM[f"case{k}_{which}_b{l}"]
    return out


def test_the_oracle_covers_what_the_issue_asks():
    kinds = {(c["optimizer"], c["weight_decay"] > 0, c["dtype"]) for c in ADAM_CASES}
    assert {(o, wd, d) for o in ("adam", "adamw") for wd in (False, True) for d in ("float32", "float64")} <= kinds
    assert any(c["output"] == "sigmoid" and c["loss"] == "cross_entropy" for c in ADAM_CASES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", range(len(ADAM_CASES)))
def test_adam_and_adamw_match_pytorch(backend, k):
    """A few minibatch steps inside one train_epoch call land on PyTorch's weights and moments."""
    case = ADAM_CASES[k]
    net = Network(case["sizes"], activation=case["activation"], output=case["output"], dtype=case["dtype"])
    net.params[...] = _flat(net, k, "")
    X, y = ADAM[f"case{k}_X"], ADAM[f"case{k}_y"]
    n = X.shape[0]
    targets = np.eye(case["sizes"][-1], dtype=net.dtype)[y]
    m, v = np.zeros_like(net.params), np.zeros_like(net.params)
    rule = StepRule(OPTIMIZER_CODES[case["optimizer"]], weight_decay=case["weight_decay"], beta1=case["betas"][0],
                    beta2=case["betas"][1], eps=case["eps"], state=(m, v))
    plan = EpochPlan(X=X, x_scale=1.0, targets=targets, labels=y.astype(np.int32), order=np.arange(n, dtype=np.int64),
                     lrs=np.full(case["steps"], case["lr"]), batch_size=case["batch_size"], loss=case["loss"],
                     threads=1, rule=rule)
    b = get_backend(backend)
    result = b.train_epoch(net, plan, b.prepare(net, plan))
    rtol, atol = tol(net.dtype)
    np.testing.assert_allclose(net.params, _flat(net, k, "_after"), rtol=rtol, atol=atol)
    np.testing.assert_allclose(m, _moments(net, k, "m"), rtol=rtol, atol=atol)
    np.testing.assert_allclose(v, _moments(net, k, "v"), rtol=rtol, atol=atol * 1e-2)
    # the summed per-sample losses are PyTorch's batch means times the batch sizes
    sizes = [min(case["batch_size"], n - s * case["batch_size"]) for s in range(case["steps"])]
    assert result.loss_sum == pytest.approx(float(np.dot(case["losses"], sizes)), rel=rtol * 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_steps_count_across_calls(backend):
    """Three steps in one call == one step per call with rule.step advanced (bias correction uses t)."""
    X, y = small_problem(n=12, n_in=5, n_out=3)
    targets = np.eye(3)[y]
    nets = [Network([5, 4, 3], dtype=np.float64, seed=1) for _ in range(2)]
    states = [(np.zeros(nets[0].n_params), np.zeros(nets[0].n_params)) for _ in range(2)]
    b = get_backend(backend)

    def plan(rows, step, state):
        return EpochPlan(X=X, x_scale=1.0, targets=targets, labels=y.astype(np.int32), order=rows,
                         lrs=np.full(-(-len(rows) // 4), 0.05), batch_size=4, loss="mse",
                         rule=StepRule(OPTIMIZER_CODES["adam"], step=step, state=state), first_position=0)

    whole = plan(np.arange(12, dtype=np.int64), 0, states[0])
    b.train_epoch(nets[0], whole, b.prepare(nets[0], whole))
    for s in range(3):
        part = plan(np.arange(4 * s, 4 * s + 4, dtype=np.int64), s, states[1])
        part.first_position = 4 * s
        b.train_epoch(nets[1], part, b.prepare(nets[1], part))
    np.testing.assert_array_equal(nets[0].params, nets[1].params)
    np.testing.assert_array_equal(states[0][1], states[1][1])


# ---- the objects ---------------------------------------------------------------------------
def test_optimizers_own_their_state():
    net = Network([4, 3, 2], seed=0)
    adam = optim.Adam(lr=0.01, betas=(0.8, 0.9)).reset(net.params)
    assert len(adam.state) == 2 and all(s.shape == net.params.shape and s.dtype == net.dtype for s in adam.state)
    adam.state[0][:] = 1.5
    adam.step_count = 7
    saved = adam.state_dict()
    other = optim.Adam(lr=0.01, betas=(0.8, 0.9)).reset(net.params)
    other.load_state_dict(saved)
    assert other.step_count == 7 and np.all(other.state[0] == 1.5)
    rule = other.step_rule()
    assert rule.kind == OPTIMIZER_CODES["adam"] and rule.step == 7 and rule.beta1 == 0.8 and rule.state[0] is other.state[0]
    with pytest.raises(ValueError, match="for 'adam', not 'sgd'"):
        optim.SGD(0.1).reset(net.params).load_state_dict(saved)
    assert optim.SGD(0.1).reset(net.params).state == ()
    assert len(optim.SGD(0.1, momentum=0.9).reset(net.params).state) == 1
    assert optim.AdamW().weight_decay == 0.01 and optim.Adam().lr == 1e-3


@pytest.mark.parametrize("make,match", [
    (lambda: optim.Adam(betas=(1.0, 0.9)), "beta1 must lie in"),
    (lambda: optim.Adam(eps=0), "eps must be a finite number > 0"),
    (lambda: optim.SGD(lr=-1), "lr must be a finite number > 0"),
    (lambda: optim.Adam(betas=0.9), "betas must be a pair"),
    (lambda: optim.SGD(0.1, nesterov=True), "nesterov=True needs momentum"),
    (lambda: optim.SGD(0.1, momentum=1.0), "momentum must lie in"),
    (lambda: optim.AdamW(weight_decay=-1), "weight_decay must lie in"),
    (lambda: Trainer(Network([4, 2]), l2=0.1, weight_decay=0.1), "not both"),
    (lambda: Trainer(Network([4, 2]), optimizer="adam", momentum=0.9), "momentum and nesterov apply to optimizer 'sgd'"),
    (lambda: Trainer(Network([4, 2]), optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
    (lambda: Trainer(Network([4, 2]), optimizer=optim.Adam(), lr=0.1), "set lr on it"),
])
def test_bad_optimizer_settings(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_trainer_keyword_form_and_defaults():
    net = Network([4, 2])
    assert Trainer(net).optimizer.lr == 3.0 and Trainer(net).optimizer.name == "sgd"
    t = Trainer(net, optimizer="adam")
    assert t.optimizer.lr == 1e-3 and t.optimizer.weight_decay == 0.0 and t.lr == 1e-3
    t = Trainer(net, optimizer="adamw", beta1=0.8, eps=1e-6)
    assert (t.optimizer.weight_decay, t.optimizer.beta1, t.optimizer.eps) == (0.01, 0.8, 1e-6)
    t = Trainer(net, lr=0.5, momentum=0.9, nesterov=True, l2=1e-3)
    assert (t.lr, t.momentum, t.nesterov, t.l2, t.weight_decay) == (0.5, 0.9, True, 1e-3, 1e-3)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_trainer_with_adam_learns_and_second_fit_starts_afresh(optimizer):
    X, y = small_problem()
    kwargs = dict(momentum=0.9) if optimizer == "sgd" else {}
    first = Network([12, 8, 4], seed=0)
    lr = 0.5 if optimizer == "sgd" else 0.01
    trainer = Trainer(first, optimizer=optimizer, lr=lr, epochs=3, backend="numpy", seed=0, **kwargs)
    h = trainer.fit(X, y)
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert trainer.optimizer.step_count == 3 * 20
    # a second fit() equals a fresh trainer's fit from the same weights and the same shuffles
    start, rng_state = first.params.copy(), trainer._rng.bit_generator.state
    trainer.fit(X, y)
    fresh = Network([12, 8, 4], seed=0)
    fresh.params[...] = start
    fresh_trainer = Trainer(fresh, optimizer=optimizer, lr=lr, epochs=3, backend="numpy", **kwargs)
    fresh_trainer._rng.bit_generator.state = rng_state
    fresh_trainer.fit(X, y)
    np.testing.assert_array_equal(fresh.params, first.params)
    assert trainer.optimizer.step_count == 3 * 20


def test_second_fit_resets_momentum():
    """The second fit's first step must not carry the first fit's velocity (issue 12)."""
    X, y = small_problem(n=20)
    trainer = Trainer(Network([12, 4], seed=0), lr=0.1, momentum=0.9, batch_size=20, epochs=1, backend="numpy",
                      shuffle=False)
    trainer.fit(X, y)
    start = trainer.net.params.copy()
    trainer.fit(X, y)
    expected = Network([12, 4], seed=0)
    expected.params[...] = start
    Trainer(expected, lr=0.1, momentum=0.9, batch_size=20, epochs=1, backend="numpy", shuffle=False).fit(X, y)
    np.testing.assert_array_equal(trainer.net.params, expected.params)
