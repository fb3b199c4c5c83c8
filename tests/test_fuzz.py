"""Fuzzing `Trainer.fit` on every shipped backend with hypothesis (issue 12).

Each example builds a small network and data set, trains one or two epochs on the backend under
test, and trains the same thing on the NumPy reference with a plain C-ordered copy of the data:

* only ValueError, TypeError or FloatingPointError may come out, and the reference must raise
  the same type on the same input (validation happens once, before any backend runs);
* deterministic runs match the reference: float64 within 1e-9, float32 loosely;
* a fit that returns leaves finite parameters and losses (a float32 loss no larger than float32
  can hold); a FloatingPointError leaves finite parameters (the last finite weights);
* hostile input is refused with ValueError/TypeError before anything is trained.

Examples cover shapes (odd widths, 1-unit layers), both dtypes, memory layouts (Fortran order,
negative strides, read-only, memmap, row-strided views, nested lists), label and target forms,
batch sizes 1, n, more than n and a last minibatch of one row, 1-3 threads, the recipe
(momentum, Nesterov, L2, L1, dropout, shifts, schedules), and each backend's tuning knobs set so
that tiny data reaches the sync, BLAS and sparse code paths (`KNOBS`).

Figures (examples per backend, outcomes by type, the largest difference from NumPy, knob
values reached) are printed at the end with `-s` and written as JSON to
``<pytest basetemp>/fuzz_summary.json`` and, when set, to ``$FASTGD_FUZZ_SUMMARY``:

    HYPOTHESIS_PROFILE=ci PYTHONPATH=src python -m pytest -s -q tests/test_fuzz.py

``FASTGD_FUZZ_EXAMPLES`` sets the examples per backend and test (default 40: about a minute for
the whole file on 2 cores).
"""
import contextlib
import json
import math
import os
import tempfile
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import fastgd
from fastgd import _checks
from fastgd.backends import get_backend

from conftest import BACKENDS, COMPILED_BACKENDS

EXAMPLES = int(os.environ.get("FASTGD_FUZZ_EXAMPLES", "40"))
ALLOWED = (ValueError, TypeError, FloatingPointError)
F64_TOL = 1e-9

#: Tuning knobs (backend attributes) and the values that make tiny data reach each code path:
#: 0/1 work thresholds force the threaded "sync" path and BLAS gemms on layers of a few units.
KNOBS = {
    "cython": {
        "sync_min_work": [0, 1 << 21],
        "blas_min_work": [0, 64, 1 << 20],
        "input_mode": ["auto", "dense", "sparse"],
        "blas_threading": ["openmp", "blas"],
        "permute_sparse": [True, False],
        "permute_dense": [True, False],
        "overlap_gather": [True, False],
        "forward_chunk": [1, 3, 256],
    },
    "numba": {
        "blas_min_work": [0, 64, 1 << 20],
        "sparse_input": ["auto", "always", "never"],
        "forward_chunk": [1, 3, 256],
    },
    "numpy": {},
}

PAIRS = [("sigmoid", "mse"), ("softmax", "mse"), ("linear", "mse"), ("softmax", "cross_entropy"),
         ("sigmoid", "cross_entropy")]
X_LAYOUTS = ["C", "F", "negative-strides", "read-only", "memmap", "row-strided", "list"]
Y_FORMS = ["int64", "int32", "uint8", "float-labels", "column", "list", "one-hot", "soft-targets"]

# ---- the counters behind the summary --------------------------------------------------------
STATS = {
    "examples": Counter(),                       # backend -> examples run (shrinking included)
    "outcomes": defaultdict(Counter),            # backend -> {"ok" | exception type: count}
    "compared": Counter(),                       # backend -> deterministic runs compared with numpy
    "max_abs_diff_float64": defaultdict(float),  # backend -> largest |params - numpy| (float64)
    "max_rel_diff_float32": defaultdict(float),  # backend -> largest relative difference (float32)
    "hostile": defaultdict(Counter),             # backend -> {exception type: count} for hostile input
    "knobs": defaultdict(lambda: defaultdict(Counter)),  # backend -> knob -> value -> count
    "layouts": Counter(), "y_forms": Counter(), "threads": Counter(), "batch_vs_n": Counter(),
    "model_files": Counter(),                    # corrupted model files: how, and what load did
    "refusals": Counter(),                       # "Type: message" of the exceptions fit raised
}


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(tmp_path_factory):
    yield
    summary = json.loads(json.dumps(STATS, default=lambda o: {str(k): v for k, v in o.items()}))
    summary["profile"] = os.environ.get("HYPOTHESIS_PROFILE", "dev")
    summary["examples_setting"] = EXAMPLES
    text = json.dumps(summary, indent=1, sort_keys=True)
    paths = [tmp_path_factory.getbasetemp() / "fuzz_summary.json"]
    if os.environ.get("FASTGD_FUZZ_SUMMARY"):
        paths.append(os.environ["FASTGD_FUZZ_SUMMARY"])
    for p in paths:
        with open(p, "w") as f:
            f.write(text)
    print(f"\n=== fuzz summary (also in {', '.join(map(str, paths))})\n{text}")


@contextlib.contextmanager
def knobs_set(backend, values):
    """Set tuning attributes on the (shared) backend object for one example, then restore them."""
    obj = get_backend(backend)
    old = {k: getattr(obj, k) for k in values}
    try:
        for k, v in values.items():
            setattr(obj, k, v)
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


def test_fuzzed_knobs_exist_and_are_read():
    """The knobs this file turns still exist under these names and the backend reads them (a
    rename, or an attribute left behind that nothing reads, would otherwise quietly stop the fuzz
    from reaching the sync, BLAS and sparse paths)."""
    import inspect
    import re
    import sys

    for backend in COMPILED_BACKENDS:
        obj = get_backend(backend)
        missing = [k for k in KNOBS[backend] if not hasattr(obj, k)]
        assert not missing, f"{backend} backend has no {missing}; update tests/test_fuzz.py KNOBS"
        source = inspect.getsource(sys.modules[type(obj).__module__])
        unread = [k for k in KNOBS[backend]
                  if len(re.findall(rf"\.{k}\b(?!\s*=[^=])", source)) == 0]
        assert not unread, f"{backend} backend never reads {unread}; update tests/test_fuzz.py KNOBS"


# ---- strategies ------------------------------------------------------------------------------
@st.composite
def cases(draw, backend):
    dtype = draw(st.sampled_from([np.float64, np.float64, np.float32]))
    shift = draw(st.sampled_from([0, 0, 0, 1]))
    n_in = draw(st.sampled_from([4, 9, 16])) if shift else draw(st.integers(1, 18))
    hidden = draw(st.lists(st.sampled_from([1, 2, 3, 5, 16, 17, 33]), min_size=0, max_size=2))
    output, loss = draw(st.sampled_from(PAIRS))
    n_out = draw(st.integers(1, 5))
    activation = draw(st.sampled_from(list(_checks.ACTIVATIONS)))
    bs = draw(st.integers(1, 12))
    # n: a last minibatch of one row, exactly one batch, fewer rows than a batch, or anything
    n = draw(st.sampled_from([bs * draw(st.integers(1, 3)) + 1, bs, max(1, bs - 3), draw(st.integers(1, 40))]))
    recipe = {}
    if draw(st.booleans()):
        momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
        recipe = dict(momentum=momentum, nesterov=momentum > 0 and draw(st.booleans()),
                      l2=draw(st.sampled_from([0.0, 1e-3])), l1=draw(st.sampled_from([0.0, 1e-3])))
        if hidden and draw(st.booleans()):
            recipe["dropout"] = 0.25
        recipe["lr_schedule"] = draw(st.sampled_from(["constant", "cosine", "step"]))
    if shift:
        recipe["augment_shift"] = shift
    knobs = {k: draw(st.sampled_from(v)) for k, v in KNOBS[backend].items()}
    return dict(
        sizes=[n_in, *hidden, n_out], activation=activation, output=output, loss=loss, dtype=dtype, n=n,
        batch_size=bs, threads=draw(st.integers(1, 3)), deterministic=draw(st.sampled_from([True, True, True, False])),
        lr=draw(st.sampled_from([0.01, 0.1, 0.5, 3.0])), epochs=draw(st.integers(1, 2)), seed=draw(st.integers(0, 2**32)),
        x_kind=draw(st.sampled_from(["float", "float", "uint8", "uint8-sparse", "float32", "int-small"])),
        x_layout=draw(st.sampled_from(X_LAYOUTS)), y_form=draw(st.sampled_from(Y_FORMS)),
        shuffle=draw(st.booleans()), recipe=recipe, knobs=knobs)


def make_data(c):
    """(X, y) as plain C-ordered arrays, from the case's seed."""
    rng = np.random.default_rng(c["seed"])
    n, n_in, n_out = c["n"], c["sizes"][0], c["sizes"][-1]
    kind = c["x_kind"]
    if kind == "float":
        X = rng.standard_normal((n, n_in))
    elif kind == "float32":
        X = rng.standard_normal((n, n_in)).astype(np.float32)
    elif kind == "int-small":
        X = rng.integers(-3, 4, size=(n, n_in)).astype(np.int8)
    else:
        X = rng.integers(0, 256, size=(n, n_in), dtype=np.uint8)
        if kind == "uint8-sparse":
            X[rng.random(X.shape) < 0.8] = 0
    labels = rng.integers(0, n_out, size=n)
    form = c["y_form"]
    if c["output"] == "linear" and form in ("one-hot", "soft-targets"):
        y = rng.standard_normal((n, n_out))
    elif form == "one-hot":
        y = np.eye(n_out)[labels]
    elif form == "soft-targets":
        y = rng.random((n, n_out))
    elif form == "float-labels":
        y = labels.astype(np.float64)
    elif form == "column":
        y = labels.reshape(-1, 1)
    else:
        y = labels.astype({"int64": np.int64, "int32": np.int32, "uint8": np.uint8, "list": np.int64}[form])
    return X, y


def lay_out(X, layout, tmpdir):
    """The same values as X in another memory layout."""
    if layout == "F":
        return np.asfortranarray(X)
    if layout == "negative-strides":
        return np.ascontiguousarray(X[::-1, ::-1])[::-1, ::-1]
    if layout == "read-only":
        out = X.copy()
        out.setflags(write=False)
        return out
    if layout == "memmap":
        fd, path = tempfile.mkstemp(suffix=".dat", dir=tmpdir)
        os.close(fd)
        mm = np.memmap(path, dtype=X.dtype, mode="w+", shape=X.shape)
        mm[...] = X
        mm.flush()
        return np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape)
    if layout == "row-strided":
        big = np.zeros((2 * X.shape[0],) + X.shape[1:], dtype=X.dtype)
        big[::2] = X
        return big[::2]
    if layout == "list":  # a nested list of ints would come back as int64, not as X's dtype
        return X.tolist() if X.dtype == np.float64 else X
    return X


def fit(backend, c, X, y):
    """Train the case on `backend`: (net, outcome), outcome "ok" + history, or the exception."""
    net = fastgd.Network(c["sizes"], activation=c["activation"], output=c["output"], dtype=c["dtype"],
                         seed=c["seed"] % 1000)
    try:
        trainer = fastgd.Trainer(net, loss=c["loss"], lr=c["lr"], batch_size=c["batch_size"], epochs=c["epochs"],
                                 backend=backend, threads=c["threads"], seed=c["seed"], shuffle=c["shuffle"],
                                 deterministic=c["deterministic"], **c["recipe"])
        history = trainer.fit(X, y)
    except Exception as exc:  # classified by the caller
        return net, exc
    return net, history


def check_invariants(net, outcome, what):
    """What every fit leaves behind, whichever way it ended."""
    if isinstance(outcome, FloatingPointError):
        assert np.isfinite(net.params).all(), f"{what}: FloatingPointError left non-finite parameters"
        assert "learning rate" in str(outcome), f"{what}: divergence message does not name the fix: {outcome}"
        return
    if isinstance(outcome, Exception):
        return
    assert np.isfinite(net.params).all(), f"{what}: fit returned with non-finite parameters"
    for record in outcome:
        loss = record["train_loss"]
        assert math.isfinite(loss), f"{what}: fit returned with a non-finite loss {loss}"
        if net.dtype == np.float32:
            assert loss <= np.finfo(np.float32).max, f"{what}: a float32 mean loss of {loss} cannot be real"


def outcome_name(outcome):
    return type(outcome).__name__ if isinstance(outcome, Exception) else "ok"


# ---- the differential fuzz -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_fit_matches_numpy_on_any_layout(backend, data, tmp_path_factory):
    c = data.draw(cases(backend), label="case")
    tmpdir = tmp_path_factory.getbasetemp()
    X, y = make_data(c)
    STATS["examples"][backend] += 1
    STATS["layouts"][c["x_layout"]] += 1
    STATS["y_forms"][c["y_form"]] += 1
    STATS["threads"][c["threads"]] += 1
    STATS["batch_vs_n"]["batch>n" if c["batch_size"] > c["n"] else "last-of-1" if c["n"] % c["batch_size"] == 1
                        else "other"] += 1
    for k, v in c["knobs"].items():
        STATS["knobs"][backend][k][str(v)] += 1
    X_in = lay_out(X, c["x_layout"], tmpdir)
    y_in = y.tolist() if c["y_form"] == "list" else y
    with knobs_set(backend, c["knobs"]):
        net, got = fit(backend, c, X_in, y_in)
    ref_net, ref = fit("numpy", c, X.copy(), y.copy())
    STATS["outcomes"][backend][outcome_name(got)] += 1
    if isinstance(got, Exception):
        STATS["refusals"][f"{type(got).__name__}: {str(got)[:90]}"] += 1
    what = f"{backend} {c}"
    note(f"{backend}: {outcome_name(got)} ({got!r}); numpy: {outcome_name(ref)} ({ref!r})")

    for outcome, name in ((got, backend), (ref, "numpy")):
        if isinstance(outcome, Exception) and not isinstance(outcome, ALLOWED):
            raise AssertionError(f"{name} raised {type(outcome).__name__}, not ValueError/TypeError/"
                                 f"FloatingPointError") from outcome
    check_invariants(net, got, what)
    check_invariants(ref_net, ref, "numpy reference " + what)
    if isinstance(ref, (ValueError, TypeError)) or isinstance(got, (ValueError, TypeError)):
        # validation is the boundary's job, the same for every backend and layout
        assert type(got) is type(ref), f"{backend} gave {got!r} where numpy gave {ref!r}"
        return
    if not c["deterministic"] and backend != "numpy":
        return  # Hogwild: thread timing decides the numbers; only the invariants hold
    assert type(got) is type(ref), f"{backend} gave {outcome_name(got)} ({got}) where numpy gave {outcome_name(ref)} ({ref})"
    if isinstance(ref, Exception):
        return
    STATS["compared"][backend] += 1
    if net.dtype == np.float64:
        diff = float(np.max(np.abs(net.params - ref_net.params)))
        STATS["max_abs_diff_float64"][backend] = max(STATS["max_abs_diff_float64"][backend], diff)
        scale = max(1.0, float(np.max(np.abs(ref_net.params))))
        assert diff <= F64_TOL * scale, f"{backend} differs from numpy by {diff:.3g} after training: {what}"
        np.testing.assert_allclose(got["train_loss"], ref["train_loss"], rtol=F64_TOL, atol=F64_TOL)
    else:
        rel = float(np.max(np.abs(net.params - ref_net.params) / (np.abs(ref_net.params) + 1e-3)))
        STATS["max_rel_diff_float32"][backend] = max(STATS["max_rel_diff_float32"][backend], rel)
        np.testing.assert_allclose(net.params, ref_net.params, rtol=2e-3, atol=2e-4, err_msg=what)


# ---- hostile input ---------------------------------------------------------------------------
def _hostile(kind, X, y, c):
    """(X, y, trainer overrides) with one thing wrong."""
    X = np.array(X, dtype=np.float64)
    n, n_out = X.shape[0], c["sizes"][-1]
    labels = np.zeros(n, dtype=np.int64)
    if kind == "nan-X":
        X[n // 2, 0] = np.nan
        return X, labels, {}
    if kind == "inf-X":
        X[-1, -1] = -np.inf
        return X, labels, {}
    if kind == "beyond-float32-X":  # fine as float64, inf once cast to a float32 network's dtype
        X[0, 0] = 1e39
        return X, labels, {"dtype": np.float32}
    if kind == "label-too-big":
        labels[-1] = n_out
        return X, labels, {}
    if kind == "label-negative":
        labels[0] = -1
        return X, labels, {}
    if kind == "label-fraction":
        return X, labels + 0.5, {}
    if kind == "y-wrong-length":
        return X, labels[:-1] if n > 1 else np.zeros(2, np.int64), {}
    if kind == "X-wrong-width":
        return np.zeros((n, c["sizes"][0] + 1)), labels, {}
    if kind == "X-3d":
        return X[:, :, None], labels, {}
    if kind == "X-empty":
        return X[:0], labels[:0], {}
    if kind == "X-complex":
        return X.astype(np.complex128), labels, {}
    if kind == "X-object":
        return X.astype(object), labels, {}
    if kind == "X-strings":
        return X.astype(str), labels, {}
    if kind == "targets-nan":
        t = np.zeros((n, n_out))
        t[0, 0] = np.nan
        return X, t, {}
    if kind == "ce-targets-out-of-range":
        t = np.full((n, n_out), 2.0)
        return X, t, {"loss": "cross_entropy", "output": "softmax"}
    if kind == "batch-size-zero":
        return X, labels, {"batch_size": 0}
    if kind == "batch-size-float":
        return X, labels, {"batch_size": 1.5}
    if kind == "batch-size-bool":
        return X, labels, {"batch_size": True}
    if kind == "threads-zero":
        return X, labels, {"threads": 0}
    if kind == "threads-string":
        return X, labels, {"threads": "2"}
    if kind == "lr-nan":
        return X, labels, {"lr": float("nan")}
    if kind == "lr-negative":
        return X, labels, {"lr": -0.1}
    if kind == "epochs-negative":
        return X, labels, {"epochs": -1}
    raise AssertionError(kind)


HOSTILE = ["nan-X", "inf-X", "beyond-float32-X", "label-too-big", "label-negative", "label-fraction",
           "y-wrong-length", "X-wrong-width", "X-3d", "X-empty", "X-complex", "X-object", "X-strings", "targets-nan",
           "ce-targets-out-of-range", "batch-size-zero", "batch-size-float", "batch-size-bool", "threads-zero",
           "threads-string", "lr-nan", "lr-negative", "epochs-negative"]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None)
@given(data=st.data())
def test_hostile_input_is_refused_before_training(backend, data):
    c = data.draw(cases(backend), label="case")
    # at least two classes: with one sigmoid output, labels {0, 1} are a binary task, not out of range
    c["sizes"][-1] = max(2, c["sizes"][-1])
    kind = data.draw(st.sampled_from(HOSTILE), label="hostile")
    X, y = make_data(c)
    X, y, over = _hostile(kind, X, y, c)
    dtype = over.pop("dtype", c["dtype"])
    # a classification network, so that integer and fractional labels are labels (a one-output
    # linear network may take a 1-D float y as regression targets)
    output = over.pop("output", "sigmoid" if c["output"] == "linear" else c["output"])
    loss = over.pop("loss", c["loss"])
    net = fastgd.Network(c["sizes"], activation=c["activation"], output=output, dtype=dtype, seed=1)
    before = net.params.copy()
    kwargs = dict(loss=loss, lr=c["lr"], batch_size=c["batch_size"], epochs=1, backend=backend,
                  threads=c["threads"], seed=0)
    kwargs.update(over)
    with knobs_set(backend, c["knobs"]):
        with pytest.raises((ValueError, TypeError)) as info:
            fastgd.Trainer(net, **kwargs).fit(X, y)
    STATS["hostile"][backend][f"{kind}: {info.type.__name__}"] += 1
    assert str(info.value), f"{kind}: an exception without a message"
    np.testing.assert_array_equal(net.params, before, err_msg=f"{kind}: the network changed before the error")


# ---- the cases, pinned --------------------------------------------------------------
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_minibatches_smaller_than_the_thread_count_match_numpy(backend, threads):
    """Issue 12 item 1: with threads and BLAS-path layers, a last minibatch of one row (fewer rows
    than threads) trained wrong first-layer weights on Numba. Forced onto the split gemms and the
    sync path on small layers with the knobs, every batch-size remainder from 1 row up."""
    knobs = {"blas_min_work": 0}
    if backend == "cython":
        knobs["sync_min_work"] = 0
    rng = np.random.default_rng(7)
    for n in (17, 18, 19, 33):
        X = rng.standard_normal((n, 30))
        y = rng.integers(0, 10, size=n)
        nets = {}
        for name in (backend, "numpy"):
            net = fastgd.Network([30, 24, 20, 10], activation="relu", output="softmax", dtype=np.float64, seed=3)
            with knobs_set(name, knobs if name == backend else {}):
                fastgd.Trainer(net, loss="cross_entropy", lr=0.5, batch_size=16, epochs=2, backend=name,
                               threads=threads, seed=5).fit(X, y)
            nets[name] = net
        diff = np.max(np.abs(nets[backend].params - nets["numpy"].params))
        assert diff <= F64_TOL, f"{backend}, {threads} threads, {n} rows at batch 16: differs from numpy by {diff:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_beyond_float32_is_a_validation_error(backend):
    """Issue 12 item 5: float64 X that overflows float32 must be named at the boundary, not surface
    later as 'training diverged'."""
    net = fastgd.Network([3, 4, 2], dtype=np.float32, seed=0)
    X = np.ones((5, 3))
    X[2, 1] = 1e39
    with pytest.raises(ValueError, match="float32"):
        fastgd.Trainer(net, backend=backend, epochs=1, seed=0).fit(X, np.zeros(5, dtype=int))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("int_dtype", [np.int64, np.int32, np.uint16])
def test_integer_pixel_arrays_are_not_silently_unscaled(backend, int_dtype):
    """Issue 12 item 5: integer pixels 0-255 in a dtype other than uint8 either train exactly like
    the uint8 images (scaled by 1/255) or are refused with a message naming the dtype; training on
    the raw 0-255 values (what happened) is neither."""
    rng = np.random.default_rng(1)
    X8 = rng.integers(0, 256, size=(30, 16), dtype=np.uint8)
    y = rng.integers(0, 4, size=30)
    nets = []
    for X in (X8, X8.astype(int_dtype)):
        net = fastgd.Network([16, 8, 4], dtype=np.float64, seed=2)
        try:
            fastgd.Trainer(net, lr=0.5, backend=backend, epochs=1, seed=0).fit(X, y)
        except (ValueError, TypeError) as exc:
            assert X.dtype != np.uint8 and np.dtype(int_dtype).name in str(exc), exc
            return
        nets.append(net)
    np.testing.assert_allclose(nets[1].params, nets[0].params, rtol=1e-12, atol=1e-12,
                               err_msg=f"{np.dtype(int_dtype).name} pixels trained differently from uint8 pixels")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_divergence_raises_and_keeps_finite_usable_weights(backend, activation, dtype, tmp_path):
    """Issue 12 item 3: a run that blows up raises FloatingPointError naming the epoch and the fix,
    and leaves the last finite weights, which predict and save/load. (Compiled ReLU turned NaN into 0
    and a last step could make the weights inf while fit returned normally.)"""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6)) * 100
    y = rng.standard_normal((64, 3)) * 1e3
    net = fastgd.Network([6, 8, 3], activation=activation, output="linear", dtype=dtype, seed=0)
    trainer = fastgd.Trainer(net, loss="mse", lr=50.0, batch_size=8, epochs=30, backend=backend, seed=0)
    with pytest.raises(FloatingPointError, match=r"(?i)epoch.*learning rate|learning rate.*epoch"):
        trainer.fit(X, y)
    assert np.isfinite(net.params).all(), "FloatingPointError left non-finite weights"
    predicted = np.asarray(net.predict(X[:5], backend=backend))
    assert predicted.shape[0] == 5 and np.isfinite(predicted).all()
    loaded = fastgd.Network.load(net.save(tmp_path / "after.npz"))
    np.testing.assert_array_equal(loaded.params, net.params)


# ---- hostile model files ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    """A small saved network with a history and a checkpoint's extra keys, as bytes."""
    net = fastgd.Network([12, 7, 3], seed=0)
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("model") / "ck.npz"
    trainer = fastgd.Trainer(net, epochs=2, backend="numpy", seed=0, momentum=0.5, checkpoint=path)
    trainer.fit(rng.standard_normal((20, 12)), rng.integers(0, 3, 20))
    with open(path, "rb") as f:
        return f.read()


@settings(max_examples=max(EXAMPLES, 20), deadline=None)
@given(data=st.data())
def test_corrupted_model_files_fail_cleanly_and_small(data, model_bytes, tmp_path_factory):
    """Byte flips, truncations and splices of a saved model: `Network.load` either returns a finite
    network of a consistent shape or raises ValueError, never another exception, and never
    allocates much (a flipped header byte may claim gigabytes)."""
    import tracemalloc

    raw = bytearray(model_bytes)
    how = data.draw(st.sampled_from(["flip", "flip", "truncate", "splice", "zero-run"]), label="how")
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    elif how == "splice":
        a = data.draw(st.integers(0, len(raw) - 1))
        b = data.draw(st.integers(a, len(raw)))
        raw = raw[:a] + raw[b:] + raw[a:b]
    else:
        a = data.draw(st.integers(0, len(raw) - 1))
        b = a + data.draw(st.integers(1, 64))
        raw[a:b] = bytes(len(raw[a:b]))
    fd, path = tempfile.mkstemp(suffix=".npz", dir=tmp_path_factory.getbasetemp())
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    STATS["model_files"][how] += 1
    tracemalloc.start()
    try:
        net = fastgd.Network.load(path)
    except ValueError:
        STATS["model_files"]["ValueError"] += 1
    except Exception as exc:
        raise AssertionError(f"load of a {how} file raised {type(exc).__name__}: {exc}") from exc
    else:
        STATS["model_files"]["loaded"] += 1
        assert net.params.shape == (net.n_params,) and np.isfinite(net.params).all()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        os.unlink(path)
    assert peak < 32 << 20, f"loading a {len(raw)}-byte {how} file allocated {peak / 2**20:.0f} MB"


def test_load_never_unpickles(tmp_path):
    """An object array in a model file is refused, and its pickle never runs."""
    marker = tmp_path / "pickle-ran"
    net = fastgd.Network([3, 2], seed=0)
    path = net.save(tmp_path / "m.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    for key in ("params", "history", "extra"):
        evil = dict(arrays)
        evil[key] = np.array([_Marker(str(marker))], dtype=object)
        bad = tmp_path / f"evil-{key}.npz"
        np.savez(bad, **evil)
        try:
            fastgd.Network.load(bad)
        except ValueError:
            pass
        assert not marker.exists(), f"an object array in {key!r} was unpickled"


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
