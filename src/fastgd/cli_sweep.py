"""`fastgd sweep`: many training runs over settings and seeds, locally or on a Dask cluster.

    fastgd sweep --recipe best --grid lr=0.01,0.05,0.1 --seeds 5
    fastgd sweep spec.yaml --scheduler tcp://HOST:8786 --plot

Flags build the same spec dict as a YAML/JSON/TOML file (see `fastgd.sweep.spec`); given both,
the flags add to and override the file.
"""
from __future__ import annotations

import json
import sys


def parse_value(text):
    """A setting value from the command line: JSON (0.1, 32, true, null, [784,16,10], "x") or a bare string."""
    text = text.strip()
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_top_level(text):
    """Split on commas outside brackets: "[784,16,10],[784,32,10]" -> two items."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _name_value(text, flag):
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"{flag} takes NAME=VALUE, got {text!r}")
    return name.strip().replace("-", "_"), value


def parse_random(text):
    """--random forms: LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH, logint:LOW:HIGH, or V1,V2,... (choices)."""
    parts = text.split(":")
    kinds = {"log": (True, False), "int": (False, True), "logint": (True, True)}
    if len(parts) == 3 and parts[0] in kinds or len(parts) == 2:
        log, integer = kinds[parts[0]] if len(parts) == 3 else (False, False)
        low, high = (parse_value(p) for p in parts[-2:])
        return {"low": low, "high": high, "log": log, "int": integer}
    if ":" in text:
        raise ValueError(f"--random range {text!r}: use LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH or logint:LOW:HIGH")
    return [parse_value(v) for v in split_top_level(text)]


def spec_from_args(args):
    """The spec dict: the file's (if given), with the flags added on top."""
    from .sweep.spec import load_spec_file

    spec = load_spec_file(args.spec) if args.spec else {}
    settings = dict(spec.get("settings") or {})
    for text in args.set or ():
        name, value = _name_value(text, "--set")
        settings[name] = parse_value(value)
    if settings:
        spec["settings"] = settings
    grid = dict(spec.get("grid") or {})
    for text in args.grid or ():
        name, values = _name_value(text, "--grid")
        grid[name] = [parse_value(v) for v in split_top_level(values)]
        if not grid[name]:
            raise ValueError(f"--grid {name}= has no values")
    if grid:
        spec["grid"] = grid
    space = dict(spec.get("random") or {})
    for text in args.random or ():
        name, value = _name_value(text, "--random")
        space[name] = parse_random(value)
    if space:
        spec["random"] = space
    if args.seeds is not None:
        seeds = [parse_value(s) for s in split_top_level(args.seeds)]
        spec["seeds"] = seeds[0] if len(seeds) == 1 and "," not in args.seeds else seeds
    for key in ("recipe", "search", "trials", "search_seed", "metric", "data", "target", "train_size", "test_size"):
        value = getattr(args, key)
        if value is not None:
            spec[key] = value
    return spec


def add_arguments(p):
    from .recipes import RECIPES
    from .sweep.spec import SEARCHES

    p.add_argument("spec", nargs="?", default=None, help="a sweep spec file (.yaml, .json or .toml); flags add to it")
    g = p.add_argument_group("what to run (setting names are Network/Trainer keyword arguments)")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None, help="base settings from a named recipe")
    g.add_argument("--set", action="append", metavar="NAME=VALUE", help="a fixed setting, e.g. --set epochs=5")
    g.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                   help="values to sweep, e.g. --grid lr=0.01,0.05,0.1 (lists in brackets: --grid sizes=[784,32,10],[784,64,10])")
    g.add_argument("--random", action="append", metavar="NAME=RANGE",
                   help="a random/optuna dimension: LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH, logint:LOW:HIGH or V1,V2,...")
    g.add_argument("--search", choices=SEARCHES, default=None,
                   help="grid (default), random (default when --random is given) or optuna (needs fastgd[optuna])")
    g.add_argument("--trials", type=int, default=None, help="points to sample in a random/optuna search (20)")
    g.add_argument("--seeds", default=None, metavar="N|S1,S2,...", help="seeds per point: a count (seeds 0..N-1) or a list (1)")
    g.add_argument("--search-seed", type=int, default=None, help="seed of the random/optuna sampler (0)")
    g.add_argument("--metric", default=None, help="what 'best' means (default test_accuracy)")
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None, metavar="DIR|FILE", help="an IDX folder, or what `fastgd train --data` reads; default: the shipped MNIST")
    d.add_argument("--target", default=None, metavar="COLUMN", help="the target column of a --data table")
    d.add_argument("--train-size", type=int, default=None, metavar="N", help="train on the first N samples only")
    d.add_argument("--test-size", type=int, default=None, metavar="N", help="test on the first N samples only")
    r = p.add_argument_group("where and output")
    r.add_argument("--out", default="sweep", metavar="DIR",
                   help="results folder (results.jsonl, best.npz, summary.md); rerunning into it skips finished trials")
    r.add_argument("--workers", type=int, default=None, help="local worker processes (default: one per core; 1: no pool)")
    r.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                   help="run the trials on this Dask scheduler's workers (needs fastgd[dask])")
    r.add_argument("--retry-failed", action="store_true", help="rerun trials recorded as failed")
    r.add_argument("--plot", nargs="?", const=True, default=None, metavar="PATH",
                   help="draw the metric against each swept setting (default DIR/sweep.png; needs fastgd[plot])")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from .sweep import run_sweep

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    spec = spec_from_args(args)
    log = sys.stderr if args.json else sys.stdout
    try:
        result = run_sweep(spec, out=args.out, workers=args.workers, scheduler=args.scheduler,
                           progress=not args.no_progress, plot=args.plot, retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        print(f"fastgd sweep: stopped; every finished trial is in {args.out}/results.jsonl "
              f"(run the same command again to continue)", file=sys.stderr)
        raise
    print(f"{result.ran} trials run, {result.skipped} found finished in {result.out}; {result.runner}; "
          f"{result.seconds:.1f} s", file=log)
    print(result.table(), file=log)
    failed = sum(row["errors"] for row in result.rows)
    if failed:
        print(f"{failed} trial(s) failed: their errors are in {result.files['results']}", file=log)
    if result.best is not None:
        print(f"best trial: {json.dumps(result.best['point'])} seed {result.best['seed']}: "
              f"{result.metric} {result.best[result.metric]:.4f}"
              + (f"; model saved to {result.files['best_model']}" if "best_model" in result.files else ""), file=log)
    if "plot" in result.files:
        print(f"plot: {result.files['plot']}", file=log)
    if args.json:
        print(json.dumps({"metric": result.metric, "swept": result.swept, "rows": result.rows,
                          "best": {k: v for k, v in (result.best or {}).items() if k != "history"},
                          "ran": result.ran, "skipped": result.skipped, "seconds": result.seconds,
                          "runner": result.runner, "files": {k: str(v) for k, v in result.files.items()}},
                         default=str))
    return 0 if failed < len(result.records) or not result.records else 1
