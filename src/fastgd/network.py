"""The network: layer sizes, activations, and every parameter in one contiguous buffer.

Layout of `Network.params` (llm.c style), layer by layer: W0 (n0 x n1, row-major), b0 (n1),
W1 (n1 x n2), b1 (n2), ... `net.weights[l]` and `net.biases[l]` are views into it, so the
backends update one flat array and the views always see the current values.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import _checks

FORMAT_TAG = "fastgd.Network"
FORMAT_VERSION = 1
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
    activation : {"sigmoid", "relu", "tanh"}
        Hidden-layer activation.
    output : {"sigmoid", "softmax", "linear"}
        Output-layer activation.
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
        self.params = np.zeros(self.n_params, dtype=self.dtype)
        self._make_views()
        self.history = None  # per-epoch records, set by Trainer.fit and kept by save/load
        self.reset(seed)

    # ---- layout -------------------------------------------------------------------------------
    @property
    def n_layers(self):
        """Number of weight layers (len(sizes) - 1)."""
        return len(self.sizes) - 1

    @property
    def n_params(self):
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

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

    def copy(self):
        """An independent network with the same architecture and parameters."""
        new = object.__new__(Network)
        new.sizes, new.activation, new.output = list(self.sizes), self.activation, self.output
        new.dtype, new.init = self.dtype, self.init
        new.params = self.params.copy()
        new._make_views()
        new.history = getattr(self, "history", None)
        return new

    def __repr__(self):
        return (f"Network(sizes={self.sizes}, activation={self.activation!r}, output={self.output!r}, "
                f"dtype={self.dtype.name})")

    # ---- inference ----------------------------------------------------------------------------
    def predict_proba(self, X, backend="auto", threads=None):
        """Output-layer activations for each row of X, shape (n, sizes[-1])."""
        from .backends import get_backend

        X, scale = _checks.check_X(X, self.sizes[0], self.dtype)
        return get_backend(backend).forward(self, X, scale, _checks.check_threads(threads))

    def predict(self, X, backend="auto", threads=None):
        """Predicted labels: the index of the largest output for each row of X."""
        return np.argmax(self.predict_proba(X, backend=backend, threads=threads), axis=1)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path, extra=None):
        """Write the network (and its training history, if any) to a `.npz` file, atomically.

        `extra` maps further array names to arrays stored beside the network (the Trainer's
        checkpoints use it); `load` ignores them.

        The file is written to a temporary name beside `path` and renamed over it, so an
        interrupted save never leaves a half-written model or destroys the previous one.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
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
        history = getattr(self, "history", None)
        if history is not None:
            arrays["history"] = np.array(json.dumps(history))
        arrays.update(extra or {})
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    @classmethod
    def load(cls, path):
        """Read a network written by `save`. Raises ValueError for anything that is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a readable fastgd model file ({type(exc).__name__}: {exc})") from exc
        if not isinstance(data, dict) or str(data.get("format", "")) != FORMAT_TAG:
            raise ValueError(f"{path} is not a fastgd model file (no '{FORMAT_TAG}' format tag)")
        missing = {"version", "sizes", "activation", "output", "dtype", "params"} - set(data)
        if missing:
            raise ValueError(f"{path} is an incomplete fastgd model file: missing {sorted(missing)}")
        if int(data["version"]) > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer fastgd (format {int(data['version'])})")
        net = cls(
            [int(s) for s in data["sizes"]],
            activation=str(data["activation"]),
            output=str(data["output"]),
            dtype=str(data["dtype"]),
            init=str(data.get("init", "auto")),
        )
        params = data["params"]
        if params.shape != (net.n_params,) or params.dtype != net.dtype:
            raise ValueError(
                f"{path} is corrupt: sizes {net.sizes} need {net.n_params} {net.dtype} parameters, "
                f"the file holds {params.shape} {params.dtype}"
            )
        if not np.isfinite(params).all():
            raise ValueError(f"{path} is corrupt: its parameters contain NaN or inf")
        net.params[...] = params
        net.history = json.loads(str(data["history"])) if "history" in data else None
        return net


def atomic_write(path, write):
    """Call write(fileobj) on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        # (the existing file's, else 0666 less the umask) so a save does not change who may read it.
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask():
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask
