"""Export to ONNX (run in onnxruntime) and PyTorch: both must compute net.predict_proba."""
import numpy as np
import pytest

from fastgd import Network, _checks

ort = pytest.importorskip("onnxruntime")  # fastgd[onnx] + onnxruntime; installed in CI
pytest.importorskip("onnx")

CASES = [(act, out) for act in _checks.ACTIVATIONS for out in ("sigmoid", "softmax", "linear")]


def _net(activation, output, dtype, scalers):
    net = Network([7, 6, 5, 3], activation=activation, output=output, dtype=dtype, seed=1)
    if scalers:
        rng = np.random.default_rng(2)
        kw = dict(x_mean=rng.normal(size=7), x_std=rng.uniform(0.5, 2, 7))
        if output == "linear":
            kw.update(y_mean=rng.normal(size=3), y_std=rng.uniform(0.5, 3, 3))
        net.set_scalers(**kw)
    return net


def _inputs(dtype, n=64):
    return (np.random.default_rng(3).normal(size=(n, 7)) * 2).astype(dtype)


def _onnx_run(model, X):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": X})[0]


@pytest.mark.parametrize("activation,output", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scalers", [False, True])
def test_onnx_matches_predict_proba(activation, output, dtype, scalers):
    net = _net(activation, output, dtype, scalers)
    X = _inputs(dtype)
    got = _onnx_run(net.to_onnx(), X)
    want = net.predict_proba(X, backend="numpy")
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-12)


def test_onnx_metadata_and_file(tmp_path):
    import json

    import onnx

    net = Network([7, 3], output="softmax", seed=0)
    net.classes = ["x", "y", "z"]
    net.to_onnx(tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == ["x", "y", "z"] and meta["task"] == "classification"
    np.testing.assert_allclose(_onnx_run(model, _inputs(np.float32)),
                               net.predict_proba(_inputs(np.float32), backend="numpy"), atol=1e-5)


def test_cli_export_round_trip(tmp_path, capsys):
    from fastgd.cli import main

    net = _net("tanh", "softmax", np.float32, scalers=True)
    net.save(tmp_path / "m.npz")
    assert main(["export", str(tmp_path / "m.npz"), "--onnx", str(tmp_path / "m.onnx"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "largest difference" in out
    import onnx

    X = _inputs(np.float32)
    got = _onnx_run(onnx.load(tmp_path / "m.onnx"), X)
    np.testing.assert_allclose(got, net.predict_proba(X, backend="numpy"), atol=1e-5)
    assert main(["export", str(tmp_path / "missing.npz"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.npz"), "--onnx", str(tmp_path / "nowhere" / "x.onnx")]) == 2
    assert "--onnx" in capsys.readouterr().err


@pytest.mark.parametrize("activation,output", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_torch_matches_predict_proba(activation, output, dtype):
    torch = pytest.importorskip("torch")  # skips only when torch is absent; CI installs it
    net = _net(activation, output, dtype, scalers=True)
    seq = net.to_torch()
    assert isinstance(seq, torch.nn.Sequential)
    X = _inputs(dtype)
    with torch.no_grad():
        got = seq(torch.from_numpy(X)).numpy()
    want = net.predict_proba(X, backend="numpy")
    assert got.dtype == np.dtype(dtype)
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    else:  # scalers folded into the weights: float32 rounding differs a little
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
