"""Ctrl-C latency of Trainer.fit: time from SIGINT to KeyboardInterrupt leaving fit(), per backend.

    python bench/interrupt_latency.py                        # 784-512-512-10, batch 10, every backend, 3 runs
    python bench/interrupt_latency.py --sizes 784,16,16,10 --backends cython --runs 5

Each run is a fresh process training on MNIST; once the first epoch slice has run, the parent
waits `--after` seconds, sends SIGINT, and the child reports when fit() raised (same clock), the
epochs completed, and whether the partial epoch was recorded and the weights are finite.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np
import fastgd
sizes, backend, batch = json.loads(sys.argv[1])
X, y, _, _ = fastgd.datasets.load_mnist()
net = fastgd.Network(sizes, activation="relu", output="softmax", seed=0)
trainer = fastgd.Trainer(net, loss="cross_entropy", lr=0.01, batch_size=batch, epochs=100, backend=backend, seed=0)
real = trainer.backend.train_epoch
def first_call(*args):
    trainer.backend.train_epoch = real
    out = real(*args)
    print("training", flush=True)
    return out
trainer.backend.train_epoch = first_call
try:
    trainer.fit(X, y)
except KeyboardInterrupt:
    caught = time.time()
    last = trainer.history[-1] if len(trainer.history) else {}
    print(json.dumps({"caught": caught, "epochs": len(trainer.history), "partial": last.get("partial"),
                      "finite": bool(np.isfinite(net.params).all()), "steps": trainer.optimizer.step_count}), flush=True)
"""


def one_run(sizes, backend, batch, after):
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps([sizes, backend, batch])], stdout=subprocess.PIPE,
                            text=True, env=env)
    for line in proc.stdout:
        if line.strip() == "training":
            break
    time.sleep(after)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    proc.wait()
    report = json.loads(out.strip().splitlines()[-1])
    report["latency_ms"] = 1e3 * (report.pop("caught") - sent)
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="784,512,512,10")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--backends", default="numpy,cython,numba")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--after", type=float, default=2.0, help="seconds of training before SIGINT")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for backend in args.backends.split(","):
        runs = [one_run(sizes, backend, args.batch_size, args.after) for _ in range(args.runs)]
        lat = [r["latency_ms"] for r in runs]
        print(f"{backend:7s} {args.sizes} batch {args.batch_size}: SIGINT -> fit() raised in "
              f"median {statistics.median(lat):.1f} ms (max {max(lat):.1f} ms) over {len(runs)} runs; "
              f"partial epoch recorded: {all(r['partial'] for r in runs)}; weights finite: "
              f"{all(r['finite'] for r in runs)}", flush=True)


if __name__ == "__main__":
    main()
