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
    (["--lr", "0"], "lr must be a finite number > 0"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--sizes", "700,10"], "input width is 700"),
    (["--sizes", "784"], "at least 2 entries"),
    (["--output", "linear", "--loss", "cross_entropy"], "cross_entropy"),
    (["--data", "/nonexistent/folder"], "not a folder"),
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
