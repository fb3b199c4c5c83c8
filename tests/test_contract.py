"""EpochPlan.validate: the one place a plan is checked before any kernel indexes with it."""
import dataclasses

import numpy as np
import pytest

from conftest import BACKENDS
from fastgd import Network
from fastgd.backends import OPTIMIZER_CODES, EpochPlan, StepRule, get_backend


def good_plan(net, n=10, bs=4):
    rng = np.random.default_rng(0)
    return EpochPlan(X=rng.random((n, net.sizes[0])).astype(net.dtype), x_scale=1.0,
                     targets=np.eye(net.sizes[-1], dtype=net.dtype)[rng.integers(0, net.sizes[-1], n)],
                     labels=np.zeros(n, dtype=np.int32), order=np.arange(n, dtype=np.int64),
                     lrs=np.full(-(-n // bs), 0.1), batch_size=bs, loss="mse")


def adam(net, **kw):
    return StepRule(OPTIMIZER_CODES["adam"], state=(np.zeros_like(net.params), np.zeros_like(net.params)), **kw)


NET = Network([5, 4, 3], seed=0)


@pytest.mark.parametrize("change,match", [
    (dict(X=np.zeros((10, 6), dtype=np.float32)), "6 columns"),
    (dict(X=np.zeros((10, 5))), "dtype float64"),
    (dict(X=np.zeros((5, 10), dtype=np.float32).T), "C-contiguous"),
    (dict(targets=np.zeros((10, 2), dtype=np.float32)), "targets has shape"),
    (dict(labels=np.zeros(10, dtype=np.int64)), "labels has dtype"),
    (dict(order=np.array([0, 10], dtype=np.int64), lrs=np.full(1, 0.1)), "row 10, outside"),
    (dict(order=np.array([-1, 0], dtype=np.int64), lrs=np.full(1, 0.1)), "row -1, outside"),
    (dict(order=np.zeros(0, dtype=np.int64), lrs=np.zeros(0)), "empty"),
    (dict(lrs=np.full(2, 0.1)), "2 rates for 3 steps"),
    (dict(loss="hinge"), "plan.loss"),
    (dict(batch_size=0), "batch_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(max_shift=1, image_shape=(2, 2)), "image_shape"),
    (dict(rule=StepRule(OPTIMIZER_CODES["sgd"], momentum=0.9)), "holds 0 arrays; this rule needs 1"),
    (dict(rule=StepRule(7)), "kind 7"),
    (dict(rule=StepRule(OPTIMIZER_CODES["adam"], state=(np.zeros(3), np.zeros(3)))), "dtype float64"),
    (dict(rule=StepRule(OPTIMIZER_CODES["adam"], state=(NET.params, np.zeros_like(NET.params)))), "shares memory"),
    (dict(rule=StepRule(OPTIMIZER_CODES["adam"], state=(np.zeros_like(NET.params),) * 2)), "shares memory"),
    (dict(rule=StepRule(OPTIMIZER_CODES["adam"], beta2=1.0,
                        state=(np.zeros_like(NET.params), np.zeros_like(NET.params)))), "beta2"),
])
def test_validate_names_the_problem(change, match):
    plan = dataclasses.replace(good_plan(NET), **change)
    with pytest.raises(ValueError, match=match):
        plan.validate(NET)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_validates_before_running(backend):
    net = Network([5, 4, 3], seed=0)
    before = net.params.copy()
    b = get_backend(backend)
    plan = good_plan(net)
    ws = b.prepare(net, plan)
    bad = dataclasses.replace(plan, order=np.array([0, 99], dtype=np.int64), lrs=np.full(1, 0.1))
    with pytest.raises(ValueError, match="outside"):
        b.train_epoch(net, bad, ws)
    np.testing.assert_array_equal(net.params, before)
    good = adam(net)
    assert dataclasses.replace(plan, rule=good).validate(net) is not None
