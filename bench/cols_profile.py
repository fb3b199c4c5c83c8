"""One full 60k-image epoch of 784-512-512-10 (relu/softmax CE, float32) in the Cython "cols"
epoch, called directly, with its per-thread profile: each OpenMP thread's CPU seconds in each
phase (dense_cols.PROFILE_PHASES: the forward GEMMs, gathering the next rows, the output layer,
the backward GEMMs with the hidden layers' updates, the partials' reduction, the first layer's
update, waiting in barriers) and the dense GFLOP/s of the epoch. On a shared machine the wall
time says little about the kernel, but the CPU per phase and thread still shows where the time
goes and how the work splits (1 thread vs 2: the scaling the kernel would have on quiet cores).

    PYTHONPATH=src python bench/cols_profile.py [batch] [gauss: 0|1] [threads,...] [rounds]
"""
import sys
import time

import numpy as np

import fastgd
from fastgd import ops
from fastgd._kernels import dense_cols
from fastgd.benchmarks.peak import train_flops_per_sample

if __name__ == "__main__":
    bs = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    gauss = len(sys.argv) > 2 and sys.argv[2] == "1"
    thread_counts = [int(t) for t in sys.argv[3].split(",")] if len(sys.argv) > 3 else [1, 2]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    X, y, _, _ = fastgd.datasets.load_mnist()
    if gauss:
        X = np.random.default_rng(0).standard_normal(X.shape).astype(np.float32)
    labels = np.asarray(y, dtype=np.int32)
    targets = np.eye(10, dtype=np.float32)[labels]
    lrs = np.full(-(-len(X) // bs), 0.05)
    codes = (ops.ACTIVATION_CODES["relu"], ops.ACTIVATION_CODES["softmax"], ops.LOSS_CODES["cross_entropy"])
    for r in range(rounds):
        for threads in thread_counts:
            net = fastgd.Network([784, 512, 512, 10], activation="relu", output="softmax", dtype="float32", seed=0)
            order = np.random.default_rng(r).permutation(len(X)).astype(np.int64)
            prof = np.zeros(dense_cols.PROFILE_STRIDE * threads)
            t0 = time.perf_counter()
            ran = dense_cols.train_epoch_cols(net.params, net.layout_array(), X, 1 / 255 if X.dtype == np.uint8 else 1.0,
                                              order, targets, labels, lrs, bs, *codes, threads, np.zeros(threads),
                                              np.zeros(threads, np.int64), not gauss, None, prof)
            wall = time.perf_counter() - t0
            phases = dense_cols.PROFILE_PHASES
            p = prof.reshape(threads, dense_cols.PROFILE_STRIDE)[:ran, :len(phases)]
            gflop = len(X) * train_flops_per_sample(net.sizes) / 1e9
            print(f"b{bs}{' Gaussian' if gauss else ' MNIST'} {threads} thread(s) ({ran} ran): wall {wall * 1e3:.0f} ms, "
                  f"{gflop / wall:.0f} GFLOP/s dense; CPU ms per phase, thread by thread:", flush=True)
            for k, name in enumerate(phases):
                print(f"    {name:13s}" + "".join(f"{p[t, k] * 1e3:9.1f}" for t in range(ran)), flush=True)
