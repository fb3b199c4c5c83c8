"""Forward-only inference throughput over the 10,000 MNIST test images per backend x network x threads x dtype,
and single-image predict latency."""
import numpy as np


def test_inference(bench_config, infer_config):
    result, outputs = bench_config(infer_config)
    assert outputs.shape == (10_000, infer_config.net.sizes[-1])
    assert outputs.dtype == np.dtype(infer_config.dtype)
    assert np.isfinite(outputs).all()
    assert result.seconds and min(result.seconds) > 0


def test_predict_latency(bench_config, latency_config):
    """Single-image Network.predict_proba, LATENCY_CALLS calls per round."""
    from fastgd import benchmarks as B

    result, output = bench_config(latency_config)
    assert result.n_samples == B.LATENCY_CALLS
    assert output.shape == (1, latency_config.net.sizes[-1]) and np.isfinite(output).all()
    assert result.seconds and min(result.seconds) > 0
