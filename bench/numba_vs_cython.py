"""A/B full MNIST epochs of the Cython backend and Numba backend variants, alternating in one run.

    PYTHONPATH=src python bench/numba_vs_cython.py [--cases 1,2,3,4] [--reps 2] [--epochs 3] \
        [--threads 2] VARIANT ...

VARIANT: "cython", "numba", or "numba:knob=value,knob=value" (NumbaBackend attributes, e.g.
numba:sparse_input=never). Each rep runs every variant once per case, in turn (fit of `--epochs`
epochs, the first left out); the printed figure is the median over reps of the remaining epochs:
"ms" wall time of the backend's train_epoch calls per epoch, "cpu_ms" their process CPU time
(on a loaded machine the CPU time of a 1-thread run is the steadier figure; with 2 threads it
includes barrier spinning).
Cases are /work/notes/fgd_epochs.py's issue-11 table (0: lesson ... 6: Gaussian input).
"""
import argparse
import json
import statistics
import time

import numpy as np

import fastgd
from fastgd.backends import get_backend
from fastgd.backends.numba_backend import NumbaBackend

CASES = [([784, 16, 16, 10], "sigmoid", "sigmoid", "mse", 3.0, 10, False),
         ([784, 128, 10], "relu", "softmax", "cross_entropy", 0.05, 32, False),
         ([784, 128, 10], "relu", "softmax", "cross_entropy", 0.05, 128, False),
         ([784, 256, 10], "relu", "softmax", "cross_entropy", 0.05, 64, False),
         ([784, 512, 512, 10], "relu", "softmax", "cross_entropy", 0.05, 32, False),
         ([784, 512, 512, 10], "relu", "softmax", "cross_entropy", 0.05, 128, False),
         ([784, 512, 512, 10], "relu", "softmax", "cross_entropy", 0.05, 128, True)]


def backend_for(variant):
    if variant == "cython":
        return get_backend("cython")
    b = NumbaBackend()
    if ":" in variant:
        for kv in variant.split(":", 1)[1].split(","):
            k, v = kv.split("=")
            old = getattr(b, k)
            setattr(b, k, type(old)(v) if not isinstance(old, bool) else v in ("1", "True", "true"))
    return b


def timed(backend, log):
    """backend with train_epoch wrapped: appends (first_position, wall s, cpu s) per call to log."""
    inner = backend.train_epoch

    def train_epoch(net, plan, ws=None):
        w0, c0 = time.perf_counter(), time.process_time()
        r = inner(net, plan, ws)
        log.append((plan.first_position, time.perf_counter() - w0, time.process_time() - c0))
        return r
    backend.train_epoch = train_epoch
    return backend


def per_epoch(log):
    """[(wall, cpu)] per epoch from the call log (an epoch starts at first_position 0)."""
    out = []
    for pos, w, c in log:
        if pos == 0 or not out:
            out.append([0.0, 0.0])
        out[-1][0] += w
        out[-1][1] += c
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--cases", default="1,2,3,4")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    X, y, _, _ = fastgd.datasets.load_mnist()
    G = np.random.default_rng(0).standard_normal(X.shape).astype(np.float32)
    for ci in (int(c) for c in a.cases.split(",")):
        sizes, act, out, loss, lr, bs, gauss = CASES[ci]
        times = {v: [] for v in a.variants}
        cpus = {v: [] for v in a.variants}
        modes = {}
        for _ in range(a.reps):
            for v in a.variants:
                net = fastgd.Network(sizes, activation=act, output=out, dtype="float32", seed=0)
                tr = fastgd.Trainer(net, loss=loss, lr=lr, batch_size=bs, epochs=a.epochs,
                                    backend="cython" if v == "cython" else "numba", threads=a.threads, seed=0)
                log = []
                tr.backend = timed(backend_for(v), log)
                h = tr.fit(G if gauss else X, y)
                ep = per_epoch(log)[1:]
                times[v] += [e[0] for e in ep]
                cpus[v] += [e[1] for e in ep]
                modes[v] = (h.records[-1].get("mode"), h.records[-1].get("threads_used"),
                            round(h.records[-1].get("accuracy", h.records[-1].get("train_accuracy", 0)) or 0, 4))
        row = {v: round(statistics.median(t) * 1e3, 1) for v, t in times.items()}
        cpu = {v: round(statistics.median(t) * 1e3, 1) for v, t in cpus.items()}
        print(json.dumps({"case": ci, "sizes": sizes, "batch": bs, "gauss": gauss, "threads": a.threads, "ms": row,
                          "cpu_ms": cpu, "modes": modes}), flush=True)


if __name__ == "__main__":
    main()
