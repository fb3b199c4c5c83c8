"""The Numba backend: the fused kernels of `numba_kernels`, JIT-compiled and cached on disk.

Threads
-------
* Deterministic mode (the default): the epoch runs minibatch after minibatch in one compiled
  call. Layers big enough for BLAS split each gemm into fixed row chunks, one per Numba
  thread, each a single-threaded gemm (the result depends on the thread count through the
  gradient's partial sums, never on timing); OpenBLAS's own threads are not used because they
  collapsed on this busy 2-core machine (31 s vs 2 s per 784-512-512-10 epoch). `forward`
  runs row chunks on the threads the same way.
  Small layers stay serial, identical for any thread count: splitting each minibatch over threads (samples for forward/deltas, weight rows for the
  update) needs two parallel regions per step; on this 2-core machine a Numba prange region
  measured 1.2 us with one thread and 7 us with two while other work ran, i.e. 85 ms of
  launch/barrier cost for the 12,000 regions of a batch-10 MNIST epoch, more than the whole
  serial epoch. So the small-layer path stays serial and identical for any thread count.
* ``plan.deterministic = False`` with threads > 1: Hogwild-style, one parallel region for the
  whole epoch, each thread running its own share of the minibatches and updating the shared
  weights without locks (BLAS is held to one thread inside it, so the pools do not collide).

Training recipe (base.py: momentum, Nesterov, L2, L1, dropout, image shifts): every feature runs
inside the compiled epoch loop, in `numba_kernels.train_epoch_recipe`, a kernel of its own so
the plain-SGD kernel is untouched; the backend picks one per call. A recipe always runs the
deterministic kernel, also when plan.deterministic is False (Hogwild is plain SGD only).

Threading layer: OpenMP ("omp") is preferred. It launches a parallel region in about a
microsecond (the "workqueue" layer measured ~85 us here), and it is the same libgomp the Cython
backend uses, so both backends share one thread pool in a process instead of two pools
spinning against each other on 2 cores. TBB is not installed here. NUMBA_THREADING_LAYER, if
set, wins.
"""
from __future__ import annotations

import os
import time
import weakref
from contextlib import nullcontext

import numpy as np

from .base import RECIPE_FEATURES, BackendUnavailable

try:
    import numba
except ImportError as exc:  # pragma: no cover - numba is a dependency
    raise BackendUnavailable(f"numba is not installed: {exc}") from exc

if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

from threadpoolctl import threadpool_limits  # noqa: E402

from . import numba_kernels as K  # noqa: E402

NAME = "numba"

#: A layer goes through BLAS gemm when batch * n_in * n_out reaches this (see the note for why).
BLAS_MIN_WORK = 1 << 20
#: Inputs with at least this many rows keep their CSR index between calls.
CSR_CACHE_MIN_ROWS = 1024
#: Rows per chunk in `forward`.
FORWARD_CHUNK = 256


class Workspace:
    """Scratch arrays for `n_workers` workers, each able to hold a minibatch of `bmax` rows."""

    def __init__(self, sizes, bmax, dtype, use_blas, n_workers=None, n_split=1):
        sizes = np.asarray(sizes, dtype=np.int64)
        lead = () if n_workers is None else (n_workers,)
        widest = int(sizes.max())
        self.sizes = sizes
        self.act_off = np.concatenate([[0], np.cumsum(sizes * bmax)]).astype(np.int64)
        # gW: a BLAS layer's weight gradient (one per row chunk), or a loop layer's transposed
        # weights (l > 0)
        gw = max([int(sizes[l] * sizes[l + 1]) * (n_split if use_blas[l] else 1) for l in range(len(sizes) - 1)
                  if use_blas[l] or l > 0] or [1])
        self.acts = np.zeros(lead + (int(self.act_off[-1]),), dtype=dtype)
        self.zlast = np.zeros(lead + (bmax, int(sizes[-1])), dtype=dtype)
        self.delta0 = np.zeros(lead + (bmax * widest,), dtype=dtype)
        self.delta1 = np.zeros(lead + (bmax * widest,), dtype=dtype)
        self.gW = np.zeros(lead + (gw,), dtype=dtype)

    def step_args(self):
        return (self.acts, self.act_off, self.sizes, self.zlast, self.delta0, self.delta1, self.gW)

    def forward_args(self):
        return (self.acts, self.act_off, self.sizes, self.zlast)


NO_CSR = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint16), np.zeros(0, dtype=np.uint8))


def _kinds(net):
    hidden = K.ACTIVATION_CODES[net.activation]
    return np.array([hidden] * (net.n_layers - 1) + [K.ACTIVATION_CODES[net.output]], dtype=np.int64)


def use_blas_for(sizes, batch, blas_min_work):
    """Per layer: does batch * n_in * n_out reach the BLAS threshold?"""
    return np.array([batch * a * b >= blas_min_work for a, b in zip(sizes[:-1], sizes[1:])], dtype=np.bool_)


def blas_threads(n):
    """Limit BLAS to n threads for a `with` block; None leaves BLAS alone (no BLAS call follows).

    Not touching BLAS when no layer uses it matters: setting OpenBLAS to 2 threads wakes its
    thread pool, and the lesson network's serial epoch then measured 0.12 s wall instead of
    0.085 s on the shared 2-core machine (CPU time unchanged)."""
    return nullcontext() if n is None else threadpool_limits(n, user_api="blas")


def set_threads(threads):
    """numba.set_num_threads, clipped to the pool Numba started with; returns the count used."""
    n = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


class NumbaBackend:
    """Numba implementation of the backend contract (see base.py)."""

    name = NAME
    #: training-recipe features (base.RECIPE_FEATURES) implemented here (numba_kernels.train_epoch_recipe)
    features = frozenset(RECIPE_FEATURES)

    def __init__(self, blas_min_work=BLAS_MIN_WORK, forward_chunk=FORWARD_CHUNK, sparse_input="auto",
                 sparse_max_density=0.5):
        self.blas_min_work = blas_min_work
        self.forward_chunk = forward_chunk
        self.sparse_input = sparse_input  # "auto" | "always" | "never": uint8 input through its CSR?
        self.sparse_max_density = sparse_max_density
        self.last_prepare = None  # {"seconds", "compiled", "cache_hits", "cache_misses", ...} after prepare()
        self._csr_cache = []  # [(weakref to X, data pointer, shape, csr, density)], newest last

    # ---- sparse input ---------------------------------------------------------------------------
    def _csr(self, X, first_layer_blas=False):
        """(ptr, idx, val) of uint8 X's non-zero pixels if the input layer should read them, else
        NO_CSR. "auto" reads them when at most `sparse_max_density` of the pixels are non-zero and
        the first layer is not big enough for BLAS (a dense gemm beats the sparse row updates
        there: 784-512-512-10 at batch 128 measured 0.64 s dense vs 0.99 s sparse on 20k images).
        Cached per array object (like the Cython backend): an epoch loop passes the same X every
        epoch. Mutating X in place between calls is not supported."""
        if X.dtype != np.uint8 or self.sparse_input == "never" or (first_layer_blas and self.sparse_input == "auto"):
            return NO_CSR
        for ref, ptr, shape, csr, density in self._csr_cache:
            if ref() is X and ptr == X.ctypes.data and shape == X.shape:
                break
        else:
            csr = K.build_csr(X, np.uint16 if X.shape[1] <= 65536 else np.int32)
            density = csr[1].size / max(X.size, 1)
            if X.shape[0] >= CSR_CACHE_MIN_ROWS:  # small inputs are cheaper to index again than to keep
                self._csr_cache = self._csr_cache[-3:] + [(weakref.ref(X), X.ctypes.data, X.shape, csr, density)]
        if self.sparse_input == "always" or density <= self.sparse_max_density:
            return csr
        return NO_CSR

    # ---- inference ------------------------------------------------------------------------------
    def forward(self, net, X, x_scale, threads=1):
        n = X.shape[0]
        chunk = max(1, min(self.forward_chunk, n))
        use_blas = use_blas_for(net.sizes, chunk, self.blas_min_work)
        # Chunks of rows on Numba's threads, each with single-threaded BLAS: one thread pool.
        workers = set_threads(threads)
        ws = Workspace(net.sizes, chunk, net.dtype, use_blas, n_workers=workers)
        out = np.empty((n, net.sizes[-1]), dtype=net.dtype)
        with blas_threads(1 if use_blas.any() else None):
            K.forward_chunks(net.params, net.layout_array(), _kinds(net), X, float(x_scale), *self._csr(X, bool(use_blas[0])), out,
                             chunk, use_blas, *ws.forward_args())
        return out

    # ---- gradient (tests) -----------------------------------------------------------------------
    def loss_and_grad(self, net, X, x_scale, targets, loss, threads=1):
        n = X.shape[0]
        use_blas = use_blas_for(net.sizes, n, self.blas_min_work)
        ws = Workspace(net.sizes, n, net.dtype, use_blas)
        grad = np.zeros_like(net.params)
        labels = np.zeros(n, dtype=np.int32)
        with blas_threads(threads if use_blas.any() else None):
            value = K.loss_and_grad(net.params, grad, net.layout_array(), _kinds(net), K.LOSS_CODES[loss],
                                    X, float(x_scale), *self._csr(X, bool(use_blas[0])), np.ascontiguousarray(targets, dtype=net.dtype),
                                    labels, use_blas,
                                    *ws.step_args())
        return float(value), grad

    # ---- training -------------------------------------------------------------------------------
    def _epoch_call(self, net, plan):
        """(kernel, args, blas_threads, workspace) for one epoch of `plan`."""
        bs = plan.batch_size
        workers = set_threads(plan.threads)
        recipe = bool(plan.requested_features()) if hasattr(plan, "requested_features") else False
        # The recipe runs in the deterministic kernel whatever plan.deterministic says (a valid
        # result: deterministic is always allowed); Hogwild is for plain SGD.
        hogwild = (not plan.deterministic) and workers > 1 and plan.n_steps > 1 and not recipe
        # Deterministic with threads: each gemm split into fixed row chunks on Numba's threads
        # over single-threaded BLAS (see numba_kernels.split_dot); Hogwild: one gemm per worker.
        use_blas = use_blas_for(net.sizes, bs, self.blas_min_work)
        n_split = 1 if hogwild else workers
        ws = Workspace(net.sizes, bs, net.dtype, use_blas, n_workers=workers if hogwild else None, n_split=n_split)
        csr = self._csr(plan.X, bool(use_blas[0]))
        args = (net.params, net.layout_array(), _kinds(net), K.LOSS_CODES[plan.loss], plan.X, float(plan.x_scale),
                *csr, np.ascontiguousarray(plan.targets), plan.labels, plan.order,
                np.asarray(plan.lrs, dtype=np.float64), bs, use_blas, *ws.step_args())
        n_blas = 1 if use_blas.any() else None
        if hogwild:  # its kernel never reaches the split gemms (a nested prange serialised it)
            return K.train_epoch_hogwild, args, n_blas, ws
        if not recipe:  # plain SGD: the original kernel, untouched by the recipe's code
            return K.train_epoch_serial, args + (n_split,), n_blas, ws
        return K.train_epoch_recipe, args + (n_split,) + self._recipe_args(net, plan, ws, csr), n_blas, ws

    @staticmethod
    def _recipe_args(net, plan, ws, csr):
        """The recipe's arguments of numba_kernels.train_epoch_recipe, with their scratch arrays."""
        momentum = float(plan.momentum)
        velocity = plan.velocity
        if momentum > 0:
            if velocity is None or velocity.shape != net.params.shape or velocity.dtype != net.params.dtype \
                    or not velocity.flags.c_contiguous:
                raise ValueError("momentum > 0 needs plan.velocity: a C-contiguous array shaped and typed like net.params")
        else:
            velocity = np.zeros(0, dtype=net.dtype)
        dropout = float(plan.dropout)
        max_shift = int(plan.max_shift)
        rows, cols = (int(v) for v in plan.image_shape) if max_shift > 0 else (0, 0)
        if max_shift > 0 and rows * cols != net.sizes[0]:
            raise ValueError(f"image_shape {plan.image_shape} does not match the {net.sizes[0]} inputs")
        bmax = plan.batch_size
        drop_size = ws.acts.shape[-1] if dropout > 0 else 0
        shift_csr = max_shift > 0 and csr[0].shape[0] > 0
        mptr = np.zeros(bmax + 1 if shift_csr else 0, dtype=np.int64)
        midx = np.zeros(bmax * net.sizes[0] if shift_csr else 0, dtype=csr[1].dtype)
        mval = np.zeros(midx.shape[0], dtype=np.uint8)
        return (np.zeros_like(net.params), velocity, momentum, bool(plan.nesterov), float(plan.l2), float(plan.l1),
                np.zeros(drop_size, dtype=net.dtype), np.zeros(drop_size, dtype=net.dtype), dropout,
                np.uint64(int(plan.seed) & 0xFFFFFFFFFFFFFFFF), int(plan.first_position), max_shift, rows, cols,
                mptr, midx, mval, np.arange(bmax, dtype=np.int64))

    def train_epoch(self, net, plan):
        requested = plan.requested_features() if hasattr(plan, "requested_features") else set()
        if requested - self.features:
            raise ValueError(f"the numba backend does not implement {', '.join(sorted(requested - self.features))} yet")
        kernel, args, n_blas, _ = self._epoch_call(net, plan)
        with blas_threads(n_blas):
            loss_sum, correct = kernel(*args)
        return float(loss_sum), int(correct)

    def prepare(self, net, plan):
        """Compile (or load from the on-disk cache) the kernels `plan` needs and return the
        seconds spent compiling: 0.0 when every kernel came from the cache. Loading from the
        cache still takes a moment (mostly Numba's own start-up, ~0.5 s here); `self.last_prepare`
        records that time, the cache hits and misses. Then indexes the non-zero pixels of plan.X,
        so the first timed epoch does not pay for it."""
        recipe = bool(plan.requested_features()) if hasattr(plan, "requested_features") else False
        hogwild = (not plan.deterministic) and plan.threads > 1 and numba.config.NUMBA_NUM_THREADS > 1 and not recipe
        kernel = K.train_epoch_recipe if recipe else K.train_epoch_hogwild if hogwild else K.train_epoch_serial
        dispatchers = (kernel, K.forward_chunks, K.build_csr)
        before = [_cache_counts(d) for d in dispatchers]
        t0 = time.perf_counter()
        # A tiny epoch on a copy: same argument types as the real call, so the same machine code.
        small = net.copy()
        m = min(2, plan.X.shape[0])
        steps = 2 if hogwild else 1
        tiny = type(plan)(X=plan.X[:m], x_scale=plan.x_scale, targets=plan.targets[:m], labels=plan.labels[:m],
                          order=np.zeros(steps * plan.batch_size, dtype=np.int64), lrs=np.zeros(steps),
                          batch_size=plan.batch_size, loss=plan.loss, threads=plan.threads,
                          deterministic=plan.deterministic)
        if recipe:  # the same recipe, on a fresh velocity (compiling must not move the real state)
            for name in ("momentum", "nesterov", "l2", "l1", "dropout", "max_shift", "image_shape", "seed"):
                setattr(tiny, name, getattr(plan, name))
            tiny.velocity = np.zeros_like(small.params) if plan.momentum > 0 else None
        self.train_epoch(small, tiny)
        self.forward(small, plan.X[:m], plan.x_scale, plan.threads)
        seconds = time.perf_counter() - t0
        after = [_cache_counts(d) for d in dispatchers]
        hits = sum(a[0] - b[0] for a, b in zip(after, before))
        misses = sum(a[1] - b[1] for a, b in zip(after, before))
        t1 = time.perf_counter()
        self._csr(plan.X, bool(use_blas_for(net.sizes, plan.batch_size, self.blas_min_work)[0]))
        self.last_prepare = {"seconds": seconds, "compiled": misses > 0, "cache_hits": hits, "cache_misses": misses,
                             "index_seconds": time.perf_counter() - t1}
        return seconds if misses > 0 else 0.0


def _cache_counts(dispatcher):
    stats = dispatcher.stats
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())
