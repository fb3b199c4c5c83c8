/* fastgd_gemm.h: float32 register-blocked GEMM micro-kernels (AVX-512 through GCC vector types,
   which also compile to AVX2/SSE code on other machines) and the "cols" training step of a
   dense MLP, where each thread owns a fixed slice of every hidden layer's OUTPUT COLUMNS for the
   whole epoch (so its part of the weights stays in its own L2 cache) instead of a slice of each
   minibatch's samples.

   Everything is plain C over flat row-major buffers; shapes are written beside each buffer.
   The step functions are called once per thread from inside a Cython `with parallel()` region
   (kernels/dense_cols.pyx) with a barrier between the phases.

   ---- the GEMM ------------------------------------------------------------------------------
   fgd_gemm computes, for i < M and j < N (N a multiple of 16):
       acc[i][j] = sum_{k < K} A[i*rsa + k*csa] * B[k*ldb + j]
   and then, by `epi`:
       FGD_STORE:    C[i*ldc + j] = acc
       FGD_ACC:      C[i*ldc + j] += coef * acc              (the SGD weight update)
       FGD_BIAS_ACT: C[i*ldc + j] = act(acc + bias[j])       (a layer's forward)
       FGD_DACT:     C[i*ldc + j] = acc * act'(X[i*ldc + j]) (a delta: X holds the activation)
   A is read by scalar broadcasts at any strides (rsa, csa), so A or its transpose are both
   plain calls; B is read as whole 16-float vectors. Each tile of MR rows x NR vectors keeps
   MR*NR accumulators in registers for the whole K loop. */
#ifndef FASTGD_GEMM_H
#define FASTGD_GEMM_H
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <math.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include "fastgd_simd.h"

typedef fgd_v16f fgd_vfa;  /* 16 floats (fastgd_simd.h) */

enum { FGD_STORE = 0, FGD_ACC = 1, FGD_BIAS_ACT = 2, FGD_DACT = 3 };
/* activation codes: fastgd.ops (ops_codes.pxi) */
enum { FGD_ACT_SIGMOID = 0, FGD_ACT_RELU = 1, FGD_ACT_TANH = 2, FGD_ACT_LINEAR = 3,
       FGD_ACT_SOFTMAX = 4, FGD_ACT_LEAKY = 5 };

#ifndef FGD_MR
#define FGD_MR 6    /* rows per tile: 1..8 */
#endif
#ifndef FGD_NR
#define FGD_NR 4    /* 16-float vectors per tile: 2..4 */
#endif
#ifndef FGD_PANEL_MAJOR_MIN
#define FGD_PANEL_MAJOR_MIN 65536  /* K x N of B (floats) from which fgd_gemm walks B panel by panel */
#endif
#ifndef FGD_PF_AHEAD
#define FGD_PF_AHEAD 16  /* rows of B prefetched ahead: 8, 16, 32 gave 651, 624, 639 ms (below; a C
                            copy of the epoch loop, medians of 3) */
#endif

static inline fgd_vfa fgd_ld(const float* p) { fgd_vfa v; memcpy(&v, p, sizeof v); return v; }
static inline void fgd_st(float* p, fgd_vfa v) { memcpy(p, &v, sizeof v); }

/* fgd_vi, fgd_sel: fastgd_simd.h (fgd_vfa is its fgd_v16f) */
static inline __attribute__((always_inline)) fgd_vfa fgd_act_v(fgd_vfa z, int act, float slope) {
    const fgd_vfa zero = {0};
    if (act == FGD_ACT_RELU) return (fgd_vfa)((fgd_vi)z & (z > zero));
    if (act == FGD_ACT_LEAKY) return fgd_sel(z > zero, z, z * slope);
    return z;  /* linear (the only other activation this step takes) */
}
/* d * act'(z) from the activation's output a (a > 0 exactly where z > 0 for both) */
static inline __attribute__((always_inline)) fgd_vfa fgd_dact_v(fgd_vfa d, fgd_vfa a, int act,
                                                                float slope) {
    const fgd_vfa zero = {0};
    if (act == FGD_ACT_RELU) return (fgd_vfa)((fgd_vi)d & (a > zero));
    if (act == FGD_ACT_LEAKY) return fgd_sel(a > zero, d, d * slope);
    return d;
}

/* One tile: mr rows x nr vectors (compile-time constants after inlining). */
static inline __attribute__((always_inline)) void fgd_tile(
        const int mr, const int nr, long K, const int* kidx, const float* A, long rsa, long csa,
        const float* B, long ldb, float* C, long ldc, int epi, const float* bias,
        const float* X, float coef, int act, float slope) {
    fgd_vfa acc[8][4];
    fgd_vfa b[4];
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nr; v++) acc[r][v] = (fgd_vfa){0};
#define FGD_TILE_STEP(k, kf, pf)                                                         \
    {                                                                                    \
        const float* bk = B + (k) * ldb;                                                 \
        const float* ak = A + (k) * csa;                                                 \
        _Pragma("GCC unroll 4")                                                          \
        for (int v = 0; v < nr; v++) b[v] = fgd_ld(bk + 16 * v);                         \
        _Pragma("GCC unroll 4")                                                          \
        for (int v = 0; v < nr && (pf); v++) __builtin_prefetch(B + (kf) * ldb + 16 * v, 0, 3); \
        _Pragma("GCC unroll 16")                                                         \
        for (int r = 0; r < mr; r++) {                                                   \
            float a = ak[r * rsa];                                                       \
            _Pragma("GCC unroll 4")                                                      \
            for (int v = 0; v < nr; v++) acc[r][v] += a * b[v];                          \
        }                                                                                \
    }
    /* B's row FGD_PF_AHEAD steps on is fetched into L1 while this one computes: a panel of B
       does not fit in L1, and its rows, an odd number of vectors apart, are not a stream the
       hardware prefetcher follows well (784-512-512-10 b128 Gaussian, 2 threads: 684 -> 668 and
       714 -> 688 ms an epoch, alternating processes).
       The last FGD_PF_AHEAD rows run without (nothing past B is touched). */
    if (kidx != NULL) {  /* (the sparse lists' rows: measured no faster with it) */
        for (long q = 0; q < K; q++) FGD_TILE_STEP(kidx[q], 0, 0)
    } else {
        long k = 0;
        for (; k + FGD_PF_AHEAD < K; k++) FGD_TILE_STEP(k, k + FGD_PF_AHEAD, 1)
        for (; k < K; k++) FGD_TILE_STEP(k, 0, 0)
    }
#undef FGD_TILE_STEP
#pragma GCC unroll 16
    for (int r = 0; r < mr; r++) {
        float* c = C + r * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < nr; v++) {
            fgd_vfa y = acc[r][v];
            if (epi == FGD_ACC) y = fgd_ld(c + 16 * v) + coef * y;
            else if (epi == FGD_BIAS_ACT) y = fgd_act_v(y + fgd_ld(bias + 16 * v), act, slope);
            else if (epi == FGD_DACT) y = fgd_dact_v(y, fgd_ld(X + r * ldc + 16 * v), act, slope);
            fgd_st(c + 16 * v, y);
        }
    }
}

#define FGD_TILE_ARGS K, kidx, A, rsa, csa, B, ldb, C, ldc, epi, bias, X, coef, act, slope
#define FGD_TILE_PARAMS long K, const int* kidx, const float* A, long rsa, long csa, const float* B, long ldb, \
    float* C, long ldc, int epi, const float* bias, const float* X, float coef, int act, float slope

/* tiles of nr vectors and 1..FGD_MR rows (mr >= 1) */
#define FGD_TILE_NR(NR)                                                                    \
static __attribute__((noinline)) void fgd_tile_n##NR(int mr, FGD_TILE_PARAMS) {            \
    switch (mr) {                                                                          \
    case 1: fgd_tile(1, NR, FGD_TILE_ARGS); break;                                         \
    case 2: fgd_tile(2, NR, FGD_TILE_ARGS); break;                                         \
    case 3: fgd_tile(3, NR, FGD_TILE_ARGS); break;                                         \
    case 4: fgd_tile(4, NR, FGD_TILE_ARGS); break;                                         \
    case 5: if (FGD_MR >= 5) fgd_tile(5, NR, FGD_TILE_ARGS); break;                        \
    case 6: if (FGD_MR >= 6) fgd_tile(6, NR, FGD_TILE_ARGS); break;                        \
    case 7: if (FGD_MR >= 7) fgd_tile(7, NR, FGD_TILE_ARGS); break;                        \
    case 8: if (FGD_MR >= 8) fgd_tile(8, NR, FGD_TILE_ARGS); break;                        \
    default: fgd_tile(1, NR, FGD_TILE_ARGS); break;                                        \
    }                                                                                      \
}
FGD_TILE_NR(1)
FGD_TILE_NR(2)
#if FGD_NR >= 3
FGD_TILE_NR(3)
#endif
#if FGD_NR >= 4
FGD_TILE_NR(4)
#endif

/* One row block of mr rows over all N columns. */
static inline void fgd_rowblock(int mr, long N, FGD_TILE_PARAMS) {
    long j = 0;
    for (; j + 16 * FGD_NR <= N; j += 16 * FGD_NR) {
#if FGD_NR == 4
        fgd_tile_n4(mr, K, kidx, A, rsa, csa, B + j, ldb, C + j, ldc, epi, bias ? bias + j : 0,
                    X ? X + j : 0, coef, act, slope);
#elif FGD_NR == 3
        fgd_tile_n3(mr, K, kidx, A, rsa, csa, B + j, ldb, C + j, ldc, epi, bias ? bias + j : 0,
                    X ? X + j : 0, coef, act, slope);
#else
        fgd_tile_n2(mr, K, kidx, A, rsa, csa, B + j, ldb, C + j, ldc, epi, bias ? bias + j : 0,
                    X ? X + j : 0, coef, act, slope);
#endif
    }
    for (; j + 32 <= N; j += 32)
        fgd_tile_n2(mr, K, kidx, A, rsa, csa, B + j, ldb, C + j, ldc, epi, bias ? bias + j : 0,
                    X ? X + j : 0, coef, act, slope);
    for (; j < N; j += 16)
        fgd_tile_n1(mr, K, kidx, A, rsa, csa, B + j, ldb, C + j, ldc, epi, bias ? bias + j : 0,
                    X ? X + j : 0, coef, act, slope);
}

/* The GEMM described at the top (N: a multiple of 16; M, K >= 0). With kl (not NULL), the
   k of row block b (rows b*FGD_MR..) run over the kn[b] indices kl[b*K ..] only (the others
   hold zeros in A: fgd_klist_*), e.g. the zero pixels of a minibatch's sparse input. */
static void fgd_gemm(long M, long N, long K, const int* kl, const int* kn, const float* A,
                     long rsa, long csa, const float* B, long ldb, float* C, long ldc, int epi,
                     const float* bias, const float* X, float coef, int act, float slope) {
    if (N <= 0 || M <= 0) return;
    if (K <= 0 && epi == FGD_ACC) return;
    /* Columns in panels of `panel`, every row block within each panel. When B is larger than
       its share of L2 (a forward's weight block, n_in x 256 columns: 0.5-0.8 MB against Zen 4's
       1 MB L2), one panel is 16*FGD_NR columns (K x 64 floats, ~200 KB, stays in L2 while every
       row block uses it); otherwise all N columns are one panel (row blocks outermost; with a
       large B that streamed all of it from L3 once per row block). Each tile does the same
       operations in either order. */
    const long panel = M > FGD_MR && K * N >= FGD_PANEL_MAJOR_MIN ? 16 * FGD_NR : N;
    for (long j = 0; j < N; j += panel) {
        long nj = N - j < panel ? N - j : panel;
        for (long i = 0, blk = 0; i < M; i += FGD_MR, blk++) {
            int mr = M - i < FGD_MR ? (int)(M - i) : FGD_MR;
            fgd_rowblock(mr, nj, kl ? kn[blk] : K, kl ? kl + blk * K : NULL, A + i * rsa, rsa, csa,
                         B + j, ldb, C + i * ldc + j, ldc, epi, bias ? bias + j : 0,
                         X ? X + i * ldc + j : 0, coef, act, slope);
        }
    }
}

/* Index lists for fgd_gemm over a minibatch's input, given as bitmaps nz (rows x nw uint64
   words, bit k of row r set where input (r, k) is not zero; nw >= n / 64 + 2, zero beyond n):
   fgd_klist_rows: row blocks of FGD_MR rows (samples), k over the n columns (pixels) that are
     non-zero in any row of the block (the first layer's forward);
   fgd_klist_cols: row blocks of FGD_MR columns (pixels), k over the rows (samples) non-zero in
     any column of the block (the first layer's weight update). */
static void fgd_nz_bits(const float* X, long rows, long n, long nw, uint64_t* nz) {
    for (long r = 0; r < rows; r++) {
        const float* x = X + r * n;
        uint64_t* z = nz + r * nw;
        memset(z, 0, nw * sizeof(uint64_t));
        long k = 0;
#ifdef __AVX512F__
        for (; k + 64 <= n; k += 64) {
            uint64_t w = 0;
            for (int q = 0; q < 4; q++)
                w |= (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(x + k + 16 * q), _mm512_setzero_ps(),
                                                  _CMP_NEQ_UQ) << (16 * q);
            z[k / 64] = w;
        }
#endif
        for (; k < n; k++) z[k / 64] |= (uint64_t)(x[k] != 0.0f) << (k % 64);
    }
}

static void fgd_klist_rows(const uint64_t* nz, long nw, long rows, long n, int* kl, int* kn) {
    for (long i = 0, blk = 0; i < rows; i += FGD_MR, blk++) {
        long r1 = i + FGD_MR < rows ? i + FGD_MR : rows;
        int* out = kl + blk * n;
        int q = 0;
        for (long j = 0; j * 64 < n; j++) {
            uint64_t w = 0;
            for (long r = i; r < r1; r++) w |= nz[r * nw + j];
            while (w) {
                out[q++] = (int)(j * 64 + __builtin_ctzll(w));
                w &= w - 1;
            }
        }
        kn[blk] = q;
    }
}

static void fgd_klist_cols(const uint64_t* nz, long nw, long rows, long n, int* kl, int* kn) {
    for (long i = 0, blk = 0; i < n; i += FGD_MR, blk++) {
        long j = i / 64, sh = i % 64;
        uint64_t m = (1ull << FGD_MR) - 1;
        int* out = kl + blk * rows;
        int q = 0;
        for (long s = 0; s < rows; s++) {
            const uint64_t* z = nz + s * nw + j;
            uint64_t w = (z[0] >> sh) | (sh ? z[1] << (64 - sh) : 0);
            out[q] = (int)s;  /* kept when the block has a non-zero (branch-free) */
            q += (w & m) != 0;
        }
        kn[blk] = q;
    }
}

/* ---- the "cols" training step ------------------------------------------------------------
   Network of L >= 2 dense layers, float32: hidden layers l < L-1 (activation relu, leaky_relu
   or linear), output layer L-1 (softmax/sigmoid/linear with cross-entropy or MSE). Widths are
   padded to multiples of 16 (pad_l) in the call's own copies of the parameters.

   Thread t of T owns columns [c0[l][t], c1[l][t]) (16-lane blocks) of every hidden layer l, and
   the weight block of those columns, Wt[l][t] (n_in_l x (c1 - c0), contiguous), for the whole
   call; those blocks hold the weights during the call (fgd_cols_copy copies them, the biases
   and the output layer from / back to the network's flat parameter vector). The output
   layer's padded copy Wo is shared: its rows c0..c1 (units of the top hidden layer) belong to
   thread t for the update; its forward splits the minibatch's samples.

   One step of B rows (each phase for thread t; `|` is a barrier):
     forward l = 0..L-2:  A_l[:, c] = act(In_l W_l[:, c] + b_l[c])                        |
     output, rows s of t: Zo = A_{L-2} Wo + bo; output activation, loss, Do = dL/dz       |
     top:  D_{L-2}[:, c] = (Do Wo[c, :]^T) * act'(A_{L-2}[:, c]); Wo[c, :] += coef A_{L-2}[:, c]^T Do
     l = L-2..1:  PT_t = W_l[:, c] D_l[:, c]^T (this thread's part of dA_{l-1}^T, pre-update
                  weights); W_l[:, c] += coef A_{l-1}^T D_l[:, c]                          |
                  D_{l-1}[:, c'] = (sum_u PT_u[c', :])^T * act'(A_{l-1}[:, c'])
     W_0[:, c] += coef X^T D_0[:, c]
   No barrier ends the step: the next step's first phase writes only this thread's columns of
   A_0 and reads its own weights; the next input rows are gathered into the other buffer after
   the first barrier (fgd_cols_gather). */
#include <time.h>
/* this thread's CPU seconds (the optional per-thread profile of the cols epoch) */
static inline double fgd_thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define FGD_COLS_MAXL 16
#define FGD_COLS_MAXT 64

typedef struct {
    int L, T;
    long B, Bp;                              /* rows per step (max); Bp: fgd_odd16(B) */
    long n_in[FGD_COLS_MAXL], n_out[FGD_COLS_MAXL], pad[FGD_COLS_MAXL];
    long ld[FGD_COLS_MAXL];                  /* fgd_odd16(pad_l): row stride of A_l, D_l */
    long w_off[FGD_COLS_MAXL], b_off[FGD_COLS_MAXL];   /* in the flat parameter vector */
    int hidden_act, out_act, loss;
    float slope;                             /* leaky_relu's */
    long c0[FGD_COLS_MAXL][FGD_COLS_MAXT], c1[FGD_COLS_MAXL][FGD_COLS_MAXT];
    float* Wt[FGD_COLS_MAXL][FGD_COLS_MAXT]; /* n_in_l x wld: thread t's columns c0..c1 */
    long wld[FGD_COLS_MAXL][FGD_COLS_MAXT];  /* fgd_odd16(c1 - c0) */
    float* A[FGD_COLS_MAXL];                 /* B x ld_l: hidden activations */
    float* D[FGD_COLS_MAXL];                 /* B x ld_l: hidden deltas dL/dz */
    float* DT[FGD_COLS_MAXL];                /* pad_l x Bp: D_l transposed (l >= 1) */
    float* PT[FGD_COLS_MAXL][FGD_COLS_MAXT]; /* pad_{l-1} x Bp: thread t's part of dA_{l-1}^T */
    float* bias[FGD_COLS_MAXL];              /* pad_l: every layer's biases, zero padded */
    float* Wo;                               /* n_in_o x pad_o: the output weights, zero padded */
    float* WoT;                              /* pad_o x pad_{L-2}: output weights transposed */
    float* Zo; float* Ao; float* Do;         /* B x pad_o: output z, activation, delta */
    float* X[2];                             /* B x n_in_0: the step's input rows (two steps) */
    int sparse0;                             /* skip the input's zeros in the first layer */
    long nw;                                 /* words per row of nz: n_in_0 / 64 + 2 */
    uint64_t* nz[FGD_COLS_MAXT];             /* B x nw: bitmaps of the step's input != 0 */
    int* klf[FGD_COLS_MAXT];                 /* ceil(B / MR) x n_in_0: forward k lists */
    int* knf[FGD_COLS_MAXT];                 /* ceil(B / MR) */
    int* klu[FGD_COLS_MAXT];                 /* ceil(n_in_0 / MR) x B: update k lists */
    int* knu[FGD_COLS_MAXT];                 /* ceil(n_in_0 / MR) */
    void* mem;                               /* one allocation holding all of the above */
} fgd_cols_net;

/* A row stride for n floats: the least odd multiple of 16 >= n. At a power-of-two stride (512
   floats = 2 KB) the rows of a GEMM's B panel fall into 8 of L1's 64 sets and evict each other
   before the next row tile reuses them; an odd number of 64-byte lines spreads them over all. */
static inline long fgd_odd16(long n) {
    long m = n < 16 ? 1 : (n + 15) / 16;
    return 16 * (m | 1);
}

/* Sizes the buffers of `net` (fields L, T, B, n_in, n_out, pad, w_off, b_off set) and the
   column split; returns 0, or -1 when memory is short or the shape is out of range. */
static int fgd_cols_alloc(fgd_cols_net* net) {
    int L = net->L, T = net->T;
    if (L < 2 || L > FGD_COLS_MAXL || T < 1 || T > FGD_COLS_MAXT || net->B < 1) return -1;
    net->Bp = fgd_odd16(net->B);
    long total = 0, B = net->B, Bp = net->Bp;
    /* offsets first (in floats, each buffer starting on a 4 KB boundary), then one calloc */
#define FGD_TAKE(n) (total += (((long)(n) + 1023) / 1024) * 1024, total - (((long)(n) + 1023) / 1024) * 1024)
    long off_Wt[FGD_COLS_MAXL][FGD_COLS_MAXT], off_A[FGD_COLS_MAXL], off_D[FGD_COLS_MAXL],
         off_DT[FGD_COLS_MAXL], off_PT[FGD_COLS_MAXL][FGD_COLS_MAXT];
    for (int l = 0; l < L - 1; l++) {
        long nb = net->pad[l] / 16;
        for (int t = 0; t < T; t++) {
            net->c0[l][t] = 16 * (nb * t / T);
            net->c1[l][t] = 16 * (nb * (t + 1) / T);
            net->wld[l][t] = fgd_odd16(net->c1[l][t] - net->c0[l][t]);
            off_Wt[l][t] = FGD_TAKE(net->n_in[l] * net->wld[l][t]);
        }
        net->ld[l] = fgd_odd16(net->pad[l]);
        off_A[l] = FGD_TAKE(B * net->ld[l]);
        off_D[l] = FGD_TAKE(B * net->ld[l]);
        if (l >= 1) {
            off_DT[l] = FGD_TAKE(net->pad[l] * Bp);
            for (int t = 0; t < T; t++) off_PT[l][t] = FGD_TAKE(net->pad[l - 1] * Bp);
        }
    }
    long po = net->pad[L - 1];
    long off_bias[FGD_COLS_MAXL];
    for (int l = 0; l < L; l++) off_bias[l] = FGD_TAKE(net->pad[l]);
    long off_Wo = FGD_TAKE(net->n_in[L - 1] * po);
    long off_WoT = FGD_TAKE(po * net->pad[L - 2]);
    long off_Zo = FGD_TAKE(B * po), off_Ao = FGD_TAKE(B * po), off_Do = FGD_TAKE(B * po);
    long off_X0 = FGD_TAKE(B * net->n_in[0]), off_X1 = FGD_TAKE(B * net->n_in[0]);
    long n0 = net->n_in[0], nbf = (B + FGD_MR - 1) / FGD_MR, nbu = (n0 + FGD_MR - 1) / FGD_MR;
    long off_nz[FGD_COLS_MAXT], off_klf[FGD_COLS_MAXT], off_knf[FGD_COLS_MAXT],
         off_klu[FGD_COLS_MAXT], off_knu[FGD_COLS_MAXT];
    net->nw = n0 / 64 + 2;
    for (int t = 0; t < T && net->sparse0; t++) {  /* ints and bytes counted as floats: 4 bytes */
        off_nz[t] = FGD_TAKE(2 * B * net->nw);
        off_klf[t] = FGD_TAKE(nbf * n0);
        off_knf[t] = FGD_TAKE(nbf);
        off_klu[t] = FGD_TAKE(nbu * B);
        off_knu[t] = FGD_TAKE(nbu);
    }
#undef FGD_TAKE
    float* m = (float*)aligned_alloc(4096, (size_t)total * sizeof(float) + 4096);
    if (m == NULL) return -1;
    memset(m, 0, (size_t)total * sizeof(float));
    net->mem = m;
    for (int l = 0; l < L - 1; l++) {
        for (int t = 0; t < T; t++) net->Wt[l][t] = m + off_Wt[l][t];
        net->A[l] = m + off_A[l];
        net->D[l] = m + off_D[l];
        net->DT[l] = l >= 1 ? m + off_DT[l] : NULL;
        for (int t = 0; t < T; t++) net->PT[l][t] = l >= 1 ? m + off_PT[l][t] : NULL;
    }
    for (int l = 0; l < L; l++) net->bias[l] = m + off_bias[l];
    net->Wo = m + off_Wo;
    net->WoT = m + off_WoT;
    net->Zo = m + off_Zo; net->Ao = m + off_Ao; net->Do = m + off_Do;
    net->X[0] = m + off_X0; net->X[1] = m + off_X1;
    for (int t = 0; t < T; t++) {
        net->nz[t] = net->sparse0 ? (uint64_t*)(m + off_nz[t]) : NULL;
        net->klf[t] = net->sparse0 ? (int*)(m + off_klf[t]) : NULL;
        net->knf[t] = net->sparse0 ? (int*)(m + off_knf[t]) : NULL;
        net->klu[t] = net->sparse0 ? (int*)(m + off_klu[t]) : NULL;
        net->knu[t] = net->sparse0 ? (int*)(m + off_knu[t]) : NULL;
    }
    return 0;
}

static void fgd_cols_free(fgd_cols_net* net) { free(net->mem); net->mem = NULL; }

/* Thread t's share of the parameters from (store = 0) or back into (store = 1) the network's
   flat parameter vector P (layer l: W (n_in x n_out) at w_off, b (n_out) at b_off): its hidden
   weight blocks and biases, and for the last thread the output layer. Padding stays zero. */
static void fgd_cols_copy(fgd_cols_net* net, float* P, int t, int store) {
    int L = net->L;
    for (int l = 0; l < L - 1; l++) {
        long c0 = net->c0[l][t], w = net->c1[l][t] - c0, n_out = net->n_out[l], wld = net->wld[l][t];
        long real = (c0 + w < n_out ? c0 + w : n_out) - c0;  /* columns that exist */
        float* W = P + net->w_off[l];
        float* Wt = net->Wt[l][t];
        if (w == 0) continue;
        if (real < 0) real = 0;
        for (long i = 0; i < net->n_in[l]; i++) {
            if (store) {
                memcpy(W + i * n_out + c0, Wt + i * wld, real * sizeof(float));
            } else {
                memcpy(Wt + i * wld, W + i * n_out + c0, real * sizeof(float));
                memset(Wt + i * wld + real, 0, (w - real) * sizeof(float));
            }
        }
        if (store) {
            memcpy(P + net->b_off[l] + c0, net->bias[l] + c0, real * sizeof(float));
        } else {
            memcpy(net->bias[l] + c0, P + net->b_off[l] + c0, real * sizeof(float));
            memset(net->bias[l] + c0 + real, 0, (w - real) * sizeof(float));
        }
    }
    if (t == net->T - 1) {
        long n_in = net->n_in[L - 1], n_out = net->n_out[L - 1], po = net->pad[L - 1];
        float* W = P + net->w_off[L - 1];
        float* b = P + net->b_off[L - 1];
        for (long i = 0; i < n_in; i++) {
            if (store) {
                memcpy(W + i * n_out, net->Wo + i * po, n_out * sizeof(float));
            } else {
                memcpy(net->Wo + i * po, W + i * n_out, n_out * sizeof(float));
                memset(net->Wo + i * po + n_out, 0, (po - n_out) * sizeof(float));
            }
        }
        if (store) {
            memcpy(b, net->bias[L - 1], n_out * sizeof(float));
        } else {
            memcpy(net->bias[L - 1], b, n_out * sizeof(float));
            memset(net->bias[L - 1] + n_out, 0, (po - n_out) * sizeof(float));
        }
    }
}

/* Rows s0..s1 of the step's input buffer buf (B x n_in_0) from the input rows rows[s]:
   uint8 (xu8, scaled by lut) or float32 (xf). */
static void fgd_cols_gather(const fgd_cols_net* net, float* buf, const unsigned char* xu8,
                            const float* xf, const float* lut, const int64_t* rows, long s0,
                            long s1) {
    long n = net->n_in[0];
    for (long s = s0; s < s1; s++) {
        float* o = buf + s * n;
        if (xu8 != NULL) {
            const unsigned char* src = xu8 + rows[s] * n;
            for (long i = 0; i < n; i++) o[i] = lut[src[i]];
        } else {
            memcpy(o, xf + rows[s] * n, n * sizeof(float));
        }
    }
}

/* Forward of hidden layer l, thread t's columns, rows 0..Bc; X: the step's input rows. */
static void fgd_cols_forward(fgd_cols_net* net, const float* P, int l, int t, long Bc,
                             const float* X) {
    long c0 = net->c0[l][t], w = net->c1[l][t] - c0, ld = net->ld[l];
    const float* in = l == 0 ? X : net->A[l - 1];
    long lda = l == 0 ? net->n_in[0] : net->ld[l - 1];
    const int* kl = NULL;
    const int* kn = NULL;
    if (l == 0 && net->sparse0) {  /* this step's zero-skipping lists (thread t's copy) */
        long n = net->n_in[0], nw = net->nw;
        fgd_nz_bits(X, Bc, n, nw, net->nz[t]);
        fgd_klist_rows(net->nz[t], nw, Bc, n, net->klf[t], net->knf[t]);
        fgd_klist_cols(net->nz[t], nw, Bc, n, net->klu[t], net->knu[t]);
        kl = net->klf[t];
        kn = net->knf[t];
    }
    if (w == 0) return;
    fgd_gemm(Bc, w, net->n_in[l], kl, kn, in, lda, 1, net->Wt[l][t], net->wld[l][t], net->A[l] + c0, ld,
             FGD_BIAS_ACT, net->bias[l] + c0, NULL, 0.0f, net->hidden_act, net->slope);
}

/* One output row: z -> a, and with targets t the delta d, the loss added to loss_sum and 1 to
   correct when argmax(a) == label (dense_sgd.pyx output_row, float32). */
static void fgd_cols_output_row(const float* z, float* a, const float* t, long n_out,
                                int out_act, int loss, float* d, double* loss_sum,
                                long* correct, int label) {
    long j, best;
    float m = 0, s = 0, e, l, top, dot;
    if (out_act == FGD_ACT_SOFTMAX) {
        m = z[0];
        for (j = 1; j < n_out; j++) if (z[j] > m) m = z[j];
        if (n_out <= 16) {
            float ev[16], sv[8];
            for (j = 0; j < 16; j++) ev[j] = j < n_out ? fgd_expf(z[j] - m) : 0.0f;
            for (j = 0; j < 8; j++) sv[j] = ev[j] + ev[j + 8];
            for (j = 0; j < 4; j++) sv[j] = sv[j] + sv[j + 4];
            s = (sv[0] + sv[2]) + (sv[1] + sv[3]);
            e = 1.0f / s;
            for (j = 0; j < 16; j++) a[j] = ev[j] * e;
        } else {
            for (j = 0; j < n_out; j++) { e = fgd_expf(z[j] - m); a[j] = e; s += e; }
            for (j = 0; j < n_out; j++) a[j] = a[j] / s;
        }
    } else if (out_act == FGD_ACT_SIGMOID) {
        for (j = 0; j < n_out; j++) a[j] = 1.0f / (1.0f + fgd_expf(-z[j]));
    } else {
        for (j = 0; j < n_out; j++) a[j] = z[j];
    }
    if (t == NULL) return;
    best = 0;
    top = a[0];
    for (j = 1; j < n_out; j++) if (a[j] > top) { top = a[j]; best = j; }
    if (best == label) correct[0] += 1;
    l = 0;
    if (loss == 0) {  /* mse */
        for (j = 0; j < n_out; j++) l += (a[j] - t[j]) * (a[j] - t[j]);
        l = 0.5f * l;
        if (out_act == FGD_ACT_SOFTMAX) {
            dot = 0;
            for (j = 0; j < n_out; j++) dot += (a[j] - t[j]) * a[j];
            for (j = 0; j < n_out; j++) d[j] = a[j] * ((a[j] - t[j]) - dot);
        } else if (out_act == FGD_ACT_SIGMOID) {
            for (j = 0; j < n_out; j++) d[j] = (a[j] - t[j]) * a[j] * (1.0f - a[j]);
        } else {
            for (j = 0; j < n_out; j++) d[j] = a[j] - t[j];
        }
    } else {          /* cross-entropy */
        if (out_act == FGD_ACT_SOFTMAX) {
            s = logf(s);
            for (j = 0; j < n_out; j++) l -= t[j] * ((z[j] - m) - s);
        } else {
            for (j = 0; j < n_out; j++) {
                float zp = z[j] > 0 ? z[j] : 0.0f, zn = -z[j] > 0 ? -z[j] : 0.0f;
                /* softplus(-z) and softplus(z), as numpy.logaddexp(0, .) in double */
                double sp_neg = zn + log1p(exp(-fabs((double)z[j])));
                double sp_pos = zp + log1p(exp(-fabs((double)z[j])));
                l += (float)(t[j] * sp_neg + (1.0f - t[j]) * sp_pos);
            }
        }
        for (j = 0; j < n_out; j++) d[j] = a[j] - t[j];
    }
    loss_sum[0] += l;
}

/* The output layer for rows s0..s1: forward, activation, loss, delta (targets/labels indexed
   by rows[s]). */
static void fgd_cols_output(fgd_cols_net* net, const float* P, long s0, long s1,
                            const int64_t* rows, const float* targets, const int32_t* labels,
                            double* loss_sum, long* correct) {
    int L = net->L;
    long po = net->pad[L - 1], n_out = net->n_out[L - 1];
    double ls = 0;
    long nc = 0;
    if (s1 <= s0) return;
    fgd_gemm(s1 - s0, po, net->n_in[L - 1], NULL, NULL, net->A[L - 2] + s0 * net->ld[L - 2], net->ld[L - 2],
             1, net->Wo, po, net->Zo + s0 * po, po, FGD_BIAS_ACT,
             net->bias[L - 1], NULL, 0.0f, FGD_ACT_LINEAR, 0.0f);
    for (long s = s0; s < s1; s++)
        fgd_cols_output_row(net->Zo + s * po, net->Ao + s * po, targets + rows[s] * n_out, n_out,
                            net->out_act, net->loss, net->Do + s * po, &ls, &nc, labels[rows[s]]);
    loss_sum[0] += ls;
    correct[0] += nc;
}

/* b[c0:c1] += coef * sum over rows s < Bc of D[s, c0:c1] (D: Bc x ld) */
static void fgd_cols_bias(float* b, const float* D, long ld, long c0, long c1, long Bc,
                          float coef) {
    for (long j = c0; j < c1; j += 16) {
        fgd_vfa acc = {0};
        for (long s = 0; s < Bc; s++) acc += fgd_ld(D + s * ld + j);
        fgd_st(b + j, fgd_ld(b + j) + coef * acc);
    }
}

/* After the output phase: the top hidden layer's deltas for thread t's columns, its rows of the
   output weights updated (the output bias by the last thread). */
static void fgd_cols_backward_top(fgd_cols_net* net, float* P, int t, long Bc, float coef) {
    int L = net->L, h = L - 2;
    long c0 = net->c0[h][t], c1 = net->c1[h][t], ph = net->pad[h], lh = net->ld[h], po = net->pad[L - 1];
    long n_in = net->n_in[L - 1], r1 = c1 < n_in ? c1 : n_in;
    float* Wo = net->Wo;
    if (c1 > c0) {
        for (long i = c0; i < r1; i++)
            for (long j = 0; j < po; j++) net->WoT[j * ph + i] = Wo[i * po + j];
        fgd_gemm(Bc, c1 - c0, net->n_out[L - 1], NULL, NULL, net->Do, po, 1, net->WoT + c0, ph,
                 net->D[h] + c0, lh, FGD_DACT, NULL, net->A[h] + c0, 0.0f, net->hidden_act,
                 net->slope);
        if (r1 > c0)
            fgd_gemm(r1 - c0, po, Bc, NULL, NULL, net->A[h] + c0, 1, lh, net->Do, po, Wo + c0 * po, po,
                     FGD_ACC, NULL, NULL, coef, 0, 0.0f);
    }
    if (t == net->T - 1) fgd_cols_bias(net->bias[L - 1], net->Do, po, 0, po, Bc, coef);
}

/* Hidden layer l >= 1, thread t: its part of dA_{l-1}^T from the pre-update weights, then the
   update of its weight block and biases. A barrier must follow before fgd_cols_reduce. */
static void fgd_cols_backward_partial(fgd_cols_net* net, float* P, int l, int t, long Bc,
                                      float coef) {
    long c0 = net->c0[l][t], c1 = net->c1[l][t], w = c1 - c0, ld = net->ld[l], wld = net->wld[l][t];
    long Bp = net->Bp, Bcp = (Bc + 15) / 16 * 16;
    float* DT = net->DT[l];
    if (w == 0) return;
    for (long j = c0; j < c1; j++)
        for (long s = 0; s < Bc; s++) DT[j * Bp + s] = net->D[l][s * ld + j];
    fgd_gemm(net->n_in[l], Bcp, w, NULL, NULL, net->Wt[l][t], wld, 1, DT + c0 * Bp, Bp, net->PT[l][t], Bp,
             FGD_STORE, NULL, NULL, 0.0f, 0, 0.0f);
    fgd_gemm(net->n_in[l], w, Bc, NULL, NULL, net->A[l - 1], 1, net->ld[l - 1], net->D[l] + c0, ld,
             net->Wt[l][t], wld, FGD_ACC, NULL, NULL, coef, 0, 0.0f);
    fgd_cols_bias(net->bias[l], net->D[l], ld, c0, c1, Bc, coef);
}

/* D_{l-1}[:, c'] for thread t's columns c' of layer l-1: the threads' partials summed (in
   thread order), times the activation derivative. */
static void fgd_cols_reduce(fgd_cols_net* net, int l, int t, long Bc) {
    int T = net->T;
    long c0 = net->c0[l - 1][t], c1 = net->c1[l - 1][t], ld = net->ld[l - 1], Bp = net->Bp;
    long n = net->n_in[l];
    const float* A = net->A[l - 1];
    float* D = net->D[l - 1];
    float buf[16 * 16];
    for (long i0 = c0; i0 < c1; i0 += 16) {
        for (long s0 = 0; s0 < Bc; s0 += 16) {
            long ns = Bc - s0 < 16 ? Bc - s0 : 16;
            /* the 16 x 16 block (units i0.., samples s0..) summed over threads, transposed */
            for (long ii = 0; ii < 16; ii++) {
                fgd_vfa acc = {0};
                if (i0 + ii < n) {
                    acc = fgd_ld(net->PT[l][0] + (i0 + ii) * Bp + s0);
                    for (int u = 1; u < T; u++) acc += fgd_ld(net->PT[l][u] + (i0 + ii) * Bp + s0);
                }
                fgd_st(buf + ii * 16, acc);
            }
            for (long ss = 0; ss < ns; ss++) {
                fgd_vfa d;
                float col[16];
                for (long ii = 0; ii < 16; ii++) col[ii] = buf[ii * 16 + ss];
                memcpy(&d, col, sizeof d);
                d = fgd_dact_v(d, fgd_ld(A + (s0 + ss) * ld + i0), net->hidden_act, net->slope);
                fgd_st(D + (s0 + ss) * ld + i0, d);
            }
        }
    }
}

/* The first layer's update for thread t's columns (X: the step's input rows). */
static void fgd_cols_update_first(fgd_cols_net* net, float* P, int t, long Bc, float coef,
                                  const float* X) {
    long c0 = net->c0[0][t], c1 = net->c1[0][t], w = c1 - c0, ld = net->ld[0];
    if (w == 0) return;
    fgd_gemm(net->n_in[0], w, Bc, net->klu[t], net->knu[t], X, 1, net->n_in[0], net->D[0] + c0, ld, net->Wt[0][t],
             net->wld[0][t], FGD_ACC, NULL, NULL, coef, 0, 0.0f);
    fgd_cols_bias(net->bias[0], net->D[0], ld, c0, c1, Bc, coef);
}

#endif /* FASTGD_GEMM_H */
