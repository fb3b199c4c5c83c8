import numpy as np
import pytest

import fastgd
from fastgd import Network, Trainer


def small_problem(n=200, n_in=12, n_out=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, n_in))
    y = (X[:, :n_out].argmax(axis=1)).astype(np.int64)  # learnable: the label is the largest of the first features
    return X, y


# ---- bad input: every case named in the core issue -----------------------------------------
@pytest.mark.parametrize("X,y,exc,match", [
    (np.zeros((10, 12)), np.zeros(9, dtype=int), ValueError, "10 samples but y has 9"),
    (np.zeros((10, 11)), np.zeros(10, dtype=int), ValueError, "11 features per sample but the network's input width is 12"),
    (np.zeros(12), np.zeros(1, dtype=int), ValueError, "2-D"),
    (np.zeros((2, 3, 12)), np.zeros(2, dtype=int), ValueError, "2-D"),
    (np.full((3, 12), np.nan), np.zeros(3, dtype=int), ValueError, "NaN or inf"),
    (np.full((3, 12), np.inf), np.zeros(3, dtype=int), ValueError, "NaN or inf"),
    (np.zeros((3, 12)), np.array([0, 4, 1]), ValueError, "label 4 is out of range"),
    (np.zeros((3, 12)), np.array([0, -1, 1]), ValueError, "label -1 is out of range"),
    (np.zeros((3, 12)), np.array([0.0, 1.5, 1.0]), ValueError, "non-integer"),
    (np.zeros((3, 12)), np.array(["a", "b", "c"]), TypeError, "y must hold"),
    (np.zeros((0, 12)), np.zeros(0, dtype=int), ValueError, "empty"),
    (np.array([["x"] * 12]), np.zeros(1, dtype=int), TypeError, "real numbers"),
    (np.zeros((3, 12)) + 1j, np.zeros(3, dtype=int), TypeError, "complex"),
    (np.zeros((3, 12)), np.full((3, 4), np.nan), ValueError, "NaN or inf"),
    (np.zeros((3, 12)), np.zeros((3, 5)), ValueError, r"shape \(3, 4\)"),
])
def test_fit_rejects_bad_data(X, y, exc, match):
    trainer = Trainer(Network([12, 5, 4], seed=0), epochs=1, backend="numpy")
    before = trainer.net.params.copy()
    with pytest.raises(exc, match=match):
        trainer.fit(X, y)
    np.testing.assert_array_equal(trainer.net.params, before)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=2.5), TypeError, "batch_size must be an integer"),
    (dict(lr=0), ValueError, "lr must be a finite number > 0"),
    (dict(lr=-0.1), ValueError, "lr must be a finite number > 0"),
    (dict(lr=float("nan")), ValueError, "lr must be a finite number > 0"),
    (dict(lr="fast"), TypeError, "lr must be a real number"),
    (dict(loss="hinge"), ValueError, "unknown loss 'hinge'"),
    (dict(backend="gpu"), ValueError, "unknown backend 'gpu'"),
    (dict(threads=0), ValueError, "threads must be >= 1"),
    (dict(epochs=-1), ValueError, "epochs must be >= 0"),
])
def test_trainer_rejects_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Trainer(Network([12, 5, 4], seed=0), **kwargs)


def test_cross_entropy_needs_probabilities():
    with pytest.raises(ValueError, match="cross_entropy.*softmax"):
        Trainer(Network([4, 3], output="linear"), loss="cross_entropy")
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        Trainer(Network([4, 3], output="softmax"), loss="cross_entropy", backend="numpy").fit(
            np.zeros((2, 4)), np.full((2, 3), 2.0))


def test_trainer_needs_a_network():
    with pytest.raises(TypeError, match="fastgd.Network"):
        Trainer("784-16-10")


# ---- behaviour ------------------------------------------------------------------------------
def test_same_seed_same_result():
    X, y = small_problem()
    runs = []
    for _ in range(2):
        net = Network([12, 8, 4], seed=3)
        Trainer(net, lr=1.0, batch_size=7, epochs=3, backend="numpy", seed=11).fit(X, y)
        runs.append(net.params.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    net = Network([12, 8, 4], seed=3)
    Trainer(net, lr=1.0, batch_size=7, epochs=3, backend="numpy", seed=12).fit(X, y)
    assert not np.array_equal(net.params, runs[0])


def test_last_partial_batch_is_used():
    """With 5 samples and batch 4, the 5th sample must move the weights (a second step)."""
    X, y = small_problem(n=5)
    net_a, net_b = Network([12, 3, 4], seed=0), Network([12, 3, 4], seed=0)
    Trainer(net_a, batch_size=4, epochs=1, backend="numpy", shuffle=False).fit(X, y)
    Trainer(net_b, batch_size=4, epochs=1, backend="numpy", shuffle=False).fit(X[:4], y[:4])
    assert not np.allclose(net_a.params, net_b.params)


def test_uint8_images_are_scaled_by_1_over_255():
    rng = np.random.default_rng(0)
    X8 = rng.integers(0, 256, size=(40, 12), dtype=np.uint8)
    y = rng.integers(0, 4, size=40)
    net_a, net_b = Network([12, 6, 4], seed=0), Network([12, 6, 4], seed=0)
    Trainer(net_a, epochs=2, backend="numpy", seed=1).fit(X8, y)
    Trainer(net_b, epochs=2, backend="numpy", seed=1).fit(X8.astype(np.float32) / np.float32(255), y)
    np.testing.assert_allclose(net_a.params, net_b.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net_a.predict_proba(X8), net_b.predict_proba(X8.astype(np.float64) / 255), rtol=1e-5)


def test_real_valued_targets():
    X, y = small_problem()
    targets = np.eye(4)[y] * 0.8 + 0.05
    net = Network([12, 10, 4], seed=0)
    history = Trainer(net, lr=2.0, epochs=20, backend="numpy", seed=0).fit(X, targets)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert (net.predict(X) == y).mean() > 0.8


def test_history_callbacks_and_evaluate():
    X, y = small_problem()
    seen = []

    def stop_after_two(record, trainer):
        seen.append(record["epoch"])
        return record["epoch"] == 2

    trainer = Trainer(Network([12, 8, 4], seed=0), lr=1.0, epochs=5, backend="numpy", seed=0)
    history = trainer.fit(X, y, validation_data=(X[:50], y[:50]), callbacks=[stop_after_two])
    assert seen == [1, 2] and len(history) == 2
    record = history[0]
    assert set(record) == set(fastgd.History.KEYS) - {"val_r2", "val_mae"}  # classification: no regression metrics
    assert record["partial"] is False and record["mode"] == "numpy" and record["threads_used"] >= 1
    assert 0 <= record["train_accuracy"] <= 1 and 0 <= record["val_accuracy"] <= 1
    assert record["seconds"] > 0 and record["samples_per_second"] > 0
    assert history["epoch"] == [1, 2]
    assert trainer.net.history == history.to_list()
    result = trainer.evaluate(X[:50], y[:50])
    assert result["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    assert result["loss"] == pytest.approx(history["val_loss"][-1])
    with pytest.raises(TypeError, match="validation_data"):
        trainer.fit(X, y, validation_data=X)
    with pytest.raises(TypeError, match="callbacks"):
        trainer.fit(X, y, callbacks=[42])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_is_reported():
    X, y = small_problem()
    net = Network([12, 8, 4], activation="relu", output="linear", seed=0)
    with pytest.raises(FloatingPointError, match="diverged"):
        Trainer(net, lr=1e6, epochs=5, backend="numpy").fit(X * 1e3, y)


@pytest.mark.slow
def test_one_epoch_of_the_lesson_network_learns(mnist):
    """The lesson's 784-16-16-10 sigmoid/MSE network, lr 3.0, batch 10: > 85% after one epoch."""
    X_train, y_train, X_test, y_test = mnist
    net = Network([784, 16, 16, 10], seed=0)
    trainer = Trainer(net, loss="mse", lr=3.0, batch_size=10, epochs=1, seed=0)
    history = trainer.fit(X_train, y_train)
    accuracy = trainer.evaluate(X_test, y_test)["accuracy"]
    assert accuracy > 0.85, accuracy
    assert history["train_accuracy"][0] > 0.75


# ---- input checks (issue 12, item 5) ----------------------------------------------------------
def test_integer_X_other_than_uint8_is_refused_with_the_fix():
    """int64 pixels 0..255 used to train unscaled; now any non-uint8 integer X is refused, naming the fix."""
    trainer = Trainer(Network([12, 5, 4], seed=0), epochs=1, backend="numpy")
    X = np.random.default_rng(0).integers(0, 256, (10, 12))
    for dtype in (np.int64, np.int32, np.uint16, np.int8):
        with pytest.raises(TypeError, match=r"integer dtype .*X.astype\(np.uint8\).*X.astype\(np.float32\)"):
            trainer.fit(X.astype(dtype), np.zeros(10, dtype=int))
    trainer.fit(X.astype(np.uint8), np.zeros(10, dtype=int))  # the fix it names works
    trainer.fit(np.ones((10, 12), dtype=bool), np.zeros(10, dtype=int))  # bool features stay 0/1


def test_float64_X_beyond_float32_range_is_a_clear_error():
    X = np.zeros((4, 12))
    X[2, 3] = 1e39
    with pytest.raises(ValueError, match="beyond the range of this float32 network"):
        Trainer(Network([12, 5, 4], seed=0), epochs=1, backend="numpy").fit(X, np.zeros(4, dtype=int))
    Trainer(Network([12, 5, 4], dtype=np.float64, seed=0), epochs=1, lr=1e-80, backend="numpy").fit(
        X, np.zeros(4, dtype=int))


# ---- tasks ------------------------------------------------------------------------------------
def test_regression_reports_r2_and_mae_not_accuracy():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3  # 1-D float targets for a one-output network
    net = Network([3, 8, 1], activation="tanh", output="linear", dtype=np.float64, seed=0)
    trainer = Trainer(net, lr=0.05, batch_size=10, epochs=30, backend="numpy", seed=0)
    history = trainer.fit(X[:200], y[:200], validation_data=(X[200:], y[200:]))
    assert trainer.task == "regression"
    assert "train_accuracy" not in history[0] and "val_accuracy" not in history[0]
    assert history["val_r2"][-1] > 0.95 and history["val_mae"][-1] < 0.3
    result = trainer.evaluate(X[200:], y[200:])
    assert set(result) == {"loss", "r2", "mae"}
    pred = net.predict_proba(X[200:])[:, 0]
    assert result["mae"] == pytest.approx(np.mean(np.abs(pred - y[200:])), rel=1e-9)
    assert result["r2"] == pytest.approx(1 - np.sum((y[200:] - pred) ** 2) / np.sum((y[200:] - y[200:].mean()) ** 2))
    assert result["loss"] == pytest.approx(np.mean(0.5 * (pred - y[200:]) ** 2), rel=1e-9)


def test_one_sigmoid_unit_with_labels_0_1_is_binary_classification():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    net = Network([4, 6, 1], activation="tanh", output="sigmoid", seed=0)
    trainer = Trainer(net, loss="cross_entropy", lr=0.5, epochs=10, backend="numpy", seed=0)
    history = trainer.fit(X, y, validation_data=(X, y))
    assert trainer.task == "binary" and history["train_accuracy"][-1] is None
    result = trainer.evaluate(X, y)
    expected = np.mean((net.predict_proba(X)[:, 0] > 0.5) == y)
    assert result["accuracy"] == pytest.approx(expected) and expected > 0.9
    with pytest.raises(ValueError, match="binary targets"):
        trainer.fit(X, y * 2)


# ---- divergence (issue 12, item 3) ------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_restores_finite_weights_and_optimizer_state():
    X, y = small_problem()
    net = Network([12, 8, 4], activation="relu", output="linear", seed=0)
    trainer = Trainer(net, lr=1e6, momentum=0.5, epochs=5, backend="numpy")
    with pytest.raises(FloatingPointError, match=r"diverged in epoch 1 .*Lower the learning rate"):
        trainer.fit(X * 1e3, y)
    start = Network([12, 8, 4], activation="relu", output="linear", seed=0)
    np.testing.assert_array_equal(net.params, start.params)  # epoch 1's start, finite
    assert np.all(trainer.optimizer.state[0] == 0) and trainer.optimizer.step_count == 0
    assert np.isfinite(net.predict_proba(X)).all()  # usable


# ---- checkpoints (issue 12, item 5) -----------------------------------------------------------
def test_checkpoint_name_without_npz_resumes_by_either_name(tmp_path):
    X, y = small_problem(n=60)
    trainer = Trainer(Network([12, 5, 4], seed=0), epochs=2, backend="numpy", seed=1, checkpoint=tmp_path / "run")
    trainer.fit(X, y)
    assert (tmp_path / "run.npz").exists() and not (tmp_path / "run").exists()
    for name in ("run", "run.npz"):
        again = Trainer(Network([12, 5, 4], seed=5), epochs=2, backend="numpy", seed=1)
        again.fit(X, y, resume=tmp_path / name)
        np.testing.assert_array_equal(again.net.params, trainer.net.params)


def test_missing_checkpoint_folder_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="checkpoint folder .* does not exist"):
        Trainer(Network([12, 5, 4]), backend="numpy", checkpoint=tmp_path / "nope" / "run")
    (tmp_path / "gone").mkdir()
    trainer = Trainer(Network([12, 5, 4], seed=0), backend="numpy", checkpoint=tmp_path / "gone" / "run")
    (tmp_path / "gone").rmdir()  # removed after the Trainer was made: fit() checks again before training
    before = trainer.net.params.copy()
    with pytest.raises(ValueError, match="does not exist"):
        trainer.fit(*small_problem(n=20))
    np.testing.assert_array_equal(trainer.net.params, before)


# ---- Ctrl-C (issue 12, item 2) ----------------------------------------------------------------
def test_ctrl_c_mid_epoch_leaves_a_consistent_state_that_resumes_exactly(tmp_path):
    """SIGINT during fit: params, optimiser state and history agree on the last completed step, the
    checkpoint is written, and resuming it gives bitwise the run that was never interrupted."""
    import os
    import signal
    import threading

    X, y = small_problem(n=2000)
    settings = dict(lr=0.2, momentum=0.9, batch_size=4, epochs=40, backend="numpy", seed=3)
    net = Network([12, 64, 4], seed=0)
    trainer = Trainer(net, checkpoint=tmp_path / "run", **settings)
    trainer.slice_steps = 7  # slices that do not line up with epochs
    started = threading.Event()

    def first_epoch(record, _):
        if not started.is_set():
            started.set()
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y, callbacks=[first_epoch])
    assert trainer.interrupted
    last = trainer.history[-1]
    assert last["partial"] is True and all(not r["partial"] for r in trainer.history.records[:-1])
    steps_per_epoch = 500
    partial_steps = trainer._run["state"]["partial"]["step"]
    assert trainer.optimizer.step_count == (len(trainer.history) - 1) * steps_per_epoch + partial_steps
    assert 0 < trainer.optimizer.step_count < settings["epochs"] * steps_per_epoch
    saved = Network.load(tmp_path / "run.npz")
    np.testing.assert_array_equal(saved.params, net.params)

    resumed = Network([12, 64, 4], seed=9)
    history = Trainer(resumed, **settings).fit(X, y, resume=tmp_path / "run")
    straight = Network([12, 64, 4], seed=0)
    Trainer(straight, **settings).fit(X, y)
    np.testing.assert_array_equal(resumed.params, straight.params)
    assert history["epoch"] == list(range(1, 41)) and not any(history["partial"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", __import__("conftest").BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_divergence_is_caught_on_every_backend(backend, dtype):
    """ReLU layers can turn NaN into 0 and keep the loss finite over garbage weights, and a last step can
    make the weights inf: the parameter check after every slice catches both; the epoch's start is restored."""
    X, y = small_problem(n=64)
    net = Network([12, 16, 16, 4], activation="relu", output="softmax", dtype=dtype, seed=0)
    start = net.params.copy()
    lr = 1e30 if dtype == np.float32 else 1e250
    trainer = Trainer(net, loss="cross_entropy", lr=lr, momentum=0.9, epochs=3, batch_size=8, backend=backend,
                      threads=1)
    with pytest.raises(FloatingPointError, match="diverged in epoch 1"):
        trainer.fit(X * 1e4, y)
    np.testing.assert_array_equal(net.params, start)
    assert len(trainer.history) == 0 and trainer.optimizer.step_count == 0


@pytest.mark.parametrize("backend", __import__("conftest").BACKENDS)
@pytest.mark.parametrize("deterministic", [True, False])
def test_history_records_what_the_backend_ran(backend, deterministic):
    X, y = small_problem(n=300)
    trainer = Trainer(Network([12, 8, 4], seed=0), lr=1.0, epochs=2, backend=backend, threads=2,
                      deterministic=deterministic)
    history = trainer.fit(X, y)
    for r in history:
        assert r["mode"] in {"serial", "sync", "cols", "split", "hogwild", "numpy"} and 1 <= r["threads_used"] <= 2
        assert deterministic is False or r["mode"] != "hogwild"


def test_ctrl_c_while_the_backend_prepares_waits_for_it_then_raises_keyboard_interrupt(monkeypatch):
    # A SIGINT inside Numba's compiler is swallowed by llvmlite and turns into an unrelated
    # RuntimeError; the Trainer defers it until prepare() has finished, then raises KeyboardInterrupt.
    import os
    import signal

    rng = np.random.default_rng(0)
    X, y = rng.random((40, 6)), rng.integers(0, 3, 40)
    net = Network([6, 5, 3], seed=0)
    trainer = Trainer(net, lr=0.1, batch_size=8, epochs=2, backend="numpy", seed=0)
    real_prepare = trainer.backend.prepare
    finished = []

    def prepare(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # delivered while "compiling"
        ws = real_prepare(*args, **kwargs)
        finished.append(True)
        return ws

    monkeypatch.setattr(trainer.backend, "prepare", prepare)
    before = net.params.copy()
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(X, y)
    assert finished == [True] and trainer.interrupted
    assert len(trainer.history) == 0 and np.array_equal(net.params, before)


# ---- time budget (a fake clock: no timed assertions) ------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class TimedBackend:
    """Wraps the reference backend: each train_epoch call advances the fake clock by
    steps * per_step (the first call of a fit by `warmup` more); prepare by `prepare_seconds`."""

    def __init__(self, clock, per_step, warmup=0.0, prepare_seconds=0.0):
        from fastgd.backends import get_backend

        self.inner = get_backend("numpy")
        self.name, self.features = self.inner.name, self.inner.features
        self.clock, self.per_step, self.warmup, self.prepare_seconds = clock, per_step, warmup, prepare_seconds
        self.calls = 0
        self.plans = []

    def prepare(self, net, plan):
        self.clock.now += self.prepare_seconds  # JIT compiling: not training time
        self.calls = 0
        return self.inner.prepare(net, plan)

    def train_epoch(self, net, plan, ws):
        self.plans.append(plan)
        per_step = self.per_step(self) if callable(self.per_step) else self.per_step
        self.clock.now += plan.n_steps * per_step + (self.warmup if self.calls == 0 else 0.0)
        self.calls += 1
        return self.inner.train_epoch(net, plan, ws)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def budgeted(budget, per_step, warmup=0.0, prepare_seconds=0.0, epochs=2, **kw):
    """A trainer on 100 samples, batch 10 (10 steps per epoch), 3 steps per backend call."""
    clock = FakeClock()
    trainer = Trainer(Network([12, 6, 4], seed=0), lr=0.5, batch_size=10, epochs=epochs, backend="numpy", seed=0,
                      time_budget=budget, lr_schedule="cosine", min_lr=0.01, **kw)
    trainer.clock = clock
    trainer.backend = TimedBackend(clock, per_step, warmup, prepare_seconds)
    trainer.slice_steps = 3
    return trainer


def test_time_budget_sets_the_epochs_from_the_steady_step_time_and_completes_the_schedule():
    from fastgd.schedules import Cosine

    # epoch 1: 0.1 s of steps plus 0.5 s of warm-up in its first call (left out of the estimate);
    # room after it: 0.97 * 1.0 - 0.6 = 0.37 s -> 3 more epochs of 0.1 s. Compiling (100 s) is not counted.
    trainer = budgeted(1.0, per_step=0.01, warmup=0.5, prepare_seconds=100.0, epochs=10)
    X, y = small_problem(n=100)
    history = trainer.fit(X, y)
    assert len(history) == 4 and trainer.epochs == 4
    assert history.budget_plans == [{"after_epoch": 1, "epoch_seconds": pytest.approx(0.1), "epochs": 4}]
    assert history.train_seconds == pytest.approx(0.9) and history.train_seconds <= 1.0
    # epochs 2-4 follow the schedule of a 4-epoch run, so it ends on its last rate
    expected = Cosine(min_lr=0.01).rates(0.5, 4, 4, 10)
    assert history["lr"][-1] == pytest.approx(expected[-1])
    last_epoch_lrs = np.concatenate([p.lrs for p in trainer.backend.plans[-4:]])
    np.testing.assert_allclose(last_epoch_lrs, expected)
    # epoch 1 ran with the first guess (epochs=10)
    np.testing.assert_allclose(trainer.backend.plans[0].lrs, Cosine(min_lr=0.01).rates(0.5, 1, 10, 10)[:3])


def test_time_budget_shortens_the_plan_when_epochs_slow_down_and_never_lengthens_it():
    # epoch 1 at 0.1 s plans 1 + (1.94 - 0.1) // 0.1 = 19 epochs; from epoch 2 on every step takes 3x
    # as long: after epoch 2 the plan becomes 2 + (1.94 - 0.4) // 0.3 = 7 epochs, and stays there.
    trainer = budgeted(2.0, per_step=lambda b: 0.01 if len(b.plans) <= 4 else 0.03)
    X, y = small_problem(n=100)
    history = trainer.fit(X, y)
    assert [p["epochs"] for p in history.budget_plans] == [19, 7]
    assert len(history) == 7 and history.train_seconds == pytest.approx(1.9)
    from fastgd.schedules import Cosine

    # the schedule completed: the last step has the last rate of a 7-epoch cosine
    assert history["lr"][-1] == pytest.approx(Cosine(min_lr=0.01).rates(0.5, 7, 7, 10)[-1])
    # faster epochs later never lengthen a plan (the schedule would climb back up)
    fast_later = budgeted(1.0, per_step=lambda b: 0.01 if len(b.plans) <= 4 else 0.001)
    history = fast_later.fit(X, y)
    assert [p["epochs"] for p in history.budget_plans] == [9] and len(history) == 9


def test_time_budget_smaller_than_one_epoch_runs_one_epoch():
    trainer = budgeted(0.05, per_step=0.01)
    X, y = small_problem(n=100)
    history = trainer.fit(X, y)
    assert len(history) == 1 and history.budget_plans[0]["epochs"] == 1


def test_time_budget_plans_again_on_each_fit():
    trainer = budgeted(1.0, per_step=0.01, epochs=3)
    X, y = small_problem(n=100)
    trainer.fit(X, y)
    assert trainer.epochs == 9
    trainer.backend.per_step = 0.02
    trainer.fit(X, y)  # starts again from the first guess, 3 epochs, then plans from the new time
    assert trainer.backend.plans[-1].lrs.size and trainer.epochs == 1 + int((0.97 - 0.2) // 0.2)
    assert trainer.plan_epochs(2, 0.5, 0.1) == 6 and trainer.plan_epochs(3, 5.0, 0.1) == 3


@pytest.mark.parametrize("budget,exc,match", [
    (0, ValueError, "time_budget must be a finite number of seconds > 0"),
    (-1.0, ValueError, "time_budget must be"),
    (float("nan"), ValueError, "time_budget must be"),
    (float("inf"), ValueError, "time_budget must be"),
    (True, TypeError, "time_budget must be a number"),
    ("1", TypeError, "time_budget must be a number"),
])
def test_time_budget_is_validated(budget, exc, match):
    with pytest.raises(exc, match=match):
        Trainer(Network([12, 4]), backend="numpy", time_budget=budget)


def test_time_budget_refuses_to_resume(tmp_path):
    X, y = small_problem(n=50)
    ckpt = tmp_path / "c.npz"
    Trainer(Network([12, 5, 4], seed=0), epochs=1, backend="numpy", checkpoint=ckpt).fit(X, y)
    with pytest.raises(ValueError, match="time_budget cannot resume"):
        Trainer(Network([12, 5, 4], seed=0), backend="numpy", time_budget=1.0).fit(X, y, resume=ckpt)


# ---- label smoothing ------------------------------------------------------------------------
def test_label_smoothing_trains_on_smoothed_targets_and_validates_on_the_labels():
    X, y = small_problem(n=60)
    clock = FakeClock()
    trainer = Trainer(Network([12, 6, 4], output="softmax", seed=0), loss="cross_entropy", lr=0.5, batch_size=10,
                      epochs=2, backend="numpy", seed=0, label_smoothing=0.2)
    trainer.backend = TimedBackend(clock, 0.0)
    history = trainer.fit(X, y, validation_data=(X, y))
    targets = trainer.backend.plans[0].targets
    expected = np.full((60, 4), 0.05)
    expected[np.arange(60), y] = 0.85
    np.testing.assert_allclose(targets, expected)
    assert targets.dtype == np.float32
    assert history["val_loss"][-1] == pytest.approx(trainer.evaluate(X, y)["loss"])
    proba = trainer.net.predict_proba(X, backend="numpy").astype(np.float64)
    hard = -np.log(proba[np.arange(60), y]).mean()  # the loss against the labels, not the smoothed targets
    assert history["val_loss"][-1] == pytest.approx(hard, rel=1e-4)


def test_label_smoothing_of_one_sigmoid_unit_uses_two_classes():
    X, y = small_problem(n=40, n_out=2)
    y = (y == 1).astype(np.int64)
    trainer = Trainer(Network([12, 5, 1], output="sigmoid", seed=0), loss="cross_entropy", lr=0.5, epochs=1,
                      backend="numpy", seed=0, label_smoothing=0.1)
    trainer.backend = TimedBackend(FakeClock(), 0.0)
    trainer.fit(X, y)
    np.testing.assert_allclose(trainer.backend.plans[0].targets[:, 0], np.where(y == 1, 0.95, 0.05), rtol=1e-6)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(label_smoothing=0.1), ValueError, "label_smoothing applies to loss='cross_entropy', not 'mse'"),
    (dict(label_smoothing=1.0, loss="cross_entropy"), ValueError, r"label_smoothing must lie in \[0, 1\)"),
    (dict(label_smoothing=-0.1, loss="cross_entropy"), ValueError, "label_smoothing must lie in"),
    (dict(label_smoothing="0.1", loss="cross_entropy"), TypeError, "label_smoothing must be a number"),
])
def test_label_smoothing_is_validated(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Trainer(Network([12, 4], output="softmax" if "loss" in kwargs else "sigmoid"), backend="numpy", **kwargs)


# ---- rotations and elastic distortions --------------------------------------------------------
def test_augment_rotate_and_elastic_reach_the_epoch_plan(monkeypatch):
    import dataclasses

    from fastgd.backends import get_backend

    numpy_backend = get_backend("numpy")
    monkeypatch.setattr(type(numpy_backend), "features", frozenset(numpy_backend.features) | {"rotate", "elastic"})
    X, y = small_problem(n=30, n_in=16)
    trainer = Trainer(Network([16, 5, 4], seed=0), lr=0.5, epochs=1, backend="numpy", seed=0, augment_rotate=12.5,
                      augment_elastic=2.0)
    timed = TimedBackend(FakeClock(), 0.0)

    def record_then_train_plain(net, plan, ws):  # the kernels' augmentation is another test's subject
        timed.plans.append(plan)
        return timed.inner.train_epoch(net, dataclasses.replace(plan, max_rotate=0.0, elastic_alpha=0.0), ws)

    timed.train_epoch = record_then_train_plain
    trainer.backend = timed
    trainer.fit(X, y)
    plan = timed.plans[0]
    assert plan.max_rotate == 12.5 and plan.elastic_alpha == 2.0 and plan.image_shape == (4, 4)
    assert {"rotate", "elastic"} <= plan.requested_features()


def test_a_backend_without_rotations_refuses_them_naming_the_keyword(monkeypatch):
    from fastgd.backends import get_backend

    numpy_backend = get_backend("numpy")
    monkeypatch.setattr(type(numpy_backend), "features", frozenset(numpy_backend.features) - {"rotate", "elastic"})
    with pytest.raises(ValueError, match=r"does not implement rotate yet \(augment_rotate\)"):
        Trainer(Network([16, 4]), backend="numpy", augment_rotate=5)
    with pytest.raises(ValueError, match=r"does not implement elastic yet \(augment_elastic\)"):
        Trainer(Network([16, 4]), backend="numpy", augment_elastic=1.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(augment_rotate=-1), "augment_rotate must be a finite number >= 0"),
    (dict(augment_rotate=181), "augment_rotate is the largest angle in degrees, at most 180"),
    (dict(augment_rotate=float("nan")), "augment_rotate must be"),
    (dict(augment_elastic=-0.5), "augment_elastic must be a finite number >= 0"),
    (dict(augment_elastic=float("inf")), "augment_elastic must be"),
])
def test_rotate_and_elastic_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trainer(Network([16, 4]), backend="numpy", **kwargs)


@pytest.mark.parametrize("key", ["augment_rotate", "augment_elastic"])
def test_rotate_and_elastic_need_an_image(key):
    with pytest.raises(ValueError, match=f"{key} needs image_shape"):
        Trainer(Network([12, 4]), backend="numpy", **{key: 3.0})
