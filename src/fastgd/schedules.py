"""Learning-rate schedules, evaluated per optimiser step.

The Trainer turns a schedule into one learning rate per step of an epoch (`EpochPlan.lrs`), so
the compiled epoch loops apply it without calling back into Python.
"""
from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "step", "cosine")


def epoch_learning_rates(kind, lr, epoch, epochs, steps_per_epoch, warmup_epochs=0.0, step_size=10,
                         gamma=0.1, min_lr=0.0):
    """Learning rates for every step of `epoch` (1-based) of a run of `epochs` epochs.

    constant: lr.  step: lr * gamma ** ((epoch - 1) // step_size).  cosine: from lr down to
    min_lr along half a cosine over the steps after warm-up. Linear warm-up (any kind) scales
    the first warmup_epochs * steps_per_epoch steps by (s + 1) / warmup_steps.
    """
    s = (epoch - 1) * steps_per_epoch + np.arange(steps_per_epoch, dtype=np.float64)
    total = epochs * steps_per_epoch
    warm = warmup_epochs * steps_per_epoch
    if kind == "constant":
        rates = np.full(steps_per_epoch, lr, dtype=np.float64)
    elif kind == "step":
        rates = np.full(steps_per_epoch, lr * gamma ** ((epoch - 1) // step_size), dtype=np.float64)
    elif kind == "cosine":
        progress = np.clip((s - warm) / max(total - warm, 1), 0.0, 1.0)
        rates = min_lr + (lr - min_lr) * 0.5 * (1.0 + np.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr_schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")
    if warm > 0:
        rates = rates * np.minimum(1.0, (s + 1) / warm)
    return rates
