"""Per-image cost of the augmentation (fastgd.augment's sampling map) in its three implementations,
on MNIST training images (uint8, float32 output): the C header kernels/fastgd_augment.h (compiled
here with cc -O3 -march=native, loaded with ctypes), the Numba twin and the NumPy reference.

    python bench/augment_cost.py [n_images]      # thread CPU time per image, best of 7 rounds

Thread CPU time rather than wall time: on a shared machine it excludes the time other processes
held the core (it still pays their cache and memory traffic). Compare with the lesson network's
whole training step, ~0.5 us per sample (784-16-16-10, batch 10, cython).
"""
import ctypes
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fastgd import augment  # noqa: E402
from fastgd.backends import numba_augment  # noqa: E402
from fastgd.datasets import load_mnist  # noqa: E402

HARNESS = r"""
#include "fastgd_augment.h"
void aug_batch_f(const unsigned char* X, float scale, long n, long rows, long cols, unsigned long long seed,
                 long long max_shift, double max_rotate, double alpha, double* work, float* out) {
    for (long i = 0; i < n; i++)
        fgd_augment_image_f(0, X + i * rows * cols, scale, rows, cols, seed, (unsigned long long)i, max_shift,
                            max_rotate, alpha, work, out + i * rows * cols);
}
long aug_work(long rows, long cols) { return FGD_AUG_WORK(rows, cols); }
"""
CONFIGS = [(2, 15.0, 0.0), (2, 0.0, 5.0), (2, 15.0, 5.0), (0, 10.0, 0.0)]  # (max_shift, max_rotate, alpha)


def c_library(folder, portable=False):
    src = Path(folder) / "h.c"
    src.write_text(HARNESS)
    lib_path = Path(folder) / ("h_portable.so" if portable else "h.so")
    cmd = [shutil.which("cc") or "gcc", "-O3", "-march=native", "-fPIC", "-shared", f"-I{ROOT / 'kernels'}",
           str(src), "-o", str(lib_path), "-lm"] + (["-DFGD_AUG_PORTABLE"] if portable else [])
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(str(lib_path))
    P, L = ctypes.c_void_p, ctypes.c_long
    lib.aug_batch_f.argtypes = [P, ctypes.c_float, L, L, L, ctypes.c_ulonglong, ctypes.c_longlong, ctypes.c_double,
                                ctypes.c_double, P, P]
    lib.aug_work.argtypes, lib.aug_work.restype = [L, L], L
    return lib


def best_of(fn, rounds=7):
    times = []
    for _ in range(rounds):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return min(times)


def main(n=10000):
    X = np.ascontiguousarray(load_mnist()[0][:n])
    n = X.shape[0]
    scale = np.float32(1 / 255)
    out = np.empty((n, 784), dtype=np.float32)
    idx = np.arange(n, dtype=np.int64)
    work_nb = numba_augment.make_work(28, 28)
    numba_augment.augment_rows(X, idx[:2], 1 / 255, out, np.uint64(1), 0, 1, 1.0, 1.0, 28, 28, work_nb)  # compile
    with tempfile.TemporaryDirectory() as tmp:
        libs = {"C": c_library(tmp), "C portable": c_library(tmp, portable=True)}
        work = np.empty(libs["C"].aug_work(28, 28))
        print(f"{'shift rot alpha':>17} " + " ".join(f"{k:>12}" for k in [*libs, "numba", "numpy"]) + "   (us/image)")
        for ms, mr, al in CONFIGS:
            row = []
            for lib in libs.values():
                row.append(best_of(lambda: lib.aug_batch_f(X.ctypes.data, scale, n, 28, 28, 1, ms, mr, al,
                                                           work.ctypes.data, out.ctypes.data)) / n)
            row.append(best_of(lambda: numba_augment.augment_rows(X, idx, 1 / 255, out, np.uint64(1), 0, ms, mr, al,
                                                                  28, 28, work_nb)) / n)
            m = min(n, 2000)
            xs = X[:m].astype(np.float32) * scale
            row.append(best_of(lambda: augment.augment_images(xs, 28, 28, 1, np.arange(m), ms, mr, al), 3) / m)
            print(f"{ms:>5} {mr:>5} {al:>5} " + " ".join(f"{t * 1e6:12.3f}" for t in row))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000)
