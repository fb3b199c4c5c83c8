"""Full 60k-image epochs of the issue-11 large network (784-512-512-10 relu/softmax CE, float32)
through fastgd.Trainer, the Cython backend's "cols" epoch against the modes it replaces
(FASTGD_CYTHON_COLS=1 / 0), alternating in subprocesses so both see the same machine state.

    PYTHONPATH=src python bench/cols_epochs.py [rounds] [threads,...]

Prints one row per case and thread count: the median epoch (epochs after the first, over all
rounds) of each, and the ratio. On a shared machine compare only figures of one run.
"""
import json
import os
import statistics
import subprocess
import sys

CASES = [(32, False), (128, False), (128, True)]  # (batch, dense Gaussian input)
CHILD = r'''
import json, sys, numpy as np, fastgd
bs, gauss, threads = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
X, y, _, _ = fastgd.datasets.load_mnist()
if gauss:
    X = np.random.default_rng(0).standard_normal(X.shape).astype(np.float32)
net = fastgd.Network([784, 512, 512, 10], activation="relu", output="softmax", dtype="float32", seed=0)
h = fastgd.Trainer(net, loss="cross_entropy", lr=0.05, batch_size=bs, epochs=3, backend="cython", threads=threads,
                   seed=0).fit(X, y)
print(json.dumps([[r["seconds"] for r in h.records], h.records[-1]["mode"], h.records[-1]["threads_used"]]))
'''


def run(cols, bs, gauss, threads):
    env = dict(os.environ, FASTGD_CYTHON_COLS="1" if cols else "0")
    out = subprocess.run([sys.executable, "-c", CHILD, str(bs), "1" if gauss else "0", str(threads)], env=env,
                         capture_output=True, text=True, check=True)
    secs, mode, used = json.loads(out.stdout.strip().splitlines()[-1])
    return secs[1:], f"{mode} {used}"


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    thread_counts = [int(t) for t in sys.argv[2].split(",")] if len(sys.argv) > 2 else [2, 1]
    print("| case | threads | cols ms (mode) | before ms (mode) | before / cols |\n|---|---:|---:|---:|---:|")
    for bs, gauss in CASES:
        for threads in thread_counts:
            times = {True: [], False: []}
            modes = {}
            for _ in range(rounds):
                for cols in (True, False):
                    secs, modes[cols] = run(cols, bs, gauss, threads)
                    times[cols] += secs
            a, b = (statistics.median(times[c]) * 1e3 for c in (True, False))
            case = f"784-512-512-10 b{bs}{' Gaussian' if gauss else ''}"
            print(f"| {case} | {threads} | {a:.0f} ({modes[True]}) | {b:.0f} ({modes[False]}) | {b / a:.2f} |",
                  flush=True)
