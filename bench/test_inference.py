"""Forward-only inference throughput over the 10,000 MNIST test images per backend x network x threads x dtype."""
import numpy as np


def test_inference(bench_config, infer_config):
    result, outputs = bench_config(infer_config)
    assert outputs.shape == (10_000, infer_config.net.sizes[-1])
    assert outputs.dtype == np.dtype(infer_config.dtype)
    assert np.isfinite(outputs).all()
    assert result.seconds and min(result.seconds) > 0
