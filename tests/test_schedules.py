"""Learning-rate schedules: values on a grid of steps (one-cycle against PyTorch's OneCycleLR
values, written out here so the tests need no torch), and their use by the Trainer."""
import math

import numpy as np
import pytest

from fastgd import Network, Trainer
from fastgd.schedules import SCHEDULES, Cosine, OneCycle, make_schedule

from test_trainer import small_problem


def whole_run(schedule, lr, epochs, steps):
    return np.concatenate([schedule.rates(lr, e, epochs, steps) for e in range(1, epochs + 1)])


# torch.optim.lr_scheduler.OneCycleLR(max_lr=0.4, total_steps=T, pct_start, anneal_strategy, div_factor,
# final_div_factor, cycle_momentum=False): the learning rate of steps 0 .. T-1 (torch 2.13)
TORCH_ONECYCLE = [
    (dict(pct_start=0.25, anneal="cos", div_factor=25, final_div_factor=1e4), 12,
     [0.016, 0.208, 0.4, 0.387938572403, 0.353209075788, 0.3000004, 0.234730296615, 0.165271303385, 0.1000012,
      0.0467925242118, 0.0120630275969, 1.6e-06]),
    (dict(pct_start=0.3, anneal="linear", div_factor=10, final_div_factor=100), 10,
     [0.04, 0.22, 0.4, 0.342914285714, 0.285828571429, 0.228742857143, 0.171657142857, 0.114571428571,
      0.0574857142857, 0.0004]),
]


@pytest.mark.parametrize("settings,total,expected", TORCH_ONECYCLE)
@pytest.mark.parametrize("epochs", [1, 2])
def test_onecycle_equals_pytorch_onecyclelr(settings, total, expected, epochs):
    """The same cycle whether the run is one epoch of T steps or two epochs of T/2."""
    rates = whole_run(OneCycle(**settings), 0.4, epochs, total // epochs)
    np.testing.assert_allclose(rates, expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("pct_start", [0.0, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_shape_on_a_grid(pct_start, anneal):
    lr, epochs, steps = 2.0, 5, 8
    total = epochs * steps
    rates = whole_run(OneCycle(pct_start=pct_start, anneal=anneal), lr, epochs, steps)
    assert rates.shape == (total,) and rates.dtype == np.float64
    assert rates.max() == pytest.approx(lr)
    peak = max(int(round(pct_start * total)) - 1, 0)
    assert rates[peak] == pytest.approx(lr)
    assert np.all(np.diff(rates[:peak + 1]) >= 0) and np.all(np.diff(rates[peak:]) <= 0)
    if pct_start < 1.0:
        assert rates[-1] == pytest.approx(lr / 25 / 1e4)  # the cycle ends on its final rate
    if pct_start >= 2 / total:
        assert rates[0] == pytest.approx(lr / 25)
    u = pct_start * total - 1
    s = np.arange(total, dtype=np.float64)
    c = (lambda p: 0.5 * (1 - np.cos(np.pi * p))) if anneal == "cos" else (lambda p: p)
    if u > 0:
        up = s <= u
        np.testing.assert_allclose(rates[up], lr / 25 + (lr - lr / 25) * c(s[up] / u))
        down = ~up
        np.testing.assert_allclose(rates[down], lr + (lr / 2.5e5 - lr) * c((s[down] - u) / (total - 1 - u)))


def test_onecycle_with_warmup_multiplies_the_cycle():
    plain = whole_run(OneCycle(), 1.0, 4, 5)
    warm = whole_run(OneCycle(warmup_epochs=1), 1.0, 4, 5)
    np.testing.assert_allclose(warm[:5], plain[:5] * np.arange(1, 6) / 5)
    np.testing.assert_array_equal(warm[5:], plain[5:])


@pytest.mark.parametrize("kwargs,match", [
    (dict(pct_start=1.5), "pct_start must lie in"),
    (dict(pct_start=-0.1), "pct_start must lie in"),
    (dict(div_factor=0.5), "div_factor must be"),
    (dict(div_factor=math.inf), "div_factor must be"),
    (dict(final_div_factor=0.0), "final_div_factor must be"),
    (dict(anneal="exp"), "anneal must be one of cos, linear"),
])
def test_onecycle_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OneCycle(**kwargs)


def test_every_named_schedule_is_made_and_the_others_are_refused():
    for name in SCHEDULES:
        schedule = make_schedule(name)
        assert schedule.name == name and schedule.rates(0.1, 1, 3, 4).shape == (4,)
    assert isinstance(make_schedule("onecycle"), OneCycle) and "onecycle" in SCHEDULES
    with pytest.raises(ValueError, match="onecycle"):  # the message lists the choices
        make_schedule("triangle")
    assert "OneCycle(" in repr(OneCycle(pct_start=0.3))


def test_cosine_on_a_grid():
    rates = whole_run(Cosine(min_lr=0.1), 1.0, 3, 4)
    s = np.arange(12)
    np.testing.assert_allclose(rates, 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / 12)))


def test_trainer_runs_onecycle_with_its_pct_start():
    X, y = small_problem(n=40)
    trainer = Trainer(Network([12, 6, 4], seed=0), lr=0.8, batch_size=10, epochs=4, backend="numpy", seed=0,
                      lr_schedule="onecycle", pct_start=0.5)
    assert isinstance(trainer.schedule, OneCycle) and trainer.schedule.pct_start == 0.5
    history = trainer.fit(X, y)
    expected = whole_run(OneCycle(pct_start=0.5), 0.8, 4, 4)
    np.testing.assert_allclose(history["lr"], expected[3::4])  # the last step of each epoch
    assert history["lr"][-1] == pytest.approx(0.8 / 2.5e5)
    with pytest.raises(ValueError, match="pct_start must lie in"):
        Trainer(Network([12, 4]), backend="numpy", lr_schedule="onecycle", pct_start=1.2)
