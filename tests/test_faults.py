"""Fault injection and concurrency (issue 12).

* `kill -9` of a checkpointing `fastgd train` at seeded random moments: every checkpoint that
  survives loads and resumes (`--resume` with the same suffix-less name given to `--checkpoint`),
  and no temporary file outlives the next save. Figures (kills, checkpoints found, orphan temp
  files seen after kills and after the next save) go to ``<pytest basetemp>/kill9.json`` and are
  printed with `-s`.
* Failures surface as `fastgd train: error: ...`, not tracebacks; a checkpoint folder that does not
  exist is reported before any training.
* Several Trainers in several threads on each backend (and all backends at once), with varied
  networks, dtypes, batch sizes, thread counts and recipes, give bitwise what each gives alone.
"""
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

import fastgd
from fastgd import Network

from conftest import BACKENDS, default_sigint, fastgd_train_command, write_idx

KILL_SEED = int(os.environ.get("FASTGD_KILL_SEED", "12"))
KILLS = int(os.environ.get("FASTGD_KILLS", "10"))
KILL_BUDGET_SECONDS = 150  # stop injecting (and report how many were done) past this


@pytest.fixture(scope="module")
def small_idx(tmp_path_factory, mnist):
    """300 training and 50 test MNIST images as an IDX folder: epochs of milliseconds."""
    X_train, y_train, X_test, y_test = mnist
    return write_idx(tmp_path_factory.mktemp("idx"), X_train[:300], y_train[:300], X_test[:50], y_test[:50])


def temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp" in p.suffixes)


def test_kill_9_never_leaves_an_unusable_checkpoint(tmp_path, small_idx, tmp_path_factory):
    # float64 784-512-10 with momentum: a 6.5 MB checkpoint (weights + velocity) written every
    # epoch of 6 steps, so much of the run is spent saving; every other kill waits for a save's
    # temporary file to appear, so some kills surely land inside a save.
    common = ["--data", small_idx, "--sizes", "784,512,10", "--dtype", "float64", "--batch-size", "50",
              "--momentum", "0.9", "--lr", "0.1", "--seed", "3", "--backend", "numpy", "--no-progress",
              "--checkpoint", "ck", "--checkpoint-every", "1"]
    ck = tmp_path / "ck.npz"
    rng = np.random.default_rng(KILL_SEED)
    figures = {"seed": KILL_SEED, "kills": 0, "kills_inside_a_save": 0, "checkpoint_present": 0, "loaded": 0, "resumed": 0,
               "temp_files_after_kill": 0, "temp_files_after_next_save": 0, "epochs_at_kill": [],
               "kill_delays": []}
    started = time.monotonic()
    for i in range(KILLS):
        if time.monotonic() - started > KILL_BUDGET_SECONDS:
            break
        resume = ["--resume", "ck"] if ck.exists() else []
        proc = subprocess.Popen(fastgd_train_command(*common, *resume, "--epochs", "100000"), cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_sigint)
        delay = float(rng.uniform(0.8, 3.5))  # interpreter start-up is ~1 s of it
        if i % 2 == 0:  # at a random moment
            time.sleep(delay)
        else:  # after the delay, the moment a save's temporary file appears: inside a save
            time.sleep(delay / 2)
            deadline = time.monotonic() + 10
            while not temp_files(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.0005)
            figures["kills_inside_a_save"] += bool(temp_files(tmp_path))
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        err = proc.communicate(timeout=60)[1].decode()
        assert alive, f"run {i} ended before the kill:\n{err}"
        assert proc.returncode == -signal.SIGKILL
        figures["kills"] += 1
        figures["kill_delays"].append(round(delay, 3))
        figures["temp_files_after_kill"] += len(temp_files(tmp_path))
        if not ck.exists():
            figures["epochs_at_kill"].append(0)
            continue
        figures["checkpoint_present"] += 1
        net = Network.load(ck)  # must never fail: the checkpoint is replaced atomically
        figures["loaded"] += 1
        epochs = len(net.history or [])
        figures["epochs_at_kill"].append(epochs)
        assert np.isfinite(net.params).all()
        # resume for one more epoch: it must accept the checkpoint and write the next one
        done = subprocess.run(fastgd_train_command(*common, "--resume", "ck", "--epochs", str(epochs + 1)),
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=default_sigint)
        assert done.returncode == 0, f"resuming the checkpoint of epoch {epochs} failed:\n{done.stderr}"
        figures["resumed"] += 1
        after = Network.load(ck)
        assert [r["epoch"] for r in after.history] == list(range(1, epochs + 2))
        left = temp_files(tmp_path)
        figures["temp_files_after_next_save"] += len(left)
        assert not left, f"temporary files outlived the next save: {left}"
    figures["seconds"] = round(time.monotonic() - started, 1)
    path = tmp_path_factory.getbasetemp() / "kill9.json"
    path.write_text(json.dumps(figures, indent=1))
    print(f"\n=== kill -9 figures (also in {path}): {json.dumps(figures)}")
    assert figures["kills"] >= min(KILLS, 3)
    assert figures["checkpoint_present"] > 0, "no kill landed after a checkpoint: the test proved nothing"
    assert figures["temp_files_after_kill"] > 0, "no kill left a temporary file: the cleanup was not exercised"


# ---- errors on the command line ---------------------------------------------------------------
def test_divergence_is_a_clean_cli_error(tmp_path, small_idx):
    """Issue 12 item 3: `fastgd train: error: ...` naming the learning rate, no traceback."""
    proc = subprocess.run(fastgd_train_command("--data", small_idx, "--sizes", "784,16,10", "--activation", "relu",
                                               "--output", "softmax", "--loss", "cross_entropy", "--lr", "1e12",
                                               "--epochs", "3", "--seed", "0", "--backend", "numpy", "--no-progress",
                                               "--save", "m.npz"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode not in (0, 130), proc.stderr
    assert "fastgd train: error:" in proc.stderr and "learning rate" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    if (tmp_path / "m.npz").exists():  # if anything is saved, it is the last finite weights
        assert np.isfinite(Network.load(tmp_path / "m.npz").params).all()


@pytest.mark.parametrize("where", ["trainer", "cli"])
def test_missing_checkpoint_folder_fails_before_training(tmp_path, small_idx, mnist, where):
    """Issue 12 item 5: a checkpoint path in a folder that does not exist is refused up front."""
    missing = tmp_path / "no" / "such" / "folder" / "run.npz"
    if where == "cli":
        proc = subprocess.run(fastgd_train_command("--data", small_idx, "--epochs", "2", "--backend", "numpy",
                                                   "--no-progress", "--checkpoint", missing),
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "fastgd train: error:" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        # named as the missing folder up front, not met as a failing temporary file after an epoch
        assert str(missing.parent) in proc.stderr and ".tmp" not in proc.stderr, proc.stderr
        assert "epoch   1" not in proc.stdout + proc.stderr, "it trained an epoch before failing"
        return
    epochs_run = []
    net = Network([784, 16, 10], seed=0)
    before = net.params.copy()
    with pytest.raises((ValueError, OSError)) as info:
        fastgd.Trainer(net, epochs=2, backend="numpy", checkpoint=missing).fit(
            mnist[0][:100], mnist[1][:100], callbacks=[lambda r, t: epochs_run.append(r)])
    assert "folder" in str(info.value) or "directory" in str(info.value) or str(missing.parent) in str(info.value)
    assert not epochs_run
    np.testing.assert_array_equal(net.params, before)


def test_second_fit_starts_the_optimiser_afresh(mnist):
    """Issue 12 item 5: a second fit() does not carry the previous run's momentum over: it equals a
    fresh Trainer fitting the once-trained network (no shuffling, so no generator state matters)."""
    X, y = mnist[0][:500], mnist[1][:500]
    settings = dict(lr=0.5, momentum=0.9, epochs=1, backend="numpy", shuffle=False, seed=0)
    twice = Network([784, 16, 10], seed=0, dtype=np.float64)
    trainer = fastgd.Trainer(twice, **settings)
    trainer.fit(X, y)
    trainer.fit(X, y)
    fresh = Network([784, 16, 10], seed=0, dtype=np.float64)
    fastgd.Trainer(fresh, **settings).fit(X, y)
    fastgd.Trainer(fresh, **settings).fit(X, y)
    np.testing.assert_array_equal(twice.params, fresh.params)


# ---- concurrency -------------------------------------------------------------------------------
CONFIGS = [  # varied on purpose: each thread runs a different network, dtype, input and recipe
    dict(sizes=[784, 32, 10], activation="relu", output="softmax", loss="cross_entropy", dtype=np.float32,
         lr=0.1, batch_size=10, threads=1, uint8=True, recipe={}),
    dict(sizes=[784, 48, 24, 10], activation="sigmoid", output="sigmoid", loss="mse", dtype=np.float64,
         lr=3.0, batch_size=7, threads=2, uint8=True, recipe=dict(momentum=0.9, nesterov=True)),
    dict(sizes=[784, 17, 10], activation="tanh", output="softmax", loss="mse", dtype=np.float64,
         lr=0.5, batch_size=1, threads=2, uint8=False, recipe=dict(l2=1e-3, dropout=0.2)),
    dict(sizes=[784, 64, 10], activation="relu", output="softmax", loss="cross_entropy", dtype=np.float32,
         lr=0.05, batch_size=64, threads=2, uint8=True, recipe=dict(augment_shift=1, l1=1e-4), blas=True),
    dict(sizes=[784, 200, 10], activation="relu", output="softmax", loss="cross_entropy", dtype=np.float32,
         lr=0.05, batch_size=128, threads=2, uint8=True, recipe=dict(momentum=0.5), blas=True),
]
# blas=True: layers big enough for BLAS gemm with 2 threads. OpenBLAS's thread count is
# process-wide (threadpoolctl limits, restored on exit of each `with`), so a concurrent trainer
# setting or restoring it changes how this one's gemms split their sums: such configurations are
# compared within float32 rounding, the others bitwise.


def run_config(backend, c, X, y, seed):
    net = Network(c["sizes"], activation=c["activation"], output=c["output"], dtype=c["dtype"], seed=seed)
    Xc = X if c["uint8"] else (X / 255.0).astype(c["dtype"])
    trainer = fastgd.Trainer(net, loss=c["loss"], lr=c["lr"], batch_size=c["batch_size"], epochs=2,
                             backend=backend, threads=c["threads"], seed=seed, **c["recipe"])
    history = trainer.fit(Xc, y)
    return net.params.copy(), [r["train_loss"] for r in history], net.predict_proba(Xc[:300], backend=backend)


def run_all_in_threads(jobs, X, y):
    """jobs: [(backend, config, seed)] started together behind a barrier; their results in order."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def work(i, backend, c, seed):
        try:
            barrier.wait(timeout=120)
            results[i] = run_config(backend, c, X, y, seed)
        except BaseException as exc:  # reported below, with the job
            errors.append((jobs[i][0], i, exc))

    threads = [threading.Thread(target=work, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    return results


def assert_same(got, want, what, exact=True):
    """Weights bitwise (exact) or within float32 rounding; predictions (forward passes over 256-row
    chunks, BLAS-sized) within rounding; the reported losses to the last bits only, because the
    Trainer sizes its Ctrl-C slices from timings and the per-slice loss sums are added in float64."""
    if exact:
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"{what}: weights")
    else:
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-6, err_msg=f"{what}: weights")
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-6, err_msg=f"{what}: predictions")
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12 if exact else 1e-5, atol=0, err_msg=f"{what}: losses")


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_trainers_in_threads_match_sequential_runs(backend, mnist):
    X, y = mnist[0][:600], mnist[1][:600]
    jobs = [(backend, c, seed) for seed, c in enumerate(CONFIGS)]
    jobs += [(backend, CONFIGS[1], 99)]  # two threads on the same configuration, other seeds
    alone = [run_config(b, c, X, y, s) for b, c, s in jobs]
    for round_ in range(2):
        together = run_all_in_threads(jobs, X, y)
        for (b, c, s), got, want in zip(jobs, together, alone):
            assert_same(got, want, f"round {round_}, {b} {c['sizes']} seed {s}", exact=not c.get("blas"))


def test_every_backend_at_once_matches_sequential_runs(mnist):
    X, y = mnist[0][:600], mnist[1][:600]
    jobs = [(b, c, 7) for b in BACKENDS for c in (CONFIGS[0], CONFIGS[1], CONFIGS[4])]
    alone = [run_config(b, c, X, y, s) for b, c, s in jobs]
    together = run_all_in_threads(jobs, X, y)
    for (b, c, s), got, want in zip(jobs, together, alone):
        assert_same(got, want, f"{b} {c['sizes']} alongside the other backends", exact=not c.get("blas"))
