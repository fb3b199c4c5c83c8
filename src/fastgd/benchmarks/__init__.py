"""Benchmarks, shared by the pytest-benchmark suite in ``bench/`` and by ``fastgd bench``.

    configs.py   what is measured: networks, Config (a backend on a case), presets
    timing.py    MNIST loaded once, Result, the Runner that times one config, measure()
    report.py    speed-ups within a case, text/Markdown tables, JSON, the PNG chart
    machine.py   machine info, replacing a marked block of the README
    peers.py     PyTorch and JAX on the same cases, each in its own process

One measurement is one call of the backend contract (``backend.train_epoch(net, plan, ws)`` or
``backend.forward``), timed with ``time.perf_counter``; ``backend.prepare`` (JIT compilation,
buffers) runs before and is never timed. Every round starts from the same initial weights, so
every round does the same work.

Slow cases (NumPy at batch 1 on the large network would take minutes per epoch) time a random
subsample of the 60,000 training images (`epoch_samples`: what the NumPy reference would get
through in a time budget, the same count for every backend of a case and for every run), gathered
from the full array so memory behaves as in a real epoch; they report samples per second and an
epoch time extrapolated to 60,000 samples, and the tables mark them with ``*``. Speed-ups are
ratios of samples per second measured in the same run, from medians of several rounds.
"""
from .configs import (BACKEND_ORDER, BATCH_SIZES, KINDS, MNIST_TEST, MNIST_TRAIN, NETWORK_BY_KEY, NETWORKS, PEERS,
                      PRESETS, Config, NetSpec, all_configs, is_quick, is_readme, ordered_backends, select_configs,
                      thread_counts)
from .machine import README_END, README_START, machine_info, update_readme
from .peers import measure_peers, peer_available
from .report import compare, fmt_rate, format_table, markdown_table, plot, speedup, table_rows, to_json
from .timing import Result, Runner, Workload, epoch_samples, measure, n_params, numpy_step_seconds

__all__ = ["BACKEND_ORDER", "BATCH_SIZES", "KINDS", "MNIST_TEST", "MNIST_TRAIN", "NETWORK_BY_KEY", "NETWORKS", "PEERS",
           "PRESETS", "Config", "NetSpec", "all_configs", "is_quick", "is_readme", "ordered_backends",
           "select_configs", "thread_counts", "README_END", "README_START", "machine_info", "update_readme",
           "measure_peers", "peer_available", "compare", "fmt_rate", "format_table", "markdown_table", "plot", "speedup",
           "table_rows", "to_json", "Result", "Runner", "Workload", "epoch_samples", "measure", "n_params",
           "numpy_step_seconds"]
