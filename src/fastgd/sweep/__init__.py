"""Hyperparameter sweeps: many trials over settings and seeds, here or on a Dask cluster.

    import fastgd
    result = fastgd.sweep({"recipe": "best", "grid": {"lr": [0.01, 0.05, 0.1]}, "seeds": 3}, out="lr-sweep")
    print(result.table())

``fastgd.sweep(...)`` is `run_sweep` (this module is callable); ``fastgd sweep`` is the command
line. The parts: `spec` (what to run, checked before anything runs), `search` (grid, random,
Optuna), `runners` (this process, a local process pool, Dask), `trial` (one training run, in a
worker), `results` (JSON lines, best model, summary table, plot) and `engine` (the driver).
"""
import sys
import types

from .engine import SweepResult, run_sweep
from .spec import SweepSpec, parse_spec

sweep = run_sweep

__all__ = ["run_sweep", "sweep", "SweepResult", "SweepSpec", "parse_spec"]


class _CallableModule(types.ModuleType):
    """Lets ``fastgd.sweep(...)`` call `run_sweep` while ``fastgd.sweep.spec`` etc. stay submodules."""

    def __call__(self, *args, **kwargs):
        return run_sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
