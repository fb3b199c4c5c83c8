/* C helpers of the Cython kernels (kernels/dense_sgd.pyx): OpenMP shims, prefetch, 16-lane
   vector helpers, the sparse first layer at 16 lanes, fastgd._random's counter-based generator,
   and a vectorisable float32 exp. Everything is static inline: one copy per extension module. */
#ifndef FASTGD_SIMD_H
#define FASTGD_SIMD_H
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <sched.h>
/* which build this is (setup.py's FASTGD_DEBUG_BUILD=1: bounds checks on, -O0) */
#ifdef FASTGD_DEBUG_BUILD
#define FGD_DEBUG_BUILD 1
#else
#define FGD_DEBUG_BUILD 0
#endif

#ifdef FASTGD_OPENMP
#include <omp.h>
static inline int fgd_thread_num(void) { return omp_get_thread_num(); }
static inline int fgd_num_threads(void) { return omp_get_num_threads(); }
static inline void fgd_barrier(void) {
#pragma omp barrier
}
#else
static inline int fgd_thread_num(void) { return 0; }
static inline int fgd_num_threads(void) { return 1; }
static inline void fgd_barrier(void) { }
#endif

/* Denormals flushed to zero (FTZ) and read as zero (DAZ) on this thread while a training kernel
   runs: saturated sigmoid units drive deltas below FLT_MIN, and every operation on a denormal
   costs a microcode assist (the lesson net's epoch grew from 30 to 180 ms over 30 epochs).
   fgd_flush_denormals returns the old control word; fgd_restore_fp puts it back, so the caller's
   own floating-point mode is unchanged after the kernel. x86 SSE only; elsewhere a no-op. */
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
static inline unsigned int fgd_flush_denormals(void) {
    unsigned int old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);  /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static inline void fgd_restore_fp(unsigned int old) { _mm_setcsr(old); }
#else
static inline unsigned int fgd_flush_denormals(void) { return 0u; }
static inline void fgd_restore_fp(unsigned int old) { (void)old; }
#endif

/* Ask for the cache lines of [p, p + nbytes) ahead of use. */
static inline void fgd_prefetch(const void* p, long nbytes) {
    const char* c = (const char*)p;
    for (long k = 0; k < nbytes; k += 64) __builtin_prefetch(c + k, 0, 3);
}

/* t[0:16] += x * d[0:16] as whole vectors (GCC vector extensions): written out because
   gcc unrolls the equivalent 16-iteration loop into scalar code when the row stride is a
   compile-time constant. memcpy keeps the loads and stores unaligned-safe. */
typedef float fgd_v16f __attribute__((vector_size(64)));
typedef double fgd_v16d __attribute__((vector_size(128)));
static inline void fgd_axpy16f(float* t, float x, const float* d) {
    fgd_v16f tv, dv;
    memcpy(&tv, t, sizeof tv); memcpy(&dv, d, sizeof dv);
    tv += x * dv;
    memcpy(t, &tv, sizeof tv);
}
static inline void fgd_axpy16d(double* t, double x, const double* d) {
    fgd_v16d tv, dv;
    memcpy(&tv, t, sizeof tv); memcpy(&dv, d, sizeof dv);
    tv += x * dv;
    memcpy(t, &tv, sizeof tv);
}

/* The sparse first layer when its width pads to exactly 16 lanes (one weight row = one
   vector), written with vector types: the generic loops are not inlined at their pad == 16
   call sites, so they index rows with a runtime multiply and spill. Same arithmetic and
   order as sparse_forward_row / sparse_update_row; the update's lut holds the step's
   coef * value products (built once per step), so a pixel costs no multiply of its own. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FGD_LITTLE_ENDIAN 1
#else
#define FGD_LITTLE_ENDIAN 0
#endif
#define FGD_SPARSE16(T, V, SUFFIX)                                                        \
static inline void fgd_sparse_forward16##SUFFIX(                                          \
        const unsigned short* idx, const unsigned char* val, long nnz, const T* lut,      \
        const T* W, const T* b, T* z) {                                                   \
    V a0, a1, a2, a3, w0, w1, w2, w3;                                                     \
    memcpy(&a0, b, sizeof a0);                                                            \
    a1 = a0 - a0; a2 = a1; a3 = a1;                                                       \
    long k = 0;                                                                           \
    /* the 4 pixels' indices and values in one load each (little-endian): on Zen 4 this    \
       loop is bound by loads, and 8 narrow ones per 4 pixels cost ~15% of it (a C copy of \
       the lesson's epoch: 6.3 -> 5.4 ms, min of 30 epochs, 4 runs each); the same sums */ \
    for (; k + 4 <= nnz; k += 4) {                                                        \
        long j0, j1, j2, j3;                                                              \
        unsigned u0, u1, u2, u3;                                                          \
        if (FGD_LITTLE_ENDIAN) {                                                          \
            uint64_t i4; uint32_t v4;                                                     \
            memcpy(&i4, idx + k, sizeof i4);                                              \
            memcpy(&v4, val + k, sizeof v4);                                              \
            j0 = (long)(i4 & 0xffff); j1 = (long)((i4 >> 16) & 0xffff);                   \
            j2 = (long)((i4 >> 32) & 0xffff); j3 = (long)(i4 >> 48);                      \
            u0 = v4 & 0xff; u1 = (v4 >> 8) & 0xff; u2 = (v4 >> 16) & 0xff; u3 = v4 >> 24; \
        } else {                                                                          \
            j0 = idx[k]; j1 = idx[k + 1]; j2 = idx[k + 2]; j3 = idx[k + 3];               \
            u0 = val[k]; u1 = val[k + 1]; u2 = val[k + 2]; u3 = val[k + 3];               \
        }                                                                                 \
        memcpy(&w0, W + (j0 << 4), sizeof w0);                                            \
        memcpy(&w1, W + (j1 << 4), sizeof w1);                                            \
        memcpy(&w2, W + (j2 << 4), sizeof w2);                                            \
        memcpy(&w3, W + (j3 << 4), sizeof w3);                                            \
        a0 += lut[u0] * w0;                                                               \
        a1 += lut[u1] * w1;                                                               \
        a2 += lut[u2] * w2;                                                               \
        a3 += lut[u3] * w3;                                                               \
    }                                                                                     \
    for (; k < nnz; k++) {                                                                \
        memcpy(&w0, W + ((long)idx[k] << 4), sizeof w0);                                  \
        a0 += lut[val[k]] * w0;                                                           \
    }                                                                                     \
    a0 = (a0 + a1) + (a2 + a3);                                                           \
    memcpy(z, &a0, sizeof a0);                                                            \
}                                                                                         \
static inline void fgd_sparse_update16##SUFFIX(                                           \
        const unsigned short* idx, const unsigned char* val, long nnz, const T* lut,      \
        const T* d, long i0, long i1, T* Tw) {                                            \
    V dv, t0, t1, t2, t3;                                                                 \
    long k = 0, end = nnz;                                                                \
    memcpy(&dv, d, sizeof dv);                                                            \
    while (k < nnz && idx[k] < i0) k++;                                                   \
    if (i1 <= 65535)  /* else every remaining pixel is in range */                        \
        for (end = k; end < nnz && idx[end] < i1; end++) {}                               \
    /* four rows at a time, loaded before any is stored (a row's pixels are distinct     \
       rows of Tw): ~20% faster than one read-modify-write after another (the lesson net's \
       update, 9.0 -> 7.1 ms an epoch in a microbenchmark); the same operations per row */ \
    for (; k + 4 <= end; k += 4) {                                                        \
        T* r0 = Tw + ((long)idx[k] << 4);                                                 \
        T* r1 = Tw + ((long)idx[k + 1] << 4);                                             \
        T* r2 = Tw + ((long)idx[k + 2] << 4);                                             \
        T* r3 = Tw + ((long)idx[k + 3] << 4);                                             \
        T x0 = lut[val[k]], x1 = lut[val[k + 1]], x2 = lut[val[k + 2]], x3 = lut[val[k + 3]]; \
        memcpy(&t0, r0, sizeof t0);                                                       \
        memcpy(&t1, r1, sizeof t1);                                                       \
        memcpy(&t2, r2, sizeof t2);                                                       \
        memcpy(&t3, r3, sizeof t3);                                                       \
        t0 += x0 * dv;                                                                    \
        t1 += x1 * dv;                                                                    \
        t2 += x2 * dv;                                                                    \
        t3 += x3 * dv;                                                                    \
        memcpy(r0, &t0, sizeof t0);                                                       \
        memcpy(r1, &t1, sizeof t1);                                                       \
        memcpy(r2, &t2, sizeof t2);                                                       \
        memcpy(r3, &t3, sizeof t3);                                                       \
    }                                                                                     \
    for (; k < end; k++) {                                                                \
        T x = lut[val[k]];                                                                \
        memcpy(&t0, Tw + ((long)idx[k] << 4), sizeof t0);                                 \
        t0 += x * dv;                                                                     \
        memcpy(Tw + ((long)idx[k] << 4), &t0, sizeof t0);                                 \
    }                                                                                     \
}
FGD_SPARSE16(float, fgd_v16f, f)
FGD_SPARSE16(double, fgd_v16d, d)

/* The split first layer (dense_sgd.pyx's "split" epoch): a 16-lane sparse row is summed in two
   parts, pixels below `split` from the bias and pixels from `split` on from zero, then added,
   so that two threads can each own one part (its weight rows, forward and update) and still give
   the bits the one-thread epoch gives. fgd_row_mid: the first entry of a row (ascending indices)
   at or above split. */
static inline long fgd_row_mid(const unsigned short* idx, long nnz, long split) {
    long lo = 0, hi = nnz;
    while (lo < hi) {
        long m = (lo + hi) >> 1;
        if ((long)idx[m] < split) lo = m + 1; else hi = m;
    }
    return lo;
}
#define FGD_SPLIT16(T, V, SUFFIX)                                                          \
static inline void fgd_sparse_forward16_split##SUFFIX(                                    \
        const unsigned short* idx, const unsigned char* val, long nnz, long mid,           \
        const T* lut, const T* W, const T* b, T* z) {                                      \
    static const T zero[16] = {0};                                                        \
    V lo, hi;                                                                             \
    T part[16];                                                                           \
    fgd_sparse_forward16##SUFFIX(idx, val, mid, lut, W, b, z);                            \
    fgd_sparse_forward16##SUFFIX(idx + mid, val + mid, nnz - mid, lut, W, zero, part);    \
    memcpy(&lo, z, sizeof lo); memcpy(&hi, part, sizeof hi);                              \
    lo += hi;                                                                             \
    memcpy(z, &lo, sizeof lo);                                                            \
}                                                                                         \
/* z[s] += upper[s] for n rows of 16 lanes: the other thread's part */                   \
static inline void fgd_add_rows16##SUFFIX(T* z, const T* upper, long n) {                 \
    V a, u;                                                                               \
    for (long s = 0; s < n; s++) {                                                        \
        memcpy(&a, z + 16 * s, sizeof a); memcpy(&u, upper + 16 * s, sizeof u);          \
        a += u;                                                                           \
        memcpy(z + 16 * s, &a, sizeof a);                                                 \
    }                                                                                     \
}
FGD_SPLIT16(float, fgd_v16f, f)
FGD_SPLIT16(double, fgd_v16d, d)

#if defined(__AVX512BW__)
#include <immintrin.h>
#endif
/* Copy one CSR row (n entries) to oidx/oval and return how many of its pixel indices lie below
   split (1..65535): the split epoch's stream copy, which also finds each row's split point.
   With AVX-512BW in whole masked vectors (nothing read or written past the row); else memcpy
   and a binary search. A row of ~150 pixels is then ~8 vector moves instead of two memcpy
   calls and a search (the upper thread's copy was ~40% of its step). */
static inline long fgd_copy_row_split(const unsigned short* idx, const unsigned char* val, long n,
                                      long split, unsigned short* oidx, unsigned char* oval) {
#if defined(__AVX512BW__)
    long below = 0;
    const __m512i sp = _mm512_set1_epi16((short)(unsigned short)split);
    for (long k = 0; k < n; k += 32) {
        __mmask32 m = n - k >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << (n - k)) - 1u);
        __m512i v = _mm512_maskz_loadu_epi16(m, idx + k);
        _mm512_mask_storeu_epi16(oidx + k, m, v);
        below += __builtin_popcount((unsigned)_mm512_mask_cmplt_epu16_mask(m, v, sp));
    }
    for (long k = 0; k < n; k += 64) {
        __mmask64 m = n - k >= 64 ? (__mmask64)~0ULL : (__mmask64)((1ULL << (n - k)) - 1ULL);
        _mm512_mask_storeu_epi8(oval + k, m, _mm512_maskz_loadu_epi8(m, val + k));
    }
    return below;
#else
    if (n > 0) {
        memcpy(oidx, idx, (size_t)n * sizeof *idx);
        memcpy(oval, val, (size_t)n);
    }
    return fgd_row_mid(oidx, n, split);
#endif
}

/* Hand-offs between the split epoch's two threads: one counter per event on its own cache line,
   published with release and awaited with acquire (a spin: each wait is ~1 us, far below what a
   futex or libgomp's barrier costs to wake). */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FGD_SPIN_PAUSE() _mm_pause()
#else
#define FGD_SPIN_PAUSE() ((void)0)
#endif
/* A cycle count for the split epoch's optional phase profile: the time-stamp counter on x86
   (~25 cycles to read; a clock_gettime call costs more than some of the phases), else ns. */
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline int64_t fgd_cycles(void) { return (int64_t)__rdtsc(); }
#else
#include <time.h>
static inline int64_t fgd_cycles(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#endif
static inline void fgd_publish(int64_t* flag, int64_t value) {
    __atomic_store_n(flag, value, __ATOMIC_RELEASE);
}
/* spins, then yields the core: when more threads run than there are cores (two trainers at
   once), the thread being waited for may need this one's core to make progress */
static inline void fgd_await(const int64_t* flag, int64_t value) {
    int spins = 0;
    while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) < value) {
        if (++spins < 4096) FGD_SPIN_PAUSE(); else sched_yield();
    }
}

/* The sparse first layer at any padded width (a multiple of 16 lanes), forward and update.

   Forward: z = b + sum_k lut[val_k] W[idx_k, :]. The width is walked in groups of 8, 4, 2, 1
   vectors; a group of NB vectors keeps U = 8 / NB (at least 1) accumulator sets over
   consecutive pixels, so 8 independent FMA chains are in flight whatever the width (2 FMA
   ports x 4 cycles latency). A row's value depends only on its own pixels: the same whatever
   the thread split.

   Update: the minibatch's non-zero pixels of weight rows i0..i1, transposed to columns
   (fgd_build_csc: per pixel row, its (sample, value) pairs in ascending sample order), then
   each touched weight row is loaded and stored once per step:
   Tw[i, :] += coef * sum_s lut[v_s] D[s, :], with the same 8-chain grouping. The per-row sum
   runs over samples in a fixed order, so the result does not depend on how rows are split
   across threads. */
#define FGD_GROUP_FWD(T, V, SUFFIX, NB, U)                                                 \
static inline void fgd_spfwd##NB##SUFFIX(const unsigned short* idx, const unsigned char* val, \
        long nnz, const T* lut, const T* W, long pad, const T* b, T* z) {                  \
    V a[U][NB], w, zero = {0};                                                            \
    _Pragma("GCC unroll 8") for (int j = 0; j < NB; j++) {                                \
        memcpy(&a[0][j], b + 16 * j, sizeof w);                                           \
        _Pragma("GCC unroll 8") for (int u = 1; u < U; u++) a[u][j] = zero;                \
    }                                                                                     \
    long k = 0;                                                                           \
    for (; k + U <= nnz; k += U) {                                                        \
        _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) {                              \
            const T x = lut[val[k + u]];                                                  \
            const T* r = W + (long)idx[k + u] * pad;                                      \
            _Pragma("GCC unroll 8") for (int j = 0; j < NB; j++) {                        \
                memcpy(&w, r + 16 * j, sizeof w);                                         \
                a[u][j] += x * w;                                                         \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    for (; k < nnz; k++) {                                                                \
        const T x = lut[val[k]];                                                          \
        const T* r = W + (long)idx[k] * pad;                                              \
        _Pragma("GCC unroll 8") for (int j = 0; j < NB; j++) {                            \
            memcpy(&w, r + 16 * j, sizeof w);                                             \
            a[0][j] += x * w;                                                             \
        }                                                                                 \
    }                                                                                     \
    _Pragma("GCC unroll 8") for (int j = 0; j < NB; j++) {                                \
        _Pragma("GCC unroll 8") for (int h = 1; h < U; h *= 2)                            \
            _Pragma("GCC unroll 8") for (int u = 0; u + h < U; u += 2 * h)                \
                a[u][j] += a[u + h][j];                                                   \
        memcpy(z + 16 * j, &a[0][j], sizeof w);                                           \
    }                                                                                     \
}                                                                                         \
static inline void fgd_csc_upd##NB##SUFFIX(const int* es, const unsigned char* ev,          \
        long n, const T* lut, const T* D, long pad, T coef, T* t) {                        \
    V a[U][NB], w, zero = {0};                                                            \
    _Pragma("GCC unroll 8") for (int j = 0; j < NB; j++)                                  \
        _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) a[u][j] = zero;                \
    long k = 0;                                                                           \
    for (; k + U <= n; k += U) {                                                          \
        _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) {                              \
            const T x = lut[ev[k + u]];                                                   \
            const T* r = D + (long)es[k + u] * pad;                                       \
            _Pragma("GCC unroll 8") for (int j = 0; j < NB; j++) {                        \
                memcpy(&w, r + 16 * j, sizeof w);                                         \
                a[u][j] += x * w;                                                         \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    for (; k < n; k++) {                                                                  \
        const T x = lut[ev[k]];                                                           \
        const T* r = D + (long)es[k] * pad;                                               \
        _Pragma("GCC unroll 8") for (int j = 0; j < NB; j++) {                            \
            memcpy(&w, r + 16 * j, sizeof w);                                             \
            a[0][j] += x * w;                                                             \
        }                                                                                 \
    }                                                                                     \
    _Pragma("GCC unroll 8") for (int j = 0; j < NB; j++) {                                \
        _Pragma("GCC unroll 8") for (int h = 1; h < U; h *= 2)                            \
            _Pragma("GCC unroll 8") for (int u = 0; u + h < U; u += 2 * h)                \
                a[u][j] += a[u + h][j];                                                   \
        memcpy(&w, t + 16 * j, sizeof w);                                                 \
        w += coef * a[0][j];                                                              \
        memcpy(t + 16 * j, &w, sizeof w);                                                 \
    }                                                                                     \
}

#define FGD_SPARSE_ANY(T, V, SUFFIX)                                                      \
FGD_GROUP_FWD(T, V, SUFFIX, 8, 1)                                                         \
FGD_GROUP_FWD(T, V, SUFFIX, 4, 2)                                                         \
FGD_GROUP_FWD(T, V, SUFFIX, 2, 4)                                                         \
FGD_GROUP_FWD(T, V, SUFFIX, 1, 4)                                                         \
/* z[0:pad] = b + sum_k lut[val_k] W[idx_k, :] (before the activation) */                 \
static inline void fgd_sparse_forward_##SUFFIX(const unsigned short* idx,                 \
        const unsigned char* val, long nnz, const T* lut, const T* W, const T* b,         \
        long pad, T* z) {                                                                 \
    long jb = 0;                                                                          \
    for (; jb + 128 <= pad; jb += 128)                                                    \
        fgd_spfwd8##SUFFIX(idx, val, nnz, lut, W + jb, pad, b + jb, z + jb);             \
    if (jb + 64 <= pad) {                                                                 \
        fgd_spfwd4##SUFFIX(idx, val, nnz, lut, W + jb, pad, b + jb, z + jb); jb += 64;   \
    }                                                                                     \
    if (jb + 32 <= pad) {                                                                 \
        fgd_spfwd2##SUFFIX(idx, val, nnz, lut, W + jb, pad, b + jb, z + jb); jb += 32;   \
    }                                                                                     \
    if (jb < pad) fgd_spfwd1##SUFFIX(idx, val, nnz, lut, W + jb, pad, b + jb, z + jb);  \
}                                                                                         \
/* Tw[i, :] += coef * sum over column i's entries lut[ev] D[es, :], for i0 <= i < i1       \
   (cs: fgd_build_csc's column starts). Lanes outer in slabs of at most 64, rows inner: the  \
   slab of D every row reads (B x 64 lanes: 32 KB at batch 128) then stays in L1 instead of  \
   whole delta rows streaming from L2 once per entry. */                                  \
static inline void fgd_csc_update_##SUFFIX(const int* cs, const int* es,                  \
        const unsigned char* ev, long i0, long i1, const T* lut, const T* D, long pad,    \
        T coef, T* Tw) {                                                                  \
    long jb = 0;                                                                          \
    for (; jb + 64 <= pad; jb += 64)                                                      \
        for (long i = i0; i < i1; i++) {                                                  \
            long k0 = cs[i - i0], n = cs[i - i0 + 1] - k0;                                \
            if (n) fgd_csc_upd4##SUFFIX(es + k0, ev + k0, n, lut, D + jb, pad, coef,      \
                                       Tw + i * pad + jb);                                \
        }                                                                                 \
    if (jb + 32 <= pad) {                                                                 \
        for (long i = i0; i < i1; i++) {                                                  \
            long k0 = cs[i - i0], n = cs[i - i0 + 1] - k0;                                \
            if (n) fgd_csc_upd2##SUFFIX(es + k0, ev + k0, n, lut, D + jb, pad, coef,      \
                                       Tw + i * pad + jb);                                \
        }                                                                                 \
        jb += 32;                                                                         \
    }                                                                                     \
    if (jb < pad)                                                                         \
        for (long i = i0; i < i1; i++) {                                                  \
            long k0 = cs[i - i0], n = cs[i - i0 + 1] - k0;                                \
            if (n) fgd_csc_upd1##SUFFIX(es + k0, ev + k0, n, lut, D + jb, pad, coef,      \
                                       Tw + i * pad + jb);                                \
        }                                                                                 \
}
FGD_SPARSE_ANY(float, fgd_v16f, f)
FGD_SPARSE_ANY(double, fgd_v16d, d)

/* The minibatch's non-zero pixels with index in [i0, i1), by column: column i holds entries
   cs[i - i0] .. cs[i - i0 + 1] of es (sample number s in 0..B) and ev (pixel value), samples
   ascending. rows[s]: sample s's CSR row. cs has i1 - i0 + 2 ints; es, ev hold every entry. */
static inline void fgd_build_csc(const int64_t* ptr, const unsigned short* idx,
                                 const unsigned char* val, const int64_t* rows, long B,
                                 long i0, long i1, int* cs, int* es, unsigned char* ev) {
    long n = i1 - i0;
    memset(cs, 0, (size_t)(n + 2) * sizeof(int));
    for (long s = 0; s < B; s++) {
        int64_t k0 = ptr[rows[s]], k1 = ptr[rows[s] + 1];
        for (int64_t k = k0; k < k1; k++) {
            long i = idx[k];
            if (i >= i0 && i < i1) cs[i - i0 + 2]++;
        }
    }
    for (long j = 2; j < n + 2; j++) cs[j] += cs[j - 1];
    for (long s = 0; s < B; s++) {
        int64_t k0 = ptr[rows[s]], k1 = ptr[rows[s] + 1];
        for (int64_t k = k0; k < k1; k++) {
            long i = idx[k];
            if (i >= i0 && i < i1) {
                int p = cs[i - i0 + 1]++;
                es[p] = (int)s;
                ev[p] = val[k];
            }
        }
    }
}

/* wt[j * lda + i] = W[i * pad + j] for j < n_out, i < lda (0 for i >= n_in): a small layer's
   weights transposed (hidden_deltas_small), rebuilt every step. With AVX-512 one masked
   16-lane gather per transposed row instead of lda scalar loads and stores (~400 of them a
   step in the 784-16-16-10 lesson net). Copies values only: same bits either way. */
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
static inline void fgd_transpose_f(const float* W, long pad, long n_in, long n_out, float* wt,
                                   long lda) {
#if defined(__AVX512F__)
    if (lda == 16 && pad * 16 < (1L << 31)) {
        const __m512i vidx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32((int)pad));
        const __mmask16 rows = (__mmask16)((n_in >= 16) ? 0xFFFF : ((1u << n_in) - 1u));
        for (long j = 0; j < n_out; j++)
            _mm512_storeu_ps(wt + j * 16,
                             _mm512_mask_i32gather_ps(_mm512_setzero_ps(), rows, vidx, W + j, 4));
        return;
    }
#endif
    for (long j = 0; j < n_out; j++) {
        for (long i = 0; i < n_in; i++) wt[j * lda + i] = W[i * pad + j];
        for (long i = n_in; i < lda; i++) wt[j * lda + i] = 0.0f;
    }
}

/* The non-zero values of one uint8 row x (n values, n <= 65536): their indices (ascending) to
   idx and values to val, which have room for n each; returns their count. With AVX-512BW a
   64-pixel block at a time, all-zero blocks (most of an MNIST digit's border) skipped whole,
   ~6x faster than the scalar loop on MNIST. With VBMI2 too, a block's non-zeros are packed in
   registers (vpcompressb/w) and stored as whole vectors, not walked bit by bit: the stores may
   run past the count, never past the room for n (before block i at most i values are kept).
   build_csr of the 10k MNIST test images (count and fill): 1.80 -> 0.61 ms on Zen 4. Same
   output every way. */
static inline long fgd_row_nonzeros_u8(const unsigned char* x, long n, unsigned short* idx,
                                       unsigned char* val) {
    long k = 0, i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI2__)
    const __m512i lanes = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18,
                                           17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                           1, 0);
    for (; i + 64 <= n; i += 64) {
        __m512i v = _mm512_loadu_si512((const void*)(x + i));
        __mmask64 m = _mm512_test_epi8_mask(v, v);
        if (!m)
            continue;
        __mmask32 lo = (__mmask32)m, hi = (__mmask32)(m >> 32);
        __m512i first = _mm512_add_epi16(lanes, _mm512_set1_epi16((short)i));
        __m512i second = _mm512_add_epi16(first, _mm512_set1_epi16(32));
        long k_hi = k + __builtin_popcount((unsigned)lo);
        _mm512_storeu_si512((void*)(val + k), _mm512_maskz_compress_epi8(m, v));
        _mm512_storeu_si512((void*)(idx + k), _mm512_maskz_compress_epi16(lo, first));
        _mm512_storeu_si512((void*)(idx + k_hi), _mm512_maskz_compress_epi16(hi, second));
        k = k_hi + __builtin_popcount((unsigned)hi);
    }
#elif defined(__AVX512F__) && defined(__AVX512BW__)
    for (; i + 64 <= n; i += 64) {
        __m512i v = _mm512_loadu_si512((const void*)(x + i));
        unsigned long long m = (unsigned long long)_mm512_test_epi8_mask(v, v);
        while (m) {
            long j = i + (long)__builtin_ctzll(m);
            idx[k] = (unsigned short)j;
            val[k] = x[j];
            k++;
            m &= m - 1;
        }
    }
#endif
    for (; i < n; i++) {  /* branch-free: a zero is written and then overwritten */
        idx[k] = (unsigned short)i;
        val[k] = x[i];
        k += x[i] != 0;
    }
    return k;
}

/* How many values of the uint8 row x (n values) are non-zero. */
static inline long fgd_row_count_u8(const unsigned char* x, long n) {
    long k = 0, i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    for (; i + 64 <= n; i += 64) {
        __m512i v = _mm512_loadu_si512((const void*)(x + i));
        k += __builtin_popcountll((unsigned long long)_mm512_test_epi8_mask(v, v));
    }
#endif
    for (; i < n; i++) k += x[i] != 0;
    return k;
}

/* One CSR row of an image (rows x cols = n_pix pixels, indices ascending) moved by (dx, dy):
   pixel i = r * cols + c goes to i + off (off = dy * cols + dx) when 0 <= c + dx < cols and
   0 <= i + off < n_pix, else it is dropped (pixels i >= n_pix too). Writes the kept pixels
   to out_idx/out_val (ascending still) and returns their count. With AVX-512 (BW, VL,
   VBMI2) 16 pixels a step: c = i - cols * trunc((i + 0.5f) * (1 / cols)) (exact: the
   product is off by at most rows * 2^-23 < 0.5 / cols since n_pix <= 65536), kept lanes
   compressed; ~4x faster than the scalar loop on MNIST. Same output either way. */
static inline long fgd_shift_csr_row(const unsigned short* idx, const unsigned char* val, long nnz,
                                     long off, long dx, long cols, long n_pix,
                                     unsigned short* out_idx, unsigned char* out_val) {
    long k = 0, pos = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VBMI2__)
    const __m512 inv = _mm512_set1_ps(1.0f / (float)cols);
    const __m512 half = _mm512_set1_ps(0.5f);
    const __m512i vcols = _mm512_set1_epi32((int)cols), vnpix = _mm512_set1_epi32((int)n_pix);
    const __m512i voff = _mm512_set1_epi32((int)off), vdx = _mm512_set1_epi32((int)dx);
    for (; k < nnz; k += 16) {
        long left = nnz - k;
        __mmask16 lanes = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
        __m512i i = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, idx + k));
        __m128i v = _mm_maskz_loadu_epi8(lanes, val + k);
        __m512i q = _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(i), half), inv));
        __m512i c = _mm512_add_epi32(_mm512_sub_epi32(i, _mm512_mullo_epi32(q, vcols)), vdx);
        __m512i ni = _mm512_add_epi32(i, voff);
        __mmask16 keep = _mm512_mask_cmplt_epu32_mask(lanes, c, vcols);
        keep = _mm512_mask_cmplt_epu32_mask(keep, ni, vnpix);
        keep = _mm512_mask_cmplt_epu32_mask(keep, i, vnpix);
        int n = __builtin_popcount((unsigned)keep);
        __mmask16 first = (__mmask16)((1u << n) - 1u);
        _mm256_mask_storeu_epi16(out_idx + pos, first,
                                 _mm256_maskz_compress_epi16(keep, _mm512_cvtepi32_epi16(ni)));
        _mm_mask_storeu_epi8(out_val + pos, first, _mm_maskz_compress_epi8(keep, v));
        pos += n;
    }
    return pos;
#else
    for (; k < nnz; k++) {
        long i = idx[k], ni = i + off, c = i < n_pix ? i % cols + dx : -1;
        out_idx[pos] = (unsigned short)ni;
        out_val[pos] = val[k];
        pos += ((unsigned long)c < (unsigned long)cols) & ((unsigned long)ni < (unsigned long)n_pix);
    }
    return pos;
#endif
}

/* fastgd._random's counter-based uniform numbers (SplitMix64 finaliser), bit for bit. */
static inline unsigned long long fgd_mix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline double fgd_uniform(unsigned long long seed, unsigned long long pos,
                                 unsigned long long unit) {
    unsigned long long r = fgd_mix64(seed ^ fgd_mix64(pos * 1048576ULL + unit));
    return (double)(r >> 40) * 5.9604644775390625e-08;  /* 24 bits times 2**-24 */
}

/* fastgd._random.shifts: the (dx, dy) of the sample at position pos, each in [-k, k]. */
static inline void fgd_shift(unsigned long long seed, unsigned long long pos, long long k,
                             long long* dx, long long* dy) {
    unsigned long long r = fgd_mix64(seed ^ fgd_mix64(pos * 1048576ULL + 1048575ULL));
    unsigned long long span = (unsigned long long)(2 * k + 1);
    *dx = (long long)((r & 0xFFFFFFFFULL) % span) - k;
    *dy = (long long)((r >> 32) % span) - k;
}

/* exp(x) in float32 without a libm call, so loops over 16 lanes vectorise: Cody-Waite
   range reduction and the Cephes expf polynomial (relative error ~1e-7). The clamp keeps
   2^k a normal float; sigmoid and softmax only need the limits, which it preserves. */
static inline float fgd_expf(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float fk = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round to nearest */
    float r = x - fk * 0.693359375f + fk * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int bits = ((int)fk + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

/* sigmoid 1 / (1 + exp(-z)) in place over n lanes (a multiple of 16), 16 at a time: fgd_expf's
   operations, in the same order, on whole vectors. The scalar loop compiled to two 8-lane
   halves run one row at a time, whose latency chains cost the lesson net's epoch ~2 ms;
   written out with vector types it is one 16-lane chain, and a caller passing several rows
   gives the core independent chains to overlap. */
typedef int fgd_vi __attribute__((vector_size(64)));
/* select(m, x, y): x where the lane mask m is set (all ones: a comparison's true lanes), else y
   (bitwise: C has no vector ?:). Always inlined, so passing vectors by value costs no ABI. */
static inline __attribute__((always_inline)) fgd_v16f fgd_sel(fgd_vi m, fgd_v16f x, fgd_v16f y) {
    return (fgd_v16f)(((fgd_vi)x & m) | ((fgd_vi)y & ~m));
}
/* the lane mask of lanes 0..n-1 (for fgd_sel) */
static inline __attribute__((always_inline)) fgd_vi fgd_below(int n) {
    const fgd_vi lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return lane < n;
}
/* a[0:16] = sigmoid(z[0:16]) in lanes below n_valid, 0 above (a may be z) */
static inline void fgd_sigmoid16f(const float* z, float* a, int n_valid) {
    const fgd_v16f zero = {0};
    fgd_v16f x, fk, r, p, y, scale;
    fgd_vi bits;
    memcpy(&x, z, sizeof x);
    x = -x;
    x = fgd_sel(x < -87.3f, zero - 87.3f, x);
    x = fgd_sel(x > 88.3f, zero + 88.3f, x);
    fk = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    r = x - fk * 0.693359375f + fk * 2.12194440e-4f;
    p = zero + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    y = p * r * r + r + 1.0f;
    bits = (__builtin_convertvector(fk, fgd_vi) + 127) << 23;
    memcpy(&scale, &bits, sizeof scale);
    x = 1.0f / (1.0f + y * scale);
    if (n_valid < 16) x = fgd_sel(fgd_below(n_valid), x, zero);
    memcpy(a, &x, sizeof x);
}
static inline void fgd_sigmoid_f(float* z, long n) {
    for (long j = 0; j < n; j += 16) fgd_sigmoid16f(z + j, z + j, 16);
}

/* One output row's MSE loss and delta, n_out <= 16 units, as whole vectors: a and d are padded
   rows (16 lanes), t holds n_out targets (read masked, never past them). d[0:16] = (a - t) *
   a * (1 - a) for a sigmoid output, a - t for a linear one (0 above n_out); returns
   0.5 * sum (a - t)^2, summed as a tree (lanes j + 8 onto j, then j + 4, then (0 + 2) + (1 + 3)).
   dense_sgd.pyx's output_row did the same operations through 16-float stack arrays, which gcc
   assembled lane by lane. */
typedef float fgd_v8f __attribute__((vector_size(32)));
typedef float fgd_v4f __attribute__((vector_size(16)));
static inline float fgd_mse16f(const float* a, const float* t, int n_out, int sigmoid, float* d) {
    const fgd_v16f zero = {0};
    fgd_v16f av, tv = {0}, ev, dv;
    memcpy(&av, a, sizeof av);
    av = fgd_sel(fgd_below(n_out), av, zero);
#ifdef __AVX512F__
    tv = (fgd_v16f)_mm512_maskz_loadu_ps((__mmask16)((1u << n_out) - 1u), t);
#else
    for (int j = 0; j < n_out; j++) tv[j] = t[j];
#endif
    ev = av - tv;
    dv = sigmoid ? ev * av * (1.0f - av) : ev;
    memcpy(d, &dv, sizeof dv);
    ev = ev * ev;
    fgd_v8f h = __builtin_shufflevector(ev, ev, 0, 1, 2, 3, 4, 5, 6, 7)
              + __builtin_shufflevector(ev, ev, 8, 9, 10, 11, 12, 13, 14, 15);
    fgd_v4f q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    return 0.5f * ((q[0] + q[2]) + (q[1] + q[3]));
}

/* The small dense layers of dense_sgd.pyx in float32, written with vector types: the same
   operations in the same order as the Cython loops they replace (dense_forward,
   weight_update_rows, hidden_deltas_small; their docstrings give the chains), so the results
   are bitwise those of the loops, but gcc kept the loops' 16-float arrays partly on the stack
   and assembled them lane by lane (the lesson net's small layers: ~25% of its epoch). */

/* out[0:16] = init + sum_i x[i * xs] R[i * ldr : +16] over i < n (init NULL: 0), even and odd i
   in two chains: the one-row case of the three below */
static inline void fgd_comb16f(const float* x, long xs, long n, const float* R, long ldr,
                               const float* init, float* out) {
    const long n_even = n - n % 2;
    fgd_v16f e = {0}, o = {0}, w, v;
    if (init != NULL) memcpy(&e, init, sizeof e);
    for (long i = 0; i < n_even; i += 2) {
        memcpy(&w, R + i * ldr, sizeof w);
        memcpy(&v, R + (i + 1) * ldr, sizeof v);
        e += x[i * xs] * w;
        o += x[(i + 1) * xs] * v;
    }
    if (n_even < n) {
        memcpy(&w, R + n_even * ldr, sizeof w);
        e += x[n_even * xs] * w;
    }
    e = e + o;
    memcpy(out, &e, sizeof e);
}

/* Z[r, :] = A[r] @ W + b (no activation) for rows r0..r1; row stride of Z and W: pad */
static inline void fgd_dense_rows_f(const float* A, long lda, long n_in, long r0, long r1,
                                    const float* W, const float* b, long pad, float* Z) {
    const long n_even = n_in - n_in % 2;
    fgd_v16f e0, e1, e2, e3, o0, o1, o2, o3, w, v;
    const fgd_v16f zero = {0};
    for (long jb = 0; jb < pad; jb += 16) {
        long r = r0;
        for (; r + 4 <= r1; r += 4) {
            const float* a0 = A + r * lda;
            const float* a1 = a0 + lda;
            const float* a2 = a1 + lda;
            const float* a3 = a2 + lda;
            memcpy(&e0, b + jb, sizeof e0);
            e1 = e0; e2 = e0; e3 = e0;
            o0 = zero; o1 = zero; o2 = zero; o3 = zero;
            for (long i = 0; i < n_even; i += 2) {
                memcpy(&w, W + i * pad + jb, sizeof w);
                memcpy(&v, W + (i + 1) * pad + jb, sizeof v);
                e0 += a0[i] * w; e1 += a1[i] * w; e2 += a2[i] * w; e3 += a3[i] * w;
                o0 += a0[i + 1] * v; o1 += a1[i + 1] * v; o2 += a2[i + 1] * v; o3 += a3[i + 1] * v;
            }
            if (n_even < n_in) {
                memcpy(&w, W + n_even * pad + jb, sizeof w);
                e0 += a0[n_even] * w; e1 += a1[n_even] * w; e2 += a2[n_even] * w; e3 += a3[n_even] * w;
            }
            e0 = e0 + o0; e1 = e1 + o1; e2 = e2 + o2; e3 = e3 + o3;
            float* z = Z + r * pad + jb;
            memcpy(z, &e0, sizeof e0);
            memcpy(z + pad, &e1, sizeof e1);
            memcpy(z + 2 * pad, &e2, sizeof e2);
            memcpy(z + 3 * pad, &e3, sizeof e3);
        }
        for (; r < r1; r++)  /* leftover rows: the same two chains */
            fgd_comb16f(A + r * lda, 1, n_in, W + jb, pad, b + jb, Z + r * pad + jb);
    }
}

/* Tw[i] += coef * sum_s A[s, i] D[s] for weight rows i0..i1 (B samples) */
static inline void fgd_weight_update_rows_f(const float* A, long lda, const float* D, long pad,
                                            long B, long i0, long i1, float coef, float* Tw) {
    const long b_even = B - B % 2;
    fgd_v16f e0, e1, e2, e3, o0, o1, o2, o3, d, d1, t;
    const fgd_v16f zero = {0};
    for (long jb = 0; jb < pad; jb += 16) {
        long i = i0;
        for (; i + 4 <= i1; i += 4) {
            e0 = zero; e1 = zero; e2 = zero; e3 = zero;
            o0 = zero; o1 = zero; o2 = zero; o3 = zero;
            for (long s = 0; s < b_even; s += 2) {
                const float* a = A + s * lda + i;
                const float* a1 = a + lda;
                memcpy(&d, D + s * pad + jb, sizeof d);
                memcpy(&d1, D + (s + 1) * pad + jb, sizeof d1);
                e0 += a[0] * d; e1 += a[1] * d; e2 += a[2] * d; e3 += a[3] * d;
                o0 += a1[0] * d1; o1 += a1[1] * d1; o2 += a1[2] * d1; o3 += a1[3] * d1;
            }
            if (b_even < B) {
                const float* a = A + b_even * lda + i;
                memcpy(&d, D + b_even * pad + jb, sizeof d);
                e0 += a[0] * d; e1 += a[1] * d; e2 += a[2] * d; e3 += a[3] * d;
            }
            float* tp = Tw + i * pad + jb;
            memcpy(&t, tp, sizeof t); t += coef * (e0 + o0); memcpy(tp, &t, sizeof t);
            memcpy(&t, tp + pad, sizeof t); t += coef * (e1 + o1); memcpy(tp + pad, &t, sizeof t);
            memcpy(&t, tp + 2 * pad, sizeof t); t += coef * (e2 + o2); memcpy(tp + 2 * pad, &t, sizeof t);
            memcpy(&t, tp + 3 * pad, sizeof t); t += coef * (e3 + o3); memcpy(tp + 3 * pad, &t, sizeof t);
        }
        for (; i < i1; i++) {  /* leftover rows: the same two chains */
            float* tp = Tw + i * pad + jb;
            fgd_comb16f(A + i, lda, B, D + jb, pad, NULL, (float*)&e0);
            memcpy(&t, tp, sizeof t); t += coef * e0; memcpy(tp, &t, sizeof t);
        }
    }
}

/* Din[s, 0:lda] = sum_j D[s, j] wt[j, :] for rows s0..s1 (wt: n_out x lda, the transposed
   weights); even and odd j in two chains */
static inline void fgd_deltas_small_f(const float* D, long pad, long n_out, const float* wt,
                                      long lda, long s0, long s1, float* Din) {
    for (long s = s0; s < s1; s++)
        for (long ib = 0; ib < lda; ib += 16)
            fgd_comb16f(D + s * pad, 1, n_out, wt + ib, lda, NULL, Din + s * lda + ib);
}

#endif /* FASTGD_SIMD_H */
