/* Image augmentation for the Cython kernels: fastgd.augment's sampling map (rotation, shift and
   elastic distortion with bilinear interpolation) in C, one image at a time. fastgd/augment.py
   defines it and is the reference; this file performs the same double-precision operations in
   the same order, with floating-point contraction (FMA) switched off (no-trapping-math only
   lets gcc vectorise floor; it changes no result), so the augmented pixels
   equal the reference's bit for bit. fastgd/backends/numba_augment.py is the Numba twin.

   Entry points (T = float for _f, double for _d):
     fgd_augment_image_f/_d(srcf, srcu8, scale, rows, cols, seed, pos, max_shift, max_rotate,
                            alpha, work, out)
       out (rows * cols values of T) = the augmented image of the sample at epoch position pos.
       The source is srcu8 (uint8 pixels of value (T)v * scale, scale = (T)x_scale > 0: the
       kernels' lut[v] bit for bit) when srcu8 != NULL, else srcf (T values).
       work: FGD_AUG_WORK(rows, cols) doubles of scratch (the zero-bordered source and column
       flags), one per thread. Needs max_rotate in [0, 180], alpha >= 0 finite, rows, cols >= 1
       (EpochPlan.validate checks them). No allocation; ~8 KB of stack.
   With AVX-512 (F, DQ, VL) each output row runs as one masked 8-lane pass with explicit
   gathers; FGD_AUG_PORTABLE (or another target) selects the plain loops. Same bits either way.
   Everything is static: one copy per extension module that includes it. */
#ifndef FASTGD_AUGMENT_H
#define FASTGD_AUGMENT_H
#include <math.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* a * b + c must stay two roundings, as in the NumPy reference and Numba (no fastmath) */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#elif defined(_MSC_VER)
#pragma fp_contract(off)
#endif

#define FGD_AUG_CELLS 4                      /* fastgd.augment.ELASTIC_CELLS */
#define FGD_AUG_GRID 7                       /* control points per axis: cells + 3 */
#define FGD_AUG_POINTS 49
#define FGD_AUG_SHIFT_STREAM 1048575ULL      /* fastgd._random.SHIFT_STREAM */
#define FGD_AUG_ROTATE_STREAM 1048574ULL     /* fastgd._random.ROTATE_STREAM */
#define FGD_AUG_ELASTIC_STREAM 1048525ULL    /* fastgd._random.ELASTIC_STREAM */
#define FGD_AUG_SIXTH 0.16666666666666666  /* 1.0 / 6.0 */
#define FGD_AUG_CHUNK 64                     /* columns per pass */
#define FGD_AUG_WORK(rows, cols) (((rows) + 3) * ((cols) + 2))  /* doubles of scratch per image */

static inline unsigned long long fgd_aug_mix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline unsigned long long fgd_aug_draw(unsigned long long seed, unsigned long long pos,
                                              unsigned long long unit) {
    return fgd_aug_mix64(seed ^ fgd_aug_mix64(pos * 1048576ULL + unit));
}

/* One sample's random geometry (fastgd.augment.sample_params). */
typedef struct {
    double cs, sn;     /* cos and sin of the angle */
    double bx0, by0;   /* cx - dx, cy - dy */
    int elastic;       /* alpha > 0: px, py hold the control-point displacements */
    double px[FGD_AUG_POINTS], py[FGD_AUG_POINTS];
} fgd_aug_params;

static const double fgd_aug_sin_coeffs[11] = {
    1.0, -0.16666666666666666, 0.008333333333333333, -0.0001984126984126984, 2.7557319223985893e-06,
    -2.505210838544172e-08, 1.6059043836821613e-10, -7.647163731819816e-13, 2.8114572543455206e-15,
    -8.22063524662433e-18, 1.9572941063391263e-20};
static const double fgd_aug_cos_coeffs[11] = {
    1.0, -0.5, 0.041666666666666664, -0.001388888888888889, 2.48015873015873e-05,
    -2.755731922398589e-07, 2.08767569878681e-09, -1.1470745597729725e-11, 4.779477332387385e-14,
    -1.5619206968586225e-16, 4.110317623312165e-19};

static inline void fgd_aug_params_draw(unsigned long long seed, unsigned long long pos, long long max_shift,
                                double max_rotate, double alpha, long rows, long cols,
                                fgd_aug_params* p) {
    long long dx = 0, dy = 0;
    if (max_shift > 0) {  /* fastgd._random.shifts */
        unsigned long long r = fgd_aug_draw(seed, pos, FGD_AUG_SHIFT_STREAM);
        unsigned long long span = (unsigned long long)(2 * max_shift + 1);
        dx = (long long)((r & 0xFFFFFFFFULL) % span) - max_shift;
        dy = (long long)((r >> 32) % span) - max_shift;
    }
    p->bx0 = 0.5 * (double)(cols - 1) - (double)dx;
    p->by0 = 0.5 * (double)(rows - 1) - (double)dy;
    p->cs = 1.0;
    p->sn = 0.0;
    if (max_rotate > 0) {  /* fastgd.augment.rotation */
        double u = (double)(fgd_aug_draw(seed, pos, FGD_AUG_ROTATE_STREAM) >> 40) * 5.9604644775390625e-08;
        double deg = (2.0 * u - 1.0) * max_rotate;
        double h = deg * 0.017453292519943295 * 0.5;
        double h2 = h * h;
        double ps = fgd_aug_sin_coeffs[10], pc = fgd_aug_cos_coeffs[10];
        for (int k = 9; k >= 0; k--) {
            ps = ps * h2 + fgd_aug_sin_coeffs[k];
            pc = pc * h2 + fgd_aug_cos_coeffs[k];
        }
        double sh = h * ps;
        p->cs = pc * pc - sh * sh;
        p->sn = 2.0 * (sh * pc);
    }
    p->elastic = alpha > 0;
    if (p->elastic) {  /* fastgd._random.elastic_uniforms */
        for (int q = 0; q < FGD_AUG_POINTS; q++) {
            unsigned long long r = fgd_aug_draw(seed, pos, FGD_AUG_ELASTIC_STREAM + (unsigned long long)q);
            double ux = (double)((r & 0xFFFFFFFFULL) >> 8) * 5.9604644775390625e-08;
            double uy = (double)(r >> 40) * 5.9604644775390625e-08;
            p->px[q] = (2.0 * ux - 1.0) * alpha;
            p->py[q] = (2.0 * uy - 1.0) * alpha;
        }
    }
}

/* Lattice cell of pixel i along an axis of n pixels (scale = FGD_AUG_CELLS / n), and its four
   B-spline weights (augment.lattice). */
static inline long fgd_aug_cell(long i, double scale, double* w) {
    double u = ((double)i + 0.5) * scale;
    double k = floor(u);
    double t = u - k;
    double s = 1.0 - t, t2 = t * t;
    double t3 = t2 * t;
    w[0] = ((s * s) * s) * FGD_AUG_SIXTH;
    w[1] = ((3.0 * t3 - 6.0 * t2) + 4.0) * FGD_AUG_SIXTH;
    w[2] = (((3.0 * t2 - 3.0 * t3) + 3.0 * t) + 1.0) * FGD_AUG_SIXTH;
    w[3] = t3 * FGD_AUG_SIXTH;
    return (long)k;
}

/* Bilinear samples v[j] at (sx[j], sy[j]) of the zero-bordered image pad (row length W = cols + 2),
   j < n; points outside (-1, cols) x (-1, rows) give 0 (augment.bilinear). With AVX-512 (F and DQ)
   written with intrinsics: compilers emulate the four gathers with scalar loads otherwise. The
   vector code performs the same IEEE operations per lane (separate multiplies and adds, floor by
   rounding toward -inf, an integer-valued index converted exactly), so both give the same bits. */
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && !defined(FGD_AUG_PORTABLE)
#define FGD_AUG_AVX512 1

/* Eight samples at (sx, sy) (lanes outside `lanes` unused) */
static inline __m512d fgd_aug_sample8(const double* pad, long W, __m512d sx, __m512d sy, __mmask8 lanes,
                                      const double* box) {
    const __m512d one = _mm512_set1_pd(1.0), zero = _mm512_setzero_pd();
    const __m512i i1 = _mm512_set1_epi64(1), iW = _mm512_set1_epi64(W), iW1 = _mm512_set1_epi64(W + 1);
    __mmask8 in = _mm512_mask_cmp_pd_mask(lanes, sx, _mm512_set1_pd(box[0]), _CMP_GT_OQ);
    in = _mm512_mask_cmp_pd_mask(in, sx, _mm512_set1_pd(box[1]), _CMP_LT_OQ);
    in = _mm512_mask_cmp_pd_mask(in, sy, _mm512_set1_pd(box[2]), _CMP_GT_OQ);
    in = _mm512_mask_cmp_pd_mask(in, sy, _mm512_set1_pd(box[3]), _CMP_LT_OQ);
    if (in == 0) return zero;  /* eight points away from the non-zero pixels: exactly +0 */
    sx = _mm512_maskz_mov_pd(in, sx);
    sy = _mm512_maskz_mov_pd(in, sy);
    __m512d fx0 = _mm512_roundscale_pd(sx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512d fy0 = _mm512_roundscale_pd(sy, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512d fx = _mm512_sub_pd(sx, fx0), fy = _mm512_sub_pd(sy, fy0);
    /* (y0 + 1) * W + (x0 + 1): small integers, exact in double */
    __m512d id = _mm512_add_pd(_mm512_mul_pd(_mm512_add_pd(fy0, one), _mm512_set1_pd((double)W)),
                               _mm512_add_pd(fx0, one));
    __m512i i = _mm512_cvttpd_epi64(id);
    __m512d a = _mm512_mask_i64gather_pd(zero, in, i, pad, 8);
    __m512d b = _mm512_mask_i64gather_pd(zero, in, _mm512_add_epi64(i, i1), pad, 8);
    __m512d c = _mm512_mask_i64gather_pd(zero, in, _mm512_add_epi64(i, iW), pad, 8);
    __m512d d = _mm512_mask_i64gather_pd(zero, in, _mm512_add_epi64(i, iW1), pad, 8);
    __m512d gx = _mm512_sub_pd(one, fx), gy = _mm512_sub_pd(one, fy);
    __m512d top = _mm512_add_pd(_mm512_mul_pd(gx, a), _mm512_mul_pd(fx, b));
    __m512d bot = _mm512_add_pd(_mm512_mul_pd(gx, c), _mm512_mul_pd(fx, d));
    return _mm512_maskz_mov_pd(in, _mm512_add_pd(_mm512_mul_pd(gy, top), _mm512_mul_pd(fy, bot)));
}
#define FGD_AUG_STORE_f(o, v, m) _mm256_mask_storeu_ps((o), (m), _mm512_cvtpd_ps(v))
#define FGD_AUG_STORE_d(o, v, m) _mm512_mask_storeu_pd((o), (m), (v))
/* One output row's columns [lo, hi) of a chunk in one pass of 8 lanes: coordinates, the elastic
   field (w != NULL: row weights; X, Y: the chunk's Rc rows k .. k + 3, stride FGD_AUG_CHUNK),
   samples, conversion to T, store (out = the chunk's row start). */
#define FGD_AUG_ROW(T, SUFFIX)                                                                    \
static inline void fgd_aug_row_##SUFFIX(const double* pad, long W, const double* box,             \
                                        long c0, long lo, long hi, double cx, double cs, double sn, \
                                        double bx, double by, const double* w, const double* X,   \
                                        const double* Y, T* out) {                                \
    const __m512d iota = _mm512_set_pd(7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0);                   \
    const __m512d vcs = _mm512_set1_pd(cs), vsn = _mm512_set1_pd(sn), vcx = _mm512_set1_pd(cx);   \
    const __m512d vbx = _mm512_set1_pd(bx), vby = _mm512_set1_pd(by);                             \
    for (long j = lo; j < hi; j += 8) {                                                           \
        __mmask8 lanes = hi - j >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (hi - j)) - 1u);        \
        __m512d x = _mm512_sub_pd(_mm512_add_pd(_mm512_set1_pd((double)(c0 + j)), iota), vcx);    \
        __m512d sx = _mm512_add_pd(_mm512_mul_pd(vcs, x), vbx);                                   \
        __m512d sy = _mm512_add_pd(_mm512_mul_pd(vsn, x), vby);                                   \
        if (w != 0) {                                                                             \
            __m512d w0 = _mm512_set1_pd(w[0]), w1 = _mm512_set1_pd(w[1]);                         \
            __m512d w2 = _mm512_set1_pd(w[2]), w3 = _mm512_set1_pd(w[3]);                         \
            __m512d ex = _mm512_add_pd(                                                           \
                _mm512_add_pd(                                                                    \
                    _mm512_add_pd(_mm512_mul_pd(w0, _mm512_maskz_loadu_pd(lanes, X + j)),         \
                                  _mm512_mul_pd(w1, _mm512_maskz_loadu_pd(lanes, X + j + FGD_AUG_CHUNK))), \
                    _mm512_mul_pd(w2, _mm512_maskz_loadu_pd(lanes, X + j + 2 * FGD_AUG_CHUNK))),  \
                _mm512_mul_pd(w3, _mm512_maskz_loadu_pd(lanes, X + j + 3 * FGD_AUG_CHUNK)));      \
            __m512d ey = _mm512_add_pd(                                                           \
                _mm512_add_pd(                                                                    \
                    _mm512_add_pd(_mm512_mul_pd(w0, _mm512_maskz_loadu_pd(lanes, Y + j)),         \
                                  _mm512_mul_pd(w1, _mm512_maskz_loadu_pd(lanes, Y + j + FGD_AUG_CHUNK))), \
                    _mm512_mul_pd(w2, _mm512_maskz_loadu_pd(lanes, Y + j + 2 * FGD_AUG_CHUNK))),  \
                _mm512_mul_pd(w3, _mm512_maskz_loadu_pd(lanes, Y + j + 3 * FGD_AUG_CHUNK)));      \
            sx = _mm512_add_pd(sx, ex);                                                           \
            sy = _mm512_add_pd(sy, ey);                                                           \
        }                                                                                         \
        FGD_AUG_STORE_##SUFFIX(out + j, fgd_aug_sample8(pad, W, sx, sy, lanes, box), lanes);      \
    }                                                                                             \
}
#else
static inline void fgd_aug_sample(const double* __restrict pad, long W, const double* __restrict sxb,
                                  const double* __restrict syb, long n, const double* box,
                                  double* __restrict v) {
    for (long j = 0; j < n; j++) {
        double sx = sxb[j], sy = syb[j];
        int in = (sx > box[0]) & (sx < box[1]) & (sy > box[2]) & (sy < box[3]);
        sx = in ? sx : 0.0;
        sy = in ? sy : 0.0;
        double fx0 = floor(sx), fy0 = floor(sy);
        double fx = sx - fx0, fy = sy - fy0;
        long i = ((long)fy0 + 1) * W + ((long)fx0 + 1);
        double a = pad[i], b = pad[i + 1], c = pad[i + W], d = pad[i + W + 1];
        double vv = (1.0 - fy) * ((1.0 - fx) * a + fx * b) + fy * ((1.0 - fx) * c + fx * d);
        v[j] = in ? vv : 0.0;
    }
}
/* One output row's columns [lo, hi) of a chunk: coordinates (vectorisable), the elastic field
   (w != NULL: row weights; X, Y: the chunk's Rc rows k .. k + 3, stride FGD_AUG_CHUNK), samples,
   conversion to T (out = the chunk's row start). */
#define FGD_AUG_ROW(T, SUFFIX)                                                                    \
static inline void fgd_aug_row_##SUFFIX(const double* pad, long W, const double* box,             \
                                        long c0, long lo, long hi, double cx, double cs, double sn, \
                                        double bx, double by, const double* w, const double* X,   \
                                        const double* Y, T* out) {                                \
    double sxb[FGD_AUG_CHUNK], syb[FGD_AUG_CHUNK], vb[FGD_AUG_CHUNK];                             \
    for (long j = lo; j < hi; j++) {                                                              \
        double x = (double)(c0 + j) - cx;                                                         \
        sxb[j] = cs * x + bx;                                                                     \
        syb[j] = sn * x + by;                                                                     \
    }                                                                                             \
    if (w != 0) {                                                                                 \
        for (long j = lo; j < hi; j++) {                                                          \
            sxb[j] = sxb[j] + (((w[0] * X[j] + w[1] * X[j + FGD_AUG_CHUNK])                       \
                                + w[2] * X[j + 2 * FGD_AUG_CHUNK]) + w[3] * X[j + 3 * FGD_AUG_CHUNK]); \
            syb[j] = syb[j] + (((w[0] * Y[j] + w[1] * Y[j + FGD_AUG_CHUNK])                       \
                                + w[2] * Y[j + 2 * FGD_AUG_CHUNK]) + w[3] * Y[j + 3 * FGD_AUG_CHUNK]); \
        }                                                                                         \
    }                                                                                             \
    fgd_aug_sample(pad, W, sxb + lo, syb + lo, hi - lo, box, vb);                                 \
    for (long j = lo; j < hi; j++) out[j] = (T)vb[j - lo];                                        \
}
#endif
FGD_AUG_ROW(float, f)
FGD_AUG_ROW(double, d)

/* x is +0.0 (all bits clear; -0.0 is content: the reference keeps its sign) */
static inline int fgd_aug_is_pzero(double x) {
    unsigned long long b;
    memcpy(&b, &x, sizeof b);
    return b == 0;
}

/* Narrow [*lo, *hi) to the j where a * j + b may lie in (L, U), conservatively (a pixel more on
   each side; the per-pixel test decides). A skipped pixel is one whose four neighbours all hold +0:
   its exact value is +0, so skipping it changes no bit. */
static inline void fgd_aug_span(double a, double ia, double b, double L, double U, long* lo, long* hi) {
    double jl, ju;  /* ia = 1 / a: a rounding off the exact bound, well inside the slack */
    if (a > 1e-9) {
        jl = (L - b) * ia;
        ju = (U - b) * ia;
    } else if (a < -1e-9) {
        jl = (U - b) * ia;
        ju = (L - b) * ia;
    } else {  /* |a| * j < 1e-9 * cols: constant within the margin */
        if (!(b > L && b < U)) *hi = *lo;
        return;
    }
    if (!(ju > (double)*lo - 2.0 && jl < (double)*hi + 2.0)) {  /* also catches NaN */
        *hi = *lo;
        return;
    }
    /* jl < hi + 2 and ju > lo - 2 here: the conversions below fit a long */
    if (jl > (double)*lo) {
        long l = (long)jl - 1;
        *lo = l > *lo ? l : *lo;
    }
    if (ju < (double)*hi) {
        long h = (long)ju + 2;
        *hi = h < *hi ? h : *hi;
    }
    if (*hi < *lo) *hi = *lo;
}

/* One uint8 row into the bordered copy: d[c] = (double)((T)s[c] * scale), colbits[c] |= s[c];
   returns the OR of the row's pixels. With AVX-512: 8 pixels per masked step, no scalar tail. */
#if defined(FGD_AUG_AVX512)
static inline unsigned long long fgd_aug_copy_u8_f(const unsigned char* s, long n, float scale, double* d,
                                                   unsigned long long* colbits) {
    __m512i acc = _mm512_setzero_si512();
    const __m256 vs = _mm256_set1_ps(scale);
    for (long c = 0; c < n; c += 8) {
        __mmask8 m = n - c >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (n - c)) - 1u);
        __m128i b = _mm_maskz_loadu_epi8((__mmask16)m, s + c);
        __m512i q = _mm512_cvtepu8_epi64(b);
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), vs);
        _mm512_mask_storeu_pd(d + c, m, _mm512_cvtps_pd(f));
        _mm512_mask_storeu_epi64(colbits + c, m, _mm512_or_si512(_mm512_maskz_loadu_epi64(m, colbits + c), q));
        acc = _mm512_or_si512(acc, q);
    }
    return (unsigned long long)_mm512_reduce_or_epi64(acc);
}
static inline unsigned long long fgd_aug_copy_u8_d(const unsigned char* s, long n, double scale, double* d,
                                                   unsigned long long* colbits) {
    __m512i acc = _mm512_setzero_si512();
    const __m512d vs = _mm512_set1_pd(scale);
    for (long c = 0; c < n; c += 8) {
        __mmask8 m = n - c >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (n - c)) - 1u);
        __m128i b = _mm_maskz_loadu_epi8((__mmask16)m, s + c);
        __m512i q = _mm512_cvtepu8_epi64(b);
        _mm512_mask_storeu_pd(d + c, m, _mm512_mul_pd(_mm512_cvtepi64_pd(q), vs));
        _mm512_mask_storeu_epi64(colbits + c, m, _mm512_or_si512(_mm512_maskz_loadu_epi64(m, colbits + c), q));
        acc = _mm512_or_si512(acc, q);
    }
    return (unsigned long long)_mm512_reduce_or_epi64(acc);
}
#else
#define FGD_AUG_COPY_U8(T, SUFFIX)                                                                \
static inline unsigned long long fgd_aug_copy_u8_##SUFFIX(const unsigned char* s, long n, T scale, \
                                                          double* d, unsigned long long* colbits) { \
    unsigned long long any = 0;                                                                   \
    for (long c = 0; c < n; c++) d[c] = (double)((T)s[c] * scale);                                \
    for (long c = 0; c < n; c++) {                                                                \
        colbits[c] |= s[c];                                                                       \
        any |= s[c];                                                                              \
    }                                                                                             \
    return any;                                                                                   \
}
FGD_AUG_COPY_U8(float, f)
FGD_AUG_COPY_U8(double, d)
#endif

/* The warp, in column chunks of FGD_AUG_CHUNK: for each output row, the columns whose source point
   can reach the non-zero part of the image (box [xlo, xhi] x [ylo, yhi] of pixels that are not +0,
   widened by a pixel and by the largest elastic displacement), then their coordinates
   (vectorisable) and bilinear samples (vectorisable with gathers) from `pad`, the source image as
   doubles with a border of zeros (rows + 2) x (cols + 2), so a pixel's four neighbours need no
   bound tests: a pixel outside (-1, cols) x (-1, rows) reads (0, 0) and is set to 0. */
#define FGD_AUGMENT(T, SUFFIX)                                                                    \
static inline void fgd_augment_warp_##SUFFIX(const double* pad, long rows, long cols,             \
                                             const fgd_aug_params* p, long xlo, long xhi,         \
                                             long ylo, long yhi, T* out) {                        \
    double rcx[FGD_AUG_GRID * FGD_AUG_CHUNK], rcy[FGD_AUG_GRID * FGD_AUG_CHUNK];                  \
    double wc[4 * FGD_AUG_CHUNK];                                                                 \
    const double cx = 0.5 * (double)(cols - 1), cy = 0.5 * (double)(rows - 1);                    \
    const double colsd = (double)cols, rowsd = (double)rows;                                      \
    const double cscale = (double)FGD_AUG_CELLS / colsd, rscale = (double)FGD_AUG_CELLS / rowsd;   \
    /* a point can read a pixel that is not +0 only inside this open box (within the image) */   \
    const double box[4] = {(double)xlo - 1.0, (double)xhi + 1.0, (double)ylo - 1.0, (double)yhi + 1.0}; \
    const double cs = p->cs, sn = p->sn;                                                          \
    const long W = cols + 2;                                                                      \
    double mx = 0.0, my = 0.0;  /* the largest displacements: the field is a convex combination */ \
    if (p->elastic) {                                                                             \
        for (int q = 0; q < FGD_AUG_POINTS; q++) {                                                \
            mx = fabs(p->px[q]) > mx ? fabs(p->px[q]) : mx;                                       \
            my = fabs(p->py[q]) > my ? fabs(p->py[q]) : my;                                       \
        }                                                                                         \
    }                                                                                             \
    const double XL = (double)xlo - 1.001 - mx, XU = (double)xhi + 1.001 + mx;                    \
    const double ics = 1.0 / cs, isn = 1.0 / sn;                                                  \
    memset(out, 0, sizeof(T) * (size_t)(rows * cols));  /* +0.0: all bits clear */               \
    const double YL = (double)ylo - 1.001 - my, YU = (double)yhi + 1.001 + my;                    \
    for (long c0 = 0; c0 < cols; c0 += FGD_AUG_CHUNK) {                                           \
        long n = cols - c0 < FGD_AUG_CHUNK ? cols - c0 : FGD_AUG_CHUNK;                           \
        if (p->elastic && xlo <= xhi) {  /* the field's column pass: Rc[i, c], every control row */ \
            long kc[FGD_AUG_CHUNK];                                                               \
            for (long j = 0; j < n; j++) kc[j] = fgd_aug_cell(c0 + j, cscale, wc + 4 * j);         \
            for (long j0 = 0; j0 < n;) {  /* a run of columns in the same cell k */               \
                long k = kc[j0], j1 = j0 + 1;                                                     \
                while (j1 < n && kc[j1] == k) j1++;                                               \
                for (int i = 0; i < FGD_AUG_GRID; i++) {                                          \
                    const double* X = p->px + i * FGD_AUG_GRID + k;                               \
                    const double* Y = p->py + i * FGD_AUG_GRID + k;                               \
                    const double x0 = X[0], x1 = X[1], x2 = X[2], x3 = X[3];                      \
                    const double y0 = Y[0], y1 = Y[1], y2 = Y[2], y3 = Y[3];                      \
                    double* RX = rcx + i * FGD_AUG_CHUNK;                                         \
                    double* RY = rcy + i * FGD_AUG_CHUNK;                                         \
                    for (long j = j0; j < j1; j++) {                                              \
                        const double* w = wc + 4 * j;                                             \
                        RX[j] = ((w[0] * x0 + w[1] * x1) + w[2] * x2) + w[3] * x3;                \
                        RY[j] = ((w[0] * y0 + w[1] * y1) + w[2] * y2) + w[3] * y3;                \
                    }                                                                             \
                }                                                                                 \
                j0 = j1;                                                                          \
            }                                                                                     \
        }                                                                                         \
        for (long r = 0; r < rows; r++) {                                                         \
            const double y = (double)r - cy;                                                      \
            const double bx = p->bx0 - sn * y, by = p->by0 + cs * y;                              \
            T* o = out + r * cols + c0;                                                           \
            long lo = 0, hi = xlo <= xhi ? n : 0;                                                 \
            /* the affine part at j: cs * (c0 + j - cx) + bx and sn * (c0 + j - cx) + by */       \
            fgd_aug_span(cs, ics, cs * ((double)c0 - cx) + bx, XL, XU, &lo, &hi);                 \
            if (lo < hi) fgd_aug_span(sn, isn, sn * ((double)c0 - cx) + by, YL, YU, &lo, &hi);    \
            if (lo >= hi) continue;  /* the whole output was zeroed first */                      \
            if (p->elastic) {  /* the row pass: the field at (r, c0 + j) */                       \
                double w[4];                                                                      \
                long k = fgd_aug_cell(r, rscale, w);                                              \
                fgd_aug_row_##SUFFIX(pad, W, box, c0, lo, hi, cx, cs, sn, bx, by, w,              \
                                     rcx + k * FGD_AUG_CHUNK, rcy + k * FGD_AUG_CHUNK, o);        \
            } else {                                                                              \
                fgd_aug_row_##SUFFIX(pad, W, box, c0, lo, hi, cx, cs, sn, bx, by, 0, 0, 0, o);    \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
static inline void fgd_augment_image_##SUFFIX(const T* srcf, const unsigned char* srcu8, T scale,   \
                                              long rows, long cols, unsigned long long seed,      \
                                              unsigned long long pos, long long max_shift,        \
                                              double max_rotate, double alpha, double* work,      \
                                              T* out) {                                           \
    fgd_aug_params p;                                                                             \
    const long W = cols + 2;                                                                      \
    long xlo = cols, xhi = -1, ylo = rows, yhi = -1;                                              \
    fgd_aug_params_draw(seed, pos, max_shift, max_rotate, alpha, rows, cols, &p);                 \
    for (long j = 0; j < W; j++) {                                                                \
        work[j] = 0.0;                                                                            \
        work[(rows + 1) * W + j] = 0.0;                                                           \
    }                                                                                             \
    /* the bordered copy, and the box of pixels that are not +0: OR of each column's bits (no  \
       data-dependent branch per pixel), rows with any bit set */                                 \
    unsigned long long* colbits = (unsigned long long*)(work + (rows + 2) * W);                   \
    for (long c = 0; c < cols; c++) colbits[c] = 0;                                               \
    for (long r = 0; r < rows; r++) {                                                             \
        double* d = work + (r + 1) * W;                                                           \
        unsigned long long any = 0;                                                               \
        d[0] = 0.0;                                                                               \
        d[cols + 1] = 0.0;                                                                        \
        if (srcu8 != 0) {  /* value (T)v * scale, as the reference; pixel 0 is +0 (scale > 0) */   \
            const unsigned char* s = srcu8 + r * cols;                                            \
            any = fgd_aug_copy_u8_##SUFFIX(s, cols, scale, d + 1, colbits);                       \
        } else {                                                                                  \
            const T* s = srcf + r * cols;                                                         \
            for (long c = 0; c < cols; c++) d[c + 1] = (double)s[c];                              \
            for (long c = 0; c < cols; c++) {                                                     \
                unsigned long long b;                                                             \
                memcpy(&b, d + c + 1, sizeof b);                                                  \
                colbits[c] |= b;                                                                  \
                any |= b;                                                                         \
            }                                                                                     \
        }                                                                                         \
        if (any) {                                                                                \
            ylo = ylo < r ? ylo : r;                                                              \
            yhi = r;                                                                              \
        }                                                                                         \
    }                                                                                             \
    if (yhi >= 0) {                                                                               \
        xlo = 0;                                                                                  \
        while (colbits[xlo] == 0) xlo++;                                                          \
        xhi = cols - 1;                                                                           \
        while (colbits[xhi] == 0) xhi--;                                                          \
    }                                                                                             \
    fgd_augment_warp_##SUFFIX(work, rows, cols, &p, xlo, xhi, ylo, yhi, out);                     \
}
FGD_AUGMENT(float, f)
FGD_AUGMENT(double, d)

#if defined(__clang__)
#pragma clang fp contract(on)
#elif defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif /* FASTGD_AUGMENT_H */
