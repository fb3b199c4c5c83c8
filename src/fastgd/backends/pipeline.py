"""Rows in visiting order: a call's sparse input rows copied front to back, overlapped with training.

An epoch that visits shuffled rows in place hops over the whole input (27 MB of MNIST CSR) and
stalls on every row. Both compiled backends therefore copy a call's rows (their CSR entries,
targets and labels) into workspace buffers in visiting order and let the kernel stream them
(lesson network, median epoch: Cython ~60 -> ~35 ms; Numba's team epoch, which prefetches the
next minibatch, 55.5 -> 45.9 ms). When a second core is free (the epoch runs on one thread),
the copy runs on it, part by part, each part while the kernel trains on the one before
(`part_bounds`, `run_in_parts`).

Each backend owns the copy itself (its compiled gather) and the kernel call; this module owns
the buffers, the split into parts and the hand-off between the two threads.
"""
from __future__ import annotations

import threading

import numpy as np

from . import helper_pool


def perm_buffers(ws, m, nnz, targets, idx_dtype, touch=False):
    """The workspace's buffers for m rows holding nnz pixels: (row pointers (m + 1,) int64,
    pixel indices (nnz,) idx_dtype, pixel values (nnz,) uint8, targets (m, ...), labels (m,)
    int32, identity order (m,) int64); new ones when those are too small. touch: write them once
    so their pages are faulted in now rather than in an epoch (~10^4 faults: the first epoch
    otherwise ran ~3x slower)."""
    buf = getattr(ws, "perm_buffers", None)
    if (buf is None or buf[0].size < m + 1 or buf[1].size < nnz or buf[1].dtype != idx_dtype
            or buf[3].shape[1:] != targets.shape[1:] or buf[3].shape[0] < m or buf[3].dtype != targets.dtype):
        buf = (np.empty(m + 1, np.int64), np.empty(max(nnz, 1), idx_dtype), np.empty(max(nnz, 1), np.uint8),
               np.empty((m,) + targets.shape[1:], targets.dtype), np.empty(m, np.int32),
               np.arange(m, dtype=np.int64))
        if touch:
            for b in buf[:5]:
                b.fill(0)
        ws.perm_buffers = buf
    return buf


def permuted(ws, csr, order, targets, labels, nnz, gather):
    """The rows in `order`, in that order, in the workspace's buffers: (csr, targets, labels,
    identity order, copy). Nothing is copied here: copy(a, b, pos) copies rows a..b (their
    pixels from entry pos on; targets and labels too) and returns the entry after their last
    pixel, the pos of rows b.. (a backend's gather may drop pixels, e.g. Cython's shifts, so it
    is known only then). nnz: the rows' pixel count; gather(a, rows, out_ptr, out_idx, out_val,
    pos): the backend's compiled row copy of rows = order[a:b], returning the next entry."""
    m = order.size
    buf = perm_buffers(ws, m, nnz, targets, csr[1].dtype)
    out_ptr, out_targets, out_labels = buf[0][:m + 1], buf[3][:m], buf[4][:m]

    def copy(a, b, pos):
        end = gather(a, order[a:b], out_ptr[a:b + 1], buf[1], buf[2], pos)
        np.take(targets, order[a:b], axis=0, out=out_targets[a:b])
        np.take(labels, order[a:b], out=out_labels[a:b])
        return end

    return (out_ptr, buf[1], buf[2]), out_targets, out_labels, buf[5][:m], copy


def part_bounds(n_steps, batch_size, n_rows, pipelined):
    """Row bounds [0, b1, ..., n_rows] of a call's parts (each a whole number of minibatches).
    Not pipelined: one part. Pipelined: the first ~1/64 of the steps, then each part twice the
    one before, a short tail joining the last: the copy runs ~3x faster than the lesson's
    training, so each part is ready before the kernel reaches it, and the kernel waits only for
    the first (~0.2 ms of copying for a 60,000-row epoch)."""
    if not pipelined or n_steps < 2:
        return [0, n_rows]
    bounds, size, done = [0], max(1, -(-n_steps // 64)), 0
    while done < n_steps:
        size = min(size, n_steps - done)
        if n_steps - done - size < size:
            size = n_steps - done
        done += size
        bounds.append(min(done * batch_size, n_rows))
        size *= 2
    return bounds


def run_in_parts(copy, bounds, run):
    """copy(a, b, pos) each part bounds[k]..bounds[k + 1] in order (pos: the first free pixel
    entry, returned by the part before; shifts drop pixels, so it is known only then) and
    run(a, b) on each once it is copied. Part 0 is copied on this thread, the others on a pool
    thread while run() trains on the part before. Returns when every started copy has
    finished (the buffers are the workspace's), also when run() raises or Ctrl-C comes; a
    copy's error is raised here, before its part would run."""
    if len(bounds) == 2:
        copy(bounds[0], bounds[1], 0)
        run(bounds[0], bounds[1])
        return
    ready = [threading.Event() for _ in bounds[1:]]  # the last is set once the copying is over
    state = {"stop": False, "running": False, "error": None}

    def copy_rest(pos):
        # running, then stop checked; the trainer's thread sets stop, then checks running: so
        # either it waits for the last `ready`, or this sees stop and writes nothing (an interrupt can
        # land after submit queued this but before the trainer's thread knew it had)
        state["running"] = True
        try:
            for k in range(1, len(ready)):
                if state["stop"]:
                    return
                pos = copy(bounds[k], bounds[k + 1], pos)
                ready[k].set()
        except BaseException as e:  # handed to the trainer's thread
            state["error"] = e
        finally:
            for event in ready:
                event.set()

    pos = copy(bounds[0], bounds[1], 0)
    ready[0].set()
    try:
        helper_pool.submit(copy_rest, pos)
        for k in range(len(ready)):
            ready[k].wait()
            if state["error"] is not None:
                raise state["error"]
            run(bounds[k], bounds[k + 1])
    finally:
        state["stop"] = True
        if state["running"]:
            _wait_through_interrupts(ready[-1])


def _wait_through_interrupts(event):
    """Wait for event even through a second Ctrl-C (then raised once it is set): a copy still
    writing into the workspace's buffers would corrupt the next call's rows. The copy stops at
    its next part, a few ms at most."""
    interrupt = None
    while True:
        try:
            event.wait()
            break
        except KeyboardInterrupt as exc:
            interrupt = exc
    if interrupt is not None:
        raise interrupt
