"""The compiled extension build itself: OpenMP wired in, fused float types, threads honoured."""
import numpy as np
import pytest

from fastgd._kernels import openmp_info


def test_built_with_openmp():
    # The build falls back to one thread only for compilers without OpenMP; gcc (CI's) has it.
    assert openmp_info.openmp_enabled()
    assert openmp_info.max_threads() >= 1
    assert isinstance(openmp_info.debug_build(), bool)


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
