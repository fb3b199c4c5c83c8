"""Peers: PyTorch and JAX timed on the same cases, each in its own process
(``python -m fastgd.benchmarks.peers peer-worker``, internal)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np

from .. import _checks
from .configs import MNIST_TRAIN, PEERS, Config
from .timing import Result, Workload, _timed, epoch_samples


def peer_available(name):
    """True if `name` ("torch" or "jax") can be imported here."""
    import importlib.util

    module = {"torch": "torch", "jax": "jax"}[name]
    return importlib.util.find_spec(module) is not None


def measure_peers(configs, peers=PEERS, repeats=5, budget_seconds=0.3, warmup=1, max_samples=None):
    """Run the cases of `configs` with each installed peer, in a subprocess per peer and thread count
    (its own thread pools never run beside fastgd's; the process is pinned to `threads` cores).
    Returns (results, messages)."""
    results, messages = [], []
    cases = {}
    for c in configs:
        cases.setdefault(c.case, c)
    for peer in peers:
        if not peer_available(peer):
            messages.append(f"{peer} is not installed; skipped (pip install {'torch' if peer == 'torch' else 'jax jaxlib'})")
            continue
        by_threads = {}
        for c in cases.values():
            by_threads.setdefault(c.threads, []).append(c.with_backend(peer))
        for threads, group in sorted(by_threads.items()):
            request = {"peer": peer, "threads": threads, "configs": [asdict(c) for c in group], "repeats": repeats,
                       "budget_seconds": budget_seconds, "warmup": warmup, "max_samples": max_samples}
            env = dict(os.environ)
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(threads)
            if peer == "jax":
                env["JAX_PLATFORMS"] = "cpu"
                if threads == 1:  # (the process is also pinned to one core in the worker)
                    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
            proc = subprocess.run([sys.executable, "-m", "fastgd.benchmarks.peers", "peer-worker"], input=json.dumps(request),
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                messages.append(f"{peer} ({threads} threads) failed: {tail}")
                continue
            for d in json.loads(proc.stdout.strip().splitlines()[-1]):
                cfg = Config(**d["config"])
                results.append(Result(cfg, d["n_samples"], d["seconds"], d["compile_seconds"], d["subsampled"],
                                      d.get("note", "")))
    return results, messages


class _PeerRunner:
    """Interface shared by the peers inside the worker: setup, then run() per timed call."""

    def __init__(self, config, workload, budget_seconds, max_samples, seed=0):
        self.config = config
        self.spec = config.net
        self.workload = workload
        self.rng = np.random.default_rng(seed)
        self.compile_seconds = 0.0
        self.build()
        if config.kind == "train":
            n = self.n = epoch_samples(config, budget_seconds, max_samples)
            self.order = self.rng.permutation(workload.n_train)[:n].astype(np.int64)
            start = time.perf_counter()
            self.prepare_epoch(n)
            self.epoch()  # the first call compiles (JAX) or allocates (torch): not timed
            self.compile_seconds = time.perf_counter() - start
        else:
            self.prepare_infer()
            self.infer()
            self.n = workload.X_test.shape[0]

    def run(self):
        if self.config.kind == "train":
            self.reset()
            return _timed(self.epoch)
        return _timed(self.infer)


class _TorchRunner(_PeerRunner):
    """PyTorch as a careful user writes it: nn.Sequential + optim.SGD, data converted to float once."""

    def build(self):
        import torch
        from torch import nn

        torch.manual_seed(0)
        self.torch = torch
        dt = torch.float32 if self.config.dtype == "float32" else torch.float64
        self.dtype = dt
        act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[self.spec.activation]
        layers = []
        sizes = self.spec.sizes
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        if self.spec.output == "sigmoid":
            layers.append(nn.Sigmoid())  # softmax output: folded into CrossEntropyLoss on the logits
        self.model = nn.Sequential(*layers).to(dt)
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.spec.lr)
        w = self.workload
        np_dt = np.dtype(self.config.dtype)
        self.X = torch.from_numpy(w.X_train.astype(np_dt)).div_(255)
        self.labels = torch.from_numpy(w.y_train.astype(np.int64))
        self.T = torch.nn.functional.one_hot(self.labels, sizes[-1]).to(dt)
        self.X_test = torch.from_numpy(w.X_test.astype(np_dt)).div_(255)

    def reset(self):
        self.model.load_state_dict(self.initial)

    def prepare_epoch(self, n):
        self.batches = list(self.torch.from_numpy(self.order[:n]).split(self.config.batch_size))

    def epoch(self):
        torch, model, opt = self.torch, self.model, self.opt
        mse = self.spec.loss == "mse"
        for idx in self.batches:
            out = model(self.X[idx])
            if mse:
                loss = 0.5 * ((out - self.T[idx]) ** 2).sum(dim=1).mean()
            elif self.spec.output == "softmax":
                loss = torch.nn.functional.cross_entropy(out, self.labels[idx])
            else:
                loss = torch.nn.functional.binary_cross_entropy(out, self.T[idx], reduction="sum") / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def prepare_infer(self):
        pass

    def infer(self):
        with self.torch.inference_mode():
            out = self.model(self.X_test)
            if self.spec.output == "softmax":
                out = out.softmax(dim=1)
        return out


class _JaxRunner(_PeerRunner):
    """JAX as a careful user writes it: the whole epoch one jit-compiled lax.scan over minibatches."""

    def build(self):
        import jax

        if self.config.dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax

        self.jax, self.jnp = jax, jnp
        dt = jnp.float32 if self.config.dtype == "float32" else jnp.float64
        spec = self.spec
        act = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh}[spec.activation]
        rng = np.random.default_rng(0)
        params = []
        for a, b in zip(spec.sizes[:-1], spec.sizes[1:]):
            params.append((jnp.asarray(rng.standard_normal((a, b)) * np.sqrt(2.0 / (a + b)), dtype=dt),
                           jnp.zeros(b, dtype=dt)))
        self.initial = params

        def logits(params, x):
            for W, b in params[:-1]:
                x = act(x @ W + b)
            W, b = params[-1]
            return x @ W + b

        def loss_fn(params, x, t):
            z = logits(params, x)
            if spec.loss == "mse":
                a = jax.nn.sigmoid(z) if spec.output == "sigmoid" else jax.nn.softmax(z) if spec.output == "softmax" else z
                return 0.5 * jnp.mean(jnp.sum((a - t) ** 2, axis=1))
            if spec.output == "softmax":
                return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(z), axis=1))
            return jnp.mean(jnp.sum(t * jax.nn.softplus(-z) + (1 - t) * jax.nn.softplus(z), axis=1))

        lr = spec.lr

        def step(params, X, T, idx):
            g = jax.grad(loss_fn)(params, X[idx], T[idx])
            return jax.tree_util.tree_map(lambda p, gp: p - lr * gp, params, g)

        @jax.jit
        def epoch(params, X, T, batches):
            params, _ = lax.scan(lambda p, idx: (step(p, X, T, idx), None), params, batches)
            return params

        self._epoch = epoch
        self._step = jax.jit(step)

        def predict(params, x):
            z = logits(params, x)
            return jax.nn.softmax(z) if spec.output == "softmax" else jax.nn.sigmoid(z) if spec.output == "sigmoid" else z

        self._predict = jax.jit(predict)
        w = self.workload
        self.X = jax.device_put(jnp.asarray(w.X_train, dtype=dt) / 255)
        self.T = jax.device_put(jax.nn.one_hot(jnp.asarray(w.y_train), spec.sizes[-1], dtype=dt))
        self.X_test = jax.device_put(jnp.asarray(w.X_test, dtype=dt) / 255)
        self.params = params

    def reset(self):
        self.params = self.initial

    def prepare_epoch(self, n):
        bs = self.config.batch_size
        full = (n // bs) * bs
        self.batches = self.jnp.asarray(self.order[:full].reshape(-1, bs))
        self.rest = self.jnp.asarray(self.order[full:n]) if n > full else None

    def epoch(self):
        params = self._epoch(self.params, self.X, self.T, self.batches)
        if self.rest is not None:  # a smaller last minibatch, as in every fastgd epoch
            params = self._step(params, self.X, self.T, self.rest)
        self.jax.block_until_ready(params)
        self.params = params

    def prepare_infer(self):
        pass

    def infer(self):
        return self._predict(self.params, self.X_test).block_until_ready()


def _peer_worker():
    """Entry point of the peer subprocess: a JSON request on stdin, a JSON list of results on stdout."""
    request = json.loads(sys.stdin.read())
    threads = int(request["threads"])
    if threads < _checks.available_cores() and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    runner_cls = {"torch": _TorchRunner, "jax": _JaxRunner}[request["peer"]]
    if request["peer"] == "torch":
        import torch

        torch.set_num_threads(threads)
    workload = Workload()
    out = []
    for d in request["configs"]:
        config = Config(**d)
        runner = runner_cls(config, workload, request["budget_seconds"], request["max_samples"])
        for _ in range(request["warmup"]):
            runner.run()
        seconds = [runner.run() for _ in range(request["repeats"])]
        out.append({"config": asdict(config), "n_samples": runner.n, "seconds": seconds,
                    "compile_seconds": runner.compile_seconds,
                    "subsampled": config.kind == "train" and runner.n < MNIST_TRAIN})
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1:] == ["peer-worker"]:
        _peer_worker()
    else:
        sys.exit("usage: python -m fastgd.benchmarks.peers peer-worker  (internal; use `fastgd bench`)")
