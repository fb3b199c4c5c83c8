# cython: language_level=3
"""The "cols" training epoch of the Cython backend (float32, plain SGD): each thread owns a fixed
slice of every hidden layer's output columns for the whole call, so its part of the weights
stays in its own L2 cache, instead of a slice of each minibatch's samples (dense_sgd.pyx's
"sync" mode, where every core streams all the weights every step). The step and its GEMM
micro-kernels are C, in fastgd_gemm.h (shapes and phases described there); this module only
checks the arguments, allocates, and runs the phases with a barrier between them.

Called by fastgd.backends.cython_backend with the network's flat parameters (no padded copy:
the kernel keeps its own zero-padded copies for the call)."""
cimport cython
from cython.parallel cimport parallel
from libc.stdint cimport int64_t, int32_t, uint8_t

import numpy as np

cdef extern from "fastgd_gemm.h":
    int FGD_COLS_MAXL
    int FGD_COLS_MAXT
    ctypedef struct fgd_cols_net:
        int L
        int T
        long B
        long n_in[16]
        long n_out[16]
        long pad[16]
        long w_off[16]
        long b_off[16]
        int hidden_act
        int out_act
        int loss
        float slope
        float* X[2]
        int sparse0
        void* mem
    int fgd_cols_alloc(fgd_cols_net* net) noexcept nogil
    void fgd_cols_free(fgd_cols_net* net) noexcept nogil
    void fgd_cols_copy(fgd_cols_net* net, float* P, int t, int store) noexcept nogil
    void fgd_cols_gather(const fgd_cols_net* net, float* buf, const uint8_t* xu8, const float* xf,
                         const float* lut, const int64_t* rows, long s0, long s1) noexcept nogil
    void fgd_cols_forward(fgd_cols_net* net, const float* P, int l, int t, long Bc,
                          const float* X) noexcept nogil
    void fgd_cols_output(fgd_cols_net* net, const float* P, long s0, long s1, const int64_t* rows,
                         const float* targets, const int32_t* labels, double* loss_sum,
                         long* correct) noexcept nogil
    void fgd_cols_backward_top(fgd_cols_net* net, float* P, int t, long Bc, float coef) noexcept nogil
    void fgd_cols_backward_partial(fgd_cols_net* net, float* P, int l, int t, long Bc,
                                   float coef) noexcept nogil
    void fgd_cols_reduce(fgd_cols_net* net, int l, int t, long Bc) noexcept nogil
    void fgd_cols_update_first(fgd_cols_net* net, float* P, int t, long Bc, float coef,
                               const float* X) noexcept nogil
    double fgd_thread_cpu() noexcept nogil

cdef extern from "fastgd_simd.h":
    int fgd_thread_num() noexcept nogil
    int fgd_num_threads() noexcept nogil
    void fgd_barrier() noexcept nogil

include "ops_codes.pxi"

# The optional profile: per OpenMP thread, PROF_STRIDE doubles: its CPU seconds in each phase of
# PROFILE_PHASES (waiting in barriers last), then the time its current phase began.
PROFILE_PHASES = ("copy", "forward", "gather", "output", "backward", "reduce", "update_first", "wait")
cdef enum:
    PH_COPY = 0
    PH_FORWARD = 1
    PH_GATHER = 2
    PH_OUTPUT = 3
    PH_BACKWARD = 4
    PH_REDUCE = 5
    PH_UPDATE_FIRST = 6
    PH_WAIT = 7
    PROF_STRIDE = 9  # the phases, then the timestamp
PROFILE_STRIDE = PROF_STRIDE


cdef inline void tick(double* prof, int tid, int phase) noexcept nogil:
    """With a profile: this thread's CPU time since its last tick counts to `phase`."""
    cdef double t
    if prof == NULL:
        return
    t = fgd_thread_cpu()
    prof[PROF_STRIDE * tid + phase] += t - prof[PROF_STRIDE * tid + PROF_STRIDE - 1]
    prof[PROF_STRIDE * tid + PROF_STRIDE - 1] = t


cdef inline void barrier(double* prof, int tid, int phase) noexcept nogil:
    """The phases' barrier; with a profile, the thread's time before it counts to `phase` and
    in it to waiting."""
    tick(prof, tid, phase)
    fgd_barrier()
    tick(prof, tid, PH_WAIT)


cdef inline bint consecutive(const int64_t* od, int64_t a, int64_t n) noexcept nogil:
    """Whether rows od[a], od[a + 1], ... od[a + n - 1] follow each other (rows the backend has
    already copied in visiting order): float32 input is then read in place, not gathered."""
    cdef int64_t s
    for s in range(1, n):
        if od[a + s] != od[a] + s:
            return False
    return True


MAX_LAYERS = FGD_COLS_MAXL
MAX_THREADS = FGD_COLS_MAXT
HIDDEN_ACTIVATIONS = (ACT_RELU, ACT_LEAKY_RELU, ACT_LINEAR)
OUTPUT_ACTIVATIONS = (ACT_SOFTMAX, ACT_SIGMOID, ACT_LINEAR)


cdef class ColsWork:
    """The cols epoch's buffers (fgd_cols_alloc), kept between calls of one fit so that a call
    does not pay for ~10 MB of fresh pages (measured ~2 ms per call); reused only by a call of
    the same shape (layout, batch size, threads, sparse_input)."""
    cdef fgd_cols_net net
    cdef readonly object key

    def __cinit__(self):
        self.net.mem = NULL
        self.key = None

    def __dealloc__(self):
        fgd_cols_free(&self.net)


def train_epoch_cols(float[::1] params, const int64_t[:, ::1] layout, X, double x_scale,
                     const int64_t[::1] order, const float[:, ::1] targets,
                     const int32_t[::1] labels, const double[::1] lrs, int64_t batch_size,
                     int hidden_act, int out_act, int loss, int threads, double[::1] loss_out,
                     int64_t[::1] correct_out, bint sparse_input=False, ColsWork work=None,
                     double[::1] profile=None):
    """Plain SGD over the minibatches of `order` (rows of X: uint8 scaled by x_scale, or
    float32), `threads` column slices (run by up to that many OpenMP threads). params: the
    network's flat parameter vector, layout its Network.layout_array() (layer l: w_off, b_off,
    n_in, n_out), updated in place. Thread slice v's
    loss sum and correct count go to loss_out[v], correct_out[v]. sparse_input: the first layer
    skips, per block of rows, the input columns that are zero in all of them (and its update
    the rows that are zero in a block of columns): worth it on mostly-zero input like MNIST.
    work: a ColsWork to keep the buffers in between calls (None: allocated for this call).
    profile: None, or PROFILE_STRIDE x threads doubles, zeros: OpenMP thread i's CPU seconds in
    phase PROFILE_PHASES[k] go to profile[PROFILE_STRIDE * i + k] (a measuring aid: on a shared
    machine thread CPU time still shows where the time goes and how the work splits; the clock
    reads cost ~1 us a step). Returns the number of OpenMP threads that ran the slices."""
    cdef fgd_cols_net* netp
    cdef fgd_cols_net local
    cdef ColsWork work_
    cdef int L = <int>layout.shape[0]
    cdef int64_t m = order.shape[0]
    cdef int64_t n_steps, l, i
    cdef float lut[256]
    cdef const uint8_t* xu8 = NULL
    cdef const float* xf = NULL
    cdef const uint8_t[:, ::1] xu_view
    cdef const float[:, ::1] xf_view
    cdef float* P = &params[0]
    cdef const int64_t* od = &order[0] if m > 0 else NULL
    cdef const double* lr = &lrs[0] if lrs.shape[0] > 0 else NULL
    cdef const float* tg = &targets[0, 0] if targets.shape[0] > 0 else NULL
    cdef const int32_t* lab = &labels[0] if labels.shape[0] > 0 else NULL
    cdef double* lo = &loss_out[0]
    cdef long* co = <long*>&correct_out[0]
    cdef int tid, nt, v, VT = threads
    cdef int64_t step, Bc, B1, B = batch_size, last
    cdef float coef
    cdef const float* Xc
    cdef int team[1]
    cdef double* prof = NULL
    cdef int64_t n0 = layout[0, 2] if layout.shape[0] > 0 and layout.shape[1] == 4 else 0
    cdef int64_t nrows
    if sizeof(long) != 8:
        raise RuntimeError("the cols epoch needs 64-bit long")
    if L < 2 or L > FGD_COLS_MAXL or layout.shape[1] != 4:
        raise ValueError(f"the cols epoch takes 2 to {FGD_COLS_MAXL} layers")
    if threads < 1 or threads > FGD_COLS_MAXT:
        raise ValueError(f"threads must be 1..{FGD_COLS_MAXT}")
    if batch_size < 1 or m == 0:
        raise ValueError("empty order or batch_size < 1")
    n_steps = (m + batch_size - 1) // batch_size
    if lrs.shape[0] < n_steps or loss_out.shape[0] < threads or correct_out.shape[0] < threads:
        raise ValueError("too few learning rates or output slots")
    if hidden_act not in HIDDEN_ACTIVATIONS or out_act not in OUTPUT_ACTIVATIONS:
        raise ValueError("the cols epoch takes relu/leaky_relu/linear hidden layers and a "
                         "softmax/sigmoid/linear output")
    if not isinstance(X, np.ndarray) or X.ndim != 2 or not X.flags.c_contiguous:
        raise ValueError("X must be a C-contiguous 2-D array")
    if X.shape[1] != n0:
        raise ValueError("X does not have the network's input width")
    if X.dtype == np.uint8:
        xu_view = X
        xu8 = &xu_view[0, 0] if X.shape[0] > 0 else NULL
    elif X.dtype == np.float32:
        xf_view = X
        xf = &xf_view[0, 0] if X.shape[0] > 0 else NULL
    else:
        raise TypeError(f"the cols epoch takes uint8 or float32 X, got {X.dtype}")
    nrows = X.shape[0]
    if targets.shape[0] != nrows or labels.shape[0] != nrows or targets.shape[1] != layout[L - 1, 3]:
        raise ValueError("targets (rows, n_out) and labels (rows,) must match X")
    for i in range(m):
        if order[i] < 0 or order[i] >= nrows:
            raise ValueError("order holds a row outside X")
    local.L = L
    local.T = VT
    local.B = batch_size
    last = 0
    for l in range(L):
        local.w_off[l] = layout[l, 0]
        local.b_off[l] = layout[l, 1]
        local.n_in[l] = layout[l, 2]
        local.n_out[l] = layout[l, 3]
        local.pad[l] = (layout[l, 3] + 15) // 16 * 16
        if (layout[l, 2] < 1 or layout[l, 3] < 1 or layout[l, 1] != layout[l, 0] + layout[l, 2] * layout[l, 3]
                or layout[l, 0] < last or layout[l, 1] + layout[l, 3] > params.shape[0]
                or (l > 0 and layout[l, 2] != layout[l - 1, 3])):
            raise ValueError("the layout does not fit the parameters")
        last = layout[l, 1] + layout[l, 3]
    local.hidden_act = hidden_act
    local.out_act = out_act
    local.loss = loss
    local.slope = <float>FGD_LEAKY_SLOPE
    local.sparse0 = 1 if sparse_input else 0
    for i in range(256):
        lut[i] = (<float>i) * (<float>x_scale)
    key = (bytes(np.asarray(layout)), batch_size, threads, bool(sparse_input))
    if work is None:
        work = ColsWork()
    if work.key != key or work.net.mem == NULL:
        fgd_cols_free(&work.net)
        work.key = None
        work.net = local
        work.net.mem = NULL
        if fgd_cols_alloc(&work.net) != 0:
            raise MemoryError("the cols epoch's buffers")
        work.key = key
    else:  # the same shapes: only the activation and loss codes may differ
        work.net.hidden_act = hidden_act
        work.net.out_act = out_act
        work.net.loss = loss
    netp = &work.net
    if profile is not None:
        if profile.shape[0] < PROF_STRIDE * threads:
            raise ValueError(f"profile needs {PROF_STRIDE} x threads slots")
        prof = &profile[0]
    if True:
        with nogil, parallel(num_threads=threads):
            tid = fgd_thread_num()
            nt = fgd_num_threads()
            if tid == 0:
                team[0] = nt
            if prof != NULL:
                prof[PROF_STRIDE * tid + PROF_STRIDE - 1] = fgd_thread_cpu()
            # slices v = tid, tid + nt, ...: every slice runs even if OpenMP gives fewer threads
            v = tid
            while v < VT:
                fgd_cols_copy(netp, P, v, 0)
                tick(prof, tid, PH_COPY)
                if xf == NULL or not consecutive(od, 0, min(B, m)):
                    fgd_cols_gather(netp, netp.X[0], xu8, xf, lut, od, min(B, m) * v // VT,
                                    min(B, m) * (v + 1) // VT)
                v = v + nt
            barrier(prof, tid, PH_GATHER)
            for step in range(n_steps):
                Bc = min(B, m - step * B)
                if xf != NULL and consecutive(od, step * B, Bc):
                    Xc = xf + od[step * B] * n0
                else:
                    Xc = netp.X[step % 2]
                coef = <float>(-lr[step] / Bc)
                for l in range(L - 1):
                    v = tid
                    while v < VT:
                        fgd_cols_forward(netp, P, <int>l, v, Bc, Xc)
                        v = v + nt
                    barrier(prof, tid, PH_FORWARD)
                    if l == 0 and step + 1 < n_steps:  # the next rows, into the other buffer
                        B1 = min(B, m - (step + 1) * B)
                        v = tid if xf == NULL or not consecutive(od, (step + 1) * B, B1) else VT
                        while v < VT:
                            fgd_cols_gather(netp, netp.X[(step + 1) % 2], xu8, xf, lut,
                                            od + (step + 1) * B, B1 * v // VT, B1 * (v + 1) // VT)
                            v = v + nt
                        tick(prof, tid, PH_GATHER)
                v = tid
                while v < VT:
                    fgd_cols_output(netp, P, Bc * v // VT, Bc * (v + 1) // VT, od + step * B, tg,
                                    lab, lo + v, co + v)
                    v = v + nt
                barrier(prof, tid, PH_OUTPUT)
                v = tid
                while v < VT:
                    fgd_cols_backward_top(netp, P, v, Bc, coef)
                    v = v + nt
                for l in range(L - 2, 0, -1):
                    v = tid
                    while v < VT:
                        fgd_cols_backward_partial(netp, P, <int>l, v, Bc, coef)
                        v = v + nt
                    barrier(prof, tid, PH_BACKWARD)
                    v = tid
                    while v < VT:
                        fgd_cols_reduce(netp, <int>l, v, Bc)
                        v = v + nt
                    tick(prof, tid, PH_REDUCE)
                tick(prof, tid, PH_BACKWARD)  # the top layer's, when it is the only hidden one
                v = tid
                while v < VT:
                    fgd_cols_update_first(netp, P, v, Bc, coef, Xc)
                    v = v + nt
                tick(prof, tid, PH_UPDATE_FIRST)
            barrier(prof, tid, PH_UPDATE_FIRST)
            v = tid
            while v < VT:
                fgd_cols_copy(netp, P, v, 1)
                v = v + nt
            tick(prof, tid, PH_COPY)
    if prof != NULL:  # the last slot held timestamps
        for i in range(team[0]):
            prof[PROF_STRIDE * i + PROF_STRIDE - 1] = 0
    return team[0]
