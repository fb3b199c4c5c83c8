"""Results on disk as trials finish: JSON lines, the best model, the summary table, the plot.

``results.jsonl`` gets one line per finished trial, written and fsynced when the trial ends, so
an interrupted sweep loses only the trials still running; a rerun into the same folder reads the
file and skips every trial already there (a line cut short by a crash is ignored).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

RESULTS_FILE = "results.jsonl"
BEST_MODEL_FILE = "best.npz"
SUMMARY_FILE = "summary.md"
PLOT_FILE = "sweep.png"


def lower_is_better(metric):
    return metric.endswith(("loss", "mae", "seconds"))


def better(a, b, metric):
    """Is metric value a better than b (None is worst)?"""
    if a is None:
        return False
    if b is None:
        return True
    return a < b if lower_is_better(metric) else a > b


class ResultsFile:
    """Append-only JSON lines of trial records, keyed by trial id (the last line of an id wins)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / RESULTS_FILE
        self.records = {}
        self.damaged_lines = 0
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self.records[record["trial_id"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.damaged_lines += 1

    def append(self, record):
        line = (json.dumps(record, default=str) + "\n").encode()
        # One write on an O_APPEND descriptor, then fsync: the line is on disk whole before we go on.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records[record["trial_id"]] = record


def resolve_metric(metric, records):
    """The metric to rank by: the one asked for, else test accuracy (classification) or R² (regression)."""
    if metric is not None:
        return metric
    ok = [r for r in records if r.get("status") == "ok"]
    for candidate in ("test_accuracy", "test_r2", "test_loss"):
        if any(candidate in r for r in ok):
            return candidate
    return "test_accuracy"


def save_best_model(folder, record, params):
    """Write the best trial's network to best.npz atomically (Network.save writes a temp file, then renames)."""
    from ..network import Network
    from .spec import split_settings

    net_kw, _ = split_settings(record["settings"])
    net = Network(**net_kw, seed=0)
    net.params[...] = params
    net.history = record.get("history")
    about = {k: v for k, v in record.items() if k != "history"}
    return net.save(Path(folder) / BEST_MODEL_FILE, extra={"sweep_trial": np.array(json.dumps(about, default=str))})


def _key(value):
    return json.dumps(value, sort_keys=True, default=str)


def summarize(records, swept, metric):
    """One row per point (the swept settings), aggregated over seeds, best first.

    Each row: the point, ``n`` (seeds that finished), ``errors``, ``mean``/``min``/``max`` of the
    metric over the finished seeds, ``train_seconds`` (mean) and the first error message.
    """
    groups = {}
    for r in records:
        point = {k: r.get("point", {}).get(k) for k in swept}
        groups.setdefault(_key(point), (point, []))[1].append(r)
    rows = []
    for point, group in groups.values():
        values = [r[metric] for r in group if r.get("status") == "ok" and r.get(metric) is not None]
        errors = [r for r in group if r.get("status") != "ok"]
        seconds = [r["train_seconds"] for r in group if r.get("status") == "ok" and r.get("train_seconds") is not None]
        rows.append({
            "point": point, "n": len(values), "errors": len(errors),
            "mean": float(np.mean(values)) if values else None,
            "min": float(np.min(values)) if values else None,
            "max": float(np.max(values)) if values else None,
            "train_seconds": float(np.mean(seconds)) if seconds else None,
            "seeds": sorted(r["seed"] for r in group),
            "error": errors[0].get("error") if errors else None,
        })
    sign = 1 if lower_is_better(metric) else -1
    rows.sort(key=lambda row: (row["mean"] is None, sign * (row["mean"] or 0.0)))
    return rows


def _fmt_value(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "-".join(map(str, v))
    return str(v)


def format_table(rows, swept, metric):
    """A Markdown table of `summarize` rows (readable in a terminal too)."""
    pct = metric.endswith("accuracy")
    fmt = (lambda v: "" if v is None else f"{100 * v:.2f}%") if pct else (lambda v: "" if v is None else f"{v:.4g}")
    head = [*swept, "seeds", f"{metric} mean", "min", "max", "train s", "errors"]
    body = []
    for row in rows:
        cells = [_fmt_value(row["point"][k]) for k in swept]
        cells += [str(row["n"]), fmt(row["mean"]), fmt(row["min"]), fmt(row["max"]),
                  "" if row["train_seconds"] is None else f"{row['train_seconds']:.3g}",
                  str(row["errors"]) + (f" ({row['error'][:60]})" if row["error"] else "")]
        body.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def plot(records, swept, metric, path):
    """Metric against each swept setting: every trial as a dot, the mean over seeds as a line."""
    from ..viz import _figure, save_figure

    ok = [r for r in records if r.get("status") == "ok" and r.get(metric) is not None]
    names = swept or ["seed"]
    cols = 2 if len(names) == 4 else min(3, len(names))
    rows_n = math.ceil(len(names) / cols)
    fig = _figure(4.2 * cols, 3.4 * rows_n)
    scale = 100 if metric.endswith("accuracy") else 1
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        values = [r["point"].get(name) if name != "seed" else r["seed"] for r in ok]
        ys = [scale * r[metric] for r in ok]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and values
        if numeric:
            xs = [float(v) for v in values]
            positive = [x for x in xs if x > 0]
            if positive and len(positive) == len(xs) and max(xs) / min(xs) >= 50:  # wide positive ranges (lr, l2)
                ax.set_xscale("log")
        else:
            labels = sorted({_fmt_value(v) for v in values})
            xs = [labels.index(_fmt_value(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
        ax.scatter(xs, ys, s=14, alpha=0.5, color="tab:blue", label="trial")
        means = {}
        for x, y in zip(xs, ys):
            means.setdefault(x, []).append(y)
        if all(len(v) > 1 for v in means.values()):  # a grid or seeds: join the means; random samples stay dots
            mx = sorted(means)
            ax.plot(mx, [np.mean(means[x]) for x in mx], color="tab:orange", marker="o", ms=3,
                    label="mean over seeds" if len(swept) <= 1 else "mean")
        ax.set_xlabel(name)
        ax.set_ylabel(metric + (" (%)" if scale == 100 else ""))
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
