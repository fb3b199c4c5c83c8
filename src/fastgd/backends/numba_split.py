"""The "split" epoch of the Numba backend: a sparse first layer of at most 16 units on two threads.

The twin of kernels/dense_sgd.pyx's train_epoch_split (see "the split epoch" there). On the
lesson network the first layer's sparse loops are most of a step, and a step (~3 us) is too short
for libgomp's barriers. The first layer's weight rows are split at a pixel (Team.split, chosen by
base.balanced_split): worker 0 ("lower") owns the rows below it, worker 1 ("upper") the rest, for
the forward and the update. Per step:

  lower: await the step's rows copied; sum its pixels (from the bias); await the upper sums;
         add them, run the rest of the network and its deltas; publish the first layer's deltas;
         update its rows, the biases and the small layers.
  upper: sum its pixels (from zero); publish; copy the rows of the step GATHER_AHEAD on into the
         stream buffers (the pipelined copy of the one-thread epoch, here in-kernel); await the
         deltas; update its rows.

Each thread reads and writes only its own weight rows between hand-offs, so two spin-waited
counters a step suffice (numba_simd.counter_load / counter_publish). Every other mode sums a
split layer's rows in the same two parts (numba_sparse._sparse_forward_narrow), so the weights
are bitwise those of the one-worker team epoch on the same split.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_kernels import (JIT, _acts, _layer_views, _team_scratch, activation_forward_rows, bias_update,
                            borrowed_data, borrowed_net, borrowed_team, dense_forward_loops, gather_csr_rows,
                            output_delta, team_deltas, team_update_loops)
from .numba_simd import (borrow, copy_elems, counter_load, counter_publish, cycles, ld, prefetch, spin_pause,
                         team_size, vadd, view1d, view2d, vload, vstore, yield_core)
from .numba_sparse import sparse_forward_narrow, sparse_update_narrow

#: Steps between the upper thread's copy of a step's rows and their use.
GATHER_AHEAD = 4
#: The hand-off counters (flags, int64, each on its own 64-byte line): steps whose rows are
#: copied, steps whose upper sums are published, steps whose first-layer deltas are published.
F_GATHERED, F_UPPER, F_DELTAS, F_SIZE = 0, 8, 16, 24
#: Spins before a waiting thread yields its core (two trainers at once: more threads than cores).
SPINS = 4096


@njit(**JIT)
def tick(prof, slot, last):
    """With a profile (prof not empty; slots: base.SPLIT_PROFILE_PHASES): the cycles since last
    count to slot. Returns the time now (last when there is no profile)."""
    if prof.shape[0] == 0:
        return last
    now = cycles()
    prof[slot] += now - last
    return now


@njit(**JIT)
def await_counter(flags, i, value):
    """Wait until flags[i] >= value (acquire): spin, then yield the core."""
    spins = 0
    while counter_load(flags, i) < value:
        spins += 1
        if spins < SPINS:
            spin_pause()
        else:
            yield_core()


@njit(**JIT)
def stream_rows(src, order, a, b, st, mids, split, pos):
    """Copy the rows order[a:b] of src (Data: CSR, targets, labels) into the stream st (Data whose
    row s is the call's s-th row) from pixel entry pos on, and each row's split point into mids
    (its first entry at or above split: the count of its pixels below, a branch-free sum where a
    binary search per row and use cost ~0.1 us); returns the entry after the last. Rows, targets
    and labels are asked for 8 rows ahead in the whole order (gather_csr_rows): a call copies one
    step's rows."""
    end = gather_csr_rows(src.csr_ptr, src.csr_idx, src.csr_val, order, a, b, view1d(st.csr_ptr, a, b - a + 1),
                          st.csr_idx, st.csr_val, pos)
    m = order.shape[0]
    n_out = st.targets.shape[1]
    for s in range(a, b):
        if s + 8 < m:
            r = ld(order, s + 8)
            prefetch(src.targets, r * n_out)
            prefetch(src.labels, r)
        r = ld(order, s)
        copy_elems(st.targets, s * n_out, src.targets, r * n_out, n_out)
        st.labels[s] = src.labels[r]
        p0 = ld(st.csr_ptr, s)
        below = 0  # through ld: the checked, wrapping index ran 0.6 us a step
        for p in range(p0, ld(st.csr_ptr, s + 1)):
            below += ld(st.csr_idx, p) < split
        mids[s] = p0 + below
    return end


@njit(**JIT)
def upper_sums(net, st, mids, rows, t, zu):
    """The upper pixels' sums (from zero) of the step's rows into zu (bm, sizes[1])."""
    W0, b0 = _layer_views(net.params, net.layout, 0)
    sparse_forward_narrow(st.csr_ptr, st.csr_idx, st.csr_val, t.lut, rows, W0, b0, zu, t.split, 2, mids)


@njit(**JIT)
def upper_update(net, st, mids, rows, t, coef, table):
    """The upper weight rows of the first layer: W[k] -= coef * x[s, k] * D[s], samples in order."""
    n_in, n1 = t.sizes[0], t.sizes[1]
    for v in range(256):
        table[v] = -coef * t.lut[v]
    sparse_update_narrow(st.csr_ptr, st.csr_idx, st.csr_val, table, rows, t.split, n_in, t.deltas, t.act_off[1],
                         n1, view1d(net.params, net.layout[0, 0], n_in * n1), mids)


@njit(**JIT)
def lower_step(net, st, mids, rows, t, s, zu, coef, table, flags, k, prof, last):
    """One step of the lower thread (see the module docstring), its phases ticked into prof from
    last on; returns (loss sum, n_correct, the profile's time now)."""
    B = rows.shape[0]
    bm = s.zlast.shape[0]
    L = net.layout.shape[0]
    n_in, n1 = t.sizes[0], t.sizes[1]
    W0, b0 = _layer_views(net.params, net.layout, 0)
    a0 = _acts(s.acts, s.act_off, s.sizes, 1, bm)
    z0 = s.zlast if L == 1 else a0
    await_counter(flags, F_GATHERED, k + 1)
    last = tick(prof, 0, last)
    sparse_forward_narrow(st.csr_ptr, st.csr_idx, st.csr_val, t.lut, rows, W0, b0, z0, t.split, 1, mids)
    last = tick(prof, 1, last)
    await_counter(flags, F_UPPER, k + 1)
    last = tick(prof, 2, last)
    for i in range(B):  # lower + upper, as the one-thread sum
        vstore(z0, i * n1, n1, vadd(vload(z0, i * n1, n1), vload(zu, i * n1, n1)))
    activation_forward_rows(z0, a0, B, net.kinds[0])
    for l in range(1, L):
        W, b = _layer_views(net.params, net.layout, l)
        x = _acts(s.acts, s.act_off, s.sizes, l, bm)
        a = _acts(s.acts, s.act_off, s.sizes, l + 1, bm)
        z = s.zlast if l == L - 1 else a
        dense_forward_loops(x, B, W, b, z)
        activation_forward_rows(z, a, B, net.kinds[l])
    last = tick(prof, 3, last)
    loss, correct = output_delta(net, st, rows, s)
    last = tick(prof, 4, last)
    team_deltas(net, t, s, B)
    last = tick(prof, 5, last)
    counter_publish(flags, F_DELTAS, k + 1)
    # the update as team_update on one worker, the first layer's lower rows only
    for l in range(L):
        tW, tb = _layer_views(net.params, net.layout, l)
        n_out = t.sizes[l + 1]
        bias_update(view2d(t.deltas, t.act_off[l + 1], B, n_out), B, coef, tb)
        if l == 0:
            for v in range(256):
                table[v] = -coef * t.lut[v]
            sparse_update_narrow(st.csr_ptr, st.csr_idx, st.csr_val, table, rows, 0, t.split, t.deltas, t.act_off[1],
                                 n1, view1d(net.params, net.layout[0, 0], n_in * n1), mids)
        else:
            team_update_loops(t, l, B, coef, tW, 0, t.sizes[l])
    last = tick(prof, 6, last)
    return loss, correct, last


@njit(parallel=True, **JIT)
def train_epoch_split(net, src, st, mids, order, ident, lrs, batch_size, t, flags, zu, tables, losses, corrects,
                      prof):
    """Plain SGD over every minibatch of `order` (rows of src: Data with the input's CSR, targets,
    labels) on two workers, the rows copied into st (Data of stream buffers: csr_ptr (m + 1,),
    csr_idx/csr_val (the rows' non-zeros), targets (m, n_out), labels (m,)) as the epoch goes;
    ident = 0, 1, ... (m,); mids (m + 1,) int64: each stream row's split point, written as the rows
    are copied. t: a one-worker Team whose split is set; flags (F_SIZE,) int64 zeros;
    zu (bm * sizes[1],); tables (2, 256). Loss sum and correct count into losses[0], corrects[0].
    Needs a prange whose two iterations run one per OpenMP thread (numba_backend.team_works(2));
    given one thread, worker 0 runs both halves itself (same bits). prof: int64, empty, or
    base.SPLIT_PROFILE_SLOTS slots to which each phase's cycles are added (two threads only)."""
    m = order.shape[0]
    n_steps = (m + batch_size - 1) // batch_size
    f = net.params.dtype.type
    for w in prange(2):  # borrowed views made inside: a parfor cannot take namedtuples built outside it
        bnet = borrowed_net(net)
        bsrc = borrowed_data(src)
        bst = borrowed_data(st)
        bt = borrowed_team(t)
        border = borrow(order)
        bident = borrow(ident)
        bmids = borrow(mids)
        bflags = borrow(flags)
        bprof = borrow(prof)
        # no profile when one thread runs both halves: its phases would interleave
        no_prof = view1d(bprof, 0, 0)
        n1 = bt.sizes[1]
        zu2 = view2d(zu, 0, bt.bm, n1)
        table = view1d(tables, w * 256, 256)
        alone = team_size() < 2
        wprof = no_prof if alone else bprof
        last = cycles() if wprof.shape[0] > 0 else 0
        if w == 0:
            s = _team_scratch(bt, 0, 0)
            ls = 0.0
            cor = 0
            if alone:
                stream_rows(bsrc, border, 0, m, bst, bmids, bt.split, 0)
                counter_publish(bflags, F_GATHERED, n_steps)
            for k in range(n_steps):
                start = k * batch_size
                B = min(batch_size, m - start)
                rows = view1d(bident, start, B)
                coef = f(lrs[k]) / f(B)
                if alone:
                    upper_sums(bnet, bst, bmids, rows, bt, zu2)
                    counter_publish(bflags, F_UPPER, k + 1)
                a, c, last = lower_step(bnet, bst, bmids, rows, bt, s, zu2, coef, table, bflags, k, wprof, last)
                ls += a
                cor += c
                if alone:
                    upper_update(bnet, bst, bmids, rows, bt, coef, view1d(tables, 256, 256))
            losses[0] = ls
            corrects[0] = cor
        elif not alone:
            ahead = min(GATHER_AHEAD, n_steps)
            pos = stream_rows(bsrc, border, 0, min(ahead * batch_size, m), bst, bmids, bt.split, 0)
            counter_publish(bflags, F_GATHERED, ahead)
            for k in range(n_steps):
                start = k * batch_size
                B = min(batch_size, m - start)
                rows = view1d(bident, start, B)
                upper_sums(bnet, bst, bmids, rows, bt, zu2)
                counter_publish(bflags, F_UPPER, k + 1)
                last = tick(wprof, 16, last)
                if k + GATHER_AHEAD < n_steps:
                    a = (k + GATHER_AHEAD) * batch_size
                    pos = stream_rows(bsrc, border, a, min(a + batch_size, m), bst, bmids, bt.split, pos)
                    counter_publish(bflags, F_GATHERED, k + GATHER_AHEAD + 1)
                last = tick(wprof, 17, last)
                await_counter(bflags, F_DELTAS, k + 1)
                last = tick(wprof, 18, last)
                upper_update(bnet, bst, bmids, rows, bt, f(lrs[k]) / f(B), table)
                last = tick(wprof, 19, last)
