"""The data a sweep trains on, loaded once in the parent and shipped once to each worker.

Given the same way as for `fastgd train`: the shipped MNIST (the default, or "mnist"), a folder
of IDX files, or (when `fastgd.data_files` is present) a data file it reads; or, from Python,
the four arrays ``(X_train, y_train, X_test, y_test)``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SweepData:
    """Train and test arrays plus a short token naming their content (part of every trial's id)."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    name: str
    token: str

    @property
    def n_features(self):
        return int(self.X_train.shape[1])


def _token(arrays):
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


TEST_SPLIT = 0.2  # as `fastgd train`: data without a test set gives a seeded fifth to testing


def _load_data_file(path, target):
    """The one hook into `fastgd.data_files` (what `fastgd train --data` reads: IDX or .npy folders,
    .npz, 'X.npy,y.npy', .csv/.parquet tables with a target column)."""
    from .. import data_files

    ds = data_files.load_training_data(path, target)
    if ds.X_test is None:
        rest, test = data_files.split(len(ds.X_train), TEST_SPLIT, 0)
        y = np.asarray(ds.y_train)
        return ds.X_train[rest], y[rest], ds.X_train[test], y[test]
    return ds.X_train, ds.y_train, ds.X_test, ds.y_test


def _has_data_files():
    import importlib.util

    return importlib.util.find_spec("fastgd.data_files") is not None


def load_data(source=None, train_size=None, test_size=None, target=None):
    """A `SweepData` from a source: None/"mnist", an IDX folder, a data file, or 4 arrays.

    train_size / test_size keep the first n rows (quick sweeps, tests); target names the target
    column of a table.
    """
    from ..datasets import load_idx, load_mnist

    if source is None or (isinstance(source, str) and source.lower() == "mnist"):
        arrays, name = load_mnist(), "mnist"
    elif isinstance(source, (str, Path)):
        name = str(source)
        if _has_data_files():
            arrays = _load_data_file(source, target)
        elif Path(source).is_dir():
            arrays = load_idx(source)
        elif Path(source).exists():
            raise ValueError(f"data {name} is a file; this fastgd reads an IDX folder or the shipped MNIST")
        else:
            raise ValueError(f"data {name!r} is neither 'mnist' nor a folder of IDX files")
    elif isinstance(source, (tuple, list)) and len(source) == 4:
        arrays, name = source, "arrays"
    else:
        raise TypeError("data must be 'mnist', a path, or the four arrays (X_train, y_train, X_test, y_test), "
                        f"got {type(source).__name__}")
    arrays = [np.asarray(a) for a in arrays]
    if len(arrays) != 4:
        raise ValueError(f"data {name} gave {len(arrays)} arrays, expected X_train, y_train, X_test, y_test")
    X_train, y_train, X_test, y_test = arrays
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise ValueError(f"data {name}: X_train and X_test must be 2-D with the same number of columns, got "
                         f"{X_train.shape} and {X_test.shape}")
    if len(X_train) != len(y_train) or len(X_test) != len(y_test):
        raise ValueError(f"data {name}: {len(X_train)}/{len(X_test)} train/test rows but "
                         f"{len(y_train)}/{len(y_test)} targets")
    if train_size is not None:
        X_train, y_train = X_train[:train_size], y_train[:train_size]
        name += f"[:{train_size}]"
    if test_size is not None:
        X_test, y_test = X_test[:test_size], y_test[:test_size]
        name += f" test[:{test_size}]"
    arrays = [np.ascontiguousarray(a) for a in (X_train, y_train, X_test, y_test)]
    return SweepData(*arrays, name=name, token=_token(arrays))
