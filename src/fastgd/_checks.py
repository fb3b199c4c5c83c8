"""Input validation at the Python boundary.

Everything user-supplied passes through here once; the compiled kernels behind the backends
assume what these functions guarantee (shapes, dtypes, finite values, labels in range).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import ops

ACTIVATIONS = ops.HIDDEN  # hidden-layer activations
OUTPUTS = ops.OUTPUTS
LOSSES = tuple(ops.LOSSES)
DTYPES = (np.float32, np.float64)

#: uint8 images are scaled by this inside the backends (x = pixel * UINT8_SCALE).
UINT8_SCALE = 1.0 / 255.0


def check_choice(value, choices, what):
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, one of {', '.join(choices)}; got {value!r}")
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


def check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_sizes(sizes):
    try:
        sizes = list(sizes)
    except TypeError as exc:
        raise TypeError(f"sizes must be a sequence of layer widths like [784, 16, 16, 10], got {sizes!r}") from exc
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least 2 entries (input and output width), got {sizes}")
    out = []
    for i, s in enumerate(sizes):
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral):
            raise TypeError(f"sizes[{i}] must be an integer, got {s!r}")
        if s < 1:
            raise ValueError(f"every layer width must be >= 1, sizes[{i}] is {s}")
        out.append(int(s))
    return out


def check_loss_output(loss, output):
    check_choice(loss, LOSSES, "loss")
    pairs = ops.LOSSES[loss].outputs
    if output not in pairs:
        raise ValueError(
            f"loss {loss!r} needs output {' or '.join(repr(p) for p in pairs)}; "
            f"a {output!r} output does not pair with it (e.g. a 'linear' output has no probabilities to score)"
        )
    return loss


def check_positive_int(value, what, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def check_positive_float(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value}")
    return value


def check_threads(threads):
    """None means every core this process may use."""
    if threads is None:
        return available_cores()
    return check_positive_int(threads, "threads")


def available_cores():
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _as_array(X, what):
    if isinstance(X, np.ndarray):
        return X
    try:
        return np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{what} must be array-like of numbers: {exc}") from exc


def check_X(X, n_in, dtype):
    """Validate inputs; returns (X, x_scale) ready for a backend.

    uint8 stays uint8 (the kernels scale by 1/255 on the fly, a quarter of the memory traffic);
    real floats (and bool) become a C-contiguous array of the network's dtype with scale 1.
    Other integer dtypes are refused: int64 pixels 0..255 and integer features would need
    different treatment, and guessing between them silently trains on the wrong scale.
    """
    X = _as_array(X, "X")
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise TypeError(f"X must hold real numbers, got complex dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError("X is empty: it has no samples")
    if X.shape[1] != n_in:
        raise ValueError(f"X has {X.shape[1]} features per sample but the network's input width is {n_in}")
    if X.dtype == np.uint8:
        return np.ascontiguousarray(X), UINT8_SCALE
    if np.issubdtype(X.dtype, np.integer):
        raise TypeError(
            f"X has integer dtype {X.dtype}; pass uint8 pixels (scaled by 1/255), e.g. X.astype(np.uint8) "
            f"for values 0..255, or floats used as given, e.g. X.astype(np.float32)")
    if np.issubdtype(X.dtype, np.floating):
        if not np.isfinite(X).all():
            bad = np.argwhere(~np.isfinite(X))[0]
            raise ValueError(f"X contains NaN or inf (first at row {bad[0]}, column {bad[1]})")
        limit = float(np.finfo(dtype).max)
        if float(np.finfo(X.dtype).max) > limit:
            big = float(np.max(np.abs(X)))
            if big > limit:
                raise ValueError(f"X holds a value of magnitude {big:.3g}, beyond the range of this {np.dtype(dtype)} "
                                 f"network ({limit:.3g}); rescale X or use dtype=float64")
    return np.ascontiguousarray(X, dtype=dtype), 1.0


def check_y(y, n, n_out, dtype, loss, task="classification"):
    """Validate targets for a task; returns (targets (n, n_out) of dtype, labels (n,) int32).

    classification: integer labels in [0, n_out) become one-hot targets; real targets of shape
    (n, n_out) are used as given, and their argmax serves as the label for accuracy.
    binary (one sigmoid output unit): labels 0/1 (or probabilities in [0, 1]), 1-D or (n, 1);
    the label for accuracy is target > 0.5.
    regression: real targets (n, n_out), or 1-D when n_out == 1; labels are unused (zeros).
    """
    y = _as_array(y, "y")
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise TypeError(f"y must hold integer labels or real targets, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.complexfloating):
        raise TypeError(f"y must be real, got complex dtype {y.dtype}")
    if task in ("binary", "regression"):
        if y.ndim == 1 and n_out == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != n_out:
            raise ValueError(f"y for {task} must have shape ({n}, {n_out})" +
                             (f" or ({n},)" if n_out == 1 else "") + f"; got shape {y.shape}")
        if y.shape[0] != n:
            raise ValueError(f"X has {n} samples but y has {y.shape[0]}")
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or inf")
        if task == "binary" and (np.any(y < 0) or np.any(y > 1)):
            raise ValueError("binary targets must be labels 0/1 or probabilities in [0, 1]")
        targets = np.ascontiguousarray(y, dtype=dtype)
        if task == "regression":
            limit = float(np.finfo(dtype).max)
            if np.any(np.abs(y) > limit):
                raise ValueError(f"y holds values beyond the range of this {np.dtype(dtype)} network; rescale y")
            return targets, np.zeros(n, dtype=np.int32)
        return targets, (targets[:, 0] > 0.5).astype(np.int32)
    if y.ndim == 2 and y.shape[1] == n_out and not (n_out == 1 and np.issubdtype(y.dtype, np.integer)):
        if y.shape[0] != n:
            raise ValueError(f"X has {n} samples but y has {y.shape[0]}")
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or inf")
        if loss == "cross_entropy" and (np.any(y < 0) or np.any(y > 1)):
            raise ValueError("cross_entropy targets must lie in [0, 1]")
        targets = np.ascontiguousarray(y, dtype=dtype)
        labels = np.argmax(targets, axis=1).astype(np.int32)
        return targets, labels
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"y must be 1-D integer labels of length {n} or real targets of shape ({n}, {n_out}); got shape {y.shape}"
        )
    if y.shape[0] != n:
        raise ValueError(f"X has {n} samples but y has {y.shape[0]}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or inf")
        if np.any(y != np.round(y)):
            raise ValueError("labels must be integers; y has non-integer values (pass real targets as shape (n, n_out))")
    if y.size and (y.min() < 0 or y.max() >= n_out):
        bad = y[(y < 0) | (y >= n_out)][0]
        raise ValueError(f"label {bad} is out of range: labels must lie in [0, {n_out}) for a {n_out}-unit output")
    labels = y.astype(np.int32)
    targets = np.zeros((n, n_out), dtype=dtype)
    targets[np.arange(n), labels] = 1
    return targets, labels
