"""Training options (momentum, weight decay, dropout, schedules, shifts, early stopping,
checkpoints) in the reference backend and the Trainer."""
import numpy as np
import pytest

import fastgd
from fastgd import Network, Trainer, _random
from fastgd.backends import OPTIMIZER_CODES, EpochPlan, StepRule, get_backend
from fastgd.schedules import epoch_learning_rates

from test_trainer import small_problem


def one_step(net, X, targets, lr, optimizer="sgd", step=0, state=(), **rule):
    """One full-batch step of the reference backend; returns the plan (state arrays inside its rule)."""
    n = X.shape[0]
    plan = EpochPlan(X=X, x_scale=1.0, targets=targets, labels=targets.argmax(1).astype(np.int32),
                     order=np.arange(n, dtype=np.int64), lrs=np.array([lr]), batch_size=n, loss="mse",
                     rule=StepRule(OPTIMIZER_CODES[optimizer], step=step, state=state, **rule))
    backend = get_backend("numpy")
    backend.train_epoch(net, plan, backend.prepare(net, plan))
    return plan


def problem(seed=0):
    rng = np.random.default_rng(seed)
    net = Network([6, 5, 3], activation="tanh", output="sigmoid", dtype=np.float64, seed=seed)
    net.params[...] += 0.2 * rng.standard_normal(net.n_params)
    X = rng.standard_normal((8, 6))
    targets = np.eye(3)[rng.integers(0, 3, 8)]
    return net, X, targets


def weight_mask(net):
    mask = np.zeros(net.n_params, dtype=bool)
    for w_off, b_off, _, _ in net.layout:
        mask[w_off:b_off] = True
    return mask


@pytest.mark.parametrize("l2,l1", [(0.3, 0.0), (0.0, 0.2), (0.1, 0.05)])
def test_weight_decay_step_is_the_gradient_of_the_penalised_loss(l2, l1):
    """(params_before - params_after) / lr == finite-difference gradient of
    loss + l2/2 ||W||² + l1 |W| (weights only), so L1/L2 are gradient-checked end to end."""
    net, X, targets = problem()
    before = net.params.copy()
    w = weight_mask(net)

    def penalised(params):
        trial = net.copy()
        trial.params[...] = params
        loss, _ = get_backend("numpy").loss_and_grad(trial, X, 1.0, targets, "mse")
        return loss + 0.5 * l2 * np.sum(params[w] ** 2) + l1 * np.sum(np.abs(params[w]))

    numeric = np.empty_like(before)
    eps = 1e-6
    for i in range(before.size):
        up, down = before.copy(), before.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (penalised(up) - penalised(down)) / (2 * eps)
    one_step(net, X, targets, lr=0.5, weight_decay=l2, l1=l1)
    np.testing.assert_allclose((before - net.params) / 0.5, numeric, rtol=1e-6, atol=1e-8)
    assert np.all((before - net.params)[~w] != 0)  # biases still learn, without decay


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_follows_pytorch_sgd(nesterov):
    net, X, targets = problem(1)
    expected = net.copy()
    velocity = np.zeros_like(net.params)
    mu, lr = 0.9, 0.3
    v = np.zeros_like(net.params)
    for _ in range(3):
        _, g = get_backend("numpy").loss_and_grad(expected, X, 1.0, targets, "mse")
        v = mu * v + g
        expected.params[...] -= lr * (g + mu * v if nesterov else v)
        one_step(net, X, targets, lr=lr, momentum=mu, nesterov=nesterov, state=(velocity,))
    np.testing.assert_allclose(net.params, expected.params, rtol=1e-12)
    np.testing.assert_allclose(velocity, v, rtol=1e-12)


def test_random_stream_is_splitmix64():
    # SplitMix64's first output from state 0 is 0xE220A8397B1DCDAF (the published sequence).
    assert int(_random.mix64(0)) == 0xE220A8397B1DCDAF
    u = _random.uniform(7, np.arange(50_000)[:, None], np.arange(4))
    assert 0.49 < u.mean() < 0.51 and u.min() >= 0 and u.max() < 1
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.02


def test_dropout_mask_statistics_and_reproducibility():
    rate = 0.3
    keep = _random.dropout_keep(seed=11, positions=np.arange(20_000), first_unit=0, n_units=16, rate=rate)
    assert abs(keep.mean() - (1 - rate)) < 0.01
    assert abs(keep.mean(axis=0) - (1 - rate)).max() < 0.03  # every unit, not only on average
    again = _random.dropout_keep(seed=11, positions=np.arange(20_000), first_unit=0, n_units=16, rate=rate)
    np.testing.assert_array_equal(keep, again)
    other = _random.dropout_keep(seed=12, positions=np.arange(20_000), first_unit=0, n_units=16, rate=rate)
    assert (keep != other).mean() > 0.3
    layer2 = _random.dropout_keep(seed=11, positions=np.arange(20_000), first_unit=16, n_units=16, rate=rate)
    assert (keep != layer2).mean() > 0.3


def test_dropout_gradient_with_fixed_masks_matches_finite_differences():
    from fastgd.backends import numpy_backend as ref

    net, X, targets = problem(2)
    net = Network([6, 5, 4, 3], activation="sigmoid", output="softmax", dtype=np.float64, seed=2)
    plan = EpochPlan(X=X, x_scale=1.0, targets=targets, labels=None, order=None, lrs=None, batch_size=8,
                     loss="cross_entropy", dropout=0.4, seed=5)
    masks = ref.dropout_masks(net, plan, np.arange(8))
    assert any((m == 0).any() for m in masks) and all(set(np.unique(m)) <= {0.0, 1 / 0.6} for m in masks)

    def loss_at(params):
        trial = net.copy()
        trial.params[...] = params
        return ref.minibatch_forward_backward(trial, X, targets, "cross_entropy", np.zeros_like(params), masks)[0].mean()

    grad = np.zeros_like(net.params)
    ref.minibatch_forward_backward(net, X, targets, "cross_entropy", grad, masks)
    numeric = np.array([(loss_at(net.params + e) - loss_at(net.params - e)) / 2e-6
                        for e in np.eye(net.n_params) * 1e-6])
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_shifts_move_images_as_specified():
    img = np.zeros((1, 5 * 5))
    img[0, 2 * 5 + 2] = 1.0  # a dot in the middle
    for dx, dy in [(1, 0), (0, 1), (-2, 1), (2, -2), (0, 0)]:
        out = _random.shift_images(img, 5, 5, np.array([dx]), np.array([dy])).reshape(5, 5)
        assert out[2 + dy, 2 + dx] == 1.0 and out.sum() == 1.0
    edge = np.zeros((1, 9))
    edge[0, 2] = 1.0  # top-right corner of a 3x3 image: shifted right it falls off
    assert _random.shift_images(edge, 3, 3, np.array([1]), np.array([0])).sum() == 0
    dx, dy = _random.shifts(3, np.arange(30_000), 2)
    assert set(dx) == set(dy) == {-2, -1, 0, 1, 2}
    assert np.bincount(dx + 2).min() > 5500


def test_schedules():
    const = epoch_learning_rates("constant", 0.5, epoch=3, epochs=5, steps_per_epoch=4)
    np.testing.assert_allclose(const, 0.5)
    step = [epoch_learning_rates("step", 1.0, e, 10, 2, step_size=3, gamma=0.5)[0] for e in range(1, 8)]
    np.testing.assert_allclose(step, [1, 1, 1, 0.5, 0.5, 0.5, 0.25])
    cos = np.concatenate([epoch_learning_rates("cosine", 1.0, e, 4, 5, min_lr=0.1) for e in range(1, 5)])
    assert cos[0] == pytest.approx(1.0) and cos[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 19 / 20)))
    assert np.all(np.diff(cos) < 0)
    warm = epoch_learning_rates("constant", 1.0, 1, 3, 4, warmup_epochs=1.0)
    np.testing.assert_allclose(warm, [0.25, 0.5, 0.75, 1.0])


def test_trainer_uses_the_schedule_per_step():
    X, y = small_problem(n=40)
    trainer = Trainer(Network([12, 6, 4], seed=0), lr=1.0, batch_size=10, epochs=3, backend="numpy",
                      lr_schedule="step", lr_step_size=1, lr_gamma=0.5)
    history = trainer.fit(X, y)
    assert history["lr"] == [1.0, 0.5, 0.25]


def test_recipe_learns_better_than_plain_sgd_on_a_hard_problem():
    X, y = small_problem(n=400, seed=3)
    plain = Network([12, 16, 4], seed=0)
    Trainer(plain, lr=0.5, epochs=10, backend="numpy", seed=0).fit(X, y)
    tuned = Network([12, 16, 4], seed=0)
    Trainer(tuned, lr=0.5, epochs=10, backend="numpy", seed=0, momentum=0.9, nesterov=True).fit(X, y)
    assert (tuned.predict(X) == y).mean() > (plain.predict(X) == y).mean()


def test_validation_split_and_early_stopping_restore_the_best_weights():
    X, y = small_problem(n=300, seed=1)
    y = y.copy()
    y[::3] = (y[::3] + 1) % 4  # label noise so the network overfits and validation loss turns up
    seen = {}

    def remember(record, trainer):
        seen[record["epoch"]] = trainer.net.params.copy()

    trainer = Trainer(Network([12, 64, 4], seed=0), lr=3.0, epochs=200, backend="numpy", seed=0,
                      validation_split=0.25, early_stopping=3)
    history = trainer.fit(X, y, callbacks=[remember])
    val = history["val_loss"]
    assert history.stopped_early and len(history) < 200
    best = history.best_epoch
    assert val[best - 1] == min(val) and len(history) == best + 3
    np.testing.assert_array_equal(trainer.net.params, seen[best])
    with pytest.raises(ValueError, match="early_stopping needs"):
        Trainer(Network([12, 4]), early_stopping=2, backend="numpy").fit(X, y)
    with pytest.raises(ValueError, match="not both"):
        Trainer(Network([12, 4]), validation_split=0.2, backend="numpy").fit(X, y, validation_data=(X, y))


RECIPE = dict(lr=0.5, batch_size=16, momentum=0.9, nesterov=True, l2=1e-3, dropout=0.2,
              lr_schedule="cosine", warmup_epochs=1, augment_shift=1, image_shape=(3, 4))


def test_resume_equals_an_uninterrupted_run(tmp_path):
    X, y = small_problem(n=120)
    full = Network([12, 10, 4], seed=0)
    Trainer(full, epochs=5, backend="numpy", seed=4, **RECIPE).fit(X, y)

    def interrupt_after_two(record, trainer):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "run.npz"
    part = Network([12, 10, 4], seed=0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(part, epochs=5, backend="numpy", seed=4, checkpoint=ckpt, **RECIPE).fit(
            X, y, callbacks=[interrupt_after_two])
    resumed = Network([12, 10, 4], seed=99)  # different start: everything must come from the checkpoint
    history = Trainer(resumed, epochs=5, backend="numpy", seed=4, **RECIPE).fit(X, y, resume=ckpt)
    np.testing.assert_array_equal(resumed.params, full.params)
    assert history["epoch"] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="different settings"):
        Trainer(Network([12, 10, 4]), epochs=5, backend="numpy", **{**RECIPE, "lr": 0.1}).fit(X, y, resume=ckpt)
    saved_model = Network([12, 10, 4]).save(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        Trainer(Network([12, 10, 4]), epochs=5, backend="numpy", **RECIPE).fit(X, y, resume=saved_model)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous checkpoint intact and no temporary file."""
    X, y = small_problem(n=50)
    ckpt = tmp_path / "c.npz"
    trainer = Trainer(Network([12, 5, 4], seed=0), epochs=1, backend="numpy", checkpoint=ckpt)
    trainer.fit(X, y)
    good = ckpt.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(X, y)
    assert ckpt.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(momentum=1.0), "momentum must lie in"),
    (dict(momentum=-0.1), "momentum must lie in"),
    (dict(nesterov=True), "nesterov=True needs momentum"),
    (dict(l2=-1), "l2 must be"),
    (dict(l1=float("nan")), "l1 must be"),
    (dict(dropout=1.0), "dropout must lie in"),
    (dict(lr_schedule="exp"), "unknown lr_schedule"),
    (dict(augment_shift=2, image_shape=(5, 5)), "image_shape"),
    (dict(validation_split=1.5), "validation_split"),
    (dict(early_stopping=0), "early_stopping must be >= 1"),
    (dict(seed=-3), "seed must be"),
])
def test_bad_recipe_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trainer(Network([12, 5, 4]), backend="numpy", **kwargs)


def test_augment_shift_needs_a_square_image_or_a_shape():
    with pytest.raises(ValueError, match="not a square image"):
        Trainer(Network([12, 5, 4]), backend="numpy", augment_shift=1)
    Trainer(Network([16, 5, 4]), backend="numpy", augment_shift=1)


def test_auto_picks_a_backend_that_implements_the_settings(monkeypatch):
    """auto takes the fastest available backend, but passes over one lacking a feature the settings need."""
    from fastgd.backends import FASTEST_FIRST, available_backends

    fastest = next(b for b in FASTEST_FIRST if b in available_backends())
    assert Trainer(Network([16, 5, 4])).backend.name == fastest  # plain SGD: every backend has it
    for name in available_backends():
        if name != "numpy":  # pretend the compiled backends lack dropout
            monkeypatch.setattr(type(get_backend(name)), "features", frozenset({"momentum", "shift"}))
    trainer = Trainer(Network([16, 5, 4]), dropout=0.2, momentum=0.9, augment_shift=1)
    assert trainer.backend.name == "numpy"
    if fastest != "numpy":
        with pytest.raises(ValueError, match="does not implement dropout"):
            Trainer(Network([16, 5, 4]), dropout=0.2, backend=fastest)


# ---- named recipes and their command-line flags (issue 15) -----------------------------------------
from conftest import BACKENDS  # noqa: E402
from fastgd.recipes import RECIPES  # noqa: E402

NETWORK_KEYS = ("sizes", "activation", "output")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_loads_and_runs_a_short_fit_on_every_backend(name, backend, mnist):
    recipe = RECIPES[name]
    X_train, y_train, X_test, y_test = mnist
    net = Network(recipe["sizes"], activation=recipe["activation"], output=recipe["output"], seed=0)
    settings = {k: v for k, v in recipe.items() if k not in NETWORK_KEYS}
    settings["epochs"] = 1
    trainer = Trainer(net, backend=backend, seed=0, **settings)
    history = trainer.fit(X_train[:3000], y_train[:3000])
    assert len(history) == 1 and np.isfinite(net.params).all()
    accuracy = trainer.evaluate(X_test[:500], y_test[:500])["accuracy"]
    assert accuracy > 0.3, f"{name} on {backend}: {accuracy}"  # 3000 samples, one epoch: far above chance


def test_the_issue_15_presets_are_what_the_readme_says():
    assert RECIPES["fast97"]["sizes"] == [784, 16, 16, 10]
    assert RECIPES["mlp99"]["sizes"][0] == 784 and RECIPES["mlp99"]["sizes"][-1] == 10
    for name in ("fast97", "mlp99"):
        assert set(RECIPES[name]) >= {"sizes", "activation", "output", "loss", "lr", "batch_size", "epochs"}


def _cli_summary(capsys):
    import json

    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _image_data(tmp_path):
    from test_datasets import write_idx_folder

    write_idx_folder(tmp_path, n_train=80, n_test=20, rows=4, cols=4)
    return ["train", "--data", str(tmp_path), "--sizes", "16,8,10", "--activation", "relu", "--output", "softmax",
            "--loss", "cross_entropy", "--lr", "0.1", "--backend", "numpy", "--seed", "0", "--json"]


def test_cli_recipe_flags_reach_the_trainer(tmp_path, capsys, monkeypatch):
    from fastgd.cli import main

    base = _image_data(tmp_path)
    assert main(base + ["--epochs", "3", "--lr-schedule", "onecycle", "--pct-start", "0.4",
                        "--label-smoothing", "0.1"]) == 0
    summary = _cli_summary(capsys)
    assert summary["settings"]["lr_schedule"] == "onecycle" and summary["settings"]["pct_start"] == 0.4
    assert summary["settings"]["label_smoothing"] == 0.1
    assert summary["history"][-1]["lr"] == pytest.approx(0.1 / 2.5e5)  # the cycle completed
    # --time-budget: a generous budget for a tiny problem plans at least the guessed epochs
    assert main(base + ["--epochs", "2", "--time-budget", "30"]) == 0
    summary = _cli_summary(capsys)
    assert summary["settings"]["time_budget"] == 30.0 and summary["epochs"] >= 2
    assert summary["epochs"] == summary["settings"]["epochs"]  # the run ended where it planned to


def test_cli_rotate_and_elastic_reach_the_trainer(tmp_path, capsys, monkeypatch):
    import fastgd.trainer
    from fastgd.cli import main

    seen = {}

    class Recording(fastgd.trainer.Trainer):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            kwargs.pop("augment_rotate"), kwargs.pop("augment_elastic")  # the kernels are another test's subject
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(fastgd.trainer, "Trainer", Recording)
    assert main(_image_data(tmp_path) + ["--epochs", "1", "--augment-rotate", "10", "--augment-elastic", "1.5"]) == 0
    assert seen["augment_rotate"] == 10.0 and seen["augment_elastic"] == 1.5


@pytest.mark.parametrize("args,message", [
    (["--time-budget", "0"], "--time-budget must be a finite number of seconds > 0, got 0.0"),
    (["--time-budget", "nan"], "--time-budget must be a finite number of seconds > 0"),
    (["--label-smoothing", "1"], "--label-smoothing must lie in [0, 1), got 1.0"),
    (["--label-smoothing", "0.1", "--loss", "mse", "--output", "sigmoid"],
     "--label-smoothing: label_smoothing applies to loss='cross_entropy', not 'mse'"),
    (["--augment-rotate", "-5"], "--augment-rotate must be a finite number >= 0, got -5.0"),
    (["--augment-rotate", "200"], "--augment-rotate: augment_rotate is the largest angle in degrees, at most 180"),
    (["--augment-elastic", "-1"], "--augment-elastic must be a finite number >= 0, got -1.0"),
    (["--pct-start", "1.5", "--lr-schedule", "onecycle"], "--pct-start: pct_start must lie in [0, 1]"),
])
def test_cli_recipe_flags_report_bad_values_by_flag(tmp_path, args, message, capsys):
    from fastgd.cli import main

    assert main(_image_data(tmp_path) + ["--epochs", "1", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_names_the_flag_when_a_backend_lacks_rotations(tmp_path, capsys, monkeypatch):
    from fastgd.cli import main

    numpy_backend = get_backend("numpy")
    monkeypatch.setattr(type(numpy_backend), "features", frozenset(numpy_backend.features) - {"rotate", "elastic"})
    assert main(_image_data(tmp_path) + ["--epochs", "1", "--augment-rotate", "5"]) == 2
    err = capsys.readouterr().err
    assert "--augment-rotate: backend 'numpy' does not implement rotate yet" in err
    assert main(_image_data(tmp_path) + ["--epochs", "1", "--augment-elastic", "2"]) == 2
    assert "--augment-elastic: backend 'numpy' does not implement elastic yet" in capsys.readouterr().err


def test_cli_rotations_on_non_image_data_name_the_flag(tmp_path, capsys):
    from fastgd.cli import main
    from test_datasets import write_idx_folder

    write_idx_folder(tmp_path, n_train=40, n_test=10, rows=4, cols=3)
    assert main(["train", "--data", str(tmp_path), "--sizes", "12,5,10", "--epochs", "1", "--backend", "numpy",
                 "--augment-elastic", "1"]) == 2
    err = capsys.readouterr().err
    assert "--augment-elastic" in err and "not a square image" in err
