"""Peers: PyTorch and JAX timed on the same cases, each in a process of its own, after fastgd's
backends (so their figures never come from the same run as fastgd's).

The worker (peer_worker.py) needs only NumPy and the peer, so the peer may live in another
interpreter: ``measure_peers(..., python="/path/to/jax-venv/bin/python")`` (``fastgd bench
--peer-python``, or the environment variable FASTGD_PEER_PYTHON). Each peer runs under the first
of (that interpreter, this one) that has it installed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .configs import MNIST_TRAIN, PEERS
from .timing import Result, Workload, epoch_samples

PEER_PYTHON_ENV = "FASTGD_PEER_PYTHON"
WORKER = Path(__file__).with_name("peer_worker.py")
_MODULES = {"torch": "torch", "jax": "jax"}
_INSTALL = {"torch": "pip install torch", "jax": "pip install jax"}


def default_peer_python():
    """FASTGD_PEER_PYTHON if set, else None (this interpreter only)."""
    return os.environ.get(PEER_PYTHON_ENV) or None


def _candidates(python):
    out = []
    for p in (python, default_peer_python() if python is None else None, sys.executable):
        if p and p not in out:
            out.append(p)
    return out


def _has_module(python, module):
    if python == sys.executable:
        import importlib.util

        return importlib.util.find_spec(module) is not None
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    try:
        return subprocess.run([python, "-c", code], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def peer_python(name, python=None):
    """The interpreter that runs peer `name`: the first of (python or FASTGD_PEER_PYTHON, this one)
    that has it installed; None if none has."""
    for p in _candidates(python):
        if _has_module(p, _MODULES[name]):
            return p
    return None


def peer_available(name, python=None):
    """True if `name` ("torch" or "jax") can be imported here or by `python` / FASTGD_PEER_PYTHON."""
    return peer_python(name, python) is not None


def _runnable(python):
    import shutil

    return python == sys.executable or shutil.which(python) is not None


def _missing_message(peer, python):
    tried = " or ".join(p if _runnable(p) else f"{p} (no such interpreter)" for p in _candidates(python))
    return (f"{peer} is not installed for {tried}; skipped ({_INSTALL[peer]}, or point --peer-python / "
            f"{PEER_PYTHON_ENV} at a Python that has it)")


def _case(config, budget_seconds, max_samples):
    spec = config.net
    return {"id": config.id, "kind": config.kind, "sizes": list(spec.sizes), "activation": spec.activation,
            "output": spec.output, "loss": spec.loss, "lr": spec.lr, "dtype": config.dtype,
            "batch_size": config.batch_size, "data": config.data,
            "n_samples": epoch_samples(config, budget_seconds, max_samples)}


def measure_peers(configs, peers=PEERS, repeats=5, budget_seconds=None, warmup=1, max_samples=None, python=None,
                  workload=None, progress=None):
    """Run the cases of `configs` with each installed peer, in a subprocess per peer and thread count
    (pinned to `threads` cores; its thread pools never run beside fastgd's). Training rounds are
    full epochs unless `budget_seconds` / `max_samples` ask for a subsample (as for fastgd).
    Returns (results, messages); messages say which peer was skipped or failed, and which
    interpreter and version ran each."""
    results, messages = [], []
    cases = {}
    for c in configs:
        if c.deterministic:  # peers have no nondeterministic mode; they are timed on deterministic cases
            cases.setdefault(c.case, c)
    if not cases:
        if configs:
            messages.append("peers skipped: they have no nondeterministic mode to compare with")
        return results, messages
    data_dir = None
    try:
        for peer in peers:
            interpreter = peer_python(peer, python)
            if interpreter is None:
                messages.append(_missing_message(peer, python))
                continue
            if data_dir is None:
                data_dir = tempfile.TemporaryDirectory(prefix="fastgd-peers-")
                w = workload or Workload()
                data_path = os.path.join(data_dir.name, "mnist.npz")
                np.savez(data_path, X_train=w.X_train, y_train=w.y_train, X_test=w.X_test)
            by_threads = {}
            for c in cases.values():
                by_threads.setdefault(c.threads, []).append(c.with_backend(peer))
            for threads, group in sorted(by_threads.items()):
                by_id = {c.id: c for c in group}
                request = {"peer": peer, "threads": threads, "repeats": repeats, "warmup": warmup,
                           "data_path": data_path, "cases": [_case(c, budget_seconds, max_samples) for c in group]}
                env = dict(os.environ)
                for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                    env[var] = str(threads)
                if peer == "jax":
                    env["JAX_PLATFORMS"] = "cpu"
                proc = subprocess.run([interpreter, str(WORKER)], input=json.dumps(request), capture_output=True,
                                      text=True, env=env)
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                    messages.append(f"{peer} ({threads} threads, {interpreter}) failed: {tail}")
                    continue
                reply = json.loads(proc.stdout.strip().splitlines()[-1])
                messages.append(f"{peer}: {reply['version']} on {interpreter}, {threads} thread"
                                + ("s" if threads != 1 else "") + ", own process")
                for d in reply["results"]:
                    cfg = by_id[d["id"]]
                    r = Result(cfg, d["n_samples"], d["seconds"], d["compile_seconds"],
                               subsampled=cfg.kind == "train" and d["n_samples"] < MNIST_TRAIN,
                               note=reply["version"], separate_process=True)
                    results.append(r)
                    if progress is not None:
                        progress(r)
    finally:
        if data_dir is not None:
            data_dir.cleanup()
    return results, messages
