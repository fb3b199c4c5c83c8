"""The compiled extension build itself: OpenMP wired in, fused float types, threads honoured."""
import os
from pathlib import Path

import numpy as np
import pytest

from fastgd._kernels import openmp_info


def test_built_with_openmp():
    # The build falls back to one thread only for compilers without OpenMP; gcc (CI's) has it.
    assert openmp_info.openmp_enabled()
    assert openmp_info.max_threads() >= 1
    # both extensions come from one build mode (setup.py once mixed them), and it is the one
    # CI asked for when it says so
    from fastgd._kernels import dense_sgd

    assert dense_sgd.DEBUG_BUILD is openmp_info.debug_build()
    if "FASTGD_DEBUG_BUILD" in os.environ:
        assert openmp_info.debug_build() is (os.environ["FASTGD_DEBUG_BUILD"] == "1")


def test_debug_build_checks_bounds():
    """The debug build turns an out-of-range memoryview index into IndexError (the release build
    would read out of bounds, so it is only exercised there)."""
    from fastgd._kernels import dense_sgd

    if not dense_sgd.DEBUG_BUILD:
        assert openmp_info.debug_build() is False
        return
    with pytest.raises(IndexError):
        dense_sgd.csr_rows_nnz(np.zeros(2, dtype=np.int64), np.array([5], dtype=np.int64))


def test_ops_codes_are_generated_from_fastgd_ops():
    """setup.py writes kernels/ops_codes.pxi from fastgd/ops.py; the built extension carries
    exactly ops's codes, and the C helpers live in a real header."""
    from fastgd import ops
    from fastgd._kernels import dense_sgd

    root = Path(__file__).resolve().parents[1]
    pxi = (root / "kernels" / "ops_codes.pxi").read_text()
    for name, code in ops.ACTIVATION_CODES.items():
        assert f"ACT_{name.upper()} = {code}" in pxi
    for name, code in ops.LOSS_CODES.items():
        assert f"LOSS_{name.upper()} = {code}" in pxi
    assert dense_sgd.ACT_CODES == ops.ACTIVATION_CODES and dense_sgd.LOSS_CODES == ops.LOSS_CODES
    assert dense_sgd.LEAKY_SLOPE == ops.LEAKY_SLOPE
    assert "fgd_expf" in (root / "kernels" / "fastgd_simd.h").read_text()
    assert 'cdef extern from "fastgd_simd.h"' in (root / "kernels" / "dense_sgd.pyx").read_text()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_region_uses_the_threads_asked_for(threads):
    assert openmp_info.threads_used(threads) == threads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_sum_matches_numpy(dtype, threads):
    x = np.random.default_rng(0).standard_normal(100_003).astype(dtype)
    assert openmp_info.parallel_sum(x, threads) == pytest.approx(float(x.astype(np.float64).sum()), rel=1e-12, abs=1e-9)


def test_kernel_inputs_are_checked():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        openmp_info.parallel_sum(np.ones(3), 0)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        openmp_info.threads_used(0)
    with pytest.raises(ValueError):  # not contiguous: rejected by the typed memoryview, not read out of bounds
        openmp_info.parallel_sum(np.ones(10)[::2], 1)
    with pytest.raises((TypeError, ValueError)):
        openmp_info.parallel_sum(np.ones(3, dtype=np.int64), 1)
