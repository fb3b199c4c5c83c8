"""The network: layer sizes, activations, and every parameter in one contiguous buffer.

Layout of `Network.params` (llm.c style), layer by layer: W0 (n0 x n1, row-major), b0 (n1),
W1 (n1 x n2), b1 (n2), ... `net.weights[l]` and `net.biases[l]` are views into it, so the
backends update one flat array and the views always see the current values.

A network may also carry what it needs to be used on raw data: input/target scalers
(`set_scalers`) and the original class labels (`classes`). The model file (`save`/`load`) is a
plain .npz, documented in README "Model file format".
"""
from __future__ import annotations

import json
import os
import re
import secrets
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import _checks

FORMAT_TAG = "fastgd.Network"
FORMAT_VERSION = 2  # 1: architecture + params + history; 2: adds x_mean/x_std/y_mean/y_std, classes, feature_names
INITS = ("auto", "xavier", "he", "nielsen")

class _LayerViews:
    """A read/assign sequence of per-layer views into the flat parameter buffer.

    `net.weights[0] = A` copies A into the buffer (shape and finiteness checked), rather than
    rebinding a list slot, so the contiguous buffer stays the single source of truth.
    """

    def __init__(self, views, what):
        self._views = views
        self._what = what

    def __len__(self):
        return len(self._views)

    def __getitem__(self, i):
        return self._views[i]

    def __iter__(self):
        return iter(self._views)

    def __setitem__(self, i, value):
        view = self._views[i]
        value = np.asarray(value)
        if value.shape != view.shape:
            raise ValueError(f"{self._what}[{i}] has shape {view.shape}; cannot assign shape {value.shape}")
        if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
            raise TypeError(f"{self._what}[{i}] must be real numbers, got dtype {value.dtype}")
        if not np.isfinite(value).all():
            raise ValueError(f"{self._what}[{i}] contains NaN or inf")
        view[...] = value

    def __repr__(self):
        return f"[{', '.join(f'array{v.shape}' for v in self._views)}]"


class Network:
    """A fully connected feed-forward network.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first: ``[784, 16, 16, 10]`` is the lesson's network.
    activation : {"sigmoid", "relu", "tanh", ...}
        Hidden-layer activation.
    output : {"sigmoid", "softmax", "linear"}
        Output-layer activation. It sets the task `predict` answers: "linear" is regression
        (values), one "sigmoid" unit is binary classification ({0, 1}), anything else is
        classification by the largest output.
    dtype : float32 or float64
        Precision of parameters and arithmetic.
    seed : int or None
        Seed for the initial weights (same seed, same network).
    init : {"auto", "xavier", "he", "nielsen"}
        Weight initialisation. "auto" is He for ReLU and Xavier/Glorot otherwise; "nielsen" is
        the book's N(0, 1/n_in) weights with N(0, 1) biases. Other schemes start biases at zero.
    """

    def __init__(self, sizes, activation="sigmoid", output="sigmoid", dtype=np.float32, seed=None, init="auto"):
        self.sizes = _checks.check_sizes(sizes)
        self.activation = _checks.check_choice(activation, _checks.ACTIVATIONS, "activation")
        self.output = _checks.check_choice(output, _checks.OUTPUTS, "output")
        self.dtype = _checks.check_dtype(dtype)
        self.init = _checks.check_choice(init, INITS, "init")
        self.params = aligned_zeros(self.n_params, self.dtype)
        self._make_views()
        self.history = None  # per-epoch records, set by Trainer.fit and kept by save/load
        self.x_mean = self.x_std = self.y_mean = self.y_std = None  # see set_scalers
        self._classes = None
        self.feature_names = None  # column names of the training data, when it had them (CLI: csv/parquet)
        self.reset(seed)

    # ---- layout -------------------------------------------------------------------------------
    @property
    def n_layers(self):
        """Number of weight layers (len(sizes) - 1)."""
        return len(self.sizes) - 1

    @property
    def n_params(self):
        return _n_params(self.sizes)

    @property
    def layout(self):
        """Per layer: (weight offset, bias offset, n_in, n_out) into `params`, in elements."""
        out, off = [], 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            out.append((off, off + n_in * n_out, n_in, n_out))
            off += n_in * n_out + n_out
        return out

    def layout_array(self):
        """`layout` as an (n_layers, 4) int64 array, the form the compiled kernels take."""
        return np.asarray(self.layout, dtype=np.int64).reshape(-1, 4)

    def _make_views(self):
        w, b = [], []
        for w_off, b_off, n_in, n_out in self.layout:
            w.append(self.params[w_off:b_off].reshape(n_in, n_out))
            b.append(self.params[b_off:b_off + n_out])
        self.weights = _LayerViews(w, "weights")
        self.biases = _LayerViews(b, "biases")

    def reset(self, seed=None):
        """Draw fresh initial parameters (in place) from `seed`."""
        rng = np.random.default_rng(seed)
        scheme = self.init
        if scheme == "auto":
            scheme = "he" if self.activation == "relu" else "xavier"
        for W, b in zip(self.weights, self.biases):
            n_in, n_out = W.shape
            if scheme == "he":
                W[...] = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
                b[...] = 0
            elif scheme == "xavier":
                W[...] = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / (n_in + n_out))
                b[...] = 0
            else:  # nielsen
                W[...] = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
                b[...] = rng.standard_normal(n_out)
        return self

    # ---- copying: the views must point into the copy's own buffer ------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        del state["weights"], state["biases"]  # views; rebuilt from params by __setstate__
        return state

    def __setstate__(self, state):
        state.setdefault("x_mean", None), state.setdefault("x_std", None)
        state.setdefault("y_mean", None), state.setdefault("y_std", None)
        state.setdefault("_classes", None), state.setdefault("feature_names", None)
        self.__dict__.update(state)
        self.params = _aligned(self.params)  # unpickled arrays may be read-only or unaligned
        self._make_views()

    def copy(self):
        """An independent network with the same architecture, parameters, scalers and classes."""
        import copy

        return copy.deepcopy(self)

    def __repr__(self):
        return (f"Network(sizes={self.sizes}, activation={self.activation!r}, output={self.output!r}, "
                f"dtype={self.dtype.name})")

    # ---- task, scalers and class labels -------------------------------------------------------
    @property
    def task(self):
        """What `predict` answers: "regression" (linear output), "binary" (one sigmoid unit) or
        "classification" (the largest output). The Trainer's task names are the same."""
        if self.output == "linear":
            return "regression"
        if self.output == "sigmoid" and self.sizes[-1] == 1:
            return "binary"
        return "classification"

    @property
    def n_classes(self):
        """Classes `predict` can answer (None for regression)."""
        return {"regression": None, "binary": 2, "classification": self.sizes[-1]}[self.task]

    @property
    def classes(self):
        """The original class labels (index k is output unit k; for binary: [negative, positive]), or None."""
        return self._classes

    @classes.setter
    def classes(self, classes):
        self._classes = None if classes is None else self._check_classes(np.asarray(classes))

    def _check_classes(self, classes):
        if self.task == "regression":
            raise ValueError("a regression network (linear output) has no classes")
        if classes.ndim != 1 or classes.dtype.kind not in "biufU":
            raise TypeError(f"classes must be a 1-D array of numbers or strings, got {classes.dtype} {classes.shape}")
        if len(classes) != self.n_classes:
            raise ValueError(f"classes has {len(classes)} labels but the network answers {self.n_classes} classes")
        if len(np.unique(classes)) != len(classes):
            raise ValueError("classes must be distinct")
        return classes.copy()

    def set_scalers(self, x_mean=None, x_std=None, y_mean=None, y_std=None):
        """Store input and target standardisation in the model: x -> (x - x_mean) / x_std before
        the first layer, and outputs -> outputs * y_std + y_mean after the last (regression only).

        None leaves that part unset (mean 0, std 1). The Trainer trains on scaled data through
        `scale_inputs`/`scale_targets`; `predict`/`predict_proba` take and return raw values.
        """
        n_in, n_out = self.sizes[0], self.sizes[-1]
        x_mean, x_std = _scaler(x_mean, n_in, "x_mean"), _scaler(x_std, n_in, "x_std", positive=True)
        y_mean, y_std = _scaler(y_mean, n_out, "y_mean"), _scaler(y_std, n_out, "y_std", positive=True)
        if (y_mean is not None or y_std is not None) and self.task != "regression":
            raise ValueError("target scalers (y_mean, y_std) apply to regression networks (output='linear') only")
        self.x_mean, self.x_std, self.y_mean, self.y_std = x_mean, x_std, y_mean, y_std
        return self

    def fit_scalers(self, X=None, y=None):
        """`set_scalers` from data: the mean and standard deviation of each column of X (and of y);
        a constant column gets std 1."""
        kw = {}
        if X is not None:
            X = _as_real(X, "X")
            kw["x_mean"], kw["x_std"] = _mean_std(X.reshape(len(X), -1))
        if y is not None:
            y = _as_real(y, "y")
            kw["y_mean"], kw["y_std"] = _mean_std(y.reshape(len(y), -1))
        return self.set_scalers(**kw)

    @property
    def has_scalers(self):
        return any(v is not None for v in (self.x_mean, self.x_std, self.y_mean, self.y_std))

    def scale_inputs(self, X):
        """X as the first layer sees it: (X - x_mean) / x_std in the network's dtype; X itself when unset."""
        if self.x_mean is None and self.x_std is None:
            return X
        X = _as_real(X, "X")
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"X must have shape (n, {self.sizes[0]}) for this network, got {X.shape}")
        mean = 0.0 if self.x_mean is None else self.x_mean
        std = 1.0 if self.x_std is None else self.x_std
        out = np.empty(X.shape, dtype=self.dtype)
        rows = max(1, (8 << 20) // (8 * max(1, X.shape[1])))  # float64 arithmetic, 8 MB at a time
        for i in range(0, len(X), rows):
            out[i:i + rows] = (X[i:i + rows].astype(np.float64) - mean) / std
        return out

    def scale_targets(self, y):
        """Regression targets as the network is trained on them: (y - y_mean) / y_std; y itself when unset."""
        if self.y_mean is None and self.y_std is None:
            return y
        y = _as_real(y, "y")
        if not (y.ndim == 2 and y.shape[1] == self.sizes[-1]) and not (y.ndim == 1 and self.sizes[-1] == 1):
            raise ValueError(f"y must have shape (n, {self.sizes[-1]}) for this network, got {y.shape}")
        mean = 0.0 if self.y_mean is None else (self.y_mean if y.ndim == 2 else self.y_mean[0])
        std = 1.0 if self.y_std is None else (self.y_std if y.ndim == 2 else self.y_std[0])
        return ((y.astype(np.float64) - mean) / std).astype(self.dtype, copy=False)

    def _unscale_outputs(self, out):
        if self.y_mean is None and self.y_std is None:
            return out
        out = out.astype(np.float64)
        if self.y_std is not None:
            out *= self.y_std
        if self.y_mean is not None:
            out += self.y_mean
        return out.astype(self.dtype, copy=False)

    # ---- inference ----------------------------------------------------------------------------
    def predict_proba(self, X, backend="auto", threads=None):
        """Output-layer activations for each row of X, shape (n, sizes[-1]).

        The input scaler is applied first; for regression the target scaler is undone, so the
        values are in the units of the training targets.
        """
        from .backends import get_backend

        ready = self._ready_input(X)
        if ready is None:
            X = self.scale_inputs(_as_input(X))
            X, scale = _checks.check_X(X, self.sizes[0], self.dtype)
        else:
            X, scale = ready
        out = self._unscale_outputs(get_backend(backend).forward(self, X, scale, _checks.check_threads(threads)))
        if not np.isfinite(out).all():  # never a quiet argmax over NaN
            if not np.isfinite(self.params).all():
                raise FloatingPointError("the network's parameters contain NaN or inf (did training diverge?); "
                                         "its outputs are meaningless")
            raise FloatingPointError(f"the network's outputs overflow {self.dtype.name} for these inputs; "
                                     f"use dtype float64 or scale the inputs")
        return out

    def _ready_input(self, X):
        """(X, scale) when X is already what the kernels take and needs no input scaler: a
        C-contiguous 2-D ndarray of uint8 or the network's dtype, finite, of the right width;
        else None (then check_X converts it or raises). Saves most of check_X's per-call cost
        on single-sample predicts."""
        if (type(X) is not np.ndarray or X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != self.sizes[0]
                or not X.flags.c_contiguous or self.x_mean is not None or self.x_std is not None):
            return None
        if X.dtype == np.uint8:
            return X, _checks.UINT8_SCALE
        if X.dtype == self.dtype and np.isfinite(X).all():
            return X, 1.0
        return None

    def predict(self, X, backend="auto", threads=None):
        """Predictions for each row of X.

        Regression (linear output): the values, shape (n,) for one output, else (n, sizes[-1]).
        Binary (one sigmoid unit): class 1 where the output is >= 0.5, else 0.
        Otherwise: the index of the largest output. With `classes` set, indices are mapped to
        the original labels.
        """
        out = self.predict_proba(X, backend=backend, threads=threads)
        task = self.task
        if task == "regression":
            return out[:, 0] if out.shape[1] == 1 else out
        index = (out[:, 0] >= 0.5).astype(np.int64) if task == "binary" else np.argmax(out, axis=1)
        return index if self._classes is None else self._classes[index]

    # ---- export -------------------------------------------------------------------------------
    def to_torch(self):
        """A `torch.nn.Sequential` computing `predict_proba` (scalers folded in). Needs torch."""
        from .export import to_torch

        return to_torch(self)

    def to_onnx(self, path=None):
        """An ONNX model computing `predict_proba`; written to `path` when given. Needs fastgd[onnx]."""
        from .export import to_onnx

        return to_onnx(self, path)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path, extra=None):
        """Write the network (scalers, classes and training history too) to a `.npz` file, atomically.

        `extra` maps further array names to arrays stored beside the network (the Trainer's
        checkpoints use it); `load` ignores them. The format is documented in README "Model file
        format".

        The file is written to a temporary name beside `path` and renamed over it, so an
        interrupted save never leaves a half-written model or destroys the previous one.
        Raises FloatingPointError (and writes nothing) when the parameters hold NaN or inf.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        if not np.isfinite(self.params).all():
            raise FloatingPointError(
                f"not saving {path}: the network's parameters contain NaN or inf (training diverged; "
                f"lower the learning rate)")
        arrays = {
            "format": np.array(FORMAT_TAG),
            "version": np.array(FORMAT_VERSION),
            "sizes": np.array(self.sizes, dtype=np.int64),
            "activation": np.array(self.activation),
            "output": np.array(self.output),
            "dtype": np.array(self.dtype.name),
            "init": np.array(self.init),
            "params": self.params,
        }
        for key in _SCALER_KEYS:
            value = getattr(self, key, None)
            if value is not None:
                arrays[key] = np.asarray(value, dtype=np.float64)
        if getattr(self, "_classes", None) is not None:
            arrays["classes"] = self._classes
        if getattr(self, "feature_names", None) is not None:
            arrays["feature_names"] = np.asarray([str(n) for n in self.feature_names])
        history = getattr(self, "history", None)
        if history is not None:
            arrays["history"] = np.array(json.dumps(history))
        for key in extra or {}:
            if key in arrays:
                raise ValueError(f"extra array name {key!r} is a key of the model format")
        arrays.update(extra or {})
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    @classmethod
    def load(cls, path):
        """Read a network written by `save`. Raises ValueError for anything that is not one.

        Only the keys of the format are read. Every array's .npy header (dtype, shape) is checked
        before its data is decompressed, the parameter count is checked against `sizes` before
        anything is allocated, and no key may decompress beyond its cap; nothing is unpickled.
        """
        path = Path(path)
        with _ModelReader(path) as r:
            if "format" not in r.keys or r.get("format", str, max_items=1) != FORMAT_TAG:
                raise ValueError(f"{path} is not a fastgd model file (no '{FORMAT_TAG}' format tag)")
            missing = {"version", "sizes", "activation", "output", "dtype", "params"} - r.keys
            if missing:
                raise ValueError(f"{path} is an incomplete fastgd model file: missing {sorted(missing)}")
            version = r.get("version", int, max_items=1)
            if not 1 <= version <= FORMAT_VERSION:
                raise ValueError(f"{path} has model format version {version}; this fastgd reads versions "
                                 f"1 to {FORMAT_VERSION}" + (" (upgrade fastgd)" if version > FORMAT_VERSION else ""))
            sizes = r.get("sizes", "int", max_items=_MAX_LAYERS, ndim=1)
            try:
                sizes = _checks.check_sizes([int(s) for s in sizes])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path} is corrupt: bad sizes ({exc})") from exc
            try:
                net = cls._empty(sizes, r.get("activation", str, max_items=1), r.get("output", str, max_items=1),
                                 r.get("dtype", str, max_items=1),
                                 r.get("init", str, max_items=1) if "init" in r.keys else "auto")
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path} is corrupt: {exc}") from exc
            n_params = _n_params(sizes)
            net.params = _aligned(r.get("params", net.dtype, ndim=1, exact_items=n_params,
                                        what=f"sizes {sizes} need {n_params} {net.dtype} parameters"))
            if not np.isfinite(net.params).all():
                raise ValueError(f"{path} is corrupt: its parameters contain NaN or inf")
            net._make_views()
            scalers = {}
            for key, n in zip(_SCALER_KEYS, (sizes[0], sizes[0], sizes[-1], sizes[-1])):
                if key in r.keys:
                    scalers[key] = r.get(key, np.float64, ndim=1, exact_items=n, what=f"{key} needs {n} values")
            classes = r.get("classes", "label", ndim=1, max_items=sizes[-1] + 1) if "classes" in r.keys else None
            names = (r.get("feature_names", "U", ndim=1, exact_items=sizes[0], what=f"{sizes[0]} feature names")
                     if "feature_names" in r.keys else None)
            history = r.get("history", str, max_items=1, max_bytes=_MAX_HISTORY_BYTES) if "history" in r.keys else None
        try:
            net.set_scalers(**scalers)
            net.classes = classes
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path} is corrupt: {exc}") from exc
        net.feature_names = None if names is None else [str(n) for n in names]
        net.history = None if history is None else _parse_history(history, path)
        return net

    @classmethod
    def _empty(cls, sizes, activation, output, dtype, init):
        """A network with the given architecture and NO parameter buffer yet (load fills it)."""
        net = object.__new__(cls)
        net.sizes = _checks.check_sizes(sizes)
        net.activation = _checks.check_choice(activation, _checks.ACTIVATIONS, "activation")
        net.output = _checks.check_choice(output, _checks.OUTPUTS, "output")
        net.dtype = _checks.check_dtype(dtype)
        net.init = _checks.check_choice(init, INITS, "init")
        net.history = None
        net.x_mean = net.x_std = net.y_mean = net.y_std = None
        net._classes = None
        net.feature_names = None
        return net


_SCALER_KEYS = ("x_mean", "x_std", "y_mean", "y_std")
_MAX_LAYERS = 10_000
_MAX_HISTORY_BYTES = 64 << 20  # ~1 KB of UTF-32 text per epoch record: room for ~60,000 epochs
_MAX_NAME_BYTES = 4096  # format, activation, output, dtype, init: short names
_MAX_HISTORY_DEPTH = 4  # list of records of scalars (depth 2); a little slack for future fields
_DEFLATE_MAX_RATIO = 1100  # deflate cannot expand more than ~1032x
_READ_CHUNK = 4 << 20


#: Alignment in bytes of `Network.params` and of the backends' working buffers: each 16-lane row
#: (64 B in float32) then sits in one cache line. Unaligned (NumPy gives 16 B), every row access of
#: the sparse first layer splits two lines: the lesson net's epoch ran ~12% slower (issue 11;
#: the Numba team epoch, which trains on params in place, 29-31 ms aligned against 33-34 ms).
ALIGN = 64


def aligned_zeros(shape, dtype):
    """np.zeros(shape, dtype) whose data starts on an ALIGN-byte boundary."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _aligned(a):
    """`a` if it is writeable, C-contiguous and ALIGN-aligned, else such a copy of it."""
    if a.flags.writeable and a.flags.c_contiguous and a.ctypes.data % ALIGN == 0:
        return a
    out = aligned_zeros(a.shape, a.dtype)
    out[...] = a
    return out


def _n_params(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def _as_input(X):
    """Array-likes that np.asarray gets wrong: scipy sparse matrices and pandas nullable columns."""
    if hasattr(X, "toarray") and hasattr(X, "tocsr"):  # scipy.sparse: the kernels take dense rows
        return X.toarray()
    if hasattr(X, "to_numpy") and hasattr(X, "dtypes"):  # pandas DataFrame, incl. nullable Float64/Int64
        try:
            return X.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"X must hold numbers only; a column could not be converted ({exc})") from exc
    return X


def _as_real(a, what):
    a = np.asarray(_as_input(a))
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) \
            or np.issubdtype(a.dtype, np.complexfloating):
        raise TypeError(f"{what} must hold real numbers, got dtype {a.dtype}")
    return a


def _mean_std(a):
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("cannot standardise data that contains NaN or inf")
    mean, std = a.mean(axis=0), a.std(axis=0)
    std[std <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0  # constant columns: leave them alone
    return mean, std


def _scaler(value, n, what, positive=False):
    if value is None:
        return None
    a = _as_real(value, what).astype(np.float64).reshape(-1)
    if a.shape != (n,):
        raise ValueError(f"{what} must have {n} values (one per {'input' if what[0] == 'x' else 'output'}), "
                         f"got {a.size}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or inf")
    if positive and np.any(a <= 0):
        raise ValueError(f"{what} must be > 0 everywhere")
    return a


def _parse_history(text, path):
    # json.loads recurses once per nesting level: refuse deep nesting before parsing.
    depth = deepest = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > _MAX_HISTORY_DEPTH:
                raise ValueError(f"{path} is corrupt: its training history is nested more than "
                                 f"{_MAX_HISTORY_DEPTH} levels deep")
        elif c in "]}":
            depth -= 1
    try:
        history = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path} is corrupt: its training history is not valid JSON ({exc})") from exc
    if history is not None and not (isinstance(history, list) and all(isinstance(r, dict) for r in history)):
        raise ValueError(f"{path} is corrupt: its training history is not a list of records")
    return history


class _ModelReader:
    """Reads single .npy members of a .npz without np.load: header first, then at most the bytes
    the header (and the caller's limits) allow, and never an object array."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        path = self.path
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
            if magic == b"\x93NUMPY":
                raise ValueError(f"{path} is a plain .npy array, not a fastgd model (.npz); "
                                 f"models are written by Network.save or `fastgd train --save`")
            self.zip = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise
        except IsADirectoryError as exc:
            raise ValueError(f"{path} is a folder, not a fastgd model file") from exc
        except (zipfile.BadZipFile, OSError, EOFError, struct.error, zlib.error, NotImplementedError) as exc:
            raise ValueError(f"{path} is not a readable fastgd model file ({type(exc).__name__}: {exc})") from exc
        self.file_size = os.path.getsize(path)
        self.members = {}
        for info in self.zip.infolist():
            if info.filename.endswith(".npy"):
                self.members.setdefault(info.filename[:-4], info)
        self.keys = set(self.members)
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def get(self, key, kind, ndim=0, max_items=None, exact_items=None, max_bytes=None, what=None):
        """The array `key`: `kind` is a dtype, str (0-d text), int (0-d integer), "int", "U" or
        "label" (numbers or text); scalars come back as Python str/int."""
        path, info = self.path, self.members[key]
        try:
            with self.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = read_header(f)
                self._check_header(key, kind, ndim, max_items, exact_items, shape, dtype, what)
                n = int(np.prod(shape, dtype=object))
                nbytes = n * dtype.itemsize
                cap = max_bytes if max_bytes is not None else _MAX_NAME_BYTES if kind is str \
                    else _MAX_HISTORY_BYTES if kind in ("U", "label") else None
                if cap is not None and nbytes > cap:
                    raise ValueError(f"'{key}' is {nbytes} bytes, more than the {cap} allowed")
                # A stored member cannot hold more than the file; a deflated one at most ~1032x its
                # compressed size. A header claiming more is a lie told to make us allocate.
                limit = info.compress_size * (_DEFLATE_MAX_RATIO if info.compress_type != zipfile.ZIP_STORED else 1)
                if nbytes > limit or info.compress_size > self.file_size:
                    raise ValueError(f"'{key}' claims {nbytes} bytes of data but its zip entry can hold at most {limit}")
                # Straight into one buffer of the validated size, a chunk at a time (no second copy;
                # aligned, so that the parameters need none either).
                data = aligned_zeros(nbytes, np.uint8)
                view, got = memoryview(data), 0
                while got < nbytes:
                    chunk = f.read(min(_READ_CHUNK, nbytes - got))
                    if not chunk:
                        raise ValueError(f"'{key}' is truncated: {got} of {nbytes} bytes")
                    view[got:got + len(chunk)] = chunk
                    got += len(chunk)
                if f.read(1):
                    raise ValueError(f"'{key}' has data beyond its header's shape")
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, struct.error, zlib.error,
                SyntaxError) as exc:  # SyntaxError: a damaged .npy header dict
            raise ValueError(f"{path} is corrupt or not a fastgd model file: {exc}") from exc
        a = data.view(dtype).reshape(shape, order="F" if fortran else "C")
        if dtype.kind in "fiu" and not dtype.isnative:
            a = a.astype(dtype.newbyteorder("="))
        if kind is str:
            return str(a[()])
        if kind is int:
            return int(a[()])
        if isinstance(kind, np.dtype) or kind is np.float64:
            return np.require(a, dtype=kind, requirements=["C", "A", "W"])  # copies only if it must
        return a.copy()

    def _check_header(self, key, kind, ndim, max_items, exact_items, shape, dtype, what):
        if dtype.hasobject:
            raise ValueError(f"'{key}' holds Python objects; fastgd never unpickles model files")
        if len(shape) != ndim:
            raise ValueError(f"'{key}' must be {ndim}-D, the file holds shape {shape}")
        n = int(np.prod(shape, dtype=object))
        if exact_items is not None and n != exact_items:
            raise ValueError(f"{what or key}, the file holds {n} ({dtype}, shape {shape})")
        if max_items is not None and n > max_items:
            raise ValueError(f"'{key}' has {n} entries, more than the {max_items} allowed")
        ok = {str: "U", int: "iu", "int": "iu", "U": "U", "label": "biufU"}
        if isinstance(kind, str) or kind in (str, int):
            if dtype.kind not in ok[kind]:
                raise ValueError(f"'{key}' has dtype {dtype}, expected {'text' if ok[kind] == 'U' else 'integers'}")
        elif np.dtype(dtype).newbyteorder("=") != np.dtype(kind):
            raise ValueError(f"{what or key}: the file holds {dtype} {shape}")


def atomic_write(path, write):
    """Call write(fileobj) on a temporary file beside `path`, fsync it, rename it over `path`, and
    fsync the folder so the rename itself survives a crash.

    The temporary file is created with mode 0666 (the kernel applies the umask, as for any
    plain open()) or, when `path` exists, with the existing file's mode. Its name carries our
    process id, so a later save of the same `path` removes leftovers of saves that were killed.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    _remove_stale_temps(folder, path.name)
    while True:
        tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    try:
        with f:
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and stat.S_ISREG(mode) and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), stat.S_IMODE(mode))  # replacing keeps the file's own permissions
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(folder)


_TEMP_RE = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def _remove_stale_temps(folder, name):
    """Delete temp files of earlier saves of `name` whose writing process no longer exists."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    prefix = f".{name}."
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        m = _TEMP_RE.fullmatch(entry)
        if m is None or m.group("name") != name:
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and not _process_exists(pid):
            _unlink_quietly(folder / entry)


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _unlink_quietly(p):
    try:
        os.unlink(p)
    except OSError:
        pass


def _fsync_dir(folder):
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows: folders cannot be opened; nothing to sync there
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
