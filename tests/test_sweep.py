"""Hyperparameter sweeps: spec checks, search, results on disk, and every runner (this process, a
local process pool, a real dask.distributed LocalCluster with worker processes; no mocks).

Tiny data (the first 1000/300 MNIST images) and tiny networks keep each trial to milliseconds;
the cost of these tests is starting processes.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastgd
from fastgd import Network, Trainer
from fastgd.cli import main
from fastgd.sweep.search import random_points
from fastgd.sweep.spec import Choice, Uniform, parse_spec

TINY = {"sizes": [784, 8, 10], "activation": "relu", "output": "softmax", "loss": "cross_entropy", "lr": 0.1,
        "batch_size": 32, "epochs": 2}
DATA = {"train_size": 1000, "test_size": 300}


def tiny_spec(**extra):
    return {"settings": dict(TINY), **DATA, **extra}


def results_lines(folder):
    return [json.loads(line) for line in (Path(folder) / "results.jsonl").read_text().splitlines()]


def outcome(records):
    """What must not depend on where a trial ran: per trial id, the test metrics and the loss curve."""
    return {r["trial_id"]: (r["status"], r.get("test_accuracy"), r.get("test_loss"),
                            [h["train_loss"] for h in r.get("history") or []]) for r in records}


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")  # in the test extra; a missing one fails loudly below
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


# ---- the spec: every check happens before anything runs ------------------------------------
@pytest.mark.parametrize("spec, error, message", [
    (tiny_spec(grid={"lrr": [0.1]}), ValueError, "unknown setting 'lrr' (did you mean lr"),
    (tiny_spec(grid={"lr": []}), ValueError, "grid.lr is empty"),
    (tiny_spec(grid={"lr": 0.1}), TypeError, "grid.lr must be a list"),
    (tiny_spec(grid={"batch_size": [16, 2.5]}), TypeError, "batch_size must be an integer"),
    (tiny_spec(grid={"lr": [0.1, "fast"]}), TypeError, "lr must be a real number"),
    (tiny_spec(grid={"activation": ["relu", "swish"]}), ValueError, "unknown activation 'swish'"),
    (tiny_spec(grid={"momentum": [0.0]}, settings={**TINY, "nesterov": True}), ValueError, "nesterov=True needs momentum"),
    (tiny_spec(grid={"seed": [1, 2]}), ValueError, "use 'seeds'"),
    (tiny_spec(settings={**TINY, "checkpoint": "x.npz"}), ValueError, "checkpoint"),
    (tiny_spec(seeds="three"), TypeError, "seeds"),
    (tiny_spec(seeds=[]), ValueError, "seeds is an empty list"),
    (tiny_spec(grids={"lr": [0.1]}), ValueError, "unknown sweep spec key(s) grids"),
    (tiny_spec(random={"lr": {"low": 0.5, "high": 0.1}}), ValueError, "low (0.5) must be below high"),
    (tiny_spec(random={"lr": {"low": 0, "high": 1, "log": True}}), ValueError, "log range needs low > 0"),
    (tiny_spec(search="grid", random={"lr": [0.1]}), ValueError, "grid search takes 'grid' only"),
    (tiny_spec(search="random"), ValueError, "needs a 'random' space"),
    (tiny_spec(search="bayes", grid={"lr": [0.1]}), ValueError, "unknown search 'bayes'"),
    (tiny_spec(settings={**TINY, "sizes": [100, 8, 10]}), ValueError, "takes 100 inputs but the data has 784"),
    (tiny_spec(random={"lr": {"low": 0.01, "high": 0.5}}, trials=0), ValueError, "trials must be >= 1"),
])
def test_bad_specs_fail_before_anything_runs(tmp_path, spec, error, message):
    out = tmp_path / "out"
    with pytest.raises(error) as info:
        fastgd.sweep(spec, out=out, workers=2, progress=False)
    assert message in str(info.value)
    assert not out.exists()


def test_bad_spec_on_the_command_line(tmp_path, capsys):
    code = main(["sweep", "--set", "sizes=[784,8,10]", "--grid", "lrr=0.1,0.2", "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown setting 'lrr' (did you mean lr" in err and "Traceback" not in err
    assert main(["sweep", "--grid", "lr", "--out", str(tmp_path / "o")]) == 2
    assert "--grid takes NAME=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_spec_files_and_flags_give_the_same_spec(tmp_path):
    from fastgd.cli import build_parser
    from fastgd.cli_sweep import spec_from_args

    want = {"recipe": "best", "settings": {"epochs": 3}, "grid": {"lr": [0.01, 0.1], "sizes": [[784, 8, 10], [784, 16, 10]]},
            "seeds": 2}
    (tmp_path / "s.json").write_text(json.dumps(want))
    (tmp_path / "s.yaml").write_text("recipe: best\nsettings: {epochs: 3}\ngrid:\n  lr: [0.01, 0.1]\n"
                                     "  sizes: [[784, 8, 10], [784, 16, 10]]\nseeds: 2\n")
    (tmp_path / "s.toml").write_text('recipe = "best"\nseeds = 2\n[settings]\nepochs = 3\n[grid]\nlr = [0.01, 0.1]\n'
                                     "sizes = [[784, 8, 10], [784, 16, 10]]\n")
    args = build_parser().parse_args(["sweep", "--recipe", "best", "--set", "epochs=3", "--grid", "lr=0.01,0.1",
                                      "--grid", "sizes=[784,8,10],[784,16,10]", "--seeds", "2"])
    specs = [parse_spec(want)] + [parse_spec(str(tmp_path / f"s.{ext}")) for ext in ("json", "yaml", "toml")]
    specs.append(parse_spec(spec_from_args(args)))
    for spec in specs:
        assert spec == specs[0]
    s = specs[0]
    assert s.search == "grid" and s.seeds == [0, 1] and s.swept == ["lr", "sizes"]
    assert s.settings["epochs"] == 3 and s.settings["momentum"] == 0.9 and s.settings["threads"] == 1  # recipe + default
    (tmp_path / "bad.yaml").write_text("grid: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        parse_spec(str(tmp_path / "bad.yaml"))

    args = build_parser().parse_args(["sweep", "--random", "lr=log:0.001:0.3", "--random", "batch_size=logint:8:128",
                                      "--random", "momentum=0:0.95", "--random", "activation=relu,tanh",
                                      "--seeds", "3,7", "--trials", "5"])
    s = parse_spec(spec_from_args(args))
    assert s.search == "random" and s.trials == 5 and s.seeds == [3, 7]
    assert s.space == {"lr": Uniform(0.001, 0.3, log=True), "batch_size": Uniform(8, 128, log=True, integer=True),
                       "momentum": Uniform(0.0, 0.95), "activation": Choice(("relu", "tanh"))}


def test_random_points_are_seeded_in_bounds_and_extendable():
    space = parse_spec({"random": {"lr": {"low": 1e-3, "high": 0.3, "log": True},
                                   "batch_size": {"low": 8, "high": 128, "int": True, "log": True},
                                   "momentum": {"low": 0.0, "high": 0.95}, "activation": ["relu", "tanh"]}}).space
    points = random_points(space, 200, seed=3)
    assert points == random_points(space, 200, seed=3) and points != random_points(space, 200, seed=4)
    assert random_points(space, 50, seed=3) == points[:50]  # a longer search starts with the shorter one's trials
    lr = np.array([p["lr"] for p in points])
    bs = [p["batch_size"] for p in points]
    assert lr.min() >= 1e-3 and lr.max() <= 0.3 and np.median(np.log10(lr)) < -1.2  # log-uniform: median ~0.017
    assert all(isinstance(b, int) and 8 <= b <= 128 for b in bs) and min(bs) < 12 and max(bs) > 90
    assert all(0 <= p["momentum"] <= 0.95 for p in points)
    assert {p["activation"] for p in points} == {"relu", "tanh"}


# ---- running: the same results on every runner ---------------------------------------------
def test_settings_reach_the_trainer_by_name(tmp_path):
    """A sweep trial equals the same Network + Trainer run by hand, for settings the sweep code never names."""
    X, y, Xt, yt = fastgd.datasets.load_mnist()
    grid = {"momentum": [0.0, 0.9], "lr_schedule": ["constant", "cosine"]}
    result = fastgd.sweep(tiny_spec(grid=grid), out=tmp_path, workers=1, progress=False)
    assert len(result.records) == 4 and all(r["status"] == "ok" for r in result.records)
    for r in result.records:
        net = Network(TINY["sizes"], activation="relu", output="softmax", seed=0)
        trainer = Trainer(net, loss="cross_entropy", lr=0.1, batch_size=32, epochs=2, threads=1, seed=0, **r["point"])
        trainer.fit(X[:1000], y[:1000])
        assert trainer.evaluate(Xt[:300], yt[:300])["accuracy"] == r["test_accuracy"]
        assert r["backend"] == trainer.backend.name and r["threads"] == 1
    assert len({r["test_loss"] for r in result.records}) == 4


def test_local_pool_and_dask_equal_sequential(tmp_path, dask_client):
    spec = tiny_spec(grid={"lr": [0.05, 0.2], "batch_size": [16, 32]}, seeds=2)
    seq = fastgd.sweep(spec, out=tmp_path / "seq", workers=1, progress=False)
    pool = fastgd.sweep(spec, out=tmp_path / "pool", workers=2, progress=False)
    data_keys = []

    def check_data_placement(record):  # while the sweep runs: the data is one key held by every worker
        data_keys.append({w: sorted(k for k in keys if k.startswith("SweepData"))
                          for w, keys in dask_client.has_what().items()})

    dask = fastgd.sweep(spec, out=tmp_path / "dask", dask_client=dask_client, progress=False,
                        on_result=check_data_placement)
    assert len(seq.records) == 8 and all(r["status"] == "ok" for r in seq.records)
    assert outcome(pool.records) == outcome(seq.records)
    assert outcome(dask.records) == outcome(seq.records)
    assert {r["pid"] for r in pool.records} != {os.getpid()} and len({r["pid"] for r in dask.records}) == 2
    assert pool.runner == "local pool, 2 processes" and dask.runner.startswith("dask ")
    for placement in data_keys:
        # one data key, broadcast once: no worker holds a second copy. Dask's active memory
        # manager may drop a replica no waiting task needs (seen in CI: one worker held none
        # mid-sweep), so a worker may hold zero
        assert len(placement) == 2 and all(len(keys) <= 1 for keys in placement.values())
        assert len({k for keys in placement.values() for k in keys}) == 1
    for r in dask.records:
        assert r["threads"] == 1 and r["backend"] == seq.records[0]["backend"] and r["history"]
        assert r["train_seconds"] > 0 and r["settings"]["sizes"] == [784, 8, 10]
    # the summary aggregates over seeds; the best trial's model is on disk and scores what it says
    assert [row["n"] for row in dask.rows] == [2] * 4
    row = dask.rows[0]
    accs = [r["test_accuracy"] for r in dask.records if r["point"] == row["point"]]
    assert row["mean"] == pytest.approx(np.mean(accs)) and row["min"] == min(accs) and row["max"] == max(accs)
    assert all(a["mean"] >= b["mean"] for a, b in zip(dask.rows, dask.rows[1:]))
    best = Network.load(dask.files["best_model"])
    X, y, Xt, yt = fastgd.datasets.load_mnist()
    assert (best.predict(Xt[:300]) == yt[:300]).mean() == pytest.approx(dask.best["test_accuracy"])
    assert dask.best["test_accuracy"] == max(r["test_accuracy"] for r in dask.records)
    assert [p.name for p in (tmp_path / "dask").iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_dask_worker_killed_mid_trial_still_finishes_every_trial(tmp_path, dask_client):
    """SIGKILL one worker process while it runs its first trial: Dask reruns the trial elsewhere.

    The kill comes from a thread watching the scheduler during the first wave of trials, so the
    killed worker holds no finished result yet (only its running trial is lost)."""
    spec = {"settings": {**TINY, "sizes": [784, 64, 10], "epochs": 4}, "train_size": 6000, "test_size": 300,
            "grid": {"lr": [0.02, 0.05, 0.1, 0.2]}, "seeds": 2}
    killed = []
    stop = threading.Event()

    def kill_the_first_busy_worker():
        while not stop.is_set():
            busy = [w for w, tasks in dask_client.processing().items() if tasks]
            if busy:
                pid = dask_client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_the_first_busy_worker, daemon=True)
    killer.start()
    try:
        result = fastgd.sweep(spec, out=tmp_path / "d", dask_client=dask_client, progress=False)
    finally:
        stop.set()
        killer.join(timeout=60)
    assert killed, "no worker was busy to kill"
    assert len(result.records) == 8 and all(r["status"] == "ok" for r in result.records)
    expected = fastgd.sweep(spec, out=tmp_path / "s", workers=1, progress=False)
    assert outcome(result.records) == outcome(expected.records)
    assert len(results_lines(tmp_path / "d")) == 8


def test_local_pool_worker_killed_mid_sweep_still_finishes_every_trial(tmp_path):
    """A pool worker that dies (SIGKILL, out of memory) breaks the pool: its trials run again in a new one."""
    spec = {"settings": {**TINY, "sizes": [784, 64, 10], "epochs": 3}, "train_size": 4000, "test_size": 300,
            "grid": {"lr": [0.02, 0.05, 0.1]}, "seeds": 2}
    killed = []

    def kill_the_worker(record):
        if not killed:
            os.kill(record["pid"], signal.SIGKILL)
            killed.append(record["pid"])

    result = fastgd.sweep(spec, out=tmp_path / "p", workers=2, progress=False, on_result=kill_the_worker)
    assert len(result.records) == 6 and all(r["status"] == "ok" for r in result.records)
    assert len({r["pid"] for r in result.records}) > 2  # the rest ran in a new pool
    expected = fastgd.sweep(spec, out=tmp_path / "s", workers=1, progress=False)
    assert outcome(result.records) == outcome(expected.records)


def test_failing_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    spec = tiny_spec(settings={**TINY, "output": "linear", "loss": "mse"},
                     grid={"lr": [0.05, 50.0], "validation_split": [0.0, 0.9999]})
    result = fastgd.sweep(spec, out=tmp_path, workers=2, progress=False)
    by_point = {(r["point"]["lr"], r["point"]["validation_split"]): r for r in result.records}
    assert by_point[(0.05, 0.0)]["status"] == "ok"
    assert by_point[(50.0, 0.0)]["status"] == "error"
    assert by_point[(50.0, 0.0)]["error"].startswith("FloatingPointError: training diverged")
    assert "no validation or no training data" in by_point[(0.05, 0.9999)]["error"]
    assert all(r.get("backend") for r in result.records)  # recorded even when training failed
    assert sum(row["errors"] for row in result.rows) == 3 and result.rows[0]["point"] == {"lr": 0.05, "validation_split": 0.0}
    # a rerun skips failed trials too, unless asked to retry them
    again = fastgd.sweep(spec, out=tmp_path, workers=1, progress=False)
    assert (again.ran, again.skipped) == (0, 4)
    retry = fastgd.sweep(spec, out=tmp_path, workers=1, progress=False, retry_failed=True)
    assert (retry.ran, retry.skipped) == (3, 1) and len(retry.records) == 4


# ---- interruption and resume ---------------------------------------------------------------
def test_resume_after_an_interrupted_sweep(tmp_path):
    spec = tiny_spec(grid={"lr": [0.05, 0.1, 0.2]}, seeds=3)
    seen = []

    def interrupt_after_three(record):
        seen.append(record["trial_id"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    import multiprocessing

    before = set(multiprocessing.active_children())  # (the Dask cluster's processes, if it is up)
    with pytest.raises(KeyboardInterrupt):
        fastgd.sweep(spec, out=tmp_path, workers=2, progress=False, on_result=interrupt_after_three)
    assert set(multiprocessing.active_children()) - before == set()  # the pool's workers were stopped
    on_disk = results_lines(tmp_path)
    assert [r["trial_id"] for r in on_disk] == seen
    resumed = fastgd.sweep(spec, out=tmp_path, workers=1, progress=False)
    assert (resumed.skipped, resumed.ran) == (3, 6)
    lines = results_lines(tmp_path)
    assert len(lines) == 9 and len({r["trial_id"] for r in lines}) == 9
    full = fastgd.sweep(spec, out=tmp_path / "full", workers=1, progress=False)
    assert outcome(resumed.records) == outcome(full.records)
    # a line cut short by a crash is ignored, and that trial reruns
    text = (tmp_path / "results.jsonl").read_text()
    (tmp_path / "results.jsonl").write_text(text + text.splitlines()[0][:40])
    again = fastgd.sweep(spec, out=tmp_path, workers=1, progress=False)
    assert (again.skipped, again.ran) == (9, 0)


def test_ctrl_c_on_the_command_line_keeps_finished_trials(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fastgd", "sweep", "--set", "sizes=[784,64,10]", "--set", "epochs=3",
           "--set", "activation=relu", "--set", "output=softmax", "--set", "loss=cross_entropy",
           "--grid", "lr=0.01,0.02,0.05,0.1,0.2,0.3", "--seeds", "12", "--train-size", "6000", "--test-size", "300",
           "--workers", "2", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "every finished trial is in" in stderr and "Traceback" not in stderr
    finished = results_lines(out)
    assert 2 <= len(finished) < 72 and all(r["status"] == "ok" for r in finished)


HALF_SENT_SCRIPT = '''
import os, struct, sys, time
from types import SimpleNamespace
from fastgd.sweep.runners import LocalPoolRunner

def half_sent_result(then):
    """In a pool worker: send the header of a result message and none of its body (a worker
    killed between the two writes leaves the result pipe like this), then wait to be stopped
    ("wait") or die without a word ("die": killed, out of memory)."""
    frame = sys._getframe()
    while "result_queue" not in frame.f_locals:
        frame = frame.f_back
    os.write(frame.f_locals["result_queue"]._writer.fileno(), struct.pack("!i", 100))
    if then == "die":
        os._exit(9)
    open(sys.argv[2], "w").close()
    time.sleep(600)

if __name__ == "__main__":
    runner = LocalPoolRunner(workers=1)
    runner.DEAD_WORKER_GRACE = 0.5
    runner.start(None)
    if sys.argv[1] == "ctrl-c":  # the pool stopped while its worker is mid-result
        runner._executor.submit(half_sent_result, "wait")
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.01)
        runner.close(cancel=True)
        print("closed")
    else:  # the worker dies mid-result: the trial runs again in a new pool (where this fake
        # task fails as a trial: an error record)
        task = SimpleNamespace(trial_id="t0", point={"lr": 0.1}, seed=0, settings={})
        runner._futures[runner._executor.submit(half_sent_result, "die")] = task
        finished = []
        while runner.pending() and not finished:
            finished = runner.wait()
        print(finished[0][0].trial_id, finished[0][1]["status"], runner._attempts["t0"])
        runner.close()
'''


def run_half_sent(tmp_path, case):
    """HALF_SENT_SCRIPT's `case` in a fresh interpreter: its stdout, or None if it did not exit
    within 60 s (a regression shows as a hung subprocess, not a hung test run)."""
    script = tmp_path / "half_sent.py"
    script.write_text(HALF_SENT_SCRIPT)
    src = Path(fastgd.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run([sys.executable, str(script), case, str(tmp_path / "flag")], env=env,
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_ctrl_c_while_a_worker_is_mid_result_lets_the_interpreter_exit(tmp_path):
    """Ctrl-C stops the pool's workers; one may be halfway through sending a result. The pool's
    manager thread, blocked reading the rest of that message, must still end: the interpreter
    joins it at exit (CI once hung there until its watchdog fired)."""
    out = run_half_sent(tmp_path, "ctrl-c")
    assert out is not None, "the interpreter did not exit after the pool was stopped mid-result"
    assert out == ["closed"]


def test_a_worker_dying_mid_result_does_not_hang_the_sweep(tmp_path):
    """A worker that dies between the two writes of a result wedges the pool (its manager thread
    waits for the rest of the message and never reports the death): the runner notices the dead
    worker, unblocks the pool, and runs the trial again in a new one."""
    out = run_half_sent(tmp_path, "die")
    assert out is not None, "the runner waited forever on a pool whose worker died mid-result"
    assert out == ["t0", "error", "1"]

# ---- search strategies, data sources, the command line --------------------------------------
def test_random_search_and_its_extension(tmp_path):
    space = {"lr": {"low": 0.01, "high": 0.5, "log": True}, "batch_size": [16, 32, 64]}
    first = fastgd.sweep(tiny_spec(random=space, trials=4, search_seed=1), out=tmp_path, workers=1, progress=False)
    assert len(first.records) == 4 and first.rows[0]["n"] == 1
    assert [r["point"] for r in first.records] == random_points(parse_spec({"random": space}).space, 4, 1)
    longer = fastgd.sweep(tiny_spec(random=space, trials=6, search_seed=1), out=tmp_path, workers=1, progress=False)
    assert (longer.skipped, longer.ran) == (4, 2)


def test_optuna_search_asks_and_resumes(tmp_path):
    pytest.importorskip("optuna")  # in the test extra
    space = {"lr": {"low": 0.01, "high": 0.5, "log": True}, "batch_size": [16, 32]}
    first = fastgd.sweep(tiny_spec(random=space, search="optuna", trials=4, seeds=2), out=tmp_path, workers=1,
                         progress=False)
    assert len(first.records) == 8 and len(first.rows) == 4 and all(row["n"] == 2 for row in first.rows)
    for r in first.records:
        assert 0.01 <= r["point"]["lr"] <= 0.5 and r["point"]["batch_size"] in (16, 32)
    more = fastgd.sweep(tiny_spec(random=space, search="optuna", trials=6, seeds=2), out=tmp_path, workers=1,
                        progress=False)
    assert (more.skipped, more.ran) == (8, 4) and len(more.rows) == 6


def test_cli_sweep_on_an_idx_folder_with_plot_and_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from test_datasets import write_idx_folder

    data = tmp_path / "digits"
    data.mkdir()
    write_idx_folder(data, n_train=80, n_test=30, rows=4, cols=3)
    out = tmp_path / "out"
    code = main(["sweep", "--data", str(data), "--grid", "lr=0.5,1.0", "--grid", "activation=sigmoid,tanh",
                 "--set", "epochs=2", "--seeds", "2", "--workers", "1", "--out", str(out), "--plot", "--json",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["ran"] == 8 and summary["metric"] == "test_accuracy" and summary["swept"] == ["lr", "activation"]
    assert len(summary["rows"]) == 4 and summary["best"]["settings"]["sizes"] == [12, 16, 16, 10]  # width from the data
    assert "| lr " in captured.err and "best trial:" in captured.err
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG" and (out / "summary.md").exists()
    assert Network.load(out / "best.npz").sizes == [12, 16, 16, 10]


def test_python_api_takes_arrays_and_keyword_specs(tmp_path):
    X, y, Xt, yt = fastgd.datasets.load_mnist()
    result = fastgd.sweep(data=(X[:500], y[:500], Xt[:200], yt[:200]), settings=TINY, grid={"lr": [0.1]},
                          out=tmp_path, workers=1, progress=False)
    assert len(result.records) == 1 and result.records[0]["data"] == "arrays"
    with pytest.raises(TypeError, match="data must be"):
        fastgd.sweep(data=np.zeros(3), settings=TINY, out=tmp_path / "x", workers=1, progress=False)
