import zipfile

import numpy as np
import pytest

import fastgd
from fastgd import Network


def test_parameters_live_in_one_buffer():
    net = Network([784, 16, 16, 10], seed=0)
    assert net.params.flags.c_contiguous and net.params.dtype == np.float32
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
