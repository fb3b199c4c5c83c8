"""Learning-rate schedules as small objects, evaluated per optimiser step.

The Trainer asks its schedule for one learning rate per step of an epoch (`EpochPlan.lrs`), so
the compiled epoch loops apply it without calling back into Python. Every schedule has linear
warm-up: the first ``warmup_epochs * steps_per_epoch`` steps are scaled by (s + 1) / warmup_steps.

    Constant()                  lr
    StepDecay(step_size, gamma) lr * gamma ** ((epoch - 1) // step_size)
    Cosine(min_lr)              from lr down to min_lr along half a cosine over the steps after warm-up
"""
from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "step", "cosine")


class Schedule:
    name = "?"

    def __init__(self, warmup_epochs=0.0):
        self.warmup_epochs = float(warmup_epochs)

    def _base(self, lr, epoch, s, total, warm, steps):
        raise NotImplementedError

    def rates(self, lr, epoch, epochs, steps_per_epoch):
        """float64 learning rates for every step of `epoch` (1-based) of a run of `epochs` epochs."""
        s = (epoch - 1) * steps_per_epoch + np.arange(steps_per_epoch, dtype=np.float64)
        total = epochs * steps_per_epoch
        warm = self.warmup_epochs * steps_per_epoch
        rates = self._base(lr, epoch, s, total, warm, steps_per_epoch)
        if warm > 0:
            rates = rates * np.minimum(1.0, (s + 1) / warm)
        return rates

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    name = "constant"

    def _base(self, lr, epoch, s, total, warm, steps):
        return np.full(steps, lr, dtype=np.float64)


class StepDecay(Schedule):
    name = "step"

    def __init__(self, step_size=10, gamma=0.1, warmup_epochs=0.0):
        super().__init__(warmup_epochs)
        self.step_size, self.gamma = int(step_size), float(gamma)

    def _base(self, lr, epoch, s, total, warm, steps):
        return np.full(steps, lr * self.gamma ** ((epoch - 1) // self.step_size), dtype=np.float64)


class Cosine(Schedule):
    name = "cosine"

    def __init__(self, min_lr=0.0, warmup_epochs=0.0):
        super().__init__(warmup_epochs)
        self.min_lr = float(min_lr)

    def _base(self, lr, epoch, s, total, warm, steps):
        progress = np.clip((s - warm) / max(total - warm, 1), 0.0, 1.0)
        return self.min_lr + (lr - self.min_lr) * 0.5 * (1.0 + np.cos(math.pi * progress))


def make_schedule(kind, warmup_epochs=0.0, step_size=10, gamma=0.1, min_lr=0.0):
    """The schedule named `kind` (the Trainer's lr_schedule=...) with the settings that apply to it."""
    if kind == "constant":
        return Constant(warmup_epochs)
    if kind == "step":
        return StepDecay(step_size, gamma, warmup_epochs)
    if kind == "cosine":
        return Cosine(min_lr, warmup_epochs)
    raise ValueError(f"unknown lr_schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")


def epoch_learning_rates(kind, lr, epoch, epochs, steps_per_epoch, warmup_epochs=0.0, step_size=10,
                         gamma=0.1, min_lr=0.0):
    """Functional form: ``make_schedule(kind, ...).rates(lr, epoch, epochs, steps_per_epoch)``."""
    return make_schedule(kind, warmup_epochs, step_size, gamma, min_lr).rates(lr, epoch, epochs, steps_per_epoch)
