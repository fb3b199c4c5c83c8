# cython: language_level=3
"""Build facts (OpenMP, debug build) for the Cython backend, and a tiny parallel kernel that proves
the build works.

`parallel_sum` exists so the test suite exercises the whole compiled path (nogil, prange,
fused float types, OpenMP thread count) before the heavy kernels depend on it.
"""
from cython.parallel cimport prange, parallel

cdef extern from *:
    """
    #ifdef FASTGD_DEBUG_BUILD
    static int fastgd_debug_build(void) { return 1; }
    #else
    static int fastgd_debug_build(void) { return 0; }
    #endif
    #ifdef FASTGD_OPENMP
    #include <omp.h>
    static int fastgd_openmp_enabled(void) { return 1; }
    static int fastgd_omp_max_threads(void) { return omp_get_max_threads(); }
    static int fastgd_omp_thread_num(void) { return omp_get_thread_num(); }
    static int fastgd_omp_num_threads(void) { return omp_get_num_threads(); }
    #else
    static int fastgd_openmp_enabled(void) { return 0; }
    static int fastgd_omp_max_threads(void) { return 1; }
    static int fastgd_omp_thread_num(void) { return 0; }
    static int fastgd_omp_num_threads(void) { return 1; }
    #endif
    """
    int fastgd_debug_build() nogil
    int fastgd_openmp_enabled() nogil
    int fastgd_omp_max_threads() nogil
    int fastgd_omp_thread_num() nogil
    int fastgd_omp_num_threads() nogil

ctypedef fused floating:
    float
    double


def debug_build():
    """True when built with FASTGD_DEBUG_BUILD=1 (bounds checking and wraparound on, -O0)."""
    return bool(fastgd_debug_build())


def openmp_enabled():
    """True when the extensions were compiled with OpenMP."""
    return bool(fastgd_openmp_enabled())


def max_threads():
    """OpenMP's default team size (1 without OpenMP)."""
    return fastgd_omp_max_threads()


def threads_used(int threads):
    """How many threads a `prange` region actually ran with when asked for `threads`."""
    cdef int team = 1
    cdef int* team_out = &team  # written through a pointer: names assigned in a parallel block are private
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    with nogil, parallel(num_threads=threads):
        if fastgd_omp_thread_num() == 0:
            team_out[0] = fastgd_omp_num_threads()
    return team


def parallel_sum(const floating[::1] x, int threads=1):
    """Sum of `x` in double precision, split across `threads` OpenMP threads."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double total = 0.0
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    for i in prange(n, nogil=True, num_threads=threads, schedule="static"):
        total += x[i]
    return total


# ---- the calling thread's floating-point mode -------------------------------------------------
cdef extern from *:
    """
    #if defined(__SSE__) || defined(__x86_64__)
    #include <xmmintrin.h>
    static unsigned int fastgd_flush_denormals(void) {
        unsigned int old = _mm_getcsr();
        _mm_setcsr(old | 0x8040u);  /* FTZ | DAZ */
        return old;
    }
    static void fastgd_restore_fp(unsigned int old) { _mm_setcsr(old); }
    #else
    static unsigned int fastgd_flush_denormals(void) { return 0u; }
    static void fastgd_restore_fp(unsigned int old) { (void)old; }
    #endif
    """
    unsigned int fastgd_flush_denormals() nogil
    void fastgd_restore_fp(unsigned int old) nogil


def flush_denormals():
    """Flush denormals to zero (FTZ, DAZ) on the calling thread; returns the old mode for
    restore_fp. For backends whose kernels cannot set it themselves (Numba): a saturated sigmoid
    network's deltas fall below FLT_MIN and every operation on them costs a microcode assist."""
    return fastgd_flush_denormals()


def restore_fp(unsigned int old):
    """Put back the floating-point mode flush_denormals returned."""
    fastgd_restore_fp(old)
