"""The Numba backend: the fused kernels of `numba_kernels`, JIT-compiled and cached on disk.

One kernel family: `numba_kernels.minibatch_step` is the only training step. Plain SGD, the
optimisers (momentum, Nesterov, weight decay, L1, Adam, AdamW) and augmentation (dropout,
image shifts) are the same source, specialised at compile time: an absent optimiser or
augmentation is passed as ``None`` and its branches are pruned.

Threads
-------
* Deterministic plain SGD without augmentation (the issue-11 table): the team epoch
  (numba_kernels.train_epoch_team), ONE parallel region per call and two OpenMP team barriers
  per minibatch, like the Cython sync mode: each worker runs the forward pass and deltas of its
  share of the minibatch's rows (single-threaded gemm on its rows for BLAS-sized layers, the
  zero-skipping input layer of numba_sparse at every width, loops), then applies the update of
  its share of every layer's weights (weight rows: one gemm with beta = 1 over all B rows; the
  sparse input layer's rows through the worker's column index of the minibatch's pixels), in a
  fixed order. More than one worker only when some layer is BLAS-sized or batch x n_params
  reaches `team_min_work` (small networks stay on one thread), and only when `team_works`
  (Numba's "omp" layer, a prange running one iteration per OpenMP thread, and not a
  bounds-checked build); otherwise the team runs on one worker. Nothing inside the team region
  can raise (no allocation, indices valid by construction), so no worker can leave the other
  waiting at a barrier. A one-worker team with sparse input trains on a copy of the call's rows
  in visiting order (fastgd.backends.pipeline; the lesson network's epoch 55 -> 46 ms), copied
  part by part on a second Python thread while it trains on the part before when
  plan.threads > 1.
* The same, for float32 networks with relu / leaky_relu hidden layers and enough work per step
  (`cols`, `cols_min_work`): the "cols" epoch (numba_cols, the twin of the Cython backend's),
  where each worker owns a column slice of every hidden layer for the whole call, so its
  weights stay in its own L2 cache, computed with 6-row x 64-column register tiles (bias and
  activation fused into the forward, the derivative into the deltas, the SGD step into the
  weight-gradient tile). It replaces the team epoch where it measured faster: 784-512-512-10 on
  MNIST at batch 32, 2 threads, 1.6 vs 2.1 s per epoch (see numba_cols for the figures).
* Inference: a few rows (single-sample predict) run `forward_flat` on the caller's thread from
  net.params; more rows run `forward_chunks` in parallel chunks.
* Deterministic mode otherwise (optimisers, augmentation): the epoch runs minibatch after
  minibatch in one compiled call. Layers big enough for BLAS split each gemm into fixed row
  chunks, one per Numba thread, each a single-threaded gemm (the result depends on the thread count through the
  gradient's partial sums, never on timing); OpenBLAS's own threads are not used because they
  collapsed on this busy 2-core machine (31 s vs 2 s per 784-512-512-10 epoch). Small layers
  stay serial, identical for any thread count: a Numba prange region measured 1.2 us with one
  thread and 7 us with two while other work ran, i.e. 85 ms of launch/barrier cost for the
  12,000 regions of a batch-10 MNIST epoch, more than the whole serial epoch. EpochResult says
  what ran: "serial" (one thread) or "sync" (split gemms on `threads_used` threads).
* ``plan.deterministic = False`` with threads > 1 and plain SGD without augmentation:
  Hogwild-style, one parallel region for the whole epoch, each thread running its own share of
  the minibatches and updating the shared weights without locks (BLAS held to one thread inside
  it). With an optimiser state (momentum, Adam) or augmentation there is no Hogwild here: the
  epoch runs deterministic, and EpochResult.mode says so ("serial"/"sync", never "hogwild").

Workspace
---------
`prepare` returns a Workspace holding everything a fit needs: the CSR index of plan.X's
non-zero pixels built from plan.X at that moment, the buffers a call's rows are copied into, the
per-minibatch scratch, the gradient buffer of the optimiser step, augmentation scratch. The backend object keeps only tuning knobs, so two
Trainers in two threads are safe (Numba's thread count is per calling thread).

Threading layer: OpenMP ("omp") is preferred. It launches a parallel region in about a
microsecond (the "workqueue" layer measured ~85 us here), and it is the same libgomp the Cython
backend uses, so both backends share one thread pool in a process. NUMBA_THREADING_LAYER, if
set, wins.

Ctrl-C: a compiled call cannot be interrupted; a SIGINT that arrives during one is raised when it
returns. A compiled function that returns arrays calls back into Python to box them, where the
pending interrupt surfaced as "SystemError: ... returned a result with an exception set"; so
every kernel here returns only numbers (the CSR index is allocated in Python and filled in
place), and `_call` turns any such SystemError back into the KeyboardInterrupt it is.
"""
from __future__ import annotations

import dataclasses
import os
import time
from contextlib import nullcontext

import numpy as np

from .. import ops
from .base import (AUGMENT_FEATURES, COLS_MIN_WORK, FEATURES, SGD, Backend, BackendUnavailable, EpochResult,
                   SPLIT_PROFILE_SLOTS, Workspace, balanced_split, blas_controller, blas_limit, cols_pays,
                   sparse_input_pays)

try:
    import numba
except ImportError as exc:  # pragma: no cover - numba is a dependency
    raise BackendUnavailable(f"numba is not installed: {exc}") from exc

if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


from . import numba_augment  # noqa: E402
from . import pipeline  # noqa: E402
from . import numba_kernels as K  # noqa: E402
from . import numba_cols  # noqa: E402
from . import numba_split  # noqa: E402

try:  # _fp_mode: Numba cannot set the SSE control word, the package's small compiled helper can
    from .._kernels.openmp_info import flush_denormals as _flush_denormals, restore_fp as _restore_fp
except ImportError:  # extensions not built (a source checkout): no flushing, same results
    def _flush_denormals():
        return 0

    def _restore_fp(old):
        pass

try:  # load SciPy's BLAS now: a BLAS limit only reaches libraries already loaded, and the
    # kernels' first gemm would otherwise load it inside a `blas_threads(1)` block, unlimited (two
    # OpenBLAS threads on the busy 2-core machine: 128x784x512 sgemm 28 ms instead of 1.3 ms)
    from numba.np.linalg import ensure_blas
    ensure_blas()
except ImportError:  # pragma: no cover - SciPy missing: only the loop kernels can run
    pass

NAME = "numba"

#: A layer goes through BLAS gemm when batch * n_in * n_out reaches this.
BLAS_MIN_WORK = 1 << 20
#: The team epoch runs on more than one worker when some layer is BLAS-sized or batch x n_params
#: reaches this. Below it two barriers per step and the weights moving between the cores' caches
#: (each worker reads every weight row in the forward pass, writes its half in the update) cost
#: more than the split saves: the Cython backend's sync mode measured 784-128-10 at batch 32
#: (3.3M) 0.82x from 1 to 2 threads, batch 128 (13M) 1.34x, 784-256-10 at batch 64 (13M) 1.42x
#: (quiet machine, TEAM.md). The lesson network (0.13M) stays on one thread.
TEAM_MIN_WORK = 1 << 23
#: Rows per chunk in `forward` and `evaluate`.
FORWARD_CHUNK = 256
#: rows x n_params up to which `forward` runs numba_kernels.forward_flat on the caller's thread
#: (784-128-10: 2 rows), as the Cython backend's flat_forward_max_work.
FLAT_FORWARD_MAX_WORK = 1 << 18


def _call(kernel, *args):
    """kernel(*args), with a Ctrl-C that landed during the call raised as KeyboardInterrupt (Numba
    wraps it in "SystemError: ... returned a result with an exception set")."""
    try:
        return kernel(*args)
    except SystemError as exc:
        seen, cause = set(), exc
        while cause is not None and id(cause) not in seen:  # the interrupt may sit a few causes down
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        raise


def kinds_of(net):
    """Per layer: the activation code (fastgd.ops) the kernels switch on."""
    hidden = ops.ACTIVATION_CODES[net.activation]
    return np.array([hidden] * (net.n_layers - 1) + [ops.ACTIVATION_CODES[net.output]], dtype=np.int64)


def use_blas_for(sizes, batch, blas_min_work):
    """Per layer: does batch * n_in * n_out reach the BLAS threshold?"""
    return np.array([batch * a * b >= blas_min_work for a, b in zip(sizes[:-1], sizes[1:])], dtype=np.bool_)


def make_scratch(sizes, bmax, dtype, use_blas, n_workers=None, n_split=1):
    """numba_kernels.Scratch for minibatches of up to `bmax` rows; with n_workers, every array has
    a leading worker axis (Hogwild, forward chunks) and n_split is None (no nested parallelism)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    lead = () if n_workers is None else (n_workers,)
    widest = int(sizes.max())
    act_off = np.concatenate([[0], np.cumsum(sizes * bmax)]).astype(np.int64)
    # gW: a BLAS layer's partial weight gradients (one per row chunk), or a loop layer's
    # transposed weights (l > 0)
    split = 1 if n_split is None else n_split
    gw = max([int(sizes[l] * sizes[l + 1]) * (split if use_blas[l] else 1) for l in range(len(sizes) - 1)
              if use_blas[l] or l > 0] or [1])
    return K.Scratch(np.zeros(lead + (int(act_off[-1]),), dtype=dtype), act_off, sizes,
                     np.zeros(lead + (bmax, int(sizes[-1])), dtype=dtype),
                     np.zeros(lead + (bmax * widest,), dtype=dtype), np.zeros(lead + (bmax * widest,), dtype=dtype),
                     np.zeros(lead + (gw,), dtype=dtype), np.ascontiguousarray(use_blas, dtype=np.bool_),
                     None if n_workers is not None else int(n_split))


def make_team(sizes, bmax, n_workers, dtype, use_blas, csr=None, x_scale=1.0, split=-1):
    """numba_kernels.Team for minibatches of up to bmax rows on n_workers workers: activations and
    deltas laid out like a Scratch (one (bmax, width) block per layer; worker w fills its rows),
    the output pre-activations, per-worker layer offsets, and per-worker transposed-weight
    scratch for the loop layers' deltas. With a sparse input (csr not empty): the pixel table
    and each worker's column-index scratch for the input layer's update (numba_sparse), sized
    for bmax rows of the densest row of csr, and each worker's 256-entry table of the step's
    coef x pixel value (the update of a sparse layer of at most 16 units). split: the pixel at
    which such a layer sums each row in two parts (numba_split; -1: one sum)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    bmax, n_workers = int(bmax), int(n_workers)
    act_off = np.concatenate([[0], np.cumsum(sizes * bmax)]).astype(np.int64)
    total = int(act_off[-1])
    wt = max([int(sizes[l] * sizes[l + 1]) for l in range(1, len(sizes) - 1) if not use_blas[l]] or [1])
    lut = np.zeros(256, dtype=dtype)
    if csr is not None and csr[0].shape[0] > 0:
        K.scale_table(x_scale, lut)
        widest = int(np.diff(csr[0]).max()) if csr[0].shape[0] > 1 else 0
        nc, ne, nb = int(sizes[0]) + 2, max(1, bmax * widest), bmax
    else:
        nc = ne = nb = 1
    return K.Team(np.zeros(total, dtype=dtype), np.zeros(total, dtype=dtype),
                  np.zeros(bmax * int(sizes[-1]), dtype=dtype),
                  np.zeros(n_workers * wt, dtype=dtype), np.zeros(n_workers * act_off.shape[0], dtype=np.int64), wt,
                  -(-bmax // n_workers), act_off, sizes, np.ascontiguousarray(use_blas, dtype=np.bool_), lut,
                  np.zeros(n_workers * nc, dtype=np.int32), np.zeros(n_workers * ne, dtype=np.int32),
                  np.zeros(n_workers * ne, dtype=np.uint8), np.zeros(n_workers * nb, dtype=np.int64),
                  np.zeros(n_workers * nb, dtype=np.int64), np.zeros(n_workers * 256, dtype=dtype),
                  int(split) if 0 < split < sizes[0] else 1 << 62)


def team_works(n_workers):
    """Can train_epoch_team run on n_workers threads here: Numba's "omp" layer, libgomp's
    barrier, and a prange that runs its iterations one per OpenMP thread (checked by running
    one). One worker needs no barrier. Not in a bounds-checked build (NUMBA_BOUNDSCHECK=1): its
    checks raise IndexError, and a worker leaving the region early would leave the other waiting
    at a barrier for ever (the team then runs on one worker)."""
    if n_workers == 1:
        return True
    if not K.HAVE_GOMP or K.BOUNDS:
        return False
    nums = np.full(n_workers, -1, dtype=np.int64)
    sizes = np.zeros(n_workers, dtype=np.int64)
    _call(K.team_probe, nums, sizes)
    return (numba.threading_layer() == "omp" and bool((nums == np.arange(n_workers)).all())
            and bool((sizes == n_workers).all()))


NO_CSR = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint16), np.zeros(0, dtype=np.uint8))


def blas_threads(n):
    """Limit BLAS to n threads for a `with` block; None leaves BLAS alone (no BLAS call follows).

    Not touching BLAS when no layer uses it matters: setting OpenBLAS to 2 threads wakes its
    thread pool, and the lesson network's serial epoch then measured 0.12 s wall instead of
    0.085 s on the shared 2-core machine (CPU time unchanged)."""
    return nullcontext() if n is None else blas_limit(n)


def set_threads(threads):
    """numba.set_num_threads (per calling thread), clipped to Numba's pool; returns the count used."""
    n = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def _plain_sgd(rule):
    return rule.kind == SGD and rule.momentum == 0 and rule.weight_decay == 0 and rule.l1 == 0


class NumbaBackend(Backend):
    """Numba implementation of the backend contract (see base.py). Attributes are tuning knobs
    only (the tests use them to reach every code path on tiny data):

      blas_min_work: per-step batch x n_in x n_out at which a layer calls BLAS.
      forward_chunk: rows per chunk in forward/evaluate.
      sparse_input: "auto" | "always" | "never": read uint8 input through its CSR of non-zero
        pixels ("auto": when at most `sparse_max_density` of them are non-zero; outside the team
        epoch also only when the first layer is not BLAS-sized, its column-blocked sparse update
        losing to gemm there: 784-512-512-10 at batch 128 measured 0.64 s dense vs 0.99 s sparse
        on 20k images. The team's numba_sparse layer beats gemm at every width measured,
        128-512 units at batch 32-128).
      cols / cols_min_work: the "cols" epoch (numba_cols) for float32 plain SGD with relu /
        leaky_relu / linear hidden layers: None (on 2+ workers, by base.cols_pays, as the Cython
        backend), True (whenever it applies), False (never).
      team_min_work: batch x n_params from which the team epoch uses more than one worker
        without a BLAS-sized layer (TEAM_MIN_WORK).
      flat_forward_max_work: rows x n_params up to which forward runs forward_flat on the
        caller's thread (FLAT_FORWARD_MAX_WORK).
      permute_sparse: the one-worker team epoch streams each call's sparse rows copied in
        visiting order (fastgd.backends.pipeline) instead of reading them where they lie.
      overlap_gather: when plan.threads > 1 but the team has one worker, that copy runs part by
        part on a second (Python) thread while the kernel trains on the part before.
      split: when plan.threads > 1, the team has one worker and its sparse first layer is at most
        16 units wide, run the "split" epoch instead (numba_split: the layer's weight rows split at
        a pixel between two threads, the second also copying the rows; the same bits).
      split_share: the lower thread's share of the layer's non-zeros (None: base.SPLIT_LOWER_SHARE).
      split_profile: None, or an int64 array of base.SPLIT_PROFILE_SLOTS to which each split
        epoch adds its threads' cycles per phase (a measuring aid: bench/split_profile.py).
    """

    name = NAME
    features = frozenset(FEATURES + AUGMENT_FEATURES)

    def __init__(self, blas_min_work=BLAS_MIN_WORK, forward_chunk=FORWARD_CHUNK, sparse_input="auto",
                 sparse_max_density=0.5, team_epoch=True, team_min_work=TEAM_MIN_WORK):
        self.team_epoch = team_epoch
        # the cols epoch: None (by base.cols_pays), True (whenever it applies), False (never);
        # env FASTGD_NUMBA_COLS=1/0 sets True/False
        self.cols = {"1": True, "0": False}.get(os.environ.get("FASTGD_NUMBA_COLS", "auto"))
        self.cols_min_work = COLS_MIN_WORK
        self.team_min_work = team_min_work
        self.blas_min_work = blas_min_work
        self.forward_chunk = forward_chunk
        self.sparse_input = sparse_input
        self.sparse_max_density = sparse_max_density
        self.flat_forward_max_work = FLAT_FORWARD_MAX_WORK
        self.permute_sparse = True
        self.overlap_gather = True
        self.split = True
        self.split_share = None
        self.split_profile = None

    # ---- sparse input ---------------------------------------------------------------------------
    def _csr(self, X, first_layer_blas):
        """(ptr, idx, val) of uint8 X's non-zero pixels if the input layer should read them, else
        NO_CSR. Built from X as it is now (never cached beyond a workspace)."""
        if X.dtype != np.uint8 or self.sparse_input == "never" or (first_layer_blas and self.sparse_input == "auto"):
            return NO_CSR
        csr = _call(K.build_csr, X, np.uint16 if X.shape[1] <= 65536 else np.int32)  # see the module docstring
        if self.sparse_input == "always" or csr[1].size <= self.sparse_max_density * max(X.size, 1):
            return csr
        return NO_CSR

    @staticmethod
    def _data(X, x_scale, csr, targets, labels, loss_code, dtype):
        return K.Data(X, float(x_scale), csr[0], csr[1], csr[2], targets, labels, loss_code)

    # ---- inference ------------------------------------------------------------------------------
    def _forward_pass(self, net, X, x_scale, threads, targets=None, labels=None, loss=None):
        n = X.shape[0]
        chunk = max(1, min(self.forward_chunk, n))
        use_blas = use_blas_for(net.sizes, chunk, self.blas_min_work)
        workers = set_threads(threads)
        s = make_scratch(net.sizes, chunk, net.dtype, use_blas, n_workers=workers)
        out = np.empty((n, net.sizes[-1]), dtype=net.dtype)
        if targets is None:
            targets = np.zeros((0, net.sizes[-1]), dtype=net.dtype)
            labels = np.zeros(0, dtype=np.int32)
            losses = corrects = None
        else:
            n_chunks = -(-n // chunk)
            losses, corrects = np.zeros(n_chunks), np.zeros(n_chunks, dtype=np.int64)
        sparse = None
        if self._sparse_forward(net, X):  # each chunk's non-zero pixels listed in the kernel: no CSR of X
            room = chunk * X.shape[1] + 1
            lut = np.empty(256, net.dtype)
            _call(K.scale_table, float(x_scale), lut)
            sparse = (np.empty((workers, chunk + 1), np.int64), np.empty((workers, room), np.uint16),
                      np.empty((workers, room), np.uint8), lut)
        data = self._data(X, x_scale, NO_CSR if sparse is not None else self._csr(X, bool(use_blas[0])), targets,
                          labels, ops.LOSS_CODES[loss] if loss is not None else 0, net.dtype)
        with blas_threads(1 if use_blas.any() else None):
            _call(K.forward_chunks, K.Net(net.params, net.layout_array(), kinds_of(net)), data, out, chunk, s, losses,
                  corrects, sparse)
        return out, losses, corrects

    def _sparse_forward(self, net, X):
        """Whether inference on uint8 X lists each chunk's non-zero pixels for the first layer:
        when at most `sparse_max_density` of the pixels are non-zero (base.sparse_input_pays),
        at every width (the lesson network's 10k-image forward, 2 threads: 3.8 ms dense, 2.4
        listed in registers, 2.6 listed bit by bit)."""
        if (X.dtype != np.uint8 or self.sparse_input == "never" or X.shape[1] > 65536 or X.size == 0
                or not X.flags.c_contiguous):
            return False
        return self.sparse_input == "always" or sparse_input_pays(X, self.sparse_max_density)

    def forward(self, net, X, x_scale, threads=1):
        if X.shape[0] == 0:
            return np.empty((0, net.sizes[-1]), dtype=net.dtype)
        if X.shape[0] * net.params.size <= self.flat_forward_max_work:
            # a few rows (single-sample predict): on this thread from the flat parameters
            if X.ndim != 2 or X.shape[1] != net.sizes[0]:
                raise ValueError(f"X has shape {X.shape}; the network takes rows of {net.sizes[0]} values")
            out = np.empty((X.shape[0], net.sizes[-1]), dtype=net.dtype)
            _call(K.forward_flat, K.Net(net.params, net.layout_array(), kinds_of(net)), X, float(x_scale), out)
            return out
        return self._forward_pass(net, X, x_scale, threads)[0]

    def evaluate(self, net, X, x_scale, targets, labels, loss, threads=1):
        if X.shape[0] == 0:
            return 0.0, 0
        targets = np.ascontiguousarray(targets, dtype=net.dtype)
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        _, losses, corrects = self._forward_pass(net, X, x_scale, threads, targets, labels, loss)
        return float(losses.sum()), int(corrects.sum())

    # ---- gradient (tests) -----------------------------------------------------------------------
    def loss_and_grad(self, net, X, x_scale, targets, loss, threads=1):
        n = X.shape[0]
        use_blas = use_blas_for(net.sizes, n, self.blas_min_work)
        s = make_scratch(net.sizes, n, net.dtype, use_blas)
        grad = np.zeros_like(net.params)
        data = self._data(X, x_scale, self._csr(X, bool(use_blas[0])), np.ascontiguousarray(targets, dtype=net.dtype),
                          np.zeros(n, dtype=np.int32), ops.LOSS_CODES[loss], net.dtype)
        with blas_threads(threads if use_blas.any() else None):
            value = _call(K.loss_and_grad, K.Net(net.params, net.layout_array(), kinds_of(net)), data, grad, s)
        return float(value), grad

    # ---- training -------------------------------------------------------------------------------
    def _team(self, plan, hogwild):
        return (not hogwild and _plain_sgd(plan.rule) and plan.dropout == 0 and plan.max_shift == 0
                and not _resamples(plan) and self.team_epoch)

    def _hogwild(self, plan, workers):
        return (not plan.deterministic and workers > 1 and plan.n_steps > 1 and _plain_sgd(plan.rule)
                and plan.dropout == 0 and plan.max_shift == 0 and not _resamples(plan))

    def _fit_buffers(self, net, plan, ws):
        """The workspace's buffers for `plan` (made on first use; a plan with another batch size,
        thread count or input array gets its own)."""
        workers = max(1, min(int(plan.threads), numba.config.NUMBA_NUM_THREADS))
        hogwild = self._hogwild(plan, workers)
        team = self._team(plan, hogwild)
        bs = int(plan.batch_size)
        use_blas = use_blas_for(net.sizes, bs, self.blas_min_work)
        key = (bs, workers, hogwild, net.dtype.str, tuple(net.sizes))
        if getattr(ws, "scratch_key", None) != key:
            ws.scratch_key = key
            ws.scratch = make_scratch(net.sizes, bs, net.dtype, use_blas, n_workers=workers if hogwild else None,
                                      n_split=1 if hogwild else workers)
            ws.grad = np.zeros_like(net.params)
        # the team's sparse input layer (numba_sparse) pays at every width; the other paths'
        # column-blocked one only below BLAS size
        csr_key = (id(plan.X), team or not use_blas[0])
        if getattr(ws, "csr_of", None) is not plan.X or getattr(ws, "csr_key", None) != csr_key:
            ws.csr_of = plan.X
            ws.csr_key = csr_key
            ws.csr = self._csr(plan.X, not csr_key[1])
        ws.team = None
        if team:
            if ws.csr[0].shape[0] > 0:
                use_blas = use_blas.copy()
                use_blas[0] = False  # the sparse input layer never calls BLAS
            # more than one worker when the step has the work for it (two barriers per step)
            n_team = workers if (use_blas.any() or bs * net.params.size >= self.team_min_work) else 1
            if not team_works(n_team):
                n_team = 1
            # the column-index scratch is sized from this CSR's densest row
            tkey = (key, n_team, ws.csr_key, id(ws.csr[0]), float(plan.x_scale))
            if getattr(ws, "team_key", None) != tkey:
                set_threads(n_team)
                ws.team_key = tkey
                # a sparse first layer of at most 16 units sums its rows in two parts, split at a
                # pixel, on every worker count: the split epoch then gives the one-worker bits
                split = (balanced_split(ws.csr[1], net.sizes[0], self.split_share)
                         if ws.csr[0].shape[0] > 0 and net.sizes[1] <= K.VL else -1)
                ws.team_buffers = make_team(net.sizes, bs, n_team, net.dtype, use_blas, ws.csr, plan.x_scale,
                                            split)
                # the split epoch's two workers (probed on 2 threads: the probe's prange runs on
                # the calling thread's count)
                ws.split_works = n_team == 1 and split > 0 and workers > 1 and set_threads(2) == 2 and team_works(2)
                if self.permute_sparse and n_team == 1 and ws.csr[0].shape[0] > 0:  # a call visits at most every row
                    pipeline.perm_buffers(ws, plan.X.shape[0], int(ws.csr[0][-1]), plan.targets, ws.csr[1].dtype,
                                          touch=True)
            ws.team = ws.team_buffers
        ws.cols = None
        if team and self._cols(net, plan, workers, ws.csr):
            set_threads(workers)  # the probe's prange runs on the calling thread's count
            n_cols = workers if team_works(workers) else 1
            ckey = (key, n_cols, ws.csr_key, id(ws.csr[0]))
            if getattr(ws, "cols_key", None) != ckey:
                ws.cols_key = ckey
                ws.cols_buffers = numba_cols.make_cols(net, bs, n_cols, ws.csr)
            ws.cols = ws.cols_buffers
        return hogwild, workers, use_blas

    def _cols(self, net, plan, workers, csr):
        """Whether the team's call runs the "cols" epoch instead (numba_cols; see the cols knob)."""
        kinds = kinds_of(net)
        if (self.cols is False or net.dtype != np.float32 or len(net.sizes) < 3
                or int(kinds[0]) not in numba_cols.HIDDEN_KINDS or int(kinds[-1]) not in numba_cols.OUTPUT_KINDS
                or plan.X.dtype not in (np.uint8, np.float32)):
            return False
        if self.cols:
            return True
        return workers >= 2 and cols_pays(net.sizes, plan.batch_size, workers, csr[0].shape[0] > 0, numba_cols.VL,
                                           self.cols_min_work)

    @staticmethod
    def _optim(net, rule, grad):
        """numba_kernels.Optim for the rule, or None for plain SGD (updated in place)."""
        if _plain_sgd(rule):
            return None
        empty = np.zeros(0, dtype=net.dtype)
        state = tuple(rule.state) + (empty, empty)
        return K.Optim(int(rule.kind), float(rule.momentum), bool(rule.nesterov), float(rule.weight_decay),
                       float(rule.l1), float(rule.beta1), float(rule.beta2), float(rule.eps), int(rule.step), grad,
                       state[0], state[1])

    @staticmethod
    def _augment(net, plan, ws):
        """numba_kernels.Augment for plan's dropout, shifts, rotation and elastic distortion, or None when
        all are off."""
        dropout, max_shift = float(plan.dropout), int(plan.max_shift)
        rotate, alpha = float(plan.max_rotate), float(plan.elastic_alpha)
        if dropout == 0 and max_shift == 0 and rotate == 0 and alpha == 0:
            return None
        rows, cols = (int(v) for v in plan.image_shape) if (max_shift > 0 or rotate > 0 or alpha > 0) else (0, 0)
        bmax = int(plan.batch_size)
        s, csr = ws.scratch, ws.csr
        drop_size = s.acts.shape[-1] if dropout > 0 else 0
        shift_csr = max_shift > 0 and csr[0].shape[0] > 0 and not _resamples(plan)
        n_pixels = rows * cols if shift_csr else 0
        pix = np.arange(n_pixels, dtype=np.int64)
        midx = np.zeros(bmax * net.sizes[0] if shift_csr else 0, dtype=csr[1].dtype)
        return K.Augment(dropout, net.dtype.type(1.0 / (1.0 - dropout)), np.uint64(int(plan.seed) % (1 << 64)),
                         int(plan.first_position), max_shift, rows, cols,
                         np.zeros(drop_size, dtype=net.dtype), np.zeros(drop_size, dtype=net.dtype),
                         np.zeros(bmax + 1 if shift_csr else 0, dtype=np.int64), midx,
                         np.zeros(midx.shape[0], dtype=np.uint8), np.arange(bmax, dtype=np.int64),
                         pix // max(cols, 1), pix % max(cols, 1), rotate, alpha,
                         numba_augment.make_works(s.n_split or 1, rows, cols) if (rotate > 0 or alpha > 0)
                         else np.zeros((0, 0)))

    def train_epoch(self, net, plan, ws=None):
        # denormals flushed on this thread while the epoch runs (its Numba worker threads keep
        # their own mode): a saturated sigmoid net's deltas turn denormal and every op on one is slow
        old = _flush_denormals()
        try:
            return self._train_epoch(net, plan, ws)
        finally:
            _restore_fp(old)

    def _train_epoch(self, net, plan, ws):
        plan.validate(net)
        if ws is None:  # convenience for one-off calls (tests); the Trainer passes prepare()'s
            ws = Workspace()
        missing = plan.requested_features() - self.features
        if missing:
            raise ValueError(f"the numba backend does not implement {', '.join(sorted(missing))}")
        hogwild, workers, use_blas = self._fit_buffers(net, plan, ws)
        model = K.Net(net.params, net.layout_array(), kinds_of(net))
        csr = NO_CSR if _resamples(plan) else ws.csr  # rotation/elastic resample dense rows
        data = self._data(plan.X, plan.x_scale, csr, plan.targets, plan.labels, ops.LOSS_CODES[plan.loss], net.dtype)
        n_blas = 1 if use_blas.any() else None
        if ws.cols is not None:
            return self._train_cols(plan, ws, model, data)
        if ws.team is not None:
            return self._train_team(net, plan, ws, model, data, use_blas)
        set_threads(workers)
        with blas_threads(n_blas):
            if hogwild:
                loss_sum, correct = _call(K.train_epoch_hogwild, model, data, plan.order, plan.lrs,
                                          int(plan.batch_size), ws.scratch)
                return EpochResult(float(loss_sum), int(correct), workers, "hogwild")
            loss_sum, correct = _call(K.train_epoch, model, data, plan.order, plan.lrs, int(plan.batch_size),
                                      ws.scratch, self._optim(net, plan.rule, ws.grad), self._augment(net, plan, ws))
        used = workers if use_blas.any() else 1  # only the split gemms use more than one thread
        return EpochResult(float(loss_sum), int(correct), used, "sync" if used > 1 else "serial")

    @staticmethod
    def _train_cols(plan, ws, model, data):
        """The cols epoch (numba_cols.train_epoch_cols) over plan's rows where they lie."""
        nw = ws.cols.splits.shape[0] // (len(ws.cols.sizes) - 2) - 1
        set_threads(nw)
        losses, corrects = np.zeros(nw), np.zeros(nw, dtype=np.int64)
        _call(numba_cols.train_epoch_cols, model, data, plan.order, plan.lrs, int(plan.batch_size), ws.cols, losses,
              corrects)
        return EpochResult(float(losses.sum()), int(corrects.sum()), nw, "cols")

    def _train_team(self, net, plan, ws, model, data, use_blas):
        """The team epoch (numba_kernels.train_epoch_team) over plan's rows; with sparse input on
        one worker (and permute_sparse), over a copy of the call's rows in visiting order,
        pipelined with the training when a second thread is free (fastgd.backends.pipeline)."""
        nw = ws.team.woff.shape[0] // ws.team.act_off.shape[0]
        bs = int(plan.batch_size)
        if self.split and ws.split_works and not use_blas.any():
            return self._train_split(net, plan, ws, model, data, self.split_profile)
        set_threads(nw)
        order, copy, bounds = plan.order, None, [0, plan.order.size]
        # a one-worker team only: with two, rows stay where they lie, as before (an A/B measured
        # the copy slower there, 121 vs 106 ms on 784-128-10 at batch 128, but within this
        # machine's noise: identical code measured 105 vs 129 ms)
        if ws.csr[0].shape[0] > 0 and self.permute_sparse and nw == 1:
            ptr, idx, val = ws.csr

            def gather(a, rows, out_ptr, out_idx, out_val, pos):
                return _call(K.gather_csr_rows, ptr, idx, val, rows, 0, rows.shape[0], out_ptr, out_idx, out_val, pos)

            csr, targets, labels, order, copy = pipeline.permuted(
                ws, ws.csr, plan.order, plan.targets, plan.labels, int(_call(K.csr_rows_nnz, ptr, plan.order)), gather)
            data = data._replace(csr_ptr=csr[0], csr_idx=csr[1], csr_val=csr[2], targets=targets, labels=labels)
            bounds = pipeline.part_bounds(plan.n_steps, bs, order.size, self.overlap_gather and int(plan.threads) > 1)
        losses, corrects = np.zeros(nw), np.zeros(nw, dtype=np.int64)
        loss_sum, correct = [0.0], [0]

        def run(a, b):
            _call(K.train_epoch_team, model, data, order[a:b], plan.lrs[a // bs:], bs, ws.team, losses, corrects,
                  copy is not None)
            loss_sum[0] += float(losses.sum())
            correct[0] += int(corrects.sum())

        with blas_threads(1 if use_blas.any() else None):
            if copy is None:
                run(0, order.size)
            else:
                pipeline.run_in_parts(copy, bounds, run)
        return EpochResult(loss_sum[0], correct[0], nw, "sync" if nw > 1 else "serial")

    @staticmethod
    def _train_split(net, plan, ws, model, data, profile=None):
        """The split epoch (numba_split.train_epoch_split) over plan's rows, copied in visiting
        order into the workspace's buffers as it goes."""
        ptr, idx, val = ws.csr
        m, bs = plan.order.size, int(plan.batch_size)
        nnz = int(_call(K.csr_rows_nnz, ptr, plan.order))
        buf = pipeline.perm_buffers(ws, m, nnz, plan.targets, idx.dtype)
        stream = data._replace(csr_ptr=buf[0][:m + 1], csr_idx=buf[1], csr_val=buf[2], targets=buf[3][:m],
                               labels=buf[4][:m])
        mids = getattr(ws, "split_mids", None)
        if mids is None or mids.size < m + 1:
            mids = ws.split_mids = np.zeros(max(m + 1, buf[0].size), np.int64)
        if profile is not None and (not isinstance(profile, np.ndarray) or profile.dtype != np.int64
                                    or profile.ndim != 1 or profile.size < SPLIT_PROFILE_SLOTS):
            raise ValueError(f"split_profile must be None or a 1-D int64 array of {SPLIT_PROFILE_SLOTS} slots")
        flags = np.zeros(numba_split.F_SIZE, dtype=np.int64)
        zu = np.zeros(ws.team.bm * net.sizes[1], dtype=net.dtype)
        tables = np.zeros(512, dtype=net.dtype)
        losses, corrects = np.zeros(1), np.zeros(1, dtype=np.int64)
        set_threads(2)
        _call(numba_split.train_epoch_split, model, data, stream, mids[:m + 1], plan.order, buf[5][:m], plan.lrs, bs,
              ws.team, flags, zu, tables, losses, corrects, _NO_PROFILE if profile is None else profile)
        return EpochResult(float(losses[0]), int(corrects[0]), 2, "split")

    def prepare(self, net, plan):
        """Compile (or load from the on-disk cache) the kernels `plan` needs on a tiny copy of the
        problem, then build the workspace for plan: the CSR index of plan.X as it is now, the
        scratch and the gradient buffer. `ws.compile_seconds` is 0.0 when every kernel came from
        the cache; `ws.info` records the warm-up time, cache hits and misses. Leaves net.params
        and plan.rule.state untouched."""
        blas_controller()  # made now, not in a timed epoch
        dispatchers = (K.train_epoch, K.train_epoch_hogwild, K.train_epoch_team, numba_cols.train_epoch_cols,
                       numba_split.train_epoch_split,
                       K.forward_chunks, K.forward_flat, K.csr_fill)
        before = [_cache_counts(d) for d in dispatchers]
        t0 = time.perf_counter()
        small = net.copy()
        m = min(2, plan.X.shape[0])
        steps = 2
        rule = dataclasses.replace(plan.rule, state=tuple(np.zeros_like(s) for s in plan.rule.state))
        tiny = dataclasses.replace(plan, X=plan.X[:m], targets=plan.targets[:m], labels=plan.labels[:m],
                                   order=np.zeros(steps * plan.batch_size, dtype=np.int64), lrs=np.zeros(steps),
                                   rule=rule, first_position=0)
        self.train_epoch(small, tiny, Workspace())
        self.evaluate(small, plan.X[:m], plan.x_scale, plan.targets[:m], plan.labels[:m], plan.loss, plan.threads)
        self._forward_pass(small, plan.X[:m], plan.x_scale, plan.threads)  # chunked, as for many rows
        self.forward(small, plan.X[:1], plan.x_scale, plan.threads)  # forward_flat, as for one
        seconds = time.perf_counter() - t0
        after = [_cache_counts(d) for d in dispatchers]
        hits = sum(a[0] - b[0] for a, b in zip(after, before))
        misses = sum(a[1] - b[1] for a, b in zip(after, before))
        ws = Workspace(compile_seconds=seconds if misses > 0 else 0.0)
        t1 = time.perf_counter()
        self._fit_buffers(net, plan, ws)
        ws.info = {"seconds": seconds, "compiled": misses > 0, "cache_hits": hits, "cache_misses": misses,
                   "index_seconds": time.perf_counter() - t1}
        return ws


_NO_PROFILE = np.zeros(0, dtype=np.int64)


def _resamples(plan):
    """plan rotates or elastically distorts its images (fastgd.augment; dense input path)."""
    return float(plan.max_rotate) > 0 or float(plan.elastic_alpha) > 0


def _cache_counts(dispatcher):
    stats = dispatcher.stats
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())
