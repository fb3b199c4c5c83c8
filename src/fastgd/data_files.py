"""The user's own data files for `fastgd train`/`fastgd predict`: what a path holds, as arrays.

Formats (by path):
- a folder with the four IDX files (MNIST layout, optionally .gz): `datasets.load_idx`;
- a folder with ``X_train.npy`` and ``y_train.npy`` (optionally ``X_test.npy``, ``y_test.npy``);
- ``X.npy,y.npy``: a pair of .npy files (features, targets);
- ``.npz`` with keys ``X_train, y_train`` (optionally ``X_test, y_test``; `predict` also takes ``X``);
- ``.csv``/``.tsv`` (optionally .gz) and ``.parquet``: a table, one target column named by
  ``--target``; the other columns are the features. Read with pandas/pyarrow (fastgd[data]).

Nothing here unpickles: .npy/.npz are read with allow_pickle=False.
"""
from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datasets import IDX_FILES, DatasetError, load_idx

TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".pq")
#: Integer labels with more distinct values than this are ambiguous (classes or quantities?).
MAX_INFERRED_CLASSES = 100


@dataclass
class Dataset:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    feature_names: list | None = None
    source: str = ""
    notes: list = field(default_factory=list)


def _suffix(path):
    name = path.name.lower()
    for s in TABLE_SUFFIXES + (".npz", ".npy"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def load_training_data(path, target=None):
    """Features and targets of a training data set (and its test set, when the file has one)."""
    text = str(path)
    if "," in text and not Path(text).exists():
        return _npy_pair(text, target)
    path = Path(path)
    if path.is_dir():
        return _folder(path, target)
    if not path.exists():
        raise DatasetError(f"--data {path}: no such file or folder")
    kind = _suffix(path)
    if kind == ".npz":
        _no_target(target, path)
        return _npz(path)
    if kind in TABLE_SUFFIXES:
        if target is None:
            raise DatasetError(f"--data {path} is a table: name its target column with --target COLUMN")
        df = read_table(path)
        X, y, names = _split_table(df, target, path)
        return Dataset(X, y, feature_names=names, source=f"{path} (target column {target!r})")
    if kind == ".npy":
        raise DatasetError(f"--data {path}: a single .npy holds no targets; pass 'X.npy,y.npy' or an .npz with "
                           f"X_train and y_train")
    raise DatasetError(f"--data {path}: unknown data format {kind or '(no suffix)'!r}; use an IDX folder, a folder "
                       f"of X_train.npy/y_train.npy, 'X.npy,y.npy', .npz, .csv or .parquet")


def load_inputs(path, target=None, feature_names=None):
    """Features to predict on: (X, y or None, description). y is returned when the data has targets
    (an IDX test set, y_test/y in an .npz, or the --target column of a table)."""
    text = str(path)
    if "," in text and not Path(text).exists():
        ds = _npy_pair(text, target)
        return ds.X_train, ds.y_train, ds.source
    path = Path(path)
    if path.is_dir():
        ds = _folder(path, target)
        if ds.X_test is not None:
            return ds.X_test, ds.y_test, f"{path} (its test set)"
        return ds.X_train, ds.y_train, f"{path} (its training set: it has no test set)"
    if not path.exists():
        raise DatasetError(f"DATA {path}: no such file or folder")
    kind = _suffix(path)
    if kind == ".npy":
        return _load_npy(path, "X"), None, str(path)
    if kind == ".npz":
        arrays = _npz_arrays(path)
        for x_key, y_key in (("X", "y"), ("X_test", "y_test"), ("X_train", "y_train")):
            if x_key in arrays:
                return _features(arrays[x_key], f"{path}:{x_key}"), arrays.get(y_key), f"{path} (key {x_key})"
        raise DatasetError(f"{path} has none of the keys X, X_test, X_train (it has {sorted(arrays)})")
    if kind in TABLE_SUFFIXES:
        df = read_table(path)
        y = None
        if target is not None:
            if target not in df.columns:
                raise DatasetError(f"--target {target!r} is not a column of {path}")
            y = _target_column(df[target], target, path)
            df = df.drop(columns=[target])
        if feature_names is not None:
            missing = [c for c in feature_names if c not in df.columns]
            if missing:
                raise DatasetError(f"{path} lacks the model's feature columns {missing[:5]}"
                                   + (" ..." if len(missing) > 5 else ""))
            df = df[list(feature_names)]
        X, names = _feature_frame(df, path)
        return X, y, str(path)
    raise DatasetError(f"DATA {path}: unknown data format {kind or '(no suffix)'!r}; use .npy, .npz, .csv, "
                       f".parquet or an IDX folder")


# ---- formats ----------------------------------------------------------------------------------
def _no_target(target, path):
    if target is not None:
        raise DatasetError(f"--target names a column of a .csv/.parquet table; {path} has named arrays instead")


def _folder(path, target):
    _no_target(target, path)
    names = {p.name for p in path.iterdir()}
    if any(stem in names or stem + ".gz" in names for stem in IDX_FILES.values()):
        X_train, y_train, X_test, y_test = load_idx(path)
        return Dataset(X_train, y_train, X_test, y_test, source=f"{path} (IDX)")
    if "X_train.npy" in names and "y_train.npy" in names:
        ds = Dataset(_load_npy(path / "X_train.npy", "X"), _load_npy(path / "y_train.npy", "y"), source=f"{path} (.npy)")
        if ("X_test.npy" in names) != ("y_test.npy" in names):
            raise DatasetError(f"{path} has only one of X_test.npy and y_test.npy")
        if "X_test.npy" in names:
            ds.X_test, ds.y_test = _load_npy(path / "X_test.npy", "X"), _load_npy(path / "y_test.npy", "y")
        return _checked(ds, path)
    raise DatasetError(f"--data {path} is a folder without the four IDX files ({', '.join(IDX_FILES.values())}) "
                       f"or X_train.npy and y_train.npy")


def _npy_pair(text, target):
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise DatasetError(f"--data {text!r}: a pair of .npy files is written 'X.npy,y.npy'")
    _no_target(target, text)
    x_path, y_path = (Path(p) for p in parts)
    for p in (x_path, y_path):
        if not p.is_file():
            raise DatasetError(f"--data {text}: {p} is not a file")
    return _checked(Dataset(_load_npy(x_path, "X"), _load_npy(y_path, "y"), source=f"{x_path} and {y_path}"), text)


def _npz(path):
    arrays = _npz_arrays(path)
    if set(arrays) == {"X"} and hasattr(arrays["X"], "tocsr"):
        raise DatasetError(f"--data {path} is a scipy.sparse matrix (scipy.sparse.save_npz): it holds features but "
                           f"no targets; for training write np.savez(path, X_train=X.toarray(), y_train=y) "
                           f"(`fastgd predict` reads it as it is)")
    missing = {"X_train", "y_train"} - set(arrays)
    if missing:
        raise DatasetError(f"--data {path} needs the keys X_train and y_train (and optionally X_test, y_test); "
                           f"it has {sorted(arrays)}")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DatasetError(f"--data {path} has only one of X_test and y_test")
    ds = Dataset(_features(arrays["X_train"], f"{path}:X_train"), arrays["y_train"],
                 None if "X_test" not in arrays else _features(arrays["X_test"], f"{path}:X_test"),
                 arrays.get("y_test"), source=f"{path} (.npz)")
    return _checked(ds, path)


def _npz_arrays(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            files = set(f.files)
            if {"indptr", "indices", "data", "format", "shape"} <= files:
                return {"X": _sparse_npz(path)}
            return {k: f[k] for k in files & {"X", "y", "X_train", "y_train", "X_test", "y_test"}}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DatasetError(f"{path} holds Python objects (a pickled array); fastgd does not unpickle data "
                               f"files: save numbers or strings (np.savez with numeric/str arrays)") from exc
        raise DatasetError(f"{path} is not a readable .npz file: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, SyntaxError) as exc:
        raise DatasetError(f"{path} is not a readable .npz file: {exc}") from exc


def _sparse_npz(path):
    import scipy.sparse

    X = scipy.sparse.load_npz(path)
    return X


def _load_npy(path, what):
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DatasetError(f"{path} holds Python objects (a pickled array); fastgd does not unpickle data "
                               f"files") from exc
        raise DatasetError(f"{path} is not a readable .npy file: {exc}") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, SyntaxError) as exc:
        raise DatasetError(f"{path} is not a readable .npy file: {exc}") from exc
    if isinstance(a, np.lib.npyio.NpzFile):
        a.close()
        raise DatasetError(f"{path} is an .npz archive, not a .npy array")
    return _features(a, str(path)) if what == "X" else a


def _features(X, where):
    """2-D real features; sparse matrices become dense (the kernels read dense rows)."""
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: features must be numbers, got dtype {X.dtype}")
    if X.ndim == 3 and X.dtype == np.uint8:  # images (n, rows, cols)
        X = X.reshape(len(X), -1)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise DatasetError(f"{where}: features must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.dtype.kind in "iu" and X.dtype != np.uint8:
        # Integer features in a data file are quantities: used as given. (Only uint8 means pixels,
        # which the network reads as value / 255.)
        X = X.astype(np.float64)
    return X


def _checked(ds, where):
    for X, y, split in ((ds.X_train, ds.y_train, "training"), (ds.X_test, ds.y_test, "test")):
        if X is None:
            continue
        y = np.asarray(y)
        if y.ndim == 0 or len(y) != len(X):
            raise DatasetError(f"{where}: the {split} set has {len(X)} samples but {y.size} targets")
        if y.dtype.kind not in "biufU":
            raise DatasetError(f"{where}: {split} targets must be numbers or strings, got dtype {y.dtype}")
    if ds.X_test is not None and ds.X_test.shape[1] != ds.X_train.shape[1]:
        raise DatasetError(f"{where}: training samples have {ds.X_train.shape[1]} features but test samples "
                           f"{ds.X_test.shape[1]}")
    return ds


# ---- tables -----------------------------------------------------------------------------------
def _pandas():
    try:
        import pandas
    except ImportError as exc:
        raise ImportError('reading .csv and .parquet files needs pandas and pyarrow: pip install "fastgd[data]"') \
            from exc
    return pandas


def read_table(path):
    pd = _pandas()
    kind = _suffix(path)
    try:
        if kind in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if kind.startswith(".tsv") else ",")
    except ImportError as exc:
        raise ImportError(f'reading {path} needs pyarrow: pip install "fastgd[data]" ({exc})') from exc
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # pandas/pyarrow parser errors are ValueErrors
        raise DatasetError(f"{path} could not be read as a {kind} table: {exc}") from exc


def _split_table(df, target, path):
    if target not in df.columns:
        cols = ", ".join(map(repr, list(df.columns)[:10]))
        raise DatasetError(f"--target {target!r} is not a column of {path} (columns: {cols})")
    if len(df) == 0:
        raise DatasetError(f"{path} has no rows")
    y = _target_column(df[target], target, path)
    X, names = _feature_frame(df.drop(columns=[target]), path)
    return X, y, names


def _feature_frame(df, path):
    pd = _pandas()
    if df.shape[1] == 0:
        raise DatasetError(f"{path} has no feature columns besides the target")
    bad = [c for c in df.columns if not (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
    if bad:
        raise DatasetError(f"{path}: feature column(s) {', '.join(map(repr, bad[:5]))} are not numeric "
                           f"(dtype {df[bad[0]].dtype}); encode them as numbers or drop them")
    X = df.to_numpy(dtype=np.float64, na_value=np.nan)  # nullable Int64/Float64/boolean included
    missing = np.isnan(X)
    if missing.any():
        row, col = np.argwhere(missing)[0]
        raise DatasetError(f"{path}: column {df.columns[col]!r} has {int(missing[:, col].sum())} missing value(s) "
                           f"(first in data row {row + 1}); fill or drop them first")
    return X, [str(c) for c in df.columns]


def _target_column(col, name, path):
    pd = _pandas()
    if col.isna().any():
        row = int(np.flatnonzero(col.isna().to_numpy())[0])
        raise DatasetError(f"{path}: target column {name!r} has {int(col.isna().sum())} missing value(s) "
                           f"(first in data row {row + 1})")
    if pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.int64)
    if pd.api.types.is_integer_dtype(col):
        return col.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(col):
        return col.to_numpy(dtype=np.float64)
    return np.asarray(col.astype(str).to_numpy(), dtype=str)  # strings, categories, mixed: labels


# ---- tasks and labels ---------------------------------------------------------------------------
def infer_task(y, task=None):
    """"classify" or "regress" for targets y; `task` (from --task) wins when given."""
    y = np.asarray(y)
    if task is not None:
        if task not in ("classify", "regress"):
            raise ValueError(f"--task must be classify or regress, got {task!r}")
        if task == "regress" and y.dtype.kind not in "biuf":
            raise ValueError(f"--task regress needs numeric targets, got dtype {y.dtype}")
        if task == "classify" and y.ndim == 2 and y.shape[1] > 1:
            raise ValueError("--task classify needs one label per sample; these targets have "
                             f"{y.shape[1]} columns")
        return task
    if y.dtype.kind in "U":
        return "classify"
    if y.ndim == 2 and y.shape[1] > 1:
        return "regress"
    flat = y.reshape(-1)
    if y.dtype.kind in "biu":
        n_distinct = len(np.unique(flat))
        if n_distinct > MAX_INFERRED_CLASSES:
            raise ValueError(f"the integer targets have {n_distinct} distinct values: pass --task classify "
                             f"(that many classes) or --task regress (quantities)")
        return "classify"
    if y.dtype.kind == "f":
        if not np.isfinite(flat).all():
            raise ValueError("the targets contain NaN or inf")
        if np.all(flat == np.round(flat)) and len(np.unique(flat)) <= MAX_INFERRED_CLASSES:
            raise ValueError(f"the targets are whole numbers stored as floats ({len(np.unique(flat))} distinct "
                             f"values): pass --task classify or --task regress")
        return "regress"
    raise ValueError(f"targets must be numbers or strings, got dtype {y.dtype}")


def encode_labels(y_train, y_test=None):
    """Class labels -> indices 0..K-1. Returns (idx_train, idx_test, classes); classes is None when the
    labels already are 0..K-1 integers (then indices are the labels themselves)."""
    y_train = np.asarray(y_train).reshape(-1) if np.ndim(y_train) == 2 and np.shape(y_train)[1] == 1 \
        else np.asarray(y_train)
    if y_train.ndim != 1:
        raise ValueError(f"class labels must be 1-D, got shape {y_train.shape}")
    parts = [y_train] + ([np.asarray(y_test).reshape(-1)] if y_test is not None else [])
    if y_test is not None and (parts[1].dtype.kind == "U") != (y_train.dtype.kind == "U"):
        raise ValueError("training labels and test labels must both be text or both numbers")
    if y_train.dtype.kind == "f":
        for p in parts:
            if not np.all(p == np.round(p)):
                raise ValueError("class labels must be whole numbers or text; got fractional values "
                                 "(use --task regress for quantities)")
        parts = [p.astype(np.int64) for p in parts]
    if y_train.dtype.kind == "b":
        parts = [p.astype(np.int64) for p in parts]
    classes = np.unique(parts[0])
    if y_test is not None:
        unseen = np.setdiff1d(parts[1], classes)
        if unseen.size:
            raise ValueError(f"the test set has label(s) {list(unseen[:5])} that the training set never shows")
    if len(classes) < 2:
        raise ValueError(f"classification needs at least 2 classes; the training labels are all {classes[0]!r}")
    idx = [np.searchsorted(classes, p).astype(np.int64) for p in parts]
    identity = classes.dtype.kind in "iu" and classes[0] == 0 and classes[-1] == len(classes) - 1
    return idx[0], (idx[1] if y_test is not None else None), (None if identity else classes)


def split(n, fraction, seed):
    """Seeded (rest, held-out) index arrays, held-out = round(n * fraction) rows."""
    n_out = int(round(n * fraction))
    if n_out < 1 or n_out >= n:
        raise ValueError(f"a split of {fraction} of {n} samples leaves nothing on one side")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])
