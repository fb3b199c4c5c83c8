"""Learning-rate schedules as small objects, evaluated per optimiser step.

The Trainer asks its schedule for one learning rate per step of an epoch (`EpochPlan.lrs`), so
the compiled epoch loops apply it without calling back into Python. Every schedule has linear
warm-up: the first ``warmup_epochs * steps_per_epoch`` steps are scaled by (s + 1) / warmup_steps.

    Constant()                  lr
    StepDecay(step_size, gamma) lr * gamma ** ((epoch - 1) // step_size)
    Cosine(min_lr)              from lr down to min_lr along half a cosine over the steps after warm-up
    OneCycle(pct_start, div_factor, final_div_factor, anneal)
                                one cycle (Smith & Topin; PyTorch's OneCycleLR): up from lr / div_factor to
                                lr over the first pct_start of all steps, then down to
                                lr / (div_factor * final_div_factor), both along half a cosine (or linear)

A schedule's length is the run's: `rates` is given the number of epochs, so a Trainer with a
time budget (which sets the number of epochs from the measured epoch time) gets a schedule that
completes within the budget.
"""
from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "step", "cosine", "onecycle")


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


class OneCycle(Schedule):
    """One cycle over the whole run (PyTorch's OneCycleLR with cycle_momentum=False, counting steps from 0).

    With T = epochs * steps_per_epoch steps, step s (0-based) gets
        s <= u:  lr0 + (lr - lr0) * c(s / u)                   lr0 = lr / div_factor
        s >  u:  lr + (lr_end - lr) * c((s - u) / (T - 1 - u))  lr_end = lr0 / final_div_factor
    with u = max(pct_start * T - 1, 0) (so the last step gets lr_end exactly; u = 0 starts at the peak)
    where c(p) = (1 - cos(pi p)) / 2 ("cos") or p ("linear"). `lr` is the peak. warmup_epochs
    (linear warm-up on top) is allowed but rarely wanted: the cycle warms up already.
    """

    name = "onecycle"
    ANNEALS = ("cos", "linear")

    def __init__(self, pct_start=0.25, div_factor=25.0, final_div_factor=1e4, anneal="cos", warmup_epochs=0.0):
        super().__init__(warmup_epochs)
        pct_start, div_factor, final_div_factor = float(pct_start), float(div_factor), float(final_div_factor)
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"onecycle pct_start must lie in [0, 1], got {pct_start}")
        if not (math.isfinite(div_factor) and div_factor >= 1.0):
            raise ValueError(f"onecycle div_factor must be a finite number >= 1, got {div_factor}")
        if not (math.isfinite(final_div_factor) and final_div_factor >= 1.0):
            raise ValueError(f"onecycle final_div_factor must be a finite number >= 1, got {final_div_factor}")
        if anneal not in self.ANNEALS:
            raise ValueError(f"onecycle anneal must be one of {', '.join(self.ANNEALS)}, got {anneal!r}")
        self.pct_start, self.div_factor, self.final_div_factor, self.anneal = (pct_start, div_factor,
                                                                                final_div_factor, anneal)

    def _curve(self, p):
        p = np.clip(p, 0.0, 1.0)
        return 0.5 * (1.0 - np.cos(math.pi * p)) if self.anneal == "cos" else p

    def _base(self, lr, epoch, s, total, warm, steps):
        lr0 = lr / self.div_factor
        lr_end = lr0 / self.final_div_factor
        up = max(self.pct_start * total - 1.0, 0.0)  # PyTorch's phase boundary: the peak is step pct_start*T - 1
        down = max(total - 1 - up, 1e-12)
        rising = lr0 + (lr - lr0) * self._curve(s / up) if up > 0 else np.full_like(s, lr)
        falling = lr + (lr_end - lr) * self._curve((s - up) / down)
        return np.where(s <= up, rising, falling)


def make_schedule(kind, warmup_epochs=0.0, step_size=10, gamma=0.1, min_lr=0.0):
    """The schedule named `kind` (the Trainer's lr_schedule=...) with the settings that apply to it
    ("onecycle": the defaults of `OneCycle`; pass a OneCycle object for others)."""
    if kind == "constant":
        return Constant(warmup_epochs)
    if kind == "step":
        return StepDecay(step_size, gamma, warmup_epochs)
    if kind == "cosine":
        return Cosine(min_lr, warmup_epochs)
    if kind == "onecycle":
        return OneCycle(warmup_epochs=warmup_epochs)
    raise ValueError(f"unknown lr_schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")


def epoch_learning_rates(kind, lr, epoch, epochs, steps_per_epoch, warmup_epochs=0.0, step_size=10,
                         gamma=0.1, min_lr=0.0):
    """Functional form: ``make_schedule(kind, ...).rates(lr, epoch, epochs, steps_per_epoch)``."""
    return make_schedule(kind, warmup_epochs, step_size, gamma, min_lr).rates(lr, epoch, epochs, steps_per_epoch)
