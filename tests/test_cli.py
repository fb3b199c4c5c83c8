import json
import subprocess
import sys

import numpy as np
import pytest

from fastgd import Network
from fastgd.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastgd", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_json_on_mnist(tmp_path):
    model = tmp_path / "lesson.npz"
    proc = run_cli("train", "--epochs", "1", "--json", "--seed", "0", "--save", str(model))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("test_accuracy", "train_seconds", "epochs", "samples_per_second", "backend", "threads", "sizes"):
        assert key in summary
    assert summary["sizes"] == [784, 16, 16, 10] and summary["epochs"] == 1
    assert summary["test_accuracy"] > 0.85
    assert 0 < summary["train_seconds"] < 60
    assert summary["samples_per_second"] == pytest.approx(60000 / summary["train_seconds"])
    assert "epoch   1/1" in proc.stderr  # progress goes to stderr when stdout carries JSON
    net = Network.load(model)
    assert net.sizes == [784, 16, 16, 10] and len(net.history) == 1


def test_train_on_an_idx_folder_with_options(tmp_path, capsys):
    from test_datasets import write_idx_folder

    write_idx_folder(tmp_path, n_train=60, n_test=20, rows=4, cols=3)
    code = main(["train", "--data", str(tmp_path), "--sizes", "12,8,10", "--activation", "relu",
                 "--output", "softmax", "--loss", "cross_entropy", "--lr", "0.1", "--batch-size", "7",
                 "--epochs", "2", "--backend", "numpy", "--threads", "1", "--dtype", "float64", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["sizes"] == [12, 8, 10] and summary["backend"] == "numpy" and summary["threads"] == 1
    assert summary["dtype"] == "float64" and summary["loss"] == "cross_entropy" and summary["epochs"] == 2


@pytest.mark.parametrize("args,message", [
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--sizes", "700,10"], "--sizes starts with 700 inputs but the data has 784 features"),
    (["--sizes", "784,32"], "--sizes ends with 32 output units but the data has 10 classes"),
    (["--output", "linear"], "--output linear is for regression"),
    (["--test-split", "0.2"], "--test-split"),
    (["--target", "price"], "--target"),
    (["--validation-split", "1.5"], "--validation-split must lie in [0, 1)"),
    (["--save", "/nonexistent/folder/m.npz"], "--save"),
    (["--checkpoint", "/nonexistent/folder/run"], "--checkpoint"),
    (["--resume", "/nonexistent/run"], "--resume"),
    (["--dropout", "1.5"], "--dropout: dropout must"),
    (["--momentum", "-1"], "--momentum: momentum must"),
    (["--warmup-epochs", "-2"], "--warmup-epochs: warmup_epochs must"),
    (["--sizes", "784"], "at least 2 entries"),
    (["--output", "linear", "--loss", "cross_entropy"], "cross_entropy"),
    (["--data", "/nonexistent/folder"], "no such file or folder"),
])
def test_train_reports_bad_options(args, message, capsys):
    assert main(["train", "--epochs", "1", *args]) == 2
    assert message in capsys.readouterr().err


def test_argparse_rejects_unknown_choices(capsys):
    for args in (["train", "--activation", "swish"], ["train", "--backend", "gpu"], ["train", "--sizes", "a,b"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


# ---- the user's own data (issue 13) ------------------------------------------------------------
def _frame(n=300, seed=0):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    df["price"] = 1000 + 300 * X[:, 0] - 150 * X[:, 1] + 10 * rng.normal(size=n)
    df["species"] = np.where(X[:, 0] + X[:, 1] > 0.5, "setosa", np.where(X[:, 2] > 0, "versicolor", "virginica"))
    df["spam"] = (X[:, 3] > 0).astype(int)
    return df


def _summary(out):
    return json.loads(out.strip().splitlines()[-1])


def test_regression_from_csv_with_standardize_then_predict(tmp_path, capsys):
    df = _frame()
    df.drop(columns=["species", "spam"]).to_csv(tmp_path / "houses.csv", index=False)
    model = tmp_path / "price.npz"
    code = main(["train", "--data", str(tmp_path / "houses.csv"), "--target", "price", "--standardize",
                 "--epochs", "30", "--backend", "numpy", "--seed", "0", "--save", str(model), "--json",
                 "--activation", "tanh"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = _summary(captured.out)
    assert summary["task"] == "regression" and summary["output"] == "linear" and summary["sizes"] == [4, 16, 16, 1]
    assert summary["test_accuracy"] is None and summary["test_r2"] > 0.9  # a linear target, learned
    assert "holding out 0.2 of it (60 samples) as the test set" in captured.err
    net = Network.load(model)
    assert net.feature_names == ["a", "b", "c", "d"] and net.y_std is not None and net.x_mean is not None
    assert abs(net.y_mean[0] - df["price"].mean()) < 50  # the target scaler is in price units
    # predict: same file, predictions in price units, the target column left out and scored
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model), str(tmp_path / "houses.csv"), "--target", "price", "--out", str(out),
                 "--backend", "numpy"]) == 0
    pd = pytest.importorskip("pandas")
    pred = pd.read_csv(out)["prediction"].to_numpy()
    expected = net.predict(df[["a", "b", "c", "d"]].to_numpy(), backend="numpy")
    np.testing.assert_allclose(pred, expected, rtol=1e-6)
    assert np.mean(np.abs(pred - df["price"])) < 100
    assert "r2 0.9" in capsys.readouterr().out


def test_string_labels_from_parquet_predict_the_original_names(tmp_path, capsys):
    df = _frame()
    df.drop(columns=["price", "spam"]).to_parquet(tmp_path / "iris.parquet")
    model = tmp_path / "iris.npz"
    assert main(["train", "--data", str(tmp_path / "iris.parquet"), "--target", "species", "--output", "softmax",
                 "--loss", "cross_entropy", "--activation", "tanh", "--lr", "0.1", "--epochs", "20", "--backend", "numpy", "--seed", "1",
                 "--save", str(model), "--json"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["classes"] == ["setosa", "versicolor", "virginica"] and summary["sizes"][-1] == 3
    assert summary["test_accuracy"] > 0.8
    out = tmp_path / "pred.npy"
    assert main(["predict", str(model), str(tmp_path / "iris.parquet"), "--out", str(out), "--backend", "numpy"]) == 0
    pred = np.load(out)
    assert pred.dtype.kind == "U" and set(pred) <= {"setosa", "versicolor", "virginica"}
    assert np.mean(pred == df["species"].to_numpy()) > 0.8
    proba = tmp_path / "proba.csv"
    assert main(["predict", str(model), str(tmp_path / "iris.parquet"), "--proba", "--out", str(proba),
                 "--backend", "numpy"]) == 0
    assert proba.read_text().splitlines()[0] == "proba_setosa,proba_versicolor,proba_virginica"


def test_binary_labels_with_one_sigmoid_unit(tmp_path, capsys):
    df = _frame()
    X, y = df[["a", "b", "c", "d"]].to_numpy(), df["spam"].to_numpy()
    np.savez(tmp_path / "spam.npz", X_train=X[:240], y_train=y[:240], X_test=X[240:], y_test=y[240:])
    model = tmp_path / "spam.npz.model.npz"
    assert main(["train", "--data", str(tmp_path / "spam.npz"), "--epochs", "20", "--backend", "numpy",
                 "--seed", "0", "--lr", "1.0", "--save", str(model), "--json"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["sizes"] == [4, 16, 16, 1] and summary["output"] == "sigmoid" and summary["n_test"] == 60
    assert summary["test_accuracy"] > 0.9
    net = Network.load(model)
    assert net.task == "binary" and set(net.predict(X, backend="numpy")) <= {0, 1}


def test_labels_one_to_k_and_npy_pair(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = 1 + (X[:, 0] > 0) + (X[:, 1] > 0)  # labels 1..3
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    model = tmp_path / "m.npz"
    assert main(["train", "--data", f"{tmp_path / 'X.npy'},{tmp_path / 'y.npy'}", "--epochs", "5",
                 "--backend", "numpy", "--test-split", "0.25", "--save", str(model), "--json"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["classes"] == [1, 2, 3] and summary["n_test"] == 50
    assert isinstance(summary["seed"], int)  # no --seed: a random one, reported
    assert set(Network.load(model).predict(X, backend="numpy")) <= {1, 2, 3}


def test_early_stopping_holds_out_validation_data_not_the_test_set(tmp_path, capsys):
    from test_datasets import write_idx_folder

    write_idx_folder(tmp_path, n_train=100, n_test=20, rows=4, cols=3)
    assert main(["train", "--data", str(tmp_path), "--sizes", "12,8,10", "--epochs", "3", "--early-stopping", "1",
                 "--backend", "numpy", "--seed", "0", "--json"]) == 0
    captured = capsys.readouterr()
    assert "--early-stopping: holding out 0.1 of the training data for validation" in captured.err
    assert "the test set is never used" in captured.err
    summary = _summary(captured.out)
    assert summary["settings"]["validation_split"] == 0.1
    assert all(r["val_loss"] is not None for r in summary["history"])
    assert "val acc" in captured.err and "test acc " not in captured.err.split("test accuracy")[0]


def test_ambiguous_targets_ask_for_task(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", X_train=np.random.default_rng(0).random((30, 2)),
             y_train=np.arange(30, dtype=np.float64) % 4)
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--backend", "numpy"]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--backend", "numpy",
                 "--task", "classify", "--sizes", "2,3"]) == 2
    assert "--sizes ends with 3 output units but the data has 4 classes" in capsys.readouterr().err


def test_predict_reports_bad_files(tmp_path, capsys):
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    np.save(tmp_path / "X.npy", np.zeros((3, 4)))
    assert main(["predict", str(tmp_path / "junk.npz"), str(tmp_path / "X.npy")]) == 2
    assert "fastgd predict: error:" in capsys.readouterr().err
    Network([5, 2], seed=0).save(tmp_path / "m.npz")
    assert main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "X.npy")]) == 2
    assert "4 features per sample but the model takes 5" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "X.npy"), "--out", "p.txt"]) == 2
    assert "--out" in capsys.readouterr().err


# ---- help and messages -------------------------------------------------------------------------
def test_every_flag_has_help_with_its_default():
    from fastgd.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train", "predict", "export"):
        p = sub.choices[name]
        assert "examples:" in (p.epilog or ""), name
        for action in p._actions:
            if action.dest == "help" or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            if not action.required:
                assert "default" in action.help, f"{name} {action.option_strings[0]}: no default in its help"
    seed = next(a for a in sub.choices["train"]._actions if "--seed" in a.option_strings)
    assert "random" in seed.help


def test_progress_bar_off_when_stderr_is_not_a_terminal(tmp_path):
    from test_datasets import write_idx_folder

    write_idx_folder(tmp_path, n_train=40, n_test=10, rows=4, cols=3)
    proc = run_cli("train", "--data", str(tmp_path), "--sizes", "12,5,10", "--epochs", "2", "--backend", "numpy",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "epoch/s" not in proc.stderr and "it/s" not in proc.stderr
    assert "epoch   2/2" in proc.stderr


def test_divergence_is_an_error_without_traceback(tmp_path):
    from test_datasets import write_idx_folder

    write_idx_folder(tmp_path, n_train=60, n_test=10, rows=4, cols=3)
    proc = run_cli("train", "--data", str(tmp_path), "--sizes", "12,8,10", "--output", "softmax", "--activation",
                   "relu", "--loss", "cross_entropy", "--lr", "1e30", "--epochs", "3", "--backend", "numpy",
                   "--seed", "0", "--save", str(tmp_path / "m.npz"))  # fixed seed: some seeds keep a huge but finite loss (not a divergence)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "fastgd train: error:" in proc.stderr and "Traceback" not in proc.stderr
    assert "learning rate" in proc.stderr and "--lr (now 1e+30)" in proc.stderr
    assert not (tmp_path / "m.npz").exists()


def test_ctrl_c_saves_the_model_and_checkpoint_and_exits_130(tmp_path):
    import os
    import signal
    import time

    rng = np.random.default_rng(0)
    X = rng.random((20000, 50))
    y = (X[:, 0] > 0.5).astype(int) + (X[:, 1] > 0.5)
    np.savez(tmp_path / "d.npz", X_train=X, y_train=y)
    proc = subprocess.Popen([sys.executable, "-m", "fastgd", "train", "--data", str(tmp_path / "d.npz"),
                             "--sizes", "50,64,3", "--epochs", "1000", "--batch-size", "1", "--lr", "0.01",
                             "--backend", "numpy", "--seed", "0", "--save", str(tmp_path / "m.npz"),
                             "--checkpoint", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    for line in proc.stdout:  # the last line before fit() starts
        if line.startswith("fastgd: network"):
            break
    time.sleep(1.5)  # mid-epoch: an epoch of 16,000 one-row steps takes far longer on numpy
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "interrupted" in err
    net = Network.load(tmp_path / "m.npz")
    assert net.sizes == [50, 64, 3] and np.isfinite(net.params).all()
    assert not np.array_equal(net.params, Network([50, 64, 3], seed=0).params)  # it trained before the interrupt
    assert Network.load(tmp_path / "run.npz").sizes == [50, 64, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_optimizer_flags(tmp_path, capsys):
    df = _frame()
    df.drop(columns=["price", "spam"]).to_csv(tmp_path / "iris.csv", index=False)
    base = ["train", "--data", str(tmp_path / "iris.csv"), "--target", "species", "--epochs", "3",
            "--backend", "numpy", "--seed", "0", "--output", "softmax", "--loss", "cross_entropy"]
    assert main(base + ["--optimizer", "adam", "--beta2", "0.99", "--json"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["optimizer"]["name"] == "adam" and summary["settings"]["lr"] == pytest.approx(1e-3)
    assert main(base + ["--optimizer", "adamw", "--lr", "0.01", "--json"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["optimizer"]["name"] == "adamw" and summary["settings"]["lr"] == 0.01
    assert summary["settings"]["l2"] == pytest.approx(0.01)  # AdamW's default decoupled weight decay
    for extra, message in ((["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to --optimizer sgd"),
                           (["--beta1", "0.8"], "--beta1, --beta2 and --eps apply to --optimizer adam"),
                           (["--l2", "0.1", "--weight-decay", "0.1"], "--weight-decay or --l2")):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err


def test_inspect_and_noise_refuse_models_they_cannot_draw(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    Network([4, 3, 1], output="linear", seed=0).save(tmp_path / "reg.npz")
    assert main(["inspect", str(tmp_path / "reg.npz"), "--out", str(tmp_path / "pics")]) == 2
    assert "regression model" in capsys.readouterr().err
    assert main(["experiment", "noise", str(tmp_path / "reg.npz"), "--out", str(tmp_path / "noise")]) == 2
    assert "regression model" in capsys.readouterr().err


def test_a_recipe_on_other_data_keeps_its_hidden_layers(tmp_path, capsys):
    df = _frame()
    df.drop(columns=["price", "spam"]).to_csv(tmp_path / "iris.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "iris.csv"), "--target", "species", "--recipe", "mlp",
                 "--augment-shift", "0", "--epochs", "1", "--backend", "numpy", "--json"]) == 0
    summary = _summary(capsys.readouterr().out)
    assert summary["sizes"] == [4, 256, 3] and summary["activation"] == "relu" and summary["recipe"] == "mlp"


def test_predict_on_an_idx_folder_scores_its_test_set(tmp_path, capsys):
    from test_datasets import write_idx_folder

    arrays = write_idx_folder(tmp_path, n_train=60, n_test=20, rows=4, cols=3)
    model = tmp_path / "m.npz"
    assert main(["train", "--data", str(tmp_path), "--sizes", "12,8,10", "--epochs", "1", "--backend", "numpy",
                 "--seed", "0", "--save", str(model)]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path), "--backend", "numpy", "--json"]) == 0
    out = capsys.readouterr().out
    summary = _summary(out)
    net = Network.load(model)
    pred = net.predict(arrays["test_images"].reshape(20, 12).astype(np.uint8), backend="numpy")
    assert summary["n"] == 20 and summary["accuracy"] == pytest.approx(np.mean(pred == arrays["test_labels"]))
    assert main(["predict", str(model), str(tmp_path), "--backend", "numpy"]) == 0
    printed = capsys.readouterr().out.split()
    assert [int(v) for v in printed] == list(pred)


def test_resume_finds_the_checkpoint_that_checkpoint_wrote(tmp_path, capsys):
    from test_datasets import write_idx_folder

    write_idx_folder(tmp_path, n_train=60, n_test=20, rows=4, cols=3)
    common = ["train", "--data", str(tmp_path), "--sizes", "12,8,10", "--backend", "numpy", "--seed", "0", "--json"]
    assert main(common + ["--epochs", "1", "--checkpoint", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run.npz").exists()
    capsys.readouterr()
    assert main(common + ["--epochs", "2", "--resume", str(tmp_path / "run")]) == 0
    summary = _summary(capsys.readouterr().out)
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    straight = main(common + ["--epochs", "2"])
    assert straight == 0
    assert _summary(capsys.readouterr().out)["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-12)
