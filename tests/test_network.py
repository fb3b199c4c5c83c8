import zipfile

import numpy as np
import pytest

import fastgd
from fastgd import Network


def test_parameters_live_in_one_buffer():
    net = Network([784, 16, 16, 10], seed=0)
    assert net.params.flags.c_contiguous and net.params.dtype == np.float32
    assert net.params.ctypes.data % fastgd.network.ALIGN == 0  # 16-lane rows in one cache line each
    assert net.n_params == 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert [w.shape for w in net.weights] == [(784, 16), (16, 16), (16, 10)]
    assert [b.shape for b in net.biases] == [(16,), (16,), (10,)]
    for w in net.weights:
        assert np.shares_memory(w, net.params)
    net.params[:] = 0
    assert not net.weights[1].any()


def test_weights_are_assignable_into_the_buffer():
    net = Network([3, 2], dtype=np.float64, seed=0)
    net.weights[0] = np.arange(6.0).reshape(3, 2)
    net.biases[0] = [7.0, 8.0]
    np.testing.assert_array_equal(net.params, [0, 1, 2, 3, 4, 5, 7, 8])
    with pytest.raises(ValueError, match="shape"):
        net.weights[0] = np.zeros((2, 3))
    with pytest.raises(ValueError, match="NaN"):
        net.biases[0] = [np.nan, 0]


def test_seed_gives_the_same_network_and_init_follows_activation():
    a, b = Network([50, 40, 3], seed=5), Network([50, 40, 3], seed=5)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, Network([50, 40, 3], seed=6).params)
    he = Network([400, 300, 3], activation="relu", seed=0)
    xavier = Network([400, 300, 3], activation="tanh", seed=0)
    assert he.weights[0].std() == pytest.approx(np.sqrt(2 / 400), rel=0.05)
    assert xavier.weights[0].std() == pytest.approx(np.sqrt(2 / 700), rel=0.05)
    assert Network([400, 3], init="nielsen", seed=0).biases[0].std() > 0.1


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(sizes=[784]), ValueError, "at least 2"),
    (dict(sizes=[784, 0, 10]), ValueError, ">= 1"),
    (dict(sizes=[784, 2.5, 10]), TypeError, "integer"),
    (dict(sizes=5), TypeError, "sequence"),
    (dict(sizes=[4, 2], activation="swish"), ValueError, "unknown activation"),
    (dict(sizes=[4, 2], output="relu"), ValueError, "unknown output"),
    (dict(sizes=[4, 2], dtype=np.int32), ValueError, "float32 or float64"),
    (dict(sizes=[4, 2], init="zeros"), ValueError, "unknown init"),
])
def test_bad_network_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Network(**kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, dtype):
    net = Network([20, 7, 3], activation="tanh", output="softmax", dtype=dtype, seed=3)
    net.history = [{"epoch": 1, "train_loss": 0.5}]
    path = net.save(tmp_path / "model.npz")
    back = Network.load(path)
    assert back.sizes == net.sizes and back.activation == "tanh" and back.output == "softmax"
    assert back.dtype == net.dtype
    np.testing.assert_array_equal(back.params, net.params)
    assert back.params.ctypes.data % fastgd.network.ALIGN == 0 and back.params.flags.writeable
    assert back.history == net.history
    X = np.random.default_rng(0).random((5, 20))
    np.testing.assert_array_equal(back.predict_proba(X, backend="numpy"), net.predict_proba(X, backend="numpy"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]  # no temporary file left behind


def test_save_adds_npz_suffix_and_replaces_atomically(tmp_path):
    net = Network([4, 2], seed=0)
    path = net.save(tmp_path / "model")
    assert path.name == "model.npz"
    net.params[:] = 1
    net.save(path)
    np.testing.assert_array_equal(Network.load(path).params, 1)


def test_save_gives_the_file_ordinary_permissions(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")  # what an ordinary open() creates under this umask
    path = Network([4, 2], seed=0).save(tmp_path / "model.npz")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    path.chmod(0o640)
    Network([4, 2], seed=1).save(path)  # replacing keeps the file's own mode
    assert path.stat().st_mode & 0o777 == 0o640


def test_load_rejects_files_that_are_not_models(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ValueError, match="not a readable fastgd model"):
        Network.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ValueError, match="not a fastgd model"):
        Network.load(other)
    with pytest.raises(FileNotFoundError):
        Network.load(tmp_path / "missing.npz")


def test_load_rejects_truncated_and_inconsistent_files(tmp_path):
    path = Network([30, 20, 10], seed=0).save(tmp_path / "m.npz")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="fastgd model"):
        Network.load(truncated)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["params"] = arrays["params"][:-1]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="corrupt"):
        Network.load(bad)


def test_load_never_unpickles(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, format=np.array("fastgd.Network"), version=np.array(1), sizes=np.array([2, 1]),
             activation=np.array("sigmoid"), output=np.array("sigmoid"), dtype=np.array("float32"),
             params=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        Network.load(path)


def test_predict_checks_its_input():
    net = Network([4, 3], seed=0)
    assert net.predict(np.zeros((2, 4))).shape == (2,)
    with pytest.raises(ValueError, match="input width is 4"):
        net.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="2-D"):
        net.predict(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        net.predict(np.full((1, 4), np.nan))


def test_unknown_and_unavailable_backends_are_clear():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        fastgd.get_backend("gpu")
    assert fastgd.get_backend("auto").name in fastgd.available_backends()
    assert "numpy" in fastgd.available_backends()


# ---- copies keep their views (issue 13) ------------------------------------------------------
def _assert_views_of_own_buffer(net):
    for w, b in zip(net.weights, net.biases):
        assert np.shares_memory(w, net.params) and np.shares_memory(b, net.params)
    net.weights[0] = np.zeros(net.weights[0].shape)
    assert not net.params[: net.weights[0].size].any()


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy", "joblib", "joblib-mmap"])
def test_copies_keep_weights_as_views_of_params(how, tmp_path):
    import copy
    import pickle

    net = Network([6, 5, 3], activation="relu", output="softmax", seed=0)
    net.set_scalers(x_mean=np.arange(6.0), x_std=np.full(6, 2.0))
    net.classes = ["a", "b", "c"]
    original = net.params.copy()
    if how == "pickle":
        twin = pickle.loads(pickle.dumps(net))
    elif how == "deepcopy":
        twin = copy.deepcopy(net)
    elif how == "copy":
        twin = net.copy()
    else:
        joblib = pytest.importorskip("joblib")
        joblib.dump(net, tmp_path / "net.joblib")
        twin = joblib.load(tmp_path / "net.joblib", mmap_mode="r" if how == "joblib-mmap" else None)
    np.testing.assert_array_equal(twin.params, original)
    assert twin.params.ctypes.data % fastgd.network.ALIGN == 0 and twin.params.flags.writeable
    X = np.random.default_rng(1).random((4, 6))
    np.testing.assert_array_equal(twin.predict(X, backend="numpy"), net.predict(X, backend="numpy"))
    _assert_views_of_own_buffer(twin)
    np.testing.assert_array_equal(net.params, original)  # the original is untouched
    assert list(twin.classes) == ["a", "b", "c"]


# ---- tasks, scalers, classes ------------------------------------------------------------------
def _reference_forward(net, X):
    a = np.asarray(X, dtype=np.float64)
    acts = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
            "linear": lambda z: z}
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        z = a @ W.astype(np.float64) + b
        if l < net.n_layers - 1:
            a = acts[net.activation](z)
        elif net.output == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            a = e / e.sum(axis=1, keepdims=True)
        else:
            a = acts[net.output](z)
    return a


def test_predict_regression_returns_values_with_scalers_undone():
    rng = np.random.default_rng(0)
    net = Network([3, 4, 1], activation="tanh", output="linear", dtype=np.float64, seed=0)
    X = rng.normal(5, 3, (7, 3))
    net.set_scalers(x_mean=[5, 4, 6], x_std=[3, 2, 1], y_mean=[100.0], y_std=[20.0])
    expected = _reference_forward(net, (X - [5, 4, 6]) / [3, 2, 1]) * 20 + 100
    pred = net.predict(X, backend="numpy")
    assert pred.shape == (7,) and net.task == "regression"
    np.testing.assert_allclose(pred, expected[:, 0], rtol=1e-12)
    np.testing.assert_allclose(net.predict_proba(X, backend="numpy"), expected, rtol=1e-12)
    np.testing.assert_allclose(net.scale_targets(np.array([120.0, 80.0])), [1.0, -1.0])
    np.testing.assert_allclose(net.scale_inputs(X), (X - [5, 4, 6]) / [3, 2, 1])
    two = Network([3, 2], output="linear", seed=0)
    assert two.predict(X, backend="numpy").shape == (7, 2)


def test_scalers_are_identity_when_unset_and_validated():
    net = Network([3, 2], seed=0)
    X, y = np.ones((2, 3)), np.array([0, 1])
    assert net.scale_inputs(X) is X and net.scale_targets(y) is y
    with pytest.raises(ValueError, match="x_mean must have 3 values"):
        net.set_scalers(x_mean=[1, 2])
    with pytest.raises(ValueError, match="x_std must be > 0"):
        net.set_scalers(x_std=[1, 0, 1])
    with pytest.raises(ValueError, match="regression networks"):
        net.set_scalers(y_mean=[0, 0])
    net.fit_scalers(np.array([[1, 5, 2], [3, 5, 4]]))
    np.testing.assert_array_equal(net.x_mean, [2, 5, 3])
    np.testing.assert_array_equal(net.x_std, [1, 1, 1])  # the constant column keeps std 1


def test_predict_binary_and_class_labels():
    net = Network([2, 1], activation="sigmoid", output="sigmoid", dtype=np.float64, seed=0)
    net.weights[0] = [[1.0], [0.0]]
    net.biases[0] = [0.0]
    X = np.array([[-2.0, 0], [3.0, 0], [0.5, 1]])
    assert net.task == "binary"
    np.testing.assert_array_equal(net.predict(X, backend="numpy"), [0, 1, 1])
    net.classes = ["no", "yes"]
    np.testing.assert_array_equal(net.predict(X, backend="numpy"), ["no", "yes", "yes"])
    multi = Network([2, 3], output="softmax", seed=0)
    multi.classes = [10, 20, 30]
    assert set(multi.predict(X, backend="numpy")) <= {10, 20, 30}
    with pytest.raises(ValueError, match="3 classes"):
        multi.classes = [1, 2]
    with pytest.raises(ValueError, match="no classes"):
        Network([2, 1], output="linear").classes = [0, 1]


def test_predict_accepts_sparse_and_pandas_nullable_input():
    sp = pytest.importorskip("scipy.sparse")
    pd = pytest.importorskip("pandas")
    net = Network([3, 2], seed=0)
    X = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 0.25]])
    dense = net.predict_proba(X, backend="numpy")
    np.testing.assert_array_equal(net.predict_proba(sp.csr_matrix(X), backend="numpy"), dense)
    df = pd.DataFrame(X, columns=list("abc")).astype("Float64")
    np.testing.assert_array_equal(net.predict_proba(df, backend="numpy"), dense)
    df.iloc[1, 2] = pd.NA
    with pytest.raises(ValueError, match="NaN"):
        net.predict(df, backend="numpy")


def test_save_load_keeps_scalers_classes_and_feature_names(tmp_path):
    reg = Network([3, 2, 1], output="linear", dtype=np.float64, seed=0)
    reg.set_scalers(x_mean=[1, 2, 3], x_std=[1, 2, 4], y_mean=[7.0], y_std=[3.0])
    reg.feature_names = ["a", "b", "c"]
    back = Network.load(reg.save(tmp_path / "reg.npz"))
    for key in ("x_mean", "x_std", "y_mean", "y_std"):
        np.testing.assert_array_equal(getattr(back, key), getattr(reg, key))
    assert back.feature_names == ["a", "b", "c"]
    X = np.random.default_rng(0).random((4, 3))
    np.testing.assert_array_equal(back.predict(X, backend="numpy"), reg.predict(X, backend="numpy"))
    clf = Network([3, 3], output="softmax", seed=0)
    clf.classes = ["cat", "dog", "emu"]
    assert list(Network.load(clf.save(tmp_path / "clf.npz")).classes) == ["cat", "dog", "emu"]
    with zipfile.ZipFile(tmp_path / "clf.npz") as z:
        assert z.read("version.npy")[-8:] == np.array(2).tobytes()


# ---- hostile model files (issue 12 item 4) ----------------------------------------------------
def _model_arrays(**override):
    arrays = dict(format=np.array("fastgd.Network"), version=np.array(2), sizes=np.array([4, 3, 2]),
                  activation=np.array("sigmoid"), output=np.array("sigmoid"), dtype=np.array("float32"),
                  init=np.array("auto"), params=np.zeros(4 * 3 + 3 + 3 * 2 + 2, dtype=np.float32))
    arrays.update(override)
    return {k: v for k, v in arrays.items() if v is not None}


def test_load_checks_sizes_against_params_before_allocating(tmp_path):
    import tracemalloc

    path = tmp_path / "huge.npz"
    np.savez(path, **_model_arrays(sizes=np.array([784, 10 ** 9, 10])))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="parameters"):
            Network.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20


def _write_npy_member(z, name, header, payload):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    z.writestr(name, buf.getvalue() + payload)


def test_load_refuses_a_header_that_claims_more_data_than_the_file_holds(tmp_path):
    import tracemalloc

    sizes = [784, 100_000, 10]
    n = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as z:
        for key, value in _model_arrays(sizes=np.array(sizes), params=None).items():
            _write_npy_member(z, key + ".npy", np.lib.format.header_data_from_array_1_0(value), value.tobytes())
        _write_npy_member(z, "params.npy", {"descr": "<f4", "fortran_order": False, "shape": (n,)}, bytes(4000))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="params"):
            Network.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20  # np.load allocated n * 4 bytes = 314 MB here before failing


def test_load_never_decompresses_unknown_keys(tmp_path):
    import tracemalloc

    path = tmp_path / "bomb.npz"
    np.savez(path, **_model_arrays())
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
        _write_npy_member(z, "junk.npy", {"descr": "|u1", "fortran_order": False, "shape": (200 << 20,)},
                          bytes(200 << 20))  # 200 MB of zeros in ~200 KB
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        net = Network.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert net.sizes == [4, 3, 2] and peak < 10 << 20


def test_load_caps_a_compressed_known_key(tmp_path):
    path = tmp_path / "bomb2.npz"
    arrays = _model_arrays(history=None)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for key, value in arrays.items():
            _write_npy_member(z, key + ".npy", np.lib.format.header_data_from_array_1_0(value), value.tobytes())
        n_chars = (100 << 20) // 4  # 100 MB of text: above the history cap
        _write_npy_member(z, "history.npy", {"descr": f"<U{n_chars}", "fortran_order": False, "shape": ()},
                          bytes(n_chars * 4))
    with pytest.raises(ValueError, match="history"):
        Network.load(path)


def test_load_refuses_deeply_nested_history(tmp_path):
    path = tmp_path / "deep.npz"
    np.savez(path, **_model_arrays(history=np.array("[" * 100_000 + "]" * 100_000)))
    with pytest.raises(ValueError, match="nested"):
        Network.load(path)
    np.savez(path, **_model_arrays(history=np.array('[{"epoch": 1, "note": "[[[[[[[[[["}]')))
    assert Network.load(path).history == [{"epoch": 1, "note": "[[[[[[[[[["}]


def test_load_refuses_a_plain_npy_file(tmp_path):
    path = tmp_path / "params.npy"
    np.save(path, np.zeros(10))
    with pytest.raises(ValueError, match="plain .npy"):
        Network.load(path)
    with pytest.raises(ValueError, match="folder"):
        Network.load(tmp_path)


@pytest.mark.parametrize("override,match", [
    (dict(params=np.zeros(23, dtype=np.float64)), "float32"),
    (dict(params=np.zeros((23, 1), dtype=np.float32)), "1-D"),
    (dict(sizes=np.array([4.0, 3.0, 2.0])), "integers"),
    (dict(sizes=np.array([4, -3, 2])), "sizes"),
    (dict(version=np.array(99)), "upgrade fastgd"),
    (dict(activation=np.array("swish")), "unknown activation"),
    (dict(classes=np.array(["a", "b", "c"])), "classes"),
    (dict(x_mean=np.zeros(5)), "x_mean"),
    (dict(x_std=np.array([1.0, 1, 0, 1])), "x_std"),
    (dict(history=np.array('{"epoch": 1}')), "history"),
    (dict(activation=np.array("sigmoid" + " " * 5000)), "more than the 4096 allowed"),
])
def test_load_validates_every_key(tmp_path, override, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **_model_arrays(**override))
    with pytest.raises(ValueError, match=match):
        Network.load(path)


def test_load_reads_format_version_1(tmp_path):
    path = tmp_path / "v1.npz"
    params = np.arange(23, dtype=np.float32)
    np.savez(path, **_model_arrays(version=np.array(1), init=None, params=params))
    net = Network.load(path)
    np.testing.assert_array_equal(net.params, params)
    assert net.init == "auto" and net.x_mean is None and net.classes is None


# ---- saving (issue 12 items 3 and 5) ----------------------------------------------------------
def test_save_refuses_non_finite_parameters(tmp_path):
    net = Network([4, 2], seed=0)
    net.params[3] = np.nan
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        net.save(tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


def test_save_never_touches_the_process_umask(tmp_path, monkeypatch):
    import os

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")

    def no_umask(*_):
        raise AssertionError("os.umask changes the mask of every thread; save must not call it")

    monkeypatch.setattr(os, "umask", no_umask)
    path = Network([4, 2], seed=0).save(tmp_path / "m.npz")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_save_closes_its_file_when_chmod_fails(tmp_path, monkeypatch):
    import os

    path = Network([4, 2], seed=0).save(tmp_path / "m.npz")
    fds_before = set(os.listdir("/proc/self/fd"))

    def fail(*_):
        raise PermissionError("chmod refused")

    monkeypatch.setattr(os, "chmod", fail)
    monkeypatch.setattr(os, "fchmod", fail)
    for _ in range(3):
        with pytest.raises(PermissionError):
            Network([4, 2], seed=1).save(path)
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    np.testing.assert_array_equal(Network.load(path).params, Network([4, 2], seed=0).params)


def test_save_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    import os
    import stat as stat_mod

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append("dir" if stat_mod.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    Network([4, 2], seed=0).save(tmp_path / "m.npz")
    assert synced == ["file", "dir"]


KILLED_SAVER = """
import sys, time
import numpy as np
import fastgd.network as network
real_savez = np.savez
def slow_savez(f, **arrays):
    f.write(b"half a model")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
network.np = type("np", (), {k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
network.np.savez = slow_savez
network.Network([4, 2], seed=0).save(sys.argv[1])
"""


def test_a_later_save_removes_temp_files_of_killed_saves(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    target = tmp_path / "m.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    seen = []
    for _ in range(2):  # the second killed save removes the first one's leftover before it writes
        proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(target)], stdout=subprocess.PIPE,
                                text=True, env=env)
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(leftovers) == 1 and leftovers[0] not in seen and not target.exists()
        seen += leftovers
    live = tmp_path / f".m.npz.{os.getppid()}.0123abcd.tmp"  # a save still running in a live process
    live.write_bytes(b"busy")
    Network([4, 2], seed=3).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.npz", live.name])
    np.testing.assert_array_equal(Network.load(target).params, Network([4, 2], seed=3).params)


# ---- fuzz: any damage to a model file gives a ValueError, never another exception ---------------
def test_damaged_model_files_only_raise_value_error(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    net = Network([5, 4, 3], output="softmax", seed=0)
    net.set_scalers(x_mean=np.arange(5.0), x_std=np.ones(5))
    net.classes = ["a", "b", "c"]
    net.history = [{"epoch": 1, "train_loss": 0.5}]
    good = net.save(tmp_path / "good.npz").read_bytes()
    deflated = tmp_path / "deflated.npz"
    with zipfile.ZipFile(tmp_path / "good.npz") as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    originals = [good, deflated.read_bytes()]

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(which=st.integers(0, 1), edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                                      max_size=8), cut=st.none() | st.integers(0, 10 ** 6))
    def check(which, edits, cut):
        data = bytearray(originals[which])
        for pos, value in edits:
            data[pos % len(data)] = value
        if cut is not None:
            data = data[: cut % (len(data) + 1)]
        path = tmp_path / "damaged.npz"
        path.write_bytes(bytes(data))
        try:
            back = Network.load(path)
        except ValueError:
            return
        assert back.params.shape == (back.n_params,) and np.isfinite(back.params).all()

    check()


def test_load_does_not_copy_the_parameters_twice(tmp_path):
    import tracemalloc

    net = Network([1000, 2000, 1000], seed=0)  # 16 MB of parameters
    path = net.save(tmp_path / "big.npz")
    tracemalloc.start()
    try:
        back = Network.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(back.params, net.params)
    assert back.params.flags.writeable and back.params.flags.c_contiguous
    assert peak < 1.6 * net.params.nbytes


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_predict_refuses_a_network_with_nan_parameters():
    net = Network([3, 4, 2], seed=0)
    net.params[2] = np.nan
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        net.predict(np.ones((2, 3)), backend="numpy")
    big = Network([1, 1], output="linear", dtype=np.float32, seed=0)
    big.weights[0] = [[1e30]]
    with pytest.raises(FloatingPointError, match="overflow float32"):
        big.predict(np.array([[1e30]]), backend="numpy")


def test_scale_inputs_over_several_chunks_matches_the_formula():
    rng = np.random.default_rng(0)
    X = rng.normal(3, 2, (3000, 500))  # 12 MB of float64: more than one 8 MB chunk
    net = Network([500, 2], dtype=np.float64, seed=0).fit_scalers(X)
    np.testing.assert_allclose(net.scale_inputs(X), (X - X.mean(axis=0)) / X.std(axis=0), rtol=1e-12, atol=1e-12)
    net32 = Network([500, 2], dtype=np.float32, seed=0).fit_scalers(X)
    assert net32.scale_inputs(X).dtype == np.float32
