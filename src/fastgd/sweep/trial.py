"""One trial: build the Network and Trainer from a settings dict, train, test, report.

`run_trial` is what every runner executes (in this process, a pool worker or a Dask worker). It
never raises for a failing trial: a bad setting or a diverged run comes back as a record with
``status: "error"`` so the sweep goes on.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Task:
    """What a worker needs for one trial (small: pickled per trial; the data travels separately)."""
    trial_id: str
    settings: dict       # every Network/Trainer setting of this trial, fixed and swept
    point: dict          # the swept settings only (for tables and plots)
    seed: int
    keep_params: bool = True


def trial_id(settings, seed, data_token):
    """A stable id from what determines the trial's result: rerunning a sweep skips ids on disk."""
    text = json.dumps({"settings": settings, "seed": seed, "data": data_token}, sort_keys=True, default=repr)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def finite_or_none(value):
    """JSON has no NaN or infinity; write them as null (and NumPy scalars as plain numbers)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def run_trial(data, task):
    """Train one trial on `data` (a SweepData); returns (record, params or None)."""
    from ..network import Network
    from ..trainer import Trainer
    from .spec import split_settings

    start = time.perf_counter()
    record = {"trial_id": task.trial_id, "point": task.point, "seed": task.seed, "settings": task.settings,
              "data": data.name, "host": socket.gethostname(), "pid": os.getpid()}
    params = None
    trainer = None
    try:
        net_kw, trainer_kw = split_settings(task.settings)
        net = Network(**net_kw, seed=task.seed)
        trainer = Trainer(net, **trainer_kw, seed=task.seed)
        history = trainer.fit(data.X_train, data.y_train)
        test = trainer.evaluate(data.X_test, data.y_test)
        record.update(status="ok", error=None, **{f"test_{k}": float(v) for k, v in test.items()})
        last = history.records[-1] if len(history) else {}
        for key, value in last.items():  # e.g. val_accuracy with validation_split
            if key.startswith("val_") and value is not None:
                record[key] = value
        record.update(train_seconds=history.train_seconds, compile_seconds=history.compile_seconds,
                      epochs=len(history), history=history.to_list())
        if task.keep_params:
            params = net.params.copy()
    except Exception as exc:  # noqa: BLE001 - a failing trial is a result, not the end of the sweep
        record.update(status="error", error=f"{type(exc).__name__}: {exc}")
    if trainer is not None:
        record["backend"] = trainer.backend.name
        record["threads"] = trainer.threads
        modes = {r.get("mode") for r in trainer.history.records if r.get("mode")}
        if modes:  # backends that report what really ran (serial / sync / hogwild)
            record["mode"] = ",".join(sorted(modes))
    record["wall_seconds"] = time.perf_counter() - start
    return finite_or_none(record), params
