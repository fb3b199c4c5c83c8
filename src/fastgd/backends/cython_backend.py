"""The Cython backend: whole epochs in compiled nogil code (kernels/dense_sgd.pyx).

Python's part is small: validate what reaches the kernels (they index raw pointers), copy the
parameters into a padded working buffer (every layer's width rounded up to 16 lanes, see the
kernel module's docstring), allocate scratch once per call, choose how to run, and copy the
parameters back.

How a call runs
  * Small layers use the kernels' own register-blocked loops; a layer whose per-step work
    (batch x n_in x n_out) reaches `blas_min_work` calls sgemm/dgemm (scipy's BLAS) with the
    bias prefilled, the activation applied right after, and the SGD update done by gemm
    itself (beta = 1) instead of a separate gradient buffer.
  * uint8 input stays uint8 and is scaled inside the kernels (a 256-entry table of exactly the
    reference's values). When it is mostly zeros (MNIST: 81%; at most `sparse_max_density`
    non-zero, measured on the data, whatever the layer's size), the first layer visits only
    non-zero pixels, from a per-row index list built by `prepare` from plan.X as it is then
    (the next fit's prepare sees data changed in place): forward in groups of up to 8 vectors
    (8 FMA chains at every width), the update by weight row through a per-step column index
    (each touched row read and written once per step). Such a layer never calls BLAS.
  * forward/predict of a few rows (rows x n_params <= `flat_forward_max_work`) runs on the
    caller's thread straight from net.params (no padded copy, layout or pool hand-off).
  * Each call first copies its rows (index lists, or dense rows up to 256 MB) in visiting
    order into the workspace's buffers, so the kernel streams them: shuffled access over
    a 27-47 MB input otherwise stalls on memory about as long as the arithmetic takes.
  * Large float32 networks trained with plain SGD (relu/leaky_relu hidden layers, no dropout or
    image augmentation; by base.cols_pays: enough dense work per step, or a small batch or large
    weights on 2+ threads) take the
    "cols" epoch (kernels/dense_cols.pyx, kernels/fastgd_gemm.h), on any number of threads:
    each thread owns a slice of every hidden layer's output columns for the whole call, so its
    weights stay in its own L2 cache, and computes them with register-blocked GEMM tiles
    (bias and activation fused into the forward, the activation derivative into the deltas,
    the SGD step into the weight-gradient tile); four barriers per step on a 2-hidden-layer
    net. Deterministic for a given thread count, but not bitwise equal across thread counts
    (the input deltas of a layer sum the threads' partial products). With sparse input its
    first layer skips, per block of 6 rows, the pixels that are zero in all of them.
  * Threads, with exactly one thread pool busy at a time (threadpoolctl limits OpenBLAS to 1
    whenever our OpenMP threads run):
      - deterministic (plan.deterministic): "sync" splits each minibatch's samples across
        threads, then its weight rows (each row sums its samples in a fixed order, so the
        weights are bitwise those of one thread). It costs two barriers per step, so below
        `sync_min_work` (batch x n_params per step) the epoch runs on one thread instead: at
        batch 10 on the lesson network a barrier costs more than the step. BLAS-sized layers
        run the same way, each thread calling single-threaded BLAS on its slice
        (`blas_threading = "openmp"`); "blas" gives the threads to OpenBLAS instead, which
        measured far slower on a busy 2-core machine.
      - plan.deterministic False: "hogwild", each thread takes whole minibatches and updates
        the shared weights without locks. Results depend on thread timing.
  * Optimiser (plan.rule, base.StepRule): plain SGD is fused into the gradient pass; any other
    rule (momentum, Nesterov, weight decay, L1, Adam, AdamW) accumulates each step's mean
    gradient and applies the step over the same weight rows (the state arrays padded like the
    parameters). Adam/AdamW have no Hogwild mode: with plan.deterministic False they run
    deterministic, and EpochResult.mode says which mode ran. Dropout draws fastgd._random's
    counter-based masks in the kernel (the same masks as every backend). Image shifts keep the
    sparse first layer: each row's pixel indices move by dy * cols + dx while the call's rows
    are copied in visiting order, pixels leaving the image dropped (with `permute_sparse` off,
    or dense input, each shifted row is built on the dense input path instead). Rotations and
    elastic distortions (fastgd.augment's sampling map, kernels/fastgd_augment.h) resample
    each image on the dense input path, with per-thread scratch.
  * The padded parameters, optimiser state, gradients and scratch start on 64-byte
    boundaries (each 16-lane float32 row in one cache line).
  * Per-fit state lives in the Workspace from `prepare` (the CSR index of plan.X built then,
    the buffers the rows are copied into, scratch, the gradient buffer); the backend object keeps
    only tuning knobs. Nothing survives between train_epoch calls except net.params and
    plan.rule.state, so an epoch run in slices gives the same bits as one call.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from .. import ops
from ..network import aligned_zeros  # the padded parameters, state, gradients and scratch
from . import helper_pool, pipeline
from .base import (AUGMENT_FEATURES, COLS_MIN_WORK, FEATURES, OPTIMIZER_CODES, SGD, Backend, BackendUnavailable,
                   EpochResult, Workspace, balanced_split, blas_controller, blas_limit, cols_pays,
                   sparse_input_pays)

try:
    from fastgd._kernels import dense_sgd as _k
    from fastgd._kernels import dense_cols as _kc
except ImportError as exc:  # extension not built
    raise BackendUnavailable(f"the Cython kernels are not built ({exc}); run `pip install -e .`") from exc

# The extension's codes come from kernels/ops_codes.pxi, generated from fastgd/ops.py at build
# time: a build older than ops.py must not run with shifted codes.
if (_k.ACT_CODES != ops.ACTIVATION_CODES or _k.LOSS_CODES != ops.LOSS_CODES or _k.OPTIMIZER_CODES != OPTIMIZER_CODES
        or _k.LEAKY_SLOPE != ops.LEAKY_SLOPE):
    raise BackendUnavailable("the Cython kernels were built from another fastgd/ops.py (activation, loss or "
                             "optimiser codes differ); rebuild them: `python setup.py build_ext --inplace`")

NAME = "cython"
LANES = _k.LANES

_flat_layouts = {}  # network sizes -> (Network.layout_array(), forward_flat work size)


def _round_up(n, k=LANES):
    return -(-n // k) * k


#: Rotation / elastic distortion cost per input pixel in units of one parameter's per-sample work
#: (kernels/fastgd_augment.h: ~2 us per 28 x 28 image vs ~0.5 us for the 12.9k-parameter lesson
#: step), for the serial/sync choice: sync splits the augmented rows across threads too.
AUGMENT_WORK_PER_PIXEL = 64


def _resamples(plan):
    """plan rotates or elastically distorts its images (fastgd.augment; dense input path)."""
    return float(plan.max_rotate) > 0 or float(plan.elastic_alpha) > 0


class _Layout:
    """Padded parameter layout and scratch offsets of one network at one batch size."""

    def __init__(self, net, batch, blas_min_work, sparse_first=False):
        self.net = net
        rows, off, act_off = [], 0, 0
        for l, (n_in, n_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
            pad = _round_up(n_out)
            # a sparse first layer runs the kernels' own zero-skipping loops, never BLAS
            blas = int(batch * n_in * pad >= blas_min_work and not (l == 0 and sparse_first))
            rows.append((off, off + n_in * pad, n_in, n_out, pad, act_off, blas))
            off += n_in * pad + pad
            act_off += batch * pad
        self.table = np.ascontiguousarray(np.array(rows, dtype=np.int64).reshape(-1, _k.LAYOUT_COLUMNS))
        self.size = off
        self.uses_blas = bool(self.table[:, 6].any())
        xbuf = _round_up(batch * net.sizes[0])  # every block starts on a 16-element boundary
        zout = batch * _round_up(net.sizes[-1])
        # per-thread scratch: [xbuf | activations | deltas | last pre-activation | dropout's
        # masked activations | dropout's masks]
        acts, deltas, z = xbuf, xbuf + act_off, xbuf + 2 * act_off
        inp = z + zout
        self.soff = np.array([0, acts, deltas, z, inp, inp + act_off, inp + 2 * act_off], dtype=np.int64)
        self.scratch_size = int(self.soff[-1])

    def pad(self, flat):
        """A padded working copy of a flat parameter (or gradient) vector."""
        out = aligned_zeros(self.size, self.net.dtype)
        for (w_off, b_off, n_in, n_out), (pw, pb, _, _, pad, _, _) in zip(self.net.layout, self.table):
            out[pw:pb].reshape(n_in, pad)[:, :n_out] = flat[w_off:b_off].reshape(n_in, n_out)
            out[pb:pb + n_out] = flat[b_off:b_off + n_out]
        return out

    def unpad(self, padded, flat):
        """Copy a padded buffer back into the flat layout (in place)."""
        for (w_off, b_off, n_in, n_out), (pw, pb, _, _, pad, _, _) in zip(self.net.layout, self.table):
            flat[w_off:b_off].reshape(n_in, n_out)[...] = padded[pw:pb].reshape(n_in, pad)[:, :n_out]
            flat[b_off:b_off + n_out] = padded[pb:pb + n_out]
        return flat

    def scratch(self, copies):
        return aligned_zeros((copies, self.scratch_size), self.net.dtype)


def _plain(rule):
    return rule.kind == SGD and rule.momentum == 0 and rule.weight_decay == 0 and rule.l1 == 0


class CythonBackend(Backend):
    """Compiled Cython kernels; see the module docstring for how a call runs.

    Attributes are tuning knobs only (normally left alone; the tests use them to reach every path):
      input_mode: "auto" | "dense" | "sparse" for uint8 input ("auto": sparse below
        `sparse_max_density` non-zero pixels).
      blas_min_work: per-step batch x n_in x padded n_out at which a layer calls BLAS.
      hogwild: None (use it when plan.deterministic is False and threads > 1), or True/False.
      sync_min_work: deterministic threads are used only when batch x n_params per step
        reaches this; below it the step is too short to pay for two barriers.
      blas_threading: "openmp" (our threads over single-threaded BLAS) or "blas".
      permute_sparse, permute_dense: stream each call's rows in visiting order (see above).
      cols: the "cols" epoch: None (when it applies and per-step work reaches cols_min_work),
        True (whenever it applies), False (never); env FASTGD_CYTHON_COLS=1/0 sets True/False.
      overlap_gather: when plan.threads > 1 but the epoch runs on one thread, copy the sparse
        rows part by part on a second (Python) thread, each while the kernel trains on the
        part before (see pipeline.part_bounds; all finished before the call returns).
      split: when plan.threads > 1, a plain-SGD epoch would run on one thread and the first
        layer is sparse and 16 units wide, run the "split" epoch instead: its weight rows
        split at a pixel between two threads, the second also copying the rows in visiting
        order (kernels/dense_sgd.pyx, train_epoch_split; the same bits as one thread).
      split_profile: None, or an int64 array of base.SPLIT_PROFILE_SLOTS to which each
        split epoch adds its threads' cycles per phase (a measuring aid: bench/split_profile.py).
    """

    name = NAME
    features = frozenset(FEATURES + AUGMENT_FEATURES)

    def __init__(self):
        self.input_mode = os.environ.get("FASTGD_CYTHON_INPUT", "auto")
        self.sparse_max_density = 0.5
        self.blas_min_work = 1 << 20
        self.forward_chunk = 256
        self.flat_forward_max_work = 1 << 18  # rows x n_params up to which forward skips the padded copy
        self.hogwild = None
        self.sync_min_work = 1 << 21  # lesson network: batch >= 165
        self.overlap_gather = True
        self.split = True
        self.split_profile = None
        self.permute_sparse = True
        self.blas_threading = os.environ.get("FASTGD_CYTHON_BLAS_THREADING", "openmp")
        self.permute_dense = True
        self.permute_dense_max_bytes = 1 << 28  # 256 MB: above this, prefetch instead of copying
        # the "cols" epoch: None (by base.cols_pays), True (whenever it applies), False (never)
        self.cols = {"1": True, "0": False}.get(os.environ.get("FASTGD_CYTHON_COLS", "auto"))
        # batch x the parameters the cols epoch runs dense, per step: measured (thread CPU time, one
        # thread) faster than the other modes on 784-128-10 at batch 32 with dense input (3.2M:
        # 205 vs 380 ms an epoch), slower on the lesson network (0.13M: 126 vs 34 ms)
        self.cols_min_work = COLS_MIN_WORK

    # ---- helpers --------------------------------------------------------------------------
    @staticmethod
    def _blas_limit(threads, lay=None):
        """Context manager limiting BLAS (numpy's and scipy's OpenBLAS) to `threads`; a no-op
        when `lay` has no BLAS layer. Changing OpenBLAS's thread count (the limit and its
        restore) wakes its idle threads, which then busy-wait for a long while: measured, a
        2-thread validation pass between epochs made the next epoch of the lesson network
        ~8 ms (30%) slower on 2 cores. A call that never reaches BLAS leaves them alone."""
        if lay is not None and not lay.uses_blas:
            return contextlib.nullcontext()
        return blas_limit(threads)

    @staticmethod
    def _codes(net, loss=None):
        return (ops.ACTIVATION_CODES[net.activation], ops.ACTIVATION_CODES[net.output],
                ops.LOSS_CODES[loss] if loss is not None else 0)

    @staticmethod
    def _check_input(net, X, x_scale):
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != net.sizes[0]:
            raise ValueError(f"X must be a 2-D array with {net.sizes[0]} columns, got "
                             f"{getattr(X, 'shape', type(X).__name__)}")
        if X.dtype != np.uint8 and X.dtype != net.dtype:
            raise TypeError(f"X must be uint8 or the network's dtype {net.dtype}, got {X.dtype}")
        if not X.flags.c_contiguous:
            raise ValueError("X must be C-contiguous")
        if not np.isfinite(x_scale):
            raise ValueError(f"x_scale must be finite, got {x_scale}")

    @staticmethod
    def _check_threads(threads):
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        return int(threads)

    def _input_csr(self, X):
        """The sparse index (ptr, idx, val) of uint8 X when the first layer should use it, else
        None, built from X now. In "auto" mode the measured density of X decides, whatever the
        layer's size: the zero-skipping loops (8 FMA chains at every width, the update by
        weight row) do ~density of the dense work, and beat sgemm below `sparse_max_density`."""
        if X.dtype != np.uint8 or self.input_mode == "dense" or X.shape[1] > 65536:
            return None
        csr = _k.build_csr(X)
        if self.input_mode == "sparse" or csr[1].size <= self.sparse_max_density * max(X.size, 1):
            return csr
        return None

    @staticmethod
    def _permuted(ws, csr, order, targets, labels, shift=None):
        """pipeline.permuted with this backend's gather. shift: None, or (seed, first_position,
        max_shift, image_rows, image_cols): row s is copied as the image of epoch position
        first_position + s moved by its shift (pixels leaving the image dropped)."""
        ptr, idx, val = csr
        moved = {} if shift is None else dict(seed=shift[0], max_shift=shift[2], image_rows=shift[3],
                                              image_cols=shift[4])

        def gather(a, rows, out_ptr, out_idx, out_val, pos):
            first = {} if shift is None else dict(first_position=shift[1] + a)
            return _k.gather_csr_rows(ptr, idx, val, rows, out_ptr, out_idx, out_val, pos, **moved, **first)

        return pipeline.permuted(ws, csr, order, targets, labels, _k.csr_rows_nnz(ptr, order), gather)

    @staticmethod
    def _permuted_dense(ws, X, order, targets, labels):
        """(X rows, targets, labels, identity order) of the rows in `order`, in that order, in the
        workspace's buffers."""
        m = order.size
        buf = getattr(ws, "dense_buffers", None)
        want = ((m, X.shape[1]), X.dtype, (m, targets.shape[1]), targets.dtype)
        if buf is None or buf[0] != want:
            buf = (want, np.empty(want[0], X.dtype), np.empty(want[2], targets.dtype), np.empty(m, np.int32),
                   np.arange(m, dtype=np.int64))
            ws.dense_buffers = buf
        np.take(X, order, axis=0, out=buf[1])
        np.take(targets, order, axis=0, out=buf[2])
        np.take(labels, order, out=buf[3])
        return buf[1], buf[2], buf[3], buf[4]

    # ---- the contract ---------------------------------------------------------------------
    def prepare(self, net, plan):
        """The fit's workspace (nothing is compiled here: compile_seconds 0.0). Builds the
        sparse-input index of plan.X as it is now, and allocates and touches the buffers each
        call copies its rows into (sized for every row of plan.X, so no epoch pays their ~10^4
        page faults: the first epoch otherwise ran ~3x slower)."""
        blas_controller()
        ws = Workspace(0.0)
        self._fit_state(net, plan, ws, touch=True)
        return ws

    def _fit_state(self, net, plan, ws, touch=False):
        """(layout, csr) of plan in ws, made on first use (a plan with another batch size or input
        array gets its own)."""
        bs = int(plan.batch_size)
        if getattr(ws, "csr_of", None) is not plan.X or getattr(ws, "csr_mode", None) != self.input_mode:
            ws.csr_of = plan.X
            ws.csr_mode = self.input_mode
            ws.csr = None
            # shifts keep the sparse path (rows shifted as they are copied in visiting order)
            if plan.X.dtype == np.uint8 and not _resamples(plan) and (int(plan.max_shift) == 0 or self.permute_sparse):
                ws.csr = self._input_csr(plan.X)
            ws.split_pixel = balanced_split(ws.csr[1], plan.X.shape[1]) if ws.csr is not None else -1
            if touch and ws.csr is not None and self.permute_sparse:  # a call visits at most every row
                pipeline.perm_buffers(ws, plan.X.shape[0], int(ws.csr[0][-1]), plan.targets, np.uint16, touch=True)
        key = (bs, net.dtype.str, tuple(net.sizes), self.blas_min_work, ws.csr is not None)
        if getattr(ws, "layout_key", None) != key:
            ws.layout_key = key
            # sized by batch_size: every slice alike
            ws.layout = _Layout(net, bs, self.blas_min_work, sparse_first=ws.csr is not None)
        return ws.layout, ws.csr

    def _problem(self, net, lay, X, x_scale, csr=None, targets=None, labels=None, loss=None, **augment):
        hidden, output, loss_code = self._codes(net, loss)
        return _k.Problem(lay.table, lay.soff, hidden, output, loss_code, X, float(x_scale), csr, targets, labels,
                          **augment)

    def _forward_parts(self, net, X, x_scale, threads, targets=None, labels=None, loss=None):
        """Output activations (and with targets, per-chunk loss sums and correct counts) of X.

        Rows are split into `parts` runs of whole chunks, one per Python thread (the kernel drops
        the GIL), each calling single-threaded BLAS for big layers; rows are independent, so the
        result does not depend on the thread count. Python threads rather than an OpenMP team:
        after an OpenMP region libgomp's idle worker busy-waits (measured ~8 ms of a core after
        each evaluation pass, which the next training epoch on 2 cores lost); an idle pool thread
        sleeps."""
        self._check_input(net, X, x_scale)
        threads = self._check_threads(threads)
        n = X.shape[0]
        chunk = max(1, min(self.forward_chunk, n))
        sparse = self._sparse_forward(X)
        lay = _Layout(net, chunk, self.blas_min_work, sparse_first=sparse)
        out = np.empty((n, net.sizes[-1]), dtype=net.dtype)
        params = lay.pad(net.params)
        n_chunks = -(-n // chunk)
        parts = min(threads, n_chunks)
        bounds = [min(n, chunk * (n_chunks * p // parts)) for p in range(parts + 1)]
        scratch = lay.scratch(parts)
        room = chunk * X.shape[1] + 1
        buffers = [dict(sparse_idx=np.empty(room, np.uint16), sparse_val=np.empty(room, np.uint8),
                        sparse_ptr=np.empty(chunk + 1, np.int64)) if sparse else {} for _ in range(parts)]
        losses = np.zeros(n_chunks) if targets is not None else None
        corrects = np.zeros(n_chunks, dtype=np.int64) if targets is not None else None

        def run(p):
            a, b = bounds[p], bounds[p + 1]
            problem = self._problem(net, lay, X[a:b], x_scale, None,
                                    targets[a:b] if targets is not None else None,
                                    labels[a:b] if labels is not None else None, loss)
            c0 = a // chunk
            _k.forward(params, problem, chunk, scratch[p:p + 1], out[a:b],
                       losses[c0:] if losses is not None else None, corrects[c0:] if corrects is not None else None,
                       **buffers[p])

        with self._blas_limit(1, lay):
            if parts == 1:
                run(0)
            else:
                pending = [helper_pool.submit(run, p) for p in range(1, parts)]
                run(0)
                for f in pending:
                    f.result()
        return out, losses, corrects

    def _sparse_forward(self, X):
        """Whether inference on uint8 X takes the zero-skipping first layer (each chunk's non-zero
        pixels listed on the fly): as _input_csr decides for training, by measured density
        (base.sparse_input_pays)."""
        if X.dtype != np.uint8 or self.input_mode == "dense" or X.shape[1] > 65536 or X.size == 0:
            return False
        return self.input_mode == "sparse" or sparse_input_pays(X, self.sparse_max_density)

    def forward(self, net, X, x_scale, threads=1):
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[0] == 0:
            return np.empty((0, net.sizes[-1]), dtype=net.dtype)
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[0] * net.params.size <= self.flat_forward_max_work:
            # a few rows (single-sample predict): straight from the flat parameters on this
            # thread; the padded copy, layout and thread hand-off cost far more than the math
            self._check_input(net, X, x_scale)
            self._check_threads(threads)
            return self._forward_flat(net, X, x_scale)
        return self._forward_parts(net, X, x_scale, threads)[0]

    @staticmethod
    def _forward_flat(net, X, x_scale):
        sizes = tuple(net.sizes)
        layout = _flat_layouts.get(sizes)
        if layout is None:  # (layout table, work size): derived from the sizes only
            width = _round_up(max(sizes[1:])) + LANES
            layout = (net.layout_array(), 3 * width + sizes[0])
            if len(_flat_layouts) > 64:
                _flat_layouts.clear()
            _flat_layouts[sizes] = layout
        out = np.empty((X.shape[0], net.sizes[-1]), dtype=net.dtype)
        hidden, output, _ = CythonBackend._codes(net)
        _k.forward_flat(net.params, layout[0], X, float(x_scale), hidden, output, out,
                        np.empty(layout[1], dtype=net.dtype))
        return out

    def evaluate(self, net, X, x_scale, targets, labels, loss, threads=1):
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[0] == 0:
            return 0.0, 0
        targets = np.ascontiguousarray(targets, dtype=net.dtype)
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        if targets.shape != (X.shape[0], net.sizes[-1]) or labels.shape != (X.shape[0],):
            raise ValueError(f"targets must have shape {(X.shape[0], net.sizes[-1])} and labels {(X.shape[0],)}")
        _, losses, corrects = self._forward_parts(net, X, x_scale, threads, targets, labels, loss)
        return float(losses.sum()), int(corrects.sum())

    def loss_and_grad(self, net, X, x_scale, targets, loss, threads=1):
        self._check_input(net, X, x_scale)
        n = X.shape[0]
        if n == 0:
            raise ValueError("X has no rows")
        targets = np.ascontiguousarray(targets, dtype=net.dtype)
        labels = np.argmax(targets, axis=1).astype(np.int32)
        csr = self._input_csr(X)
        lay = _Layout(net, n, self.blas_min_work, sparse_first=csr is not None)
        params = lay.pad(net.params)
        grad = np.zeros_like(params)
        with self._blas_limit(self._check_threads(threads), lay):
            loss_sum = _k.loss_and_grad(params, grad, self._problem(net, lay, X, x_scale, csr, targets, labels, loss),
                                        lay.scratch(1))
        return loss_sum / n, lay.unpad(grad, np.zeros_like(net.params))

    def _cols(self, net, plan, csr, augment):
        """Whether this call runs the "cols" epoch (kernels/dense_cols.pyx: each thread keeps a
        column slice of every hidden layer's weights for the whole call): float32, plain SGD,
        relu/leaky_relu hidden layers, no dropout or augmentation, input uint8 or float32, and
        (cols None) by base.cols_pays: wide enough hidden layers, and enough dense work per step
        (`cols_min_work`), or a small batch or large weights on 2+ threads."""
        if self.cols is False or (self.hogwild and not plan.deterministic):
            return False
        hidden, output, _ = self._codes(net)
        if (net.dtype != np.float32 or not _plain(plan.rule) or augment or plan.X.dtype not in (np.uint8, np.float32)
                or hidden not in _kc.HIDDEN_ACTIVATIONS or output not in _kc.OUTPUT_ACTIVATIONS
                or not 2 <= len(net.sizes) - 1 <= _kc.MAX_LAYERS
                or self._check_threads(plan.threads) > _kc.MAX_THREADS):
            return False
        if self.cols:
            return True
        return cols_pays(net.sizes, plan.batch_size, int(plan.threads), csr is not None, LANES, self.cols_min_work)

    def _mode(self, net, plan, lay):
        """("serial" | "sync" | "hogwild", OpenMP threads) for this call. Hogwild runs plain SGD
        and SGD with momentum/decay; Adam/AdamW run deterministic instead (reported)."""
        threads = self._check_threads(plan.threads)
        hogwild = (not plan.deterministic) if self.hogwild is None else self.hogwild
        if hogwild and plan.deterministic:
            raise ValueError("hogwild updates are not deterministic; set plan.deterministic=False")
        if threads == 1:
            return "serial", 1
        if hogwild and plan.rule.kind == SGD:
            return "hogwild", threads
        if lay.uses_blas:
            # "openmp": our threads split each step's samples, then its weight rows, each
            # calling single-threaded BLAS on its slice; "blas": one thread, OpenBLAS threads.
            return ("sync", threads) if self.blas_threading == "openmp" else ("serial", 1)
        # sync pays two barriers per step: below sync_min_work per step one thread is faster
        per_sample = net.n_params + (AUGMENT_WORK_PER_PIXEL * net.sizes[0] if _resamples(plan) else 0)
        if int(plan.batch_size) * per_sample < self.sync_min_work:
            return "serial", 1
        return "sync", threads

    @staticmethod
    def _augment(plan):
        """Keyword arguments of _k.Problem for plan's dropout and image shifts (empty when off)."""
        rate, shift = float(plan.dropout), int(plan.max_shift)
        rotate, alpha = float(plan.max_rotate), float(plan.elastic_alpha)
        if rate == 0 and shift == 0 and rotate == 0 and alpha == 0:
            return {}
        out = dict(dropout=rate, seed=int(plan.seed) % (1 << 64))
        if shift or rotate or alpha:
            rows, cols = (int(v) for v in plan.image_shape)
            out.update(shift=shift, image_rows=rows, image_cols=cols)
        if rotate or alpha:  # fastgd.augment's sampling map, with scratch for every thread
            out.update(max_rotate=rotate, elastic_alpha=alpha, aug_threads=max(1, int(plan.threads)))
        return out

    def train_epoch(self, net, plan, ws=None):
        plan.validate(net)
        if ws is None:  # convenience for one-off calls (tests); the Trainer passes prepare()'s
            ws = Workspace(0.0)
        missing = plan.requested_features() - self.features
        if missing:
            raise ValueError(f"the cython backend does not implement {', '.join(sorted(missing))}")
        lay, csr = self._fit_state(net, plan, ws)
        order, targets, labels, X = plan.order, plan.targets, plan.labels, plan.X
        bs = int(plan.batch_size)
        n_steps = plan.n_steps
        augment = self._augment(plan)
        if self._cols(net, plan, csr, augment):
            return self._train_cols(net, plan, ws, sparse_input=csr is not None)
        shift = None
        if "image_rows" in augment:
            if csr is not None and self.permute_sparse and not _resamples(plan):
                # shifts only, sparse input: the rows are shifted as they are copied in visiting
                # order, and the kernel trains on them as on unshifted rows
                shift = (augment["seed"], int(plan.first_position), augment.pop("shift"),
                         augment.pop("image_rows"), augment.pop("image_cols"))
            else:  # augmented images are built row by row on the dense input path
                csr = None
        mode, threads = self._mode(net, plan, lay)
        rule = plan.rule
        copies = threads if mode == "hogwild" else 1
        key = (lay.size, lay.scratch_size, copies, net.dtype.str)
        if getattr(ws, "scratch_key", None) != key:
            ws.scratch_key = key
            ws.scratch = lay.scratch(copies)
            ws.grad = aligned_zeros((copies, lay.size), net.dtype)  # zero between steps (the kernel re-zeroes)
        params = lay.pad(net.params)
        state = None
        if rule.state:
            state = aligned_zeros((len(rule.state), lay.size), net.dtype)
            for k, flat in enumerate(rule.state):
                state[k] = lay.pad(flat)
        loss_out = np.zeros(threads, dtype=np.float64)
        correct_out = np.zeros(threads, dtype=np.int64)
        # a 16-lane sparse first layer sums each row in two parts (split at ws.split_pixel) in
        # every mode, so that the split epoch and one thread give the same bits
        split_pixel = ws.split_pixel if csr is not None and lay.table[0, 4] == LANES else -1
        if (self.split and split_pixel > 0 and self.permute_sparse and shift is None and mode == "serial"
                and int(plan.threads) > 1 and not lay.uses_blas and _plain(rule) and not _resamples(plan)
                and float(plan.dropout) == 0):
            return self._train_split(net, plan, ws, lay, params, ws.csr, split_pixel, augment)
        bounds, copy = [0, order.size], None
        if csr is not None and self.permute_sparse:
            # the call's rows, copied in visiting order: the kernel then streams them. Given
            # 2+ threads that the epoch itself does not use, the rows are copied part by part
            # on another thread while the kernel trains on the part before (see pipeline)
            pipelined = self.overlap_gather and mode == "serial" and int(plan.threads) > 1 and not lay.uses_blas
            bounds = pipeline.part_bounds(n_steps, bs, order.size, pipelined)
            csr, targets, labels, order, copy = self._permuted(ws, csr, order, targets, labels, shift)
        elif csr is None and self.permute_dense and order.size * X[0].nbytes <= self.permute_dense_max_bytes:
            # dense rows likewise: one gather per call, then the kernel streams them
            X, targets, labels, order = self._permuted_dense(ws, X, order, targets, labels)
        step_config = _k.StepConfig(int(rule.kind), float(rule.momentum), bool(rule.nesterov),
                                    float(rule.weight_decay), float(rule.l1), float(rule.beta1), float(rule.beta2),
                                    float(rule.eps), int(rule.step))
        grad = None if _plain(rule) else ws.grad
        # exactly one pool runs: OpenBLAS's threads only when our epoch runs on one thread
        blas_threads = int(plan.threads) if mode == "serial" and lay.uses_blas else 1

        def run(a, b):  # the call's rows a..b (a: a multiple of bs), i.e. steps a/bs..
            problem = self._problem(net, lay, X, plan.x_scale, csr, targets, labels, plan.loss,
                                    first_position=int(plan.first_position) + a, split_pixel=split_pixel,
                                    **augment)
            cfg = step_config if a == 0 else _k.StepConfig(
                int(rule.kind), float(rule.momentum), bool(rule.nesterov), float(rule.weight_decay), float(rule.l1),
                float(rule.beta1), float(rule.beta2), float(rule.eps), int(rule.step) + a // bs)
            _k.train_epoch(params, problem, order[a:b], plan.lrs[a // bs:], bs, cfg, state, grad, ws.scratch,
                           _k.MODES[mode], threads, loss_out, correct_out)

        try:
            with self._blas_limit(blas_threads, lay):
                if copy is None:
                    run(0, order.size)
                else:
                    pipeline.run_in_parts(copy, bounds, run)
        finally:
            if grad is not None:
                grad.fill(0)  # an exception between steps must not leave a partial gradient
        lay.unpad(params, net.params)
        for padded, flat in zip(state if state is not None else (), rule.state):
            lay.unpad(padded, flat)
        return EpochResult(float(loss_out.sum()), int(correct_out.sum()), threads, mode)

    def _train_split(self, net, plan, ws, lay, params, csr, split_pixel, augment):
        """The "split" epoch (kernels/dense_sgd.pyx, train_epoch_split): plain SGD, the sparse
        16-unit first layer's rows split at split_pixel between two threads; the second thread
        also copies the rows in visiting order into the workspace's buffers as it goes."""
        order, targets, m = plan.order, plan.targets, plan.order.size
        nnz = _k.csr_rows_nnz(csr[0], order)
        buf = pipeline.perm_buffers(ws, m, nnz, targets, csr[1].dtype)
        mid = getattr(ws, "split_mid", None)
        if mid is None or mid.size < m + 1:
            mid = ws.split_mid = np.zeros(max(m + 1, buf[0].size), np.int64)
        problem = self._problem(net, lay, plan.X, plan.x_scale, csr, targets, plan.labels, plan.loss,
                                first_position=int(plan.first_position), split_pixel=split_pixel, **augment)
        loss_out = np.zeros(1, dtype=np.float64)
        correct_out = np.zeros(1, dtype=np.int64)
        _k.train_epoch_split(params, problem, order, plan.lrs, int(plan.batch_size), ws.scratch, buf[0][:m + 1],
                             mid[:m + 1], buf[1], buf[2], buf[3][:m], buf[4][:m], buf[5][:m], loss_out,
                             correct_out, self.split_profile)
        lay.unpad(params, net.params)
        return EpochResult(float(loss_out[0]), int(correct_out[0]), 2, "split")

    def _train_cols(self, net, plan, ws, sparse_input):
        """The "cols" epoch (see _cols): one kernel call on net.params in place (the kernel keeps
        its own padded copies, in ws between calls); it gathers the rows of each step itself, in
        parallel with the previous step. With sparse_input (the data's density chose the sparse
        first layer) the first layer skips the zeros of each block of rows."""
        threads = self._check_threads(plan.threads)
        loss_out = np.zeros(threads, dtype=np.float64)
        correct_out = np.zeros(threads, dtype=np.int64)
        hidden, output, loss = self._codes(net, plan.loss)
        if getattr(ws, "cols_work", None) is None:
            ws.cols_work = _kc.ColsWork()  # its buffers, kept for the fit's later calls
        ran = _kc.train_epoch_cols(net.params, net.layout_array(), plan.X, float(plan.x_scale), plan.order,
                                   plan.targets, plan.labels, plan.lrs, int(plan.batch_size), hidden, output, loss,
                                   threads, loss_out, correct_out, sparse_input, ws.cols_work)
        return EpochResult(float(loss_out.sum()), int(correct_out.sum()), int(ran), "cols")
