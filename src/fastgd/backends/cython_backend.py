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
    reference's values). When it is mostly zeros (MNIST: 81%) and the first layer is not
    BLAS-sized, that layer visits only non-zero pixels, from a per-row index list built once per
    input array and cached (keyed on the array object: an array mutated in place between epochs
    must be passed as a new array).
  * Each epoch first copies its rows (index lists, or dense rows up to 256 MB) in visiting
    order into buffers kept between epochs, so the kernel streams them: shuffled access over
    a 27-47 MB input otherwise stalls on memory about as long as the arithmetic takes.
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
  * Training recipe: momentum, Nesterov, L2 and L1 (base.py's rule) accumulate each step's
    gradient and apply the optimiser over the same weight rows; dropout draws fastgd._random's
    counter-based masks in the kernel (the same masks as every backend), and image shifts are
    applied while gathering each row (dense input path; the sparse index is not used then).
"""
from __future__ import annotations

import contextlib
import os
import weakref

import numpy as np

from .base import BackendUnavailable

try:
    from fastgd._kernels import dense_sgd as _k
except ImportError as exc:  # extension not built
    raise BackendUnavailable(f"the Cython kernels are not built ({exc}); run `pip install -e .`") from exc

NAME = "cython"
LANES = _k.LANES


def _round_up(n, k=LANES):
    return -(-n // k) * k


class _Layout:
    """Padded parameter layout and scratch offsets of one network at one batch size."""

    def __init__(self, net, batch, blas_min_work):
        self.net = net
        rows, off, act_off = [], 0, 0
        for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:]):
            pad = _round_up(n_out)
            blas = int(batch * n_in * pad >= blas_min_work)
            rows.append((off, off + n_in * pad, n_in, n_out, pad, act_off, blas))
            off += n_in * pad + pad
            act_off += batch * pad
        self.table = np.ascontiguousarray(np.array(rows, dtype=np.int64).reshape(-1, _k.LAYOUT_COLUMNS))
        self.size = off
        self.uses_blas = bool(self.table[:, 6].any())
        xbuf = batch * net.sizes[0]
        zout = batch * _round_up(net.sizes[-1])
        # per-thread scratch: [xbuf | activations | deltas | last pre-activation | dropout's
        # masked activations | dropout's masks]
        acts, deltas, z = xbuf, xbuf + act_off, xbuf + 2 * act_off
        inp = z + zout
        self.soff = np.array([0, acts, deltas, z, inp, inp + act_off, inp + 2 * act_off], dtype=np.int64)
        self.scratch_size = int(self.soff[-1])

    def pad(self, flat):
        """A padded working copy of a flat parameter (or gradient) vector."""
        out = np.zeros(self.size, dtype=self.net.dtype)
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
        return np.zeros((copies, self.scratch_size), dtype=self.net.dtype)


class CythonBackend:
    """Compiled Cython kernels; see the module docstring for how a call runs.

    Attributes (tuning knobs, normally left alone):
      input_mode: "auto" | "dense" | "sparse" for uint8 input ("auto": sparse below
        `sparse_max_density` non-zero pixels).
      blas_min_work: per-step batch x n_in x padded n_out at which a layer calls BLAS.
      hogwild: None (use it when plan.deterministic is False and threads > 1), or True/False.
      sync_min_work: deterministic threads are used only when batch x n_params per step
        reaches this; below it the step is too short to pay for two barriers.
      blas_threading: "openmp" (our threads over single-threaded BLAS) or "blas".
      permute_sparse, permute_dense: stream each epoch's rows in visiting order (see above).
      overlap_gather: when plan.threads > 1 but the epoch runs on one thread, copy most of the
        sparse rows on a second (Python) thread while the kernel trains on the first eighth.
    """

    name = NAME
    #: training-recipe features (base.RECIPE_FEATURES) implemented here: all of them
    features = frozenset({"momentum", "nesterov", "l2", "l1", "dropout", "shift"})

    def __init__(self):
        self.input_mode = os.environ.get("FASTGD_CYTHON_INPUT", "auto")
        self.sparse_max_density = 0.5
        self.blas_min_work = 1 << 20
        self.forward_chunk = 256
        self.hogwild = None
        self.sync_min_work = 1 << 21  # lesson network: batch >= 165
        self._csr_cache = None  # (weakref to X, data pointer, shape, (ptr, idx, val), density)
        self._controller = None
        self._pool = None  # threads of forward() and of the overlapped row copy (see there)
        self.overlap_gather = True
        self.permute_sparse = True
        self.blas_threading = os.environ.get("FASTGD_CYTHON_BLAS_THREADING", "openmp")
        self._perm_buffers = None
        self.permute_dense = True
        self.permute_dense_max_bytes = 1 << 28  # 256 MB: above this, prefetch instead of copying
        self._dense_buffers = None

    # ---- helpers --------------------------------------------------------------------------
    def _blas_limit(self, threads, lay=None):
        """Context manager limiting BLAS (numpy's and scipy's OpenBLAS) to `threads`; a no-op
        when `lay` has no BLAS layer. Changing OpenBLAS's thread count (the limit and its
        restore) wakes its idle threads, which then busy-wait for a long while: measured, a
        2-thread validation pass between epochs made the next epoch of the lesson network
        ~8 ms (30%) slower on 2 cores. A call that never reaches BLAS leaves them alone."""
        from threadpoolctl import ThreadpoolController

        if lay is not None and not lay.uses_blas:
            return contextlib.nullcontext()
        if self._controller is None:
            self._controller = ThreadpoolController()  # after scipy's BLAS is loaded by _k
        return self._controller.limit(limits=threads, user_api="blas")

    @staticmethod
    def _codes(net, loss=None):
        hidden = _k.ACT_CODES[net.activation]
        out = _k.ACT_CODES[net.output]
        return hidden, out, (_k.LOSS_CODES[loss] if loss is not None else 0)

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
        if X.dtype == np.uint8:
            return X, None
        return None, X

    @staticmethod
    def _check_targets(net, targets, labels, n):
        n_out = net.sizes[-1]
        if (not isinstance(targets, np.ndarray) or targets.shape != (n, n_out) or targets.dtype != net.dtype
                or not targets.flags.c_contiguous):
            raise ValueError(f"targets must be a C-contiguous {net.dtype} array of shape {(n, n_out)}")
        if labels is None:
            labels = np.argmax(targets, axis=1).astype(np.int32)
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape {(n,)}, got {labels.shape}")
        if n and (labels.min() < 0 or labels.max() >= n_out):
            raise ValueError(f"labels must lie in [0, {n_out})")
        return targets, labels

    @staticmethod
    def _check_threads(threads):
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        return int(threads)

    def _csr(self, X):
        """(ptr, idx, val, density) for uint8 X, cached per array object."""
        c = self._csr_cache
        if c is not None and c[0]() is X and c[1] == X.ctypes.data and c[2] == X.shape:
            return c[3], c[4]
        if X.shape[1] > 65536:
            return None, 1.0
        csr = _k.build_csr(X)
        density = csr[1].size / max(X.size, 1)
        self._csr_cache = (weakref.ref(X), X.ctypes.data, X.shape, csr, density)
        return csr, density

    def _input_csr(self, X, first_layer_blas=False):
        """The sparse index of uint8 X when the first layer should use it, else None. A first
        layer big enough for BLAS stays dense in "auto" mode: measured on 784-512-512-10 at
        batch 128, dense sgemm beat the sparse row updates by 2x despite 81% zero pixels."""
        if X.dtype != np.uint8 or self.input_mode == "dense":
            return None
        if first_layer_blas and self.input_mode == "auto":
            return None
        csr, density = self._csr(X)
        if csr is None:
            return None
        if self.input_mode == "sparse" or density <= self.sparse_max_density:
            return csr
        return None

    def _perm_buffers_for(self, m, nnz, targets, touch=False):
        """The kept buffers for m rows holding nnz pixels (new ones when those are too small);
        touch: write them once so their pages are faulted in now rather than in an epoch."""
        buf = self._perm_buffers
        if (buf is None or buf[0].size < m + 1 or buf[1].size < nnz or buf[3].shape[1:] != targets.shape[1:]
                or buf[3].shape[0] < m or buf[3].dtype != targets.dtype):
            buf = (np.empty(m + 1, np.int64), np.empty(max(nnz, 1), np.uint16), np.empty(max(nnz, 1), np.uint8),
                   np.empty((m,) + targets.shape[1:], targets.dtype), np.empty(m, np.int32),
                   np.arange(m, dtype=np.int64))
            if touch:
                for b in buf[:5]:
                    b.fill(0)
            self._perm_buffers = buf
        return buf

    def _permuted(self, csr, order, targets, labels, head=None):
        """(csr, targets, labels, identity order, rest) of the rows in `order`, in that order.
        Only the first `head` rows (default: all) are copied here; `rest` is None, or a callable
        copying the others (the caller may run it on another thread while the kernel trains on
        the head). The buffers are kept between calls: no epoch pays page faults."""
        ptr, idx, val = csr
        nnz = _k.csr_rows_nnz(ptr, order)
        m = order.size
        head = m if head is None else head
        buf = self._perm_buffers_for(m, nnz, targets)
        out_ptr, out_targets, out_labels = buf[0][:m + 1], buf[3][:m], buf[4][:m]

        def copy(a, b, pos0):
            _k.gather_csr_rows(ptr, idx, val, order[a:b], out_ptr[a:b + 1], buf[1], buf[2], pos0)
            np.take(targets, order[a:b], axis=0, out=out_targets[a:b])
            np.take(labels, order[a:b], out=out_labels[a:b])

        head_nnz = _k.csr_rows_nnz(ptr, order[:head]) if head < m else nnz
        copy(0, head, 0)
        rest = (lambda: copy(head, m, head_nnz)) if head < m else None
        return (out_ptr, buf[1], buf[2]), out_targets, out_labels, buf[5][:m], rest

    def _permuted_dense(self, X, order, targets, labels):
        """(X rows, targets, labels, identity order) of the rows in `order`, in that order, in
        buffers kept between calls."""
        m = order.size
        buf = self._dense_buffers
        want = ((m, X.shape[1]), X.dtype, (m, targets.shape[1]), targets.dtype)
        if buf is None or buf[0] != want:
            buf = (want, np.empty(want[0], X.dtype), np.empty(want[2], targets.dtype), np.empty(m, np.int32),
                   np.arange(m, dtype=np.int64))
            self._dense_buffers = buf
        np.take(X, order, axis=0, out=buf[1])
        np.take(targets, order, axis=0, out=buf[2])
        np.take(labels, order, out=buf[3])
        return buf[1], buf[2], buf[3], buf[4]

    # ---- the contract ---------------------------------------------------------------------
    def prepare(self, net, plan):
        """One-off setup ahead of the timed epochs; returns 0.0 (the kernels are compiled at
        install, nothing is compiled here). Builds the sparse-input index for plan.X, allocates
        and touches the buffers each epoch copies its rows into (sized for every row of plan.X,
        so no epoch pays their ~10^4 page faults: the first epoch otherwise ran ~3x slower), and
        loads threadpoolctl's view of the BLAS libraries."""
        self._blas_limit(1)  # creates the controller (a few ms, once)
        X = plan.X
        if not (isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[0] > 0):
            return 0.0
        targets = plan.targets
        lay = _Layout(net, min(plan.batch_size, max(len(plan.order), 1)), self.blas_min_work)
        csr = None
        if X.dtype == np.uint8 and not int(getattr(plan, "max_shift", 0)):
            csr = self._input_csr(X, bool(lay.table[0, 6]))
        if not isinstance(targets, np.ndarray) or targets.ndim != 2 or targets.shape[0] != X.shape[0]:
            return 0.0
        if csr is not None and self.permute_sparse:  # an epoch visits at most every row
            self._perm_buffers_for(X.shape[0], int(csr[0][-1]), targets, touch=True)
        return 0.0

    def forward(self, net, X, x_scale, threads=1):
        Xu8, Xf = self._check_input(net, X, x_scale)
        threads = self._check_threads(threads)
        n = X.shape[0]
        chunk = max(1, min(self.forward_chunk, n))
        lay = _Layout(net, chunk, self.blas_min_work)
        out = np.empty((n, net.sizes[-1]), dtype=net.dtype)
        params = lay.pad(net.params)
        hidden, output, _ = self._codes(net)
        # Rows split into `parts` runs of whole chunks, one per Python thread (the kernel drops
        # the GIL), each calling single-threaded BLAS for big layers; rows are independent, so
        # the result does not depend on the thread count. Python threads rather than an OpenMP
        # team: after an OpenMP region libgomp's idle worker busy-waits (measured ~8 ms of a
        # core after each evaluation pass, which the next training epoch on 2 cores lost);
        # an idle pool thread sleeps.
        n_chunks = -(-n // chunk)
        parts = min(threads, n_chunks)
        bounds = [min(n, chunk * (n_chunks * p // parts)) for p in range(parts + 1)]
        scratch = lay.scratch(parts)

        def run(p):
            a, b = bounds[p], bounds[p + 1]
            _k.forward(params, lay.table, hidden, output, Xu8[a:b] if Xu8 is not None else None,
                       Xf[a:b] if Xf is not None else None, float(x_scale), chunk, scratch[p:p + 1],
                       lay.soff, out[a:b], 1)

        with self._blas_limit(1, lay):
            if parts == 1:
                run(0)
            else:
                pending = [self._thread_pool(parts - 1).submit(run, p) for p in range(1, parts)]
                run(0)
                for f in pending:
                    f.result()
        return out

    def _thread_pool(self, workers):
        """A kept pool of at least `workers` Python threads (idle threads sleep)."""
        pool = self._pool
        if pool is None or pool._max_workers < workers:
            from concurrent.futures import ThreadPoolExecutor

            if pool is not None:
                pool.shutdown(wait=False)
            pool = self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastgd-cython")
        return pool

    def loss_and_grad(self, net, X, x_scale, targets, loss, threads=1):
        Xu8, Xf = self._check_input(net, X, x_scale)
        n = X.shape[0]
        if n == 0:
            raise ValueError("X has no rows")
        targets, labels = self._check_targets(net, targets, None, n)
        hidden, output, loss_code = self._codes(net, loss)
        lay = _Layout(net, n, self.blas_min_work)
        params = lay.pad(net.params)
        grad = np.zeros_like(params)
        with self._blas_limit(self._check_threads(threads), lay):
            loss_sum = _k.loss_and_grad(params, grad, lay.table, hidden, output, loss_code, Xu8, Xf,
                                        float(x_scale), targets, labels, np.arange(n, dtype=np.int64),
                                        lay.scratch(1), lay.soff)
        return loss_sum / n, lay.unpad(grad, np.zeros_like(net.params))

    def _mode(self, net, plan, lay, batch):
        """("serial" | "sync" | "hogwild", OpenMP threads) for this epoch."""
        threads = self._check_threads(plan.threads)
        hogwild = (not plan.deterministic) if self.hogwild is None else self.hogwild
        if hogwild and plan.deterministic:
            raise ValueError("hogwild updates are not deterministic; set plan.deterministic=False")
        if threads == 1:
            return "serial", 1
        if hogwild:
            return "hogwild", threads
        if lay.uses_blas:
            # "openmp": our threads split each step's samples, then its weight rows, each
            # calling single-threaded BLAS on its slice; "blas": one thread, OpenBLAS threads.
            return ("sync", threads) if self.blas_threading == "openmp" else ("serial", 1)
        # sync pays two barriers per step: below sync_min_work per step one thread is faster
        if batch * net.n_params < self.sync_min_work:
            return "serial", 1
        return "sync", threads

    @staticmethod
    def _augment(net, plan):
        """Keyword arguments of the kernel for plan's dropout and image shifts (empty when off)."""
        rate = float(getattr(plan, "dropout", 0.0))
        shift = int(getattr(plan, "max_shift", 0))
        if rate == 0 and shift == 0:
            return {}
        if not 0 <= rate < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {rate}")
        if shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {shift}")
        first = int(plan.first_position)
        if first < 0:
            raise ValueError(f"first_position must be >= 0, got {first}")
        out = dict(dropout=rate, seed=int(plan.seed) % (1 << 64), first_position=first)
        if shift:
            rows, cols = (int(v) for v in plan.image_shape)
            if rows < 1 or cols < 1 or rows * cols != net.sizes[0]:
                raise ValueError(f"image_shape {plan.image_shape} does not match {net.sizes[0]} inputs")
            out.update(shift=shift, image_rows=rows, image_cols=cols)
        return out

    @staticmethod
    def _recipe(net, plan, lay, copies):
        """Keyword arguments of the kernel for plan's optimiser (empty for plain SGD)."""
        momentum = float(getattr(plan, "momentum", 0.0))
        l2, l1 = float(getattr(plan, "l2", 0.0)), float(getattr(plan, "l1", 0.0))
        nesterov = bool(getattr(plan, "nesterov", False))
        if momentum == 0 and l2 == 0 and l1 == 0:
            return {}  # nesterov without momentum is plain SGD (step = g)
        for value, what in ((momentum, "momentum"), (l2, "l2"), (l1, "l1")):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{what} must be a finite number >= 0, got {value}")
        velocity = None
        if momentum > 0:
            v = plan.velocity
            if not isinstance(v, np.ndarray) or v.shape != net.params.shape or v.dtype != net.dtype:
                raise ValueError(f"momentum needs plan.velocity: a {net.dtype} array shaped like net.params")
            velocity = lay.pad(v)
        return dict(grad=np.zeros((copies, lay.size), dtype=net.dtype), velocity=velocity, momentum=momentum,
                    nesterov=nesterov, l2=l2, l1=l1)

    def train_epoch(self, net, plan):
        requested = plan.requested_features() if hasattr(plan, "requested_features") else set()
        if requested - self.features:
            raise ValueError(f"the cython backend does not implement {', '.join(sorted(requested - self.features))} "
                             f"yet")
        Xu8, Xf = self._check_input(net, plan.X, plan.x_scale)
        n = plan.X.shape[0]
        targets, labels = self._check_targets(net, plan.targets, plan.labels, n)
        order = np.ascontiguousarray(plan.order, dtype=np.int64)
        if order.ndim != 1:
            raise ValueError("order must be 1-D")
        if order.size == 0:
            return 0.0, 0
        if order.min() < 0 or order.max() >= n:
            raise ValueError(f"order holds row indices outside [0, {n})")
        bs = int(plan.batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        n_steps = -(-order.size // bs)
        lrs = np.ascontiguousarray(plan.lrs, dtype=np.float64)
        if lrs.ndim != 1 or lrs.size < n_steps:
            raise ValueError(f"lrs must hold one learning rate per step ({n_steps}), got {lrs.shape}")
        if not np.isfinite(lrs[:n_steps]).all():
            raise ValueError("lrs contains NaN or inf")
        hidden, output, loss_code = self._codes(net, plan.loss)
        batch = min(bs, order.size)
        lay = _Layout(net, batch, self.blas_min_work)
        augment = self._augment(net, plan)
        # shifted images are built row by row on the dense input path
        csr = self._input_csr(Xu8, bool(lay.table[0, 6])) if Xu8 is not None and "shift" not in augment else None
        mode, threads = self._mode(net, plan, lay, batch)
        params = lay.pad(net.params)
        loss_out = np.zeros(threads, dtype=np.float64)
        correct_out = np.zeros(threads, dtype=np.int64)
        scratch = lay.scratch(threads if mode == "hogwild" else 1)
        rest = None
        if csr is not None and self.permute_sparse:
            # the epoch's rows, copied in visiting order: the kernel then streams them. Given
            # 2+ threads that the epoch itself does not use, the first eighth of the steps is
            # copied first and the rest on another thread while the kernel trains on it
            head = order.size
            if self.overlap_gather and mode == "serial" and int(plan.threads) > 1 and not lay.uses_blas:
                head = min(order.size, -(-n_steps // 8) * bs)
            csr, targets, labels, order, rest = self._permuted(csr, order, targets, labels, head)
        elif csr is None and self.permute_dense and order.size * plan.X[0].nbytes <= self.permute_dense_max_bytes:
            # dense rows likewise: one gather per epoch, then the kernel streams them
            X_rows, targets, labels, order = self._permuted_dense(plan.X, order, targets, labels)
            Xu8, Xf = (X_rows, None) if Xu8 is not None else (None, X_rows)
        ptr, idx, val = csr if csr is not None else (None, None, None)
        recipe = self._recipe(net, plan, lay, threads if mode == "hogwild" else 1)
        # exactly one pool runs: OpenBLAS's threads only when our epoch runs on one thread
        blas_threads = int(plan.threads) if mode == "serial" and lay.uses_blas else 1
        first = augment.pop("first_position", 0)

        def run(a, b):  # the epoch's rows a..b (a: a multiple of bs), i.e. steps a/bs..
            _k.train_epoch(params, lay.table, hidden, output, loss_code, Xu8, Xf, float(plan.x_scale),
                           ptr, idx, val, targets, labels, order[a:b], lrs[a // bs:], bs, scratch, lay.soff,
                           _k.MODES[mode], threads, loss_out, correct_out, first_position=first + a, **recipe,
                           **augment)

        with self._blas_limit(blas_threads, lay):
            if rest is None:
                run(0, order.size)
            else:
                pending = self._thread_pool(1).submit(rest)
                try:
                    run(0, head)
                finally:
                    pending.result()
                run(head, order.size)
        lay.unpad(params, net.params)
        if recipe.get("velocity") is not None:
            lay.unpad(recipe["velocity"], plan.velocity)
        return float(loss_out.sum()), int(correct_out.sum())
