"""Pictures (`fastgd.viz`) and the `inspect` / `experiment` subcommands.

matplotlib comes with the `plot` extra, which CI installs: these tests fail (not skip) without it.
"""
import json
import sys

import matplotlib  # noqa: F401  (fail loudly when the plot extra is missing)
import matplotlib.image
import numpy as np
import pytest

from fastgd import Network, Trainer, cli
from fastgd import experiments as ex
from fastgd import viz

OUR_SUBCOMMANDS = [
    ("inspect", "fastgd.cli_inspect", "pictures of what a trained network learned"),
    ("experiment", "fastgd.cli_experiment", "experiments: noise, random-labels"),
]


def run_cli(argv, monkeypatch):
    """`fastgd ...` in-process, with inspect/experiment registered whether or not cli.py lists them yet."""
    listed = {name for name, _, _ in cli.SUBCOMMANDS}
    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + [s for s in OUR_SUBCOMMANDS if s[0] not in listed])
    return cli.main(argv)


def png_size(path):
    """(width, height) in pixels of a PNG, read back from the file."""
    img = matplotlib.image.imread(path)
    return img.shape[1], img.shape[0]


def fig_pixels(fig, dpi=viz.DEFAULT_DPI):
    w, h = fig.get_size_inches()
    return round(w * dpi), round(h * dpi)


@pytest.fixture(scope="module")
def small_model(mnist):
    """784-16-10 sigmoid/MSE, 3 epochs on 3,000 digits, with its training history."""
    X_train, y_train, X_test, y_test = mnist
    net = Network([784, 16, 10], seed=1)
    Trainer(net, loss="mse", lr=3.0, batch_size=10, epochs=3, threads=1, seed=1).fit(
        X_train[:3000], y_train[:3000], validation_data=(X_test[:1000], y_test[:1000]))
    return net


# ---- viz functions ------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden", [16, 30])
def test_weights_one_tile_per_hidden_unit_centred_at_zero(tmp_path, hidden):
    net = Network([784, hidden, 10], seed=0)
    net.weights[0][:, 0] += 0.5  # an asymmetric layer: the limits must still be symmetric
    path = tmp_path / "w.png"
    fig = viz.plot_weights(net, path=path)
    tiles, colorbar = fig.axes[:-1], fig.axes[-1]
    assert len(tiles) == hidden
    limit = np.abs(net.weights[0]).max()
    for unit, ax in enumerate(tiles):
        (image,) = ax.get_images()
        assert image.get_array().shape == (28, 28)
        np.testing.assert_allclose(image.get_array(), net.weights[0][:, unit].reshape(28, 28), rtol=1e-6)
        assert image.get_clim() == pytest.approx((-limit, limit))
        assert image.get_cmap().name == viz.DIVERGING_CMAP
        assert image.get_cmap()(0.5)[:3] == pytest.approx((0.97, 0.97, 0.97), abs=0.03)  # zero is white
    assert colorbar.get_ylim() == pytest.approx((-limit, limit))
    assert png_size(path) == fig_pixels(fig)
    # tiles sit on a grid of ceil(sqrt(n)) columns
    cols = int(np.ceil(np.sqrt(hidden)))
    xs = sorted({round(ax.get_position().x0, 4) for ax in tiles})
    assert len(xs) == cols


def test_weights_of_a_non_image_input_need_a_shape():
    net = Network([12, 5, 3], seed=0)
    with pytest.raises(ValueError, match="image_shape"):
        viz.plot_weights(net)
    fig = viz.plot_weights(net, image_shape=(4, 3))
    assert len(fig.axes) == 6 and fig.axes[0].get_images()[0].get_array().shape == (4, 3)
    with pytest.raises(ValueError, match="pixels"):
        viz.plot_weights(net, image_shape=(5, 3))
    with pytest.raises(ValueError, match="layer"):
        viz.plot_weights(net, layer=2, image_shape=(4, 3))
    # the second layer of a 784-16-10 network is drawn as 4x4 tiles
    fig = viz.plot_weights(Network([784, 16, 10], seed=0), layer=1)
    assert len(fig.axes) == 11 and fig.axes[0].get_images()[0].get_array().shape == (4, 4)


def test_weights_max_units_draws_the_first_units():
    net = Network([784, 40, 10], seed=0)
    fig = viz.plot_weights(net, max_units=9)
    assert len(fig.axes) == 10
    np.testing.assert_allclose(fig.axes[8].get_images()[0].get_array(), net.weights[0][:, 8].reshape(28, 28))
    assert "9 of 40" in fig._suptitle.get_text()


def test_confusion_errors_history_pictures(small_model, mnist, tmp_path):
    _, _, X_test, y_test = mnist
    ins = ex.inspect_model(small_model, X_test, y_test, k=12, threads=1)
    fig = viz.plot_confusion_matrix(ins.confusion, path=tmp_path / "cm.png")
    (ax,) = fig.axes
    assert ax.get_images()[0].get_array().shape == (10, 10)
    counts = sorted(int(t.get_text()) for t in ax.texts)
    assert counts == sorted(int(c) for c in ins.confusion.ravel() if c)  # every non-zero cell is labelled
    assert png_size(tmp_path / "cm.png") == fig_pixels(fig)

    fig = viz.plot_errors(X_test, ins.errors, path=tmp_path / "err.png")
    assert len(fig.axes) == 12
    for ax, t, p in zip(fig.axes, ins.errors["true"], ins.errors["predicted"]):
        assert ax.get_title().startswith(f"{t}→{p} (")
        assert ax.get_images()[0].get_array().shape == (28, 28)
    assert png_size(tmp_path / "err.png") == fig_pixels(fig)

    fig = viz.plot_history(small_model.history, path=tmp_path / "h.png")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert [len(line.get_xdata()) for line in ax.get_lines()] == [3, 3]  # train and validation
    with pytest.raises(ValueError):
        viz.plot_history([])
    with pytest.raises(ValueError):
        viz.plot_errors(X_test, {"index": [], "true": [], "predicted": [], "confidence": []})
    with pytest.raises(ValueError):
        viz.plot_confusion_matrix(np.zeros((2, 3)))


def test_noise_and_random_label_pictures(small_model, mnist, tmp_path):
    X_train, y_train, X_test, y_test = mnist
    result = ex.noise_experiment(small_model, X_test[:300], y_test[:300], n=100, seed=0, threads=1)
    fig = viz.plot_noise(result, path=tmp_path / "noise.png")
    ax_conf, ax_cls = fig.axes
    assert len(ax_conf.patches) == 3  # one step histogram per image set
    assert len(ax_cls.patches) == 3 * 10  # one bar per class per set
    heights = [p.get_height() for p in ax_cls.patches[:10]]  # uniform noise, % per class
    np.testing.assert_allclose(heights, 100 * np.array(result.stats["uniform"]["predicted_class_histogram"]) / 100)
    assert png_size(tmp_path / "noise.png") == fig_pixels(fig)

    runs = [ex.random_labels_experiment(X_train, y_train, X_test, y_test, fraction=f, n_train=200, hidden=(32,),
                                        epochs=3, threads=1, n_test=300) for f in (1.0, 0.5)]
    fig = viz.plot_random_labels(runs, path=tmp_path / "rl.png")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 * 2 + 1  # train and test per run, and the chance line
    np.testing.assert_allclose(lines[0].get_ydata(), 100 * np.array(runs[0].series("train_accuracy")))
    np.testing.assert_allclose(lines[1].get_ydata(), 100 * np.array(runs[0].series("test_accuracy")))
    assert png_size(tmp_path / "rl.png") == fig_pixels(fig)
    with pytest.raises(TypeError):
        viz.plot_random_labels([{"epochs": []}])
    with pytest.raises(TypeError):
        viz.plot_noise({"sets": {}})


def test_missing_matplotlib_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "fastgd\[plot\]"'):
        viz.plot_confusion_matrix(np.eye(3, dtype=int))


# ---- the subcommands ----------------------------------------------------------------------------
def test_inspect_command_writes_pictures_and_numbers(small_model, tmp_path, monkeypatch, capsys):
    model = small_model.save(tmp_path / "model.npz")
    out = tmp_path / "inspect"
    argv = ["inspect", str(model), "--out", str(out), "--errors", "16", "--threads", "1", "--json"]
    assert run_cli(argv, monkeypatch) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    for name in ("weights.png", "confusion.png", "errors.png", "history.png", "inspect.json"):
        assert (out / name).is_file(), name
    assert "16 tiles of 16 hidden units" in captured.err
    # the numbers agree with a direct computation on the shipped MNIST test set
    _, _, X_test, y_test = __import__("fastgd").datasets.load_mnist()
    ins = ex.inspect_model(small_model, X_test, y_test, k=16, threads=1)
    assert summary["accuracy"] == pytest.approx(ins.accuracy)
    assert summary["confusion_matrix"] == ins.confusion.tolist()
    assert [e["index"] for e in summary["most_confident_errors"]] == ins.errors["index"].tolist()
    assert summary["history_epochs"] == 3
    assert json.loads((out / "inspect.json").read_text())["accuracy"] == summary["accuracy"]
    w, h = png_size(out / "weights.png")
    assert w > 300 and h > 300  # 4x4 tiles of about an inch each at 100 dpi

    # a model without history: no curves, and it says so
    bare = Network([784, 9, 10], seed=0).save(tmp_path / "bare.npz")
    assert run_cli(["inspect", str(bare), "--out", str(tmp_path / "bare"), "--threads", "1"], monkeypatch) == 0
    text = capsys.readouterr().out
    assert not (tmp_path / "bare" / "history.png").exists()
    assert "skipped history.png" in text and "9 tiles of 9 hidden units" in text


def test_inspect_command_on_an_idx_folder_with_non_square_images(tmp_path, monkeypatch, capsys):
    from test_datasets import write_idx_folder

    (tmp_path / "idx").mkdir()
    write_idx_folder(tmp_path / "idx", n_train=60, n_test=40, rows=4, cols=3)
    model = Network([12, 5, 10], seed=0).save(tmp_path / "m.npz")
    assert run_cli(["inspect", str(model), "--out", str(tmp_path / "a"), "--data", str(tmp_path / "idx")],
                   monkeypatch) == 0
    text = capsys.readouterr().out
    assert "skipped weights.png" in text and (tmp_path / "a" / "confusion.png").is_file()
    assert run_cli(["inspect", str(model), "--out", str(tmp_path / "b"), "--data", str(tmp_path / "idx"),
                    "--image-shape", "4,3"], monkeypatch) == 0
    assert (tmp_path / "b" / "weights.png").is_file()
    # a model for the wrong input width is refused clearly
    wrong = Network([784, 5, 10], seed=0).save(tmp_path / "wrong.npz")
    assert run_cli(["inspect", str(wrong), "--out", str(tmp_path / "c"), "--data", str(tmp_path / "idx")],
                   monkeypatch) == 2
    assert "784 inputs" in capsys.readouterr().err


def test_experiment_noise_command(small_model, tmp_path, monkeypatch, capsys):
    model = small_model.save(tmp_path / "model.npz")
    out = tmp_path / "noise"
    argv = ["experiment", "noise", str(model), "--out", str(out), "--n", "200", "--threads", "1", "--json"]
    assert run_cli(argv, monkeypatch) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["sets"]) == {"uniform", "gaussian", "test"}
    assert summary["sets"]["uniform"]["n"] == 200 and summary["sets"]["test"]["n"] == 10000
    assert png_size(out / "noise.png") == (1000, 360)
    assert json.loads((out / "noise.json").read_text()) == summary
    _, _, X_test, y_test = __import__("fastgd").datasets.load_mnist()
    direct = ex.noise_experiment(small_model, X_test, y_test, n=200, seed=0, threads=1)
    assert summary["sets"] == json.loads(json.dumps(direct.to_dict()))["sets"]


def test_experiment_random_labels_command(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rl"
    argv = ["experiment", "random-labels", "--out", str(out), "--n-train", "300", "--hidden", "64", "--epochs", "4",
            "--n-test", "500", "--threads", "1", "--fraction", "1", "0.5", "--json"]
    assert run_cli(argv, monkeypatch) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    runs = summary["runs"]
    assert [r["fraction"] for r in runs] == [1.0, 0.5]
    assert all(len(r["epochs"]) == 4 for r in runs)
    assert "clean_accuracy" in runs[1]["epochs"][0] and "clean_accuracy" not in runs[0]["epochs"][0]
    assert runs[0]["config"]["sizes"] == [784, 64, 10] and runs[0]["config"]["n_test"] == 500
    assert "epoch   4/4" in captured.err
    assert png_size(out / "random_labels.png") == (820, 400)
    assert json.loads((out / "random_labels.json").read_text()) == summary
    # the same seed gives the same numbers
    assert run_cli(argv[:-1] + ["--no-plot", "--out", str(tmp_path / "again")], monkeypatch) == 0
    again = json.loads((tmp_path / "again" / "random_labels.json").read_text())
    strip = lambda s: [[{k: v for k, v in e.items() if k != "seconds"} for e in r["epochs"]] for r in s["runs"]]
    assert strip(again) == strip(summary)


@pytest.mark.parametrize("argv, message", [
    (["experiment", "random-labels", "--out", "x", "--fraction", "1.5"], "--fraction"),
    (["experiment", "random-labels", "--out", "x", "--hidden", "a,b"], "--hidden"),
    (["inspect", "m.npz", "--out", "x", "--image-shape", "28"], "--image-shape"),
    (["experiment"], "EXPERIMENT"),
])
def test_bad_command_lines_are_refused(argv, message, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(argv, monkeypatch)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_model_file_is_a_clear_error(tmp_path, monkeypatch, capsys):
    code = run_cli(["experiment", "noise", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")], monkeypatch)
    assert code == 2
    assert "nope.npz" in capsys.readouterr().err
