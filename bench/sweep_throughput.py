"""Sweep throughput (trials per minute) on this machine, and a small random search.

    PYTHONPATH=src python bench/sweep_throughput.py                # both parts, Markdown on stdout
    PYTHONPATH=src python bench/sweep_throughput.py --trials 20 --search-trials 30 --plot docs/images/sweep.png

Part 1: 20 trials of the lesson network trained with the `best` recipe (seeds 0-19), run
  - sequentially in this process, one thread per trial, then two threads per trial;
  - in the local process pool (one process per core, one thread each);
  - on a 2-worker dask.distributed LocalCluster (worker processes, one thread each).
Throughput counts the whole sweep call (pool start-up, shipping the data, JIT loading, testing);
the cluster's own start-up is given apart. Per-trial overhead is the time a trial slot spends on
anything but training: (wall seconds x parallel slots - total training seconds) / trials.

Part 2: a random search of --search-trials points over lr, batch size, momentum and L2 for the
784-16-16-10 network (the other settings from the `best` recipe), chosen by validation accuracy
on a 10% hold-out of the training set; the best point is then trained on all 60,000 images with
seeds 0, 1, 2 and its test accuracy averaged.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import fastgd


def summarize(name, result, slots):
    ok = [r for r in result.records if r["status"] == "ok"]
    train = sum(r["train_seconds"] for r in ok)
    n = len(result.records)
    return {"mode": name, "trials": n, "failed": n - len(ok), "wall_seconds": result.seconds,
            "trials_per_minute": 60 * n / result.seconds, "slots": slots,
            "mean_train_seconds": train / max(1, len(ok)),
            "overhead_per_trial": (result.seconds * slots - train) / n,
            "mean_accuracy": statistics.mean(r["test_accuracy"] for r in ok) if ok else None,
            "accuracies": {r["seed"]: r["test_accuracy"] for r in ok},
            "backend": ok[0]["backend"] if ok else None}


def throughput(n_trials, workdir):
    spec = {"recipe": "best", "seeds": n_trials}
    rows = []
    run = lambda name, **kw: fastgd.sweep(spec, out=workdir / name, progress=False, **kw)  # noqa: E731
    rows.append(summarize("sequential, 1 process x 1 thread", run("seq1", workers=1), 1))
    two = fastgd.sweep({**spec, "settings": {"threads": 2}}, out=workdir / "seq2", workers=1, progress=False)
    rows.append(summarize("sequential, 1 process x 2 threads", two, 1))
    cores = os.cpu_count() or 1
    rows.append(summarize(f"local pool, {cores} processes x 1 thread", run("pool", workers=cores), cores))
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        cluster_seconds = time.perf_counter() - start
        rows.append(summarize("Dask LocalCluster, 2 workers x 1 thread", run("dask", dask_client=client), 2))
    return rows, cluster_seconds


def random_search(n_trials, workdir, plot):
    space = {"lr": {"low": 0.005, "high": 0.5, "log": True},
             "batch_size": {"low": 8, "high": 128, "int": True, "log": True},
             "momentum": {"low": 0.0, "high": 0.95},
             "l2": {"low": 1e-6, "high": 1e-3, "log": True}}
    # Nesterov needs momentum > 0, which a sampled momentum always is, but keep the search plain.
    fixed = {"nesterov": False, "validation_split": 0.1}
    search = fastgd.sweep({"recipe": "best", "settings": fixed, "random": space, "trials": n_trials, "seeds": 1,
                           "search_seed": 0, "metric": "val_accuracy"}, out=workdir / "search", progress=False,
                          plot=plot or False)
    best = search.rows[0]
    final = fastgd.sweep({"recipe": "best", "settings": {"nesterov": False, **best["point"]}, "seeds": [0, 1, 2]},
                         out=workdir / "final", progress=False)
    accs = [r["test_accuracy"] for r in final.records]
    return {"trials": len(search.records), "seconds": search.seconds, "best_point": best["point"],
            "best_val_accuracy": best["mean"], "test_accuracy_mean": statistics.mean(accs),
            "test_accuracy_min": min(accs), "test_accuracy_max": max(accs), "failed": sum(r["errors"] for r in search.rows),
            "table_top5": fastgd.sweep.results.format_table(search.rows[:5], search.swept, search.metric)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20, help="trials of the throughput part (seeds 0..N-1)")
    p.add_argument("--search-trials", type=int, default=30, help="points of the random search (0: skip it)")
    p.add_argument("--plot", default=None, help="write the random search's picture here")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = p.parse_args()

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows, cluster_seconds = throughput(args.trials, workdir)
        search = random_search(args.search_trials, workdir, args.plot) if args.search_trials else None
    print(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load average "
          f"{load:.2f} at the start, Python {sys.version.split()[0]}, fastgd {fastgd.__version__}, backend "
          f"{rows[0]['backend']}.\n")
    print(f"{args.trials} trials of the lesson network with the `best` recipe (seeds 0-{args.trials - 1}):\n")
    print("| how | trials/min | wall s | train s per trial | overhead per trial | mean test accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['trials_per_minute']:.1f} | {r['wall_seconds']:.1f} | {r['mean_train_seconds']:.2f} | "
              f"{r['overhead_per_trial']:.2f} s | {100 * r['mean_accuracy']:.2f}% |")
    same = all(r["accuracies"] == rows[0]["accuracies"] for r in rows if "1 thread" in r["mode"])
    print(f"\nLocalCluster start-up (not counted above): {cluster_seconds:.1f} s. "
          f"One-thread runs give identical accuracies per seed in every mode: {'yes' if same else 'NO'}.\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"throughput": rows, "cluster_seconds": cluster_seconds,
                                               "search": search}, indent=1, default=str))
    s = search
    if s is None:
        return
    point = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s["best_point"].items())
    print(f"Random search, {s['trials']} trials over lr, batch size, momentum and L2 (784-16-16-10, other settings "
          f"from `best`, chosen by validation accuracy on a 10% hold-out), {s['seconds']:.0f} s in the local pool; "
          f"{s['failed']} trial(s) failed.\nBest: {point} (validation {100 * s['best_val_accuracy']:.2f}%); trained on "
          f"all 60,000 images with seeds 0-2: test accuracy {100 * s['test_accuracy_mean']:.2f}% "
          f"({100 * s['test_accuracy_min']:.2f}-{100 * s['test_accuracy_max']:.2f}).\n")
    print(s["table_top5"])


if __name__ == "__main__":
    main()
