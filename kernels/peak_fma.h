/* FP32 FMA peak probe (fastgd bench --peak): independent FMA chains, no memory traffic.
 *
 * Each thread runs CHAINS independent chains a[i] = a[i] * x + y in vector registers, so the FMA
 * units never wait on a result (latency 4 cycles x 2 ports needs >= 8 chains in flight; 12 leaves
 * margin). The widest instruction set the CPU supports is picked at run time (AVX-512F, then
 * AVX2+FMA, then plain C that the compiler vectorises as it can), so a portable build
 * (FASTGD_NATIVE=0) still measures the real peak. */
#ifndef FGD_PEAK_FMA_H
#define FGD_PEAK_FMA_H

#ifdef FASTGD_OPENMP
#include <omp.h>
#endif

#define FGD_PEAK_CHAINS 12

enum { FGD_ISA_GENERIC = 0, FGD_ISA_AVX2 = 1, FGD_ISA_AVX512 = 2 };

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FGD_PEAK_X86 1
#include <immintrin.h>

__attribute__((target("avx512f"))) static float fgd_peak_avx512(long iters) {
    __m512 a[FGD_PEAK_CHAINS];
    const __m512 x = _mm512_set1_ps(0.9999999f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < FGD_PEAK_CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < FGD_PEAK_CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
    }
    __m512 s = a[0];
    for (int i = 1; i < FGD_PEAK_CHAINS; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float fgd_peak_avx2(long iters) {
    __m256 a[FGD_PEAK_CHAINS];
    const __m256 x = _mm256_set1_ps(0.9999999f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < FGD_PEAK_CHAINS; i++) a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < FGD_PEAK_CHAINS; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
    }
    __m256 s = a[0];
    for (int i = 1; i < FGD_PEAK_CHAINS; i++) s = _mm256_add_ps(s, a[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}
#endif

/* 8 lanes x CHAINS chains of plain C multiply-adds: whatever the build flags let the compiler do. */
static float fgd_peak_generic(long iters) {
    float a[FGD_PEAK_CHAINS * 8];
    const float x = 0.9999999f, y = 1e-7f;
    for (int i = 0; i < FGD_PEAK_CHAINS * 8; i++) a[i] = (float)i;
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < FGD_PEAK_CHAINS * 8; i++) a[i] = a[i] * x + y;
    }
    float s = 0.0f;
    for (int i = 0; i < FGD_PEAK_CHAINS * 8; i++) s += a[i];
    return s;
}

/* The widest instruction set this CPU runs. */
static int fgd_peak_best_isa(void) {
#ifdef FGD_PEAK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return FGD_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return FGD_ISA_AVX2;
#endif
    return FGD_ISA_GENERIC;
}

/* FP32 operations per thread and iteration (an FMA counts 2). */
static double fgd_peak_flops_per_iter(int isa) {
    int lanes = isa == FGD_ISA_AVX512 ? 16 : 8;
    return 2.0 * lanes * FGD_PEAK_CHAINS;
}

static float fgd_peak_chains(int isa, long iters) {
#ifdef FGD_PEAK_X86
    if (isa == FGD_ISA_AVX512) return fgd_peak_avx512(iters);
    if (isa == FGD_ISA_AVX2) return fgd_peak_avx2(iters);
#endif
    return fgd_peak_generic(iters);
}

/* Run `iters` iterations on each of `threads` threads (one parallel region); returns the number of
 * threads that really ran (1 without OpenMP) and stores a checksum in *sink so nothing is elided. */
static int fgd_peak_run(int isa, int threads, long iters, float *sink) {
    int used = 1;
    float total = 0.0f;
#ifdef FASTGD_OPENMP
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
        total += fgd_peak_chains(isa, iters);
        #pragma omp master
        used = omp_get_num_threads();
    }
#else
    (void)threads;
    total = fgd_peak_chains(isa, iters);
#endif
    *sink = total;
    return used;
}

#endif
