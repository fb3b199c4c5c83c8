"""The sweep driver: spec -> checked points -> trials on a runner -> results on disk.

Everything is checked (spec structure, setting names, every point's values, the data) before the
first trial starts. Trials then run on the chosen runner; each finished one is appended to
``results.jsonl`` at once, and the best so far is saved as ``best.npz``.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import results as res
from .data import load_data
from .runners import DaskRunner, LocalPoolRunner, SequentialRunner
from .search import OptunaSearch, extreme_points, grid_points, random_points
from .spec import check_point, load_spec_file, parse_spec
from .trial import Task, trial_id


@dataclass
class SweepResult:
    """What a sweep produced (also on disk in `out`)."""
    records: list          # one record per trial of this sweep (finished now or in an earlier run)
    rows: list             # the summary: one row per point, aggregated over seeds, best first
    swept: list            # names of the swept settings
    metric: str
    out: Path
    runner: str
    ran: int = 0           # trials run by this call
    skipped: int = 0       # trials found finished on disk and not rerun
    seconds: float = 0.0
    best: dict | None = None
    files: dict = field(default_factory=dict)

    def table(self):
        return res.format_table(self.rows, self.swept, self.metric)

    def plot(self, path=None):
        return res.plot(self.records, self.swept, self.metric, path or self.out / res.PLOT_FILE)


def _raw_spec(spec, overrides):
    if isinstance(spec, (str, Path)):
        spec = load_spec_file(spec)
    elif spec is None:
        spec = {}
    elif not isinstance(spec, dict):
        raise TypeError(f"a sweep spec must be a dict or a file path, got {type(spec).__name__}")
    merged = dict(spec)
    for key, value in overrides.items():
        if value is not None:
            merged[key] = value
    return merged


def make_runner(workers=None, scheduler=None, dask_client=None):
    if scheduler is not None or dask_client is not None:
        if workers is not None:
            raise ValueError("workers applies to the local pool; a Dask cluster has its own workers")
        return DaskRunner(address=scheduler, client=dask_client)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    import os

    workers = workers or os.cpu_count() or 1
    return SequentialRunner() if workers == 1 else LocalPoolRunner(workers)


def run_sweep(spec=None, *, data=None, out="sweep", workers=None, scheduler=None, dask_client=None, progress=True,
              plot=False, retry_failed=False, on_result=None, **spec_keys):
    """Run a hyperparameter sweep; returns a `SweepResult`.

    spec: a dict (see `fastgd.sweep.spec`), a YAML/JSON/TOML file, or None; keyword arguments
    named like spec keys (grid=, random=, seeds=, settings=, recipe=, search=, trials=, metric=,
    train_size=, ...) are merged over it. data: 'mnist', an IDX folder, a data file or the four
    arrays (default: the spec's, else MNIST). out: the results folder (a rerun skips its finished
    trials). workers: local processes (default one per core; 1 runs in this process). scheduler:
    a Dask scheduler address, or dask_client: a `distributed.Client`, to run on a cluster instead.
    plot: True (out/sweep.png) or a path. retry_failed: rerun trials recorded as failed.
    on_result(record): called after each finished trial is on disk.
    """
    started = time.perf_counter()
    spec = copy.deepcopy(parse_spec(_raw_spec(spec, spec_keys)))  # (a SweepSpec passed in stays as it was)
    runner = make_runner(workers, scheduler, dask_client)
    if plot and importlib.util.find_spec("matplotlib") is None:  # say so before the trials, not after
        raise ImportError('--plot needs matplotlib, which is not installed: pip install "fastgd[plot]"')
    if on_result is not None and not callable(on_result):
        raise TypeError("on_result must be a callable taking a record")
    sweep_data = load_data(data if data is not None else spec.data, spec.train_size, spec.test_size, spec.target)
    if "sizes" not in spec.settings and "sizes" not in spec.swept:
        spec.settings["sizes"] = [sweep_data.n_features, 16, 16, 10]  # as `fastgd train` without --sizes

    # Check every point before anything runs (Optuna's points are unknown: check the bounds).
    if spec.search == "grid":
        points = grid_points(spec.grid)
    elif spec.search == "random":
        points = random_points(spec.space, spec.trials, spec.search_seed)
    else:
        points = None
    for point in points if points is not None else extreme_points(spec.space):
        check_point({**spec.settings, **point}, sweep_data.n_features)
    search = None
    if spec.search == "optuna":
        direction = "minimize" if spec.metric and res.lower_is_better(spec.metric) else "maximize"
        search = OptunaSearch(spec.space, direction, spec.search_seed)

    out = Path(out)
    store = res.ResultsFile(out)
    sweep_id = hashlib.sha1((spec.identity() + sweep_data.token).encode()).hexdigest()[:12]
    driver = _Driver(spec, sweep_data, store, sweep_id, runner, retry_failed, on_result)
    try:
        driver.start(progress)
        if search is None:
            driver.run_points(points)
        else:
            driver.run_optuna(search)
    except BaseException:
        runner.close(cancel=True)
        raise
    finally:
        driver.finish()
    runner.close()

    records = driver.plan_records()
    metric = res.resolve_metric(spec.metric, records)
    rows = res.summarize(records, spec.swept, metric)
    result = SweepResult(records=records, rows=rows, swept=spec.swept, metric=metric, out=out,
                         runner=runner.description, ran=driver.ran, skipped=driver.skipped,
                         seconds=time.perf_counter() - started, best=driver.best_record(metric))
    from ..network import atomic_write

    summary_path = out / res.SUMMARY_FILE
    atomic_write(summary_path, lambda f: f.write((result.table() + "\n").encode()))
    result.files = {"results": store.path, "summary": summary_path}
    if (out / res.BEST_MODEL_FILE).exists():
        result.files["best_model"] = out / res.BEST_MODEL_FILE
    if plot:
        result.files["plot"] = result.plot(None if plot is True else plot)
    return result


class _Driver:
    """Submits trials, records finished ones, keeps the best model; one per `run_sweep` call."""

    def __init__(self, spec, data, store, sweep_id, runner, retry_failed, on_result):
        self.spec, self.data, self.store, self.sweep_id, self.runner = spec, data, store, sweep_id, runner
        self.retry_failed, self.on_result = retry_failed, on_result
        self.plan_ids = set()
        self.ran = self.skipped = 0
        self.bar = None
        self.metric = spec.metric
        self.best_value = None

    # ---- bookkeeping ------------------------------------------------------------------------
    def _done(self, tid):
        record = self.store.records.get(tid)
        return record is not None and (record.get("status") == "ok" or not self.retry_failed)

    def _task(self, point, seed):
        settings = {**self.spec.settings, **point}
        tid = trial_id(settings, seed, self.data.token)
        self.plan_ids.add(tid)
        return Task(trial_id=tid, settings=settings, point=point, seed=seed)

    def plan_records(self):
        return [r for tid, r in self.store.records.items() if tid in self.plan_ids]

    def best_record(self, metric):
        best = None
        for r in self.plan_records():
            if r.get("status") == "ok" and res.better(r.get(metric), None if best is None else best.get(metric), metric):
                best = r
        return best

    def start(self, progress):
        self.progress = progress
        self.started = False

    def _ensure_started(self):
        if not self.started:  # no pool or cluster connection when every trial is already on disk
            self.runner.start(self.data)
            self.started = True

    def _submit(self, task):
        self._ensure_started()
        self.runner.submit(task)

    def _open_bar(self, total, initial):
        if self.progress and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="trial", file=sys.stderr, dynamic_ncols=True,
                            desc="sweep", leave=False)

    def _record(self, task, record, params):
        record.update(sweep_id=self.sweep_id, runner=self.runner.description)
        self.store.append(record)
        self.ran += 1
        if record.get("status") == "ok":
            if self.metric is None:
                self.metric = res.resolve_metric(None, [record])
            value = record.get(self.metric)
            if params is not None and res.better(value, self.best_value, self.metric):
                self.best_value = value
                res.save_best_model(self.store.folder, record, params)
        if self.bar is not None:
            self.bar.update(1)
            if self.best_value is not None:
                self.bar.set_postfix_str(f"best {self.metric} {self.best_value:.4g}")
        if self.on_result is not None:
            self.on_result(record)

    def _init_best(self):
        metric = res.resolve_metric(self.spec.metric, self.plan_records())
        best = self.best_record(metric)
        if best is not None:
            self.metric, self.best_value = metric, best.get(metric)

    def finish(self):
        if self.bar is not None:
            self.bar.close()

    # ---- grid and random: every point known up front ----------------------------------------
    def run_points(self, points):
        todo = []
        for point in points:
            for seed in self.spec.seeds:
                task = self._task(point, seed)
                if self._done(task.trial_id):
                    self.skipped += 1
                else:
                    todo.append(task)
        self._init_best()
        self._open_bar(len(todo) + self.skipped, self.skipped)
        for task in todo:
            self._submit(task)
        while todo and self.runner.pending():
            for task, record, params in self.runner.wait():
                self._record(task, record, params)

    # ---- Optuna: ask a few points at a time, tell each its mean over seeds -------------------
    def run_optuna(self, search):
        seeds = self.spec.seeds
        earlier = {}
        for r in self.store.records.values():
            if r.get("sweep_id") == self.sweep_id:
                earlier.setdefault(json.dumps(r["point"], sort_keys=True, default=str), []).append(r)
        finished, unfinished = [], []
        for group in earlier.values():
            point = group[0]["point"]
            tasks = [self._task(point, s) for s in seeds]
            if all(self._done(t.trial_id) for t in tasks):
                finished.append((point, self._mean([self.store.records[t.trial_id] for t in tasks])))
                self.skipped += len(tasks)
            else:
                unfinished.append(point)
        search.open(finished, unfinished)
        complete = len(finished)
        self._init_best()
        total = max(self.spec.trials, complete) * len(seeds)
        self._open_bar(total, self.skipped)
        in_flight = {}  # trial id -> point key;  point key -> [handle, remaining, records]
        points = {}
        asked = complete
        if asked < self.spec.trials:
            self._ensure_started()
        capacity = max(1, math.ceil(getattr(self.runner, "slots", 1) / len(seeds)))
        while asked < self.spec.trials or points:
            while asked < self.spec.trials and len(points) < capacity:
                handle, point = search.ask()
                asked += 1
                key = f"{asked}"
                entry = points[key] = [handle, 0, []]
                for seed in seeds:
                    task = self._task(point, seed)
                    if self._done(task.trial_id):
                        entry[2].append(self.store.records[task.trial_id])
                        self.skipped += 1
                        if self.bar is not None:
                            self.bar.update(1)
                    else:
                        entry[1] += 1
                        in_flight[task.trial_id] = key
                        self._submit(task)
                if entry[1] == 0:
                    search.tell(handle, self._mean(entry[2]))
                    del points[key]
            if not points:
                continue
            for task, record, params in self.runner.wait():
                self._record(task, record, params)
                entry = points[in_flight.pop(task.trial_id)]
                entry[1] -= 1
                entry[2].append(record)
                if entry[1] == 0:
                    search.tell(entry[0], self._mean(entry[2]))
                    del points[next(k for k, v in points.items() if v is entry)]

    def _mean(self, records):
        metric = self.metric or res.resolve_metric(None, records)
        values = [r[metric] for r in records if r.get("status") == "ok" and r.get(metric) is not None]
        return float(np.mean(values)) if values and len(values) == len(records) else None
