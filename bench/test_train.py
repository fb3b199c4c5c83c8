"""One training epoch (minibatch SGD over MNIST) per backend x network x batch size x threads x dtype."""
import math


def test_train_epoch(bench_config, train_config):
    result, (loss_sum, n_correct) = bench_config(train_config)
    assert result.n_samples >= train_config.batch_size
    assert math.isfinite(loss_sum) and loss_sum > 0
    assert 0 <= n_correct <= result.n_samples
    assert result.seconds and min(result.seconds) > 0
