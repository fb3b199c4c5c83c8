/* C helpers of the Cython kernels (kernels/dense_sgd.pyx): OpenMP shims, prefetch, 16-lane
   vector helpers, the sparse first layer at 16 lanes, fastgd._random's counter-based generator,
   and a vectorisable float32 exp. Everything is static inline: one copy per extension module. */
#ifndef FASTGD_SIMD_H
#define FASTGD_SIMD_H
#include <math.h>
#include <string.h>
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
#define FGD_SPARSE16(T, V, SUFFIX)                                                        \
static inline void fgd_sparse_forward16##SUFFIX(                                          \
        const unsigned short* idx, const unsigned char* val, long nnz, const T* lut,      \
        const T* W, const T* b, T* z) {                                                   \
    V a0, a1, a2, a3, w0, w1, w2, w3;                                                     \
    memcpy(&a0, b, sizeof a0);                                                            \
    a1 = a0 - a0; a2 = a1; a3 = a1;                                                       \
    long k = 0;                                                                           \
    for (; k + 4 <= nnz; k += 4) {                                                        \
        memcpy(&w0, W + ((long)idx[k] << 4), sizeof w0);                                  \
        memcpy(&w1, W + ((long)idx[k + 1] << 4), sizeof w1);                              \
        memcpy(&w2, W + ((long)idx[k + 2] << 4), sizeof w2);                              \
        memcpy(&w3, W + ((long)idx[k + 3] << 4), sizeof w3);                              \
        a0 += lut[val[k]] * w0;                                                           \
        a1 += lut[val[k + 1]] * w1;                                                       \
        a2 += lut[val[k + 2]] * w2;                                                       \
        a3 += lut[val[k + 3]] * w3;                                                       \
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
    V dv, t;                                                                              \
    long k = 0;                                                                           \
    memcpy(&dv, d, sizeof dv);                                                            \
    while (k < nnz && idx[k] < i0) k++;                                                   \
    if (i1 > 65535) {  /* every remaining pixel is in range: no bound test */             \
        for (; k < nnz; k++) {                                                            \
            T x = lut[val[k]];                                                            \
            memcpy(&t, Tw + ((long)idx[k] << 4), sizeof t);                               \
            t += x * dv;                                                                  \
            memcpy(Tw + ((long)idx[k] << 4), &t, sizeof t);                               \
        }                                                                                 \
        return;                                                                           \
    }                                                                                     \
    for (; k < nnz && idx[k] < i1; k++) {                                                 \
        T x = lut[val[k]];                                                                \
        memcpy(&t, Tw + ((long)idx[k] << 4), sizeof t);                                   \
        t += x * dv;                                                                      \
        memcpy(Tw + ((long)idx[k] << 4), &t, sizeof t);                                   \
    }                                                                                     \
}
FGD_SPARSE16(float, fgd_v16f, f)
FGD_SPARSE16(double, fgd_v16d, d)

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

#endif /* FASTGD_SIMD_H */
