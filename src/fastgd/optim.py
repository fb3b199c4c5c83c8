"""Optimisers as small objects that own their state (after scikit-learn's _stochastic_optimizers).

An optimiser holds its hyper-parameters, its state arrays (laid out like `net.params`) and its
step counter. It does not do arithmetic itself: `step_rule()` hands the backends a `StepRule`
(backends/base.py), whose kernels apply the steps inside their compiled epoch loops and update
the state arrays in place; the Trainer then advances `step_count` by the steps taken.

    opt = fastgd.optim.Adam(lr=1e-3)
    fastgd.Trainer(net, optimizer=opt, loss="cross_entropy").fit(X, y)

Formulas (PyTorch's SGD, Adam and AdamW; weight decay and l1 on weights only): see base.py.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import _checks
from .backends.base import OPTIMIZER_CODES, StepRule

OPTIMIZERS = tuple(OPTIMIZER_CODES)  # ("sgd", "adam", "adamw")


def _real(value, what, lo=0.0, hi=math.inf, lo_open=False, hi_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {value!r}")
    value = float(value)
    bad = (math.isnan(value) or (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi)
           or math.isinf(value))
    if bad:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{what} must lie in {left}{lo:g}, {hi:g}{right}, got {value}")
    return value


class Optimizer:
    """Base class: hyper-parameters, state arrays like net.params, and the number of steps taken."""

    name = "?"
    n_state = 0  # state arrays this optimiser keeps

    def __init__(self, lr, weight_decay=0.0, l1=0.0):
        self.lr = _checks.check_positive_float(lr, "lr")
        self.weight_decay = _real(weight_decay, "weight_decay")
        self.l1 = _real(l1, "l1")
        self.state = ()
        self.step_count = 0

    @property
    def kind(self):
        return OPTIMIZER_CODES[self.name]

    def hyperparameters(self):
        """The settings (not the state) as a dict: what a checkpoint must match to resume."""
        raise NotImplementedError

    def reset(self, params):
        """Start afresh for `params`: zeroed state arrays of its shape and dtype, step count 0."""
        self.state = tuple(np.zeros_like(params) for _ in range(self._state_arrays()))
        self.step_count = 0
        return self

    def _state_arrays(self):
        return self.n_state

    def step_rule(self):
        """What the kernels need for the next steps (state arrays shared, updated in place)."""
        raise NotImplementedError

    def state_dict(self):
        """{"name", "hyperparameters", "step_count", "state": [arrays]} for checkpoints."""
        return {"name": self.name, "hyperparameters": self.hyperparameters(), "step_count": self.step_count,
                "state": [s.copy() for s in self.state]}

    def load_state_dict(self, d):
        """Restore what `state_dict` gave, into the existing arrays (shapes must match)."""
        if d.get("name") != self.name:
            raise ValueError(f"optimiser state is for {d.get('name')!r}, not {self.name!r}")
        arrays = list(d["state"])
        if len(arrays) != len(self.state):
            raise ValueError(f"optimiser state holds {len(arrays)} arrays; {self.name} needs {len(self.state)} "
                             f"(call reset(params) first)")
        for mine, saved in zip(self.state, arrays):
            saved = np.asarray(saved)
            if saved.shape != mine.shape:
                raise ValueError(f"optimiser state has shape {saved.shape}, expected {mine.shape}")
            mine[...] = saved
        step = d["step_count"]
        if isinstance(step, bool) or int(step) != step or step < 0:
            raise ValueError(f"optimiser step_count must be a non-negative integer, got {step!r}")
        self.step_count = int(step)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Minibatch SGD with optional (Nesterov) momentum, L2 weight decay and L1 (PyTorch's SGD)."""

    name = "sgd"

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0):
        super().__init__(lr, weight_decay, l1)
        self.momentum = _real(momentum, "momentum", hi=1.0, hi_open=True)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def _state_arrays(self):
        return 1 if self.momentum > 0 else 0  # the velocity

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "l1": self.l1}

    def step_rule(self):
        return StepRule(kind=self.kind, momentum=self.momentum, nesterov=self.nesterov,
                        weight_decay=self.weight_decay, l1=self.l1, step=self.step_count, state=self.state)


class Adam(Optimizer):
    """Adam (PyTorch's torch.optim.Adam, amsgrad=False); weight_decay is L2 added to the gradient."""

    name = "adam"
    n_state = 2  # first and second moments (m, v)

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0):
        super().__init__(lr, weight_decay, l1)
        try:
            b1, b2 = betas
        except (TypeError, ValueError) as exc:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from exc
        self.beta1 = _real(b1, "beta1", hi=1.0, hi_open=True)
        self.beta2 = _real(b2, "beta2", hi=1.0, hi_open=True)
        self.eps = _checks.check_positive_float(eps, "eps")

    def hyperparameters(self):
        return {"lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps,
                "weight_decay": self.weight_decay, "l1": self.l1}

    def step_rule(self):
        return StepRule(kind=self.kind, weight_decay=self.weight_decay, l1=self.l1, beta1=self.beta1,
                        beta2=self.beta2, eps=self.eps, step=self.step_count, state=self.state)


class AdamW(Adam):
    """AdamW (PyTorch's torch.optim.AdamW): decoupled weight decay W -= lr * wd * W before each Adam step."""

    name = "adamw"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0.0):
        super().__init__(lr, betas, eps, weight_decay, l1)


_CLASSES = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(name, lr=None, momentum=0.0, nesterov=False, weight_decay=None, l1=0.0, beta1=0.9,
                   beta2=0.999, eps=1e-8):
    """An optimiser from the Trainer's keyword form. lr=None: 3.0 for sgd (the lesson), 1e-3 for adam/adamw;
    weight_decay=None: 0, or 1e-2 for adamw (PyTorch's defaults)."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer must be one of {', '.join(OPTIMIZERS)} or a fastgd.optim.Optimizer, got {name!r}")
    if name not in _CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if name == "sgd":
        return SGD(3.0 if lr is None else lr, momentum=momentum, nesterov=nesterov,
                   weight_decay=0.0 if weight_decay is None else weight_decay, l1=l1)
    if momentum or nesterov:
        raise ValueError(f"momentum and nesterov apply to optimizer 'sgd', not {name!r} (use beta1)")
    wd = (1e-2 if name == "adamw" else 0.0) if weight_decay is None else weight_decay
    return _CLASSES[name](1e-3 if lr is None else lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, l1=l1)
