"""Epoch time with image shifts on the Cython backend: the sparse first layer (rows shifted as
they are gathered, the default) against the dense path shifted epochs used to take
(`permute_sparse = False` sends them there), alternating A/B in one process; medians.

    PYTHONPATH=src python bench/shift_sparse_ab.py [rounds]
"""
import statistics
import sys
import time

import numpy as np

import fastgd
from fastgd.backends import EpochPlan, StepRule
from fastgd.backends.base import SGD
from fastgd.backends.cython_backend import CythonBackend

CASES = [  # sizes, act, out, loss, lr, batch, threads
    ([784, 16, 16, 10], "sigmoid", "sigmoid", "mse", 3.0, 10, 2),
    ([784, 16, 16, 10], "leaky_relu", "softmax", "cross_entropy", 0.1, 32, 2),
    ([784, 128, 10], "relu", "softmax", "cross_entropy", 0.05, 32, 1),
]


def epoch(b, net, X, targets, labels, order, bs, lr, loss, threads, shift, ws):
    plan = EpochPlan(X=X, x_scale=1 / 255, targets=targets, labels=labels, order=order,
                     lrs=np.full(-(-order.size // bs), lr), batch_size=bs, loss=loss, threads=threads,
                     rule=StepRule(SGD), max_shift=shift, image_shape=(28, 28), seed=int(order[0]))
    t = time.perf_counter()
    b.train_epoch(net, plan, ws)
    return time.perf_counter() - t, plan


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    X, y, _, _ = fastgd.datasets.load_mnist()
    labels = y.astype(np.int32)
    print("| case | shift | dense path ms | sparse path ms | sparse/dense | no shift ms |\n|---|---:|---:|---:|---:|---:|")
    for sizes, act, out, loss, lr, bs, threads in CASES:
        targets = np.eye(10, dtype=np.float32)[labels]
        rng = np.random.default_rng(0)
        dense, sparse = CythonBackend(), CythonBackend()
        dense.permute_sparse = False
        nets = {k: fastgd.Network(sizes, act, out, dtype="float32", seed=0) for k in ("d", "s", "n")}
        wss, times = {}, {"d": [], "s": [], "n": []}
        for r in range(rounds + 1):
            order = rng.permutation(X.shape[0]).astype(np.int64)
            for k, b, shift in (("d", dense, 2), ("s", sparse, 2), ("n", sparse, 0)):
                if k not in wss:
                    _, plan = epoch(b, nets[k], X, targets, labels, order[:bs], bs, lr, loss, threads, shift,
                                    b.prepare(nets[k], EpochPlan(X=X, x_scale=1 / 255, targets=targets,
                                                                 labels=labels, order=order, lrs=np.full(1, lr),
                                                                 batch_size=bs, loss=loss, threads=threads,
                                                                 max_shift=shift, image_shape=(28, 28))))
                    wss[k] = b.prepare(nets[k], plan)
                dt, _ = epoch(b, nets[k], X, targets, labels, order, bs, lr, loss, threads, shift, wss[k])
                if r > 0:
                    times[k].append(dt)
        md, ms, mn = (statistics.median(times[k]) * 1e3 for k in "dsn")
        print(f"| {'-'.join(map(str, sizes))} {act}/{loss} b{bs} {threads} thr | 2 | {md:.1f} | {ms:.1f} | "
              f"{ms / md:.2f} | {mn:.1f} |", flush=True)


if __name__ == "__main__":
    main()
