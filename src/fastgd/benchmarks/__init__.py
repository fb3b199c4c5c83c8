"""Benchmarks, shared by the pytest-benchmark suite in ``bench/`` and by ``fastgd bench``.

    configs.py   what is measured: networks, Config (a backend on a case), presets
    timing.py    MNIST loaded once, Result, the Runner that times one config, measure()
    report.py    speed-ups within a case, text/Markdown tables, JSON, the PNG chart
    machine.py   machine info, replacing a marked block of the README
    peers.py     PyTorch and JAX on the same cases, each in its own process (peer_worker.py: the
                 worker, NumPy + the peer only, so it may run under another interpreter)
    peak.py      this machine's FP32 FMA peak (the compiled probe fastgd._kernels.peak_fma) and
                 the dense FLOP of an epoch, for the "% of peak" column

One measurement is one call of the backend contract (``backend.train_epoch(net, plan, ws)`` or
``backend.forward``), timed with ``time.perf_counter``; ``backend.prepare`` (JIT compilation,
buffers) runs before and is never timed. Every round starts from the same initial weights, so
every round does the same work.

Training rounds are full 60,000-image epochs. Only when asked (`budget_seconds` / `max_samples`;
the pytest-benchmark suite in bench/ does, to stay short) is a random subsample timed: the same
count for every backend of a case, gathered from the full array so memory behaves as in a real
epoch, its epoch time extrapolated and marked ``*`` (never for the README: `fastgd bench
--update-readme` refuses). Speed-ups between fastgd's backends are ratios of medians measured in
the same run; peers run afterwards in processes of their own and are marked † in the tables.
"""
from .configs import (BACKEND_ORDER, BATCH_SIZES, DATA, ISSUE_CASES, KINDS, LATENCY_CALLS, MNIST_TEST, MNIST_TRAIN,
                      NETWORK_BY_KEY, NETWORKS, PEERS, PRESETS, Config, NetSpec, all_configs, is_issue, is_quick,
                      is_readme, issue_threads, ordered_backends, select_configs, thread_counts)
from .machine import README_END, README_START, machine_info, update_readme
from .peak import (Peak, forward_flops_per_sample, measure_peak, parse_peaks, peak_warnings, probe_available,
                   train_flops_per_sample)
from .peers import PEER_PYTHON_ENV, measure_peers, peer_available, peer_python
from .report import (best_fastgd, compare, fmt_rate, fmt_time, footnote, format_table, markdown_table, plot, speedup,
                     table_rows, to_json)
from .timing import Result, Runner, Workload, epoch_samples, gaussian_inputs, measure, n_params, numpy_step_seconds

__all__ = ["BACKEND_ORDER", "BATCH_SIZES", "DATA", "ISSUE_CASES", "KINDS", "LATENCY_CALLS", "MNIST_TEST",
           "MNIST_TRAIN", "NETWORK_BY_KEY", "NETWORKS", "PEERS", "PRESETS", "Config", "NetSpec", "all_configs",
           "is_issue", "is_quick", "is_readme", "issue_threads", "ordered_backends", "select_configs", "thread_counts",
           "README_END", "README_START", "machine_info", "update_readme", "Peak", "forward_flops_per_sample",
           "measure_peak", "parse_peaks", "peak_warnings", "probe_available", "train_flops_per_sample", "PEER_PYTHON_ENV",
           "measure_peers", "peer_available", "peer_python", "best_fastgd", "compare", "fmt_rate", "fmt_time",
           "footnote", "format_table", "markdown_table", "plot", "speedup", "table_rows", "to_json", "Result", "Runner",
           "Workload", "epoch_samples", "gaussian_inputs", "measure", "n_params", "numpy_step_seconds"]
