"""The peers' timing worker: PyTorch or JAX on fastgd's benchmark cases, in a process of its own.

Run by fastgd.benchmarks.peers as ``PYTHON peer_worker.py`` (a JSON request on stdin, one JSON list
of results as the last line of stdout). It imports only the standard library, NumPy and the peer,
so PYTHON may be any interpreter that has the peer installed (e.g. a separate JAX venv) without
fastgd. The request carries everything: the cases (sizes, activation, loss, learning rate, batch
size, data, thread count), the sample order's seed and the path of an .npz holding MNIST.

Each peer is written the way a careful user writes it for speed:
  * JAX: data on the device once; each epoch ONE jit-compiled function, a lax.scan over the
    minibatches that gathers each minibatch from the device arrays by index (the last, smaller
    minibatch of a fastgd epoch is one more jitted step); compilation and a warm-up epoch are
    not timed; results are awaited with block_until_ready.
  * PyTorch: nn.Sequential + optim.SGD, data converted to float tensors once, index gathering per
    minibatch; inference under torch.inference_mode.
"""
import json
import os
import sys
import time

import numpy as np

MNIST_TRAIN = 60_000
GAUSS_SEED = 0  # as fastgd.benchmarks.timing.GAUSS_SEED


def _timed(fn):
    import gc

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()


class Data:
    """MNIST from the request's .npz, and the dense Gaussian input built on demand."""

    def __init__(self, path):
        with np.load(path) as f:
            self.X_train, self.y_train, self.X_test = f["X_train"], f["y_train"], f["X_test"]
        self._gauss = {}

    def train_inputs(self, data, dtype):
        """Float training inputs: pixels / 255, or the Gaussian input (fastgd's exactly)."""
        if data == "gauss":
            if dtype not in self._gauss:
                self._gauss[dtype] = (np.random.default_rng(GAUSS_SEED).standard_normal(self.X_train.shape)
                                      .astype(dtype))
            return self._gauss[dtype]
        return self.X_train.astype(dtype) / np.asarray(255, dtype)


class PeerRunner:
    """setup, then run() per timed call (train: one epoch from the initial weights)."""

    def __init__(self, case, data, seed=0):
        self.case = case
        self.data = data
        self.compile_seconds = 0.0
        self.build()
        kind = case["kind"]
        if kind == "train":
            n = self.n = int(case["n_samples"])
            self.order = np.random.default_rng(seed).permutation(data.X_train.shape[0])[:n].astype(np.int64)
            start = time.perf_counter()
            self.prepare_epoch()
            self.epoch()  # the first call compiles (JAX) or allocates (torch): not timed
            self.compile_seconds = time.perf_counter() - start
        elif kind == "infer":
            self.n = data.X_test.shape[0]
            self.infer()
        else:
            self.n = int(case["n_samples"])
            self.rows = [data.X_test[i:i + 1] for i in range(min(self.n, data.X_test.shape[0]))]
            self.prepare_latency()
            self.latency()

    def run(self):
        kind = self.case["kind"]
        if kind == "train":
            self.reset()
            return _timed(self.epoch)
        return _timed(self.infer if kind == "infer" else self.latency)


class TorchRunner(PeerRunner):
    def build(self):
        import torch
        from torch import nn

        torch.manual_seed(0)
        self.torch = torch
        c = self.case
        dt = torch.float32 if c["dtype"] == "float32" else torch.float64
        act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[c["activation"]]
        sizes = c["sizes"]
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        if c["output"] == "sigmoid":
            layers.append(nn.Sigmoid())  # softmax output: folded into cross_entropy on the logits
        self.model = nn.Sequential(*layers).to(dt)
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=c["lr"])
        d = self.data
        if c["kind"] == "train":
            self.X = torch.from_numpy(d.train_inputs(c["data"], c["dtype"]))
            self.labels = torch.from_numpy(d.y_train.astype(np.int64))
            self.T = torch.nn.functional.one_hot(self.labels, sizes[-1]).to(dt)
        self.X_test = torch.from_numpy(d.X_test.astype(c["dtype"]) / np.asarray(255, c["dtype"]))

    def reset(self):
        self.model.load_state_dict(self.initial)

    def prepare_epoch(self):
        self.batches = list(self.torch.from_numpy(self.order).split(self.case["batch_size"]))

    def epoch(self):
        torch, model, opt, c = self.torch, self.model, self.opt, self.case
        mse = c["loss"] == "mse"
        for idx in self.batches:
            out = model(self.X[idx])
            if mse:
                loss = 0.5 * ((out - self.T[idx]) ** 2).sum(dim=1).mean()
            elif c["output"] == "softmax":
                loss = torch.nn.functional.cross_entropy(out, self.labels[idx])
            else:
                loss = torch.nn.functional.binary_cross_entropy(out, self.T[idx], reduction="sum") / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def _predict(self, x):
        out = self.model(x)
        return out.softmax(dim=1) if self.case["output"] == "softmax" else out

    def infer(self):
        with self.torch.inference_mode():
            return self._predict(self.X_test)

    def prepare_latency(self):
        dt = self.case["dtype"]
        self.row_tensors = [self.torch.from_numpy(r.astype(dt) / np.asarray(255, dt)) for r in self.rows]
        self.calls = [self.row_tensors[i % len(self.row_tensors)] for i in range(self.n)]

    def latency(self):
        out = None
        with self.torch.inference_mode():
            for x in self.calls:
                out = self._predict(x)
        return out


class JaxRunner(PeerRunner):
    def build(self):
        import jax

        c = self.case
        if c["dtype"] == "float64":
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax

        self.jax, self.jnp = jax, jnp
        dt = jnp.float32 if c["dtype"] == "float32" else jnp.float64
        sizes = c["sizes"]
        act = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh}[c["activation"]]
        rng = np.random.default_rng(0)
        self.initial = [(jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), dtype=dt), jnp.zeros(b, dtype=dt))
                        for a, b in zip(sizes[:-1], sizes[1:])]
        output, loss, lr = c["output"], c["loss"], c["lr"]

        def logits(params, x):
            for W, b in params[:-1]:
                x = act(x @ W + b)
            W, b = params[-1]
            return x @ W + b

        def activate(z):
            return jax.nn.softmax(z) if output == "softmax" else jax.nn.sigmoid(z) if output == "sigmoid" else z

        def loss_fn(params, x, t):
            z = logits(params, x)
            if loss == "mse":
                return 0.5 * jnp.mean(jnp.sum((activate(z) - t) ** 2, axis=1))
            if output == "softmax":
                return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(z), axis=1))
            return jnp.mean(jnp.sum(t * jax.nn.softplus(-z) + (1 - t) * jax.nn.softplus(z), axis=1))

        def step(params, X, T, idx):  # gathers its minibatch from the device arrays by index
            g = jax.grad(loss_fn)(params, X[idx], T[idx])
            return jax.tree_util.tree_map(lambda p, gp: p - lr * gp, params, g)

        @jax.jit
        def epoch(params, X, T, batches):  # the whole epoch: one compiled scan over index rows
            return lax.scan(lambda p, idx: (step(p, X, T, idx), None), params, batches)[0]

        self._epoch = epoch
        self._step = jax.jit(step)
        self._predict = jax.jit(lambda params, x: activate(logits(params, x)))
        d = self.data
        if c["kind"] == "train":
            self.X = jax.device_put(jnp.asarray(d.train_inputs(c["data"], c["dtype"])))
            self.T = jax.device_put(jax.nn.one_hot(jnp.asarray(d.y_train), sizes[-1], dtype=dt))
        self.X_test = jax.device_put(jnp.asarray(d.X_test.astype(c["dtype"]) / np.asarray(255, c["dtype"])))
        self.params = self.initial

    def reset(self):
        self.params = self.initial

    def prepare_epoch(self):
        bs, n = self.case["batch_size"], self.n
        full = (n // bs) * bs
        self.batches = self.jax.device_put(self.jnp.asarray(self.order[:full].reshape(-1, bs)))
        self.rest = self.jax.device_put(self.jnp.asarray(self.order[full:n])) if n > full else None

    def epoch(self):
        params = self._epoch(self.params, self.X, self.T, self.batches)
        if self.rest is not None:  # the smaller last minibatch, as in every fastgd epoch
            params = self._step(params, self.X, self.T, self.rest)
        self.params = self.jax.block_until_ready(params)

    def infer(self):
        return self._predict(self.params, self.X_test).block_until_ready()

    def prepare_latency(self):
        dt = self.case["dtype"]
        rows = [self.jax.device_put(self.jnp.asarray(r.astype(dt) / np.asarray(255, dt))) for r in self.rows]
        self.calls = [rows[i % len(rows)] for i in range(self.n)]

    def latency(self):
        out = None
        for x in self.calls:
            out = self._predict(self.params, x).block_until_ready()
        return out


def versions(peer):
    if peer == "torch":
        import torch

        return f"torch {torch.__version__}"
    import jax
    import jaxlib

    return f"jax {jax.__version__}/jaxlib {jaxlib.__version__}"


def main():
    request = json.loads(sys.stdin.read())
    threads = int(request["threads"])
    if hasattr(os, "sched_setaffinity"):  # pinned to `threads` cores: its pools cannot use more
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, set(cpus[:threads]))
    peer = request["peer"]
    if peer == "torch":
        import torch

        torch.set_num_threads(threads)
    runner_cls = {"torch": TorchRunner, "jax": JaxRunner}[peer]
    data = Data(request["data_path"])
    out = []
    for case in request["cases"]:
        runner = runner_cls(case, data)
        for _ in range(int(request["warmup"])):
            runner.run()
        seconds = [runner.run() for _ in range(int(request["repeats"]))]
        out.append({"id": case["id"], "n_samples": runner.n, "seconds": seconds,
                    "compile_seconds": runner.compile_seconds})
    print(json.dumps({"version": versions(peer), "python": sys.executable, "results": out}))


if __name__ == "__main__":
    main()
