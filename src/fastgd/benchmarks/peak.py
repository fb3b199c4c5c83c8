"""This machine's FP32 FMA peak (the compiled probe fastgd._kernels.peak_fma), and the dense FLOP an
epoch of a network costs, for the "% of peak" column.

FLOP are counted as dense work per training sample (docs: PERFORMANCE notes): the forward pass
2·Σ n_in·n_out, the weight gradients the same again, and the deltas propagated back through every
layer but the first 2·Σ_{layers ≥ 2} n_in·n_out. Biases, activations and the update are not
counted, nor is any zero input a kernel skips: a sparse-aware kernel can exceed "100%".
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .. import _checks


def train_flops_per_sample(sizes):
    """Dense FLOP of one training sample (forward + weight gradients + back-propagated deltas)."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must hold at least two positive widths, got {sizes}")
    products = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * sum(products) + 2 * sum(products) + 2 * sum(products[1:])


def forward_flops_per_sample(sizes):
    """Dense FLOP of one forward pass: 2·Σ n_in·n_out."""
    return 2 * sum(int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:]))


@dataclass(frozen=True)
class Peak:
    """A measured (or given) FP32 peak: GFLOP/s on `threads_used` threads with instruction set `isa`."""

    gflops: float
    threads: int  # requested
    threads_used: int  # that really ran (1 in a build without OpenMP)
    isa: str  # "avx512", "avx2", "generic", or "given" for a peak passed on the command line

    def describe(self):
        t = f"{self.threads_used} thread" + ("s" if self.threads_used != 1 else "")
        if self.threads_used != self.threads:
            t += f" (of {self.threads} requested)"
        how = "given" if self.isa == "given" else f"{self.isa} FMA chains"
        return f"{self.gflops:.1f} GFLOP/s on {t} ({how})"


def probe_available():
    """True if the compiled probe was built (it ships with the Cython kernels)."""
    try:
        from .._kernels import peak_fma  # noqa: F401
    except ImportError:
        return False
    return True


def _probe():
    try:
        from .._kernels import peak_fma
    except ImportError as exc:
        raise RuntimeError("the peak probe fastgd._kernels.peak_fma is not built (it needs a C compiler: "
                           "pip install . or python setup.py build_ext --inplace)") from exc
    return peak_fma


def measure_peak(threads=1, seconds=0.5, run_ms=10.0, isa=None):
    """Best FP32 GFLOP/s over runs of about `run_ms` milliseconds each on `threads` threads, for
    about `seconds` in all (at least 5 runs). Short runs taken at their best are what a shared
    machine still lets through between other processes' time slices; on a quiet machine they agree
    with long runs. A loaded machine gives a low figure (a thread waiting for a core stalls the whole
    parallel region): measure on a quiet machine, or pass a known peak (`fastgd bench --peak-gflops`)."""
    threads = _checks.check_positive_int(threads, "threads")
    for value, what in ((seconds, "seconds"), (run_ms, "run_ms")):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{what} must be finite and > 0, got {value}")
    probe = _probe()
    isa = isa or probe.best_isa()
    per_iter = probe.flops_per_iter(isa)
    # calibrate on one thread (no thread team to wake): iterations for `run_ms` at its best rate
    iters, fastest = 20_000, math.inf
    for _ in range(5):
        start = time.perf_counter()
        probe.run(iters, 1, isa)
        fastest = min(fastest, time.perf_counter() - start)
    probe.run(1000, threads, isa)  # start the thread team
    iters = max(1000, int(iters * (run_ms * 1e-3) / max(fastest, 1e-7)))
    best, used, runs = 0.0, 1, 0
    deadline = time.perf_counter() + seconds
    while runs < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        used, _sink = probe.run(iters, threads, isa)
        took = time.perf_counter() - start
        best = max(best, used * iters * per_iter / took / 1e9)
        runs += 1
    return Peak(best, threads, used, isa)


def peak_warnings(peaks):
    """Warnings for peaks that cannot be a quiet machine's: N threads below 0.75 x N x one thread's
    (other work shared the cores while the probe ran, so % of peak would be inflated)."""
    one = peaks.get(1)
    out = []
    for t, g in sorted(peaks.items()):
        if one and t > 1 and g < 0.75 * t * one:
            out.append(f"the peak on {t} threads ({g:.0f} GFLOP/s) is below 0.75 x {t} x one thread's ({one:.0f}): "
                       "other work shared the cores, so '% of peak' is unreliable; measure on a quiet machine or "
                       "pass --peak-gflops")
    return out


def parse_peaks(text):
    """'1=180,2=350' -> {1: 180.0, 2: 350.0} (GFLOP/s per thread count, given instead of measured)."""
    out = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            t, g = part.split("=")
            t, g = int(t), float(g)
        except ValueError:
            raise ValueError(f"peaks are THREADS=GFLOPS pairs, e.g. 1=180,2=350; got {part!r}") from None
        if t < 1 or not (g > 0 and math.isfinite(g)):
            raise ValueError(f"peaks need threads >= 1 and GFLOP/s > 0, got {part!r}")
        out[t] = g
    if not out:
        raise ValueError("no peak given")
    return out
