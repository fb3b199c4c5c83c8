# cython: language_level=3
"""FP32 FMA peak probe for `fastgd bench --peak` (the C is in peak_fma.h).

`run(iters, threads, isa)` runs `iters` iterations of independent FMA chains on each of `threads`
OpenMP threads without the GIL and returns (threads that really ran, checksum); the caller times
it and divides `threads_used * iters * flops_per_iter(isa)` by the time. Python wrappers with
calibration live in fastgd.benchmarks.peak.
"""

cdef extern from "peak_fma.h":
    int FGD_ISA_GENERIC
    int FGD_ISA_AVX2
    int FGD_ISA_AVX512
    int FGD_PEAK_CHAINS
    int fgd_peak_best_isa() nogil
    double fgd_peak_flops_per_iter(int isa) nogil
    int fgd_peak_run(int isa, int threads, long iters, float *sink) nogil

ISA_NAMES = {FGD_ISA_GENERIC: "generic", FGD_ISA_AVX2: "avx2", FGD_ISA_AVX512: "avx512"}
_CODES = {name: code for code, name in ISA_NAMES.items()}
CHAINS = FGD_PEAK_CHAINS


def best_isa():
    """'avx512', 'avx2' or 'generic': the widest FMA instruction set this CPU runs."""
    return ISA_NAMES[fgd_peak_best_isa()]


def _code(isa):
    if isa is None:
        return fgd_peak_best_isa()
    if isa not in _CODES:
        raise ValueError(f"unknown isa {isa!r}; choose from: {', '.join(_CODES)}")
    code = _CODES[isa]
    if code > fgd_peak_best_isa():
        raise ValueError(f"this CPU does not run {isa} (best: {best_isa()})")
    return code


def flops_per_iter(isa=None):
    """FP32 operations one thread does per iteration (an FMA counts 2)."""
    return fgd_peak_flops_per_iter(_code(isa))


def run(long iters, int threads=1, isa=None):
    """Run the chains; returns (threads_used, checksum). Untimed: time the call yourself."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cdef int code = _code(isa)
    cdef float sink = 0
    cdef int used
    with nogil:
        used = fgd_peak_run(code, threads, iters, &sink)
    return used, sink
