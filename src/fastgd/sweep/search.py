"""Which points to try: every grid point, seeded random samples, or Optuna's TPE (ask/tell).

A point is a dict of the swept settings; the sweep runs each point once per seed.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .spec import Choice


def grid_points(grid):
    """Every combination of the grid's values, the first setting varying slowest."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _sample(dim, rng):
    if isinstance(dim, Choice):
        value = dim.values[int(rng.integers(len(dim.values)))]
        return value.item() if isinstance(value, np.generic) else value
    if dim.integer:
        if dim.log:  # log-uniform over [low, high + 1), floored: each integer by its share of log space
            return min(dim.high, int(math.exp(rng.uniform(math.log(dim.low), math.log(dim.high + 1)))))
        return int(rng.integers(dim.low, dim.high + 1))
    if dim.log:
        return float(math.exp(rng.uniform(math.log(dim.low), math.log(dim.high))))
    return float(rng.uniform(dim.low, dim.high))


def random_points(space, n, seed):
    """n points sampled independently from the space; the same seed gives the same points (and the
    first k of n points equal the k points of a shorter run, so extending a sweep reuses its trials)."""
    rng = np.random.default_rng(seed)
    return [{name: _sample(dim, rng) for name, dim in space.items()} for _ in range(n)]


def extreme_points(space):
    """Points at each dimension's bounds and choices (to check the settings before an Optuna run)."""
    base = {name: (dim.values[0] if isinstance(dim, Choice) else dim.low) for name, dim in space.items()}
    points = [base]
    for name, dim in space.items():
        for value in (dim.values[1:] if isinstance(dim, Choice) else (dim.high,)):
            points.append({**base, name: value})
    return points


class OptunaSearch:
    """Optuna's TPE sampler through ask/tell: each asked point runs once per seed and is told the
    mean metric over its seeds. Finished points from an earlier run of the same sweep are added to
    the study first, so a resumed search continues from what it knew."""

    def __init__(self, space, direction, seed):
        try:
            import optuna
        except ImportError as exc:
            raise ImportError('search "optuna" needs Optuna: pip install "fastgd[optuna]"') from exc
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.space, self.direction, self.seed = space, direction, seed
        self.distributions = {name: self._distribution(dim) for name, dim in space.items()}
        self.study = None

    def open(self, finished=(), unfinished=()):
        """Start the study: `finished` is [(point, value or None)] from an earlier run of this sweep,
        told first; `unfinished` points (some seeds missing) are asked first. The sampler's seed moves
        on with the number of finished points, so a resumed search does not repeat its first samples."""
        finished = list(finished)
        sampler = self._optuna.samplers.TPESampler(seed=self.seed + 1_000_003 * len(finished))
        self.study = self._optuna.create_study(direction=self.direction, sampler=sampler)
        for point, value in finished:
            self._add_finished(point, value)
        for point in unfinished:
            self._enqueue(point)

    def _distribution(self, dim):
        d = self._optuna.distributions
        if isinstance(dim, Choice):
            return d.CategoricalDistribution([_categorical(v) for v in dim.values])
        if dim.integer:
            return d.IntDistribution(dim.low, dim.high, log=dim.log)
        return d.FloatDistribution(dim.low, dim.high, log=dim.log)

    def _from_optuna(self, name, value):
        dim = self.space[name]
        if isinstance(dim, Choice):  # categorical values stand in for lists (e.g. sizes)
            return dim.values[[_categorical(v) for v in dim.values].index(value)]
        return value

    def _add_finished(self, point, value):
        """Tell the study about a point that finished in an earlier run (value None: it failed)."""
        params = {name: _categorical(v) if isinstance(self.space[name], Choice) else v for name, v in point.items()}
        state = self._optuna.trial.TrialState.COMPLETE if value is not None else self._optuna.trial.TrialState.FAIL
        self.study.add_trial(self._optuna.trial.create_trial(
            params=params, distributions=self.distributions, value=value, state=state))

    def _enqueue(self, point):
        """Ask this point next (an unfinished point of an earlier run)."""
        self.study.enqueue_trial({name: _categorical(v) if isinstance(self.space[name], Choice) else v
                                  for name, v in point.items()})

    def ask(self):
        """(handle, point)."""
        trial = self.study.ask(self.distributions)
        return trial, {name: self._from_optuna(name, trial.params[name]) for name in self.space}

    def tell(self, handle, value):
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            self.study.tell(handle, state=self._optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(handle, value)


def _categorical(value):
    """Optuna's categorical choices must be None, bool, int, float or str."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
