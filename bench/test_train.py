"""One training epoch (minibatch SGD over MNIST) per backend x network x batch size x threads x dtype."""
import math


def test_train_epoch(bench_config, train_config):
    result, epoch = bench_config(train_config)  # epoch: the EpochResult of the last timed call
    assert result.n_samples >= train_config.batch_size
    assert math.isfinite(epoch.loss_sum) and epoch.loss_sum > 0
    assert 0 <= epoch.n_correct <= result.n_samples
    assert 1 <= epoch.threads_used <= train_config.threads and epoch.mode
    assert result.seconds and min(result.seconds) > 0
