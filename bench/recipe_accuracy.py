"""Accuracy and training time of the named recipes over several seeds, as a Markdown table.

    python bench/recipe_accuracy.py                       # every recipe, seeds 0 1 2, backend auto
    python bench/recipe_accuracy.py --recipes best --seeds 0 1 2 3 4 --backend cython
    python bench/recipe_accuracy.py --update-readme README.md

Each run is `fastgd train --recipe NAME --seed S --json` in a fresh process, so the figures are
what a user sees. "training time" is the run's train_seconds (the backend's epoch calls only: no
start-up, data loading, JIT compiling or per-epoch test evaluation); "wall time" is the whole
command, start to exit. The issue-15 budgets (fast97: 1 s, mlp99: 20 s) are on training time.
Run it on a quiet machine: the times are only as good as the machine is idle.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

from fastgd.benchmarks import machine_info, update_readme

START, END = "<!-- recipe-table:start -->", "<!-- recipe-table:end -->"


def run(recipe, seed, backend):
    cmd = [sys.executable, "-m", "fastgd", "train", "--recipe", recipe, "--seed", str(seed), "--backend", backend,
           "--json", "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = wall
    return summary


def table(results, backend):
    machine = machine_info()
    lines = [f"Measured {machine['date'][:10]} on {machine['cpu']}, {machine['cores']} cores, backend `{backend}` "
             f"(`python bench/recipe_accuracy.py`):", "",
             "| recipe | network | test accuracy, mean (min–max) | seeds | training time, median (max) | epochs "
             "| wall time, median |",
             "|---|---|---|---|---|---|---|"]
    for recipe, runs in results.items():
        acc = [r["test_accuracy"] * 100 for r in runs]
        secs = [r["train_seconds"] for r in runs]
        net = "-".join(map(str, runs[0]["sizes"])) + f" {runs[0]['activation']}/{runs[0]['output']}"
        walls = [r["wall_seconds"] for r in runs if "wall_seconds" in r]
        epochs = sorted({r["epochs"] for r in runs if "epochs" in r})
        lines.append(f"| `{recipe}` | {net} | {statistics.mean(acc):.2f}% ({min(acc):.2f}–{max(acc):.2f}) | "
                     f"{len(runs)} | {statistics.median(secs):.2f} s ({max(secs):.2f} s) | "
                     f"{'/'.join(map(str, epochs)) or '–'} | "
                     f"{f'{statistics.median(walls):.1f} s' if walls else '–'} |")
    return "\n".join(lines)


def main():
    from fastgd.recipes import RECIPES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--backend", default="auto")
    p.add_argument("--update-readme", metavar="PATH", help=f"replace the text between {START} and {END}")
    args = p.parse_args()
    results = {}
    for recipe in args.recipes:
        results[recipe] = []
        for seed in args.seeds:
            r = run(recipe, seed, args.backend)
            curve = " ".join(f"{100 * h['val_accuracy']:.2f}" for h in r["history"] if h.get("val_accuracy") is not None)
            print(f"{recipe} seed {seed}: {100 * r['test_accuracy']:.2f}% in {r['train_seconds']:.2f} s of training "
                  f"({r['epochs']} epochs, {r['wall_seconds']:.1f} s wall; {r['backend']}, {r['threads']} threads); "
                  f"test accuracy per epoch: {curve}", file=sys.stderr, flush=True)
            results[recipe].append(r)
    backend = results[args.recipes[0]][0]["backend"]
    text = table(results, backend)
    print(text)
    if args.update_readme:
        try:
            update_readme(args.update_readme, text, START, END)
        except ValueError as exc:
            sys.exit(str(exc))


if __name__ == "__main__":
    main()
