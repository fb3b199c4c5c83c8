"""Backend registry: ``get_backend("numpy" | "cython" | "numba" | "auto")``.

Each backend lives in its own module and follows the contract in `base.py`. Compiled backends
are imported lazily, so a missing extension only matters when someone asks for it.
"""
from __future__ import annotations

import importlib

from .base import (FEATURES, OPTIMIZER_CODES, Backend, BackendUnavailable, EpochPlan, EpochResult, StepRule,
                   Workspace)

#: name -> (module, class); "auto" tries FASTEST_FIRST in order.
_REGISTRY = {
    "numpy": ("fastgd.backends.numpy_backend", "NumpyBackend"),
    "cython": ("fastgd.backends.cython_backend", "CythonBackend"),
    "numba": ("fastgd.backends.numba_backend", "NumbaBackend"),
}
FASTEST_FIRST = ("cython", "numba", "numpy")
_cache = {}

__all__ = ["FEATURES", "OPTIMIZER_CODES", "Backend", "BackendUnavailable", "EpochPlan", "EpochResult", "StepRule",
           "Workspace", "available_backends", "backend_names", "get_backend"]


def backend_names():
    """Every backend name this version knows, plus "auto"."""
    return tuple(_REGISTRY) + ("auto",)


def _load(name):
    if name not in _cache:
        module, cls = _REGISTRY[name]
        try:
            _cache[name] = getattr(importlib.import_module(module), cls)()
        except ImportError as exc:
            raise BackendUnavailable(f"backend {name!r} is not available here: {exc}") from exc
    return _cache[name]


def get_backend(name="auto"):
    """The backend object for `name`; "auto" is the fastest one that works here."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, one of {', '.join(backend_names())}; got {name!r}")
    if name == "auto":
        for candidate in FASTEST_FIRST:
            if candidate in _REGISTRY:
                try:
                    return _load(candidate)
                except BackendUnavailable:
                    continue
        raise BackendUnavailable("no backend is available")  # numpy always is; kept for clarity
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")
    return _load(name)


def available_backends():
    """Names of the backends that load here (compiled ones only if they were built)."""
    out = []
    for name in _REGISTRY:
        try:
            _load(name)
            out.append(name)
        except BackendUnavailable:
            pass
    return out
