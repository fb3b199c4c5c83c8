"""Shared fixtures. Backends are discovered from the package: every backend module that ships is
tested, and one that ships but cannot load (e.g. its extension was not built) fails loudly."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fastgd.backends import _REGISTRY

DATA = Path(__file__).parent / "data"


def shipped_backends():
    return [name for name, (module, _) in _REGISTRY.items() if importlib.util.find_spec(module) is not None]


BACKENDS = shipped_backends()
COMPILED_BACKENDS = [b for b in BACKENDS if b != "numpy"]


@pytest.fixture(scope="session")
def oracle():
    """The PyTorch autograd one-step oracle: (list of case dicts, npz arrays)."""
    cases = json.loads((DATA / "torch_one_step.json").read_text())
    with np.load(DATA / "torch_one_step.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return cases, arrays


@pytest.fixture(scope="session")
def mnist():
    from fastgd.datasets import load_mnist

    return load_mnist()


def tol(dtype):
    """(rtol, atol) for comparing a backend with the reference: float64 tight, float32 loose."""
    return (1e-10, 1e-12) if np.dtype(dtype) == np.float64 else (1e-4, 1e-5)


# ---- hypothesis profiles (tests/test_fuzz.py) -------------------------------------------------
# "ci": derandomized (the same examples every run, no example database), so CI is repeatable and
# its time bounded; "dev" (the default): random examples, remembered failures.
# Pick one with HYPOTHESIS_PROFILE=ci; .ci/run does.
try:
    import os

    from hypothesis import HealthCheck, settings

    _slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
    settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                              suppress_health_check=_slow_ok)
    settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=_slow_ok)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
except ImportError:  # hypothesis comes with the test extra; only test_fuzz.py needs it
    pass


# ---- subprocess runs of `fastgd train` (tests/test_faults.py, tests/test_interrupt.py) --------
def write_idx(folder, X_train, y_train, X_test, y_test):
    """Write the four MNIST-layout IDX files (uint8 images (n, rows*cols) square, labels) to folder."""
    import math
    import struct

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("train-images-idx3-ubyte", X_train), ("train-labels-idx1-ubyte", y_train),
                      ("t10k-images-idx3-ubyte", X_test), ("t10k-labels-idx1-ubyte", y_test)):
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        if arr.ndim == 2:
            side = math.isqrt(arr.shape[1])
            arr = arr.reshape(arr.shape[0], side, side)
        header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
        (folder / name).write_bytes(header + arr.tobytes())
    return folder


def fastgd_train_command(*args):
    """`python -m fastgd train ARGS` with this interpreter (PYTHONPATH is inherited, made absolute
    so that a child started in another folder finds the same fastgd)."""
    import os
    import sys

    if os.environ.get("PYTHONPATH"):
        os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p)

    return [sys.executable, "-m", "fastgd", "train", *map(str, args)]


def default_sigint():
    """preexec_fn for a child that must receive SIGINT as KeyboardInterrupt even when this process
    was started with SIGINT ignored (a background job in a non-interactive shell, as in CI)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_bounds_checked(code):
    """stdout of `python -c code` under NUMBA_BOUNDSCHECK=1 (Numba's and fastgd's intrinsics'
    index checks compiled in), with this checkout's fastgd first on the path; fails the test on
    a non-zero exit."""
    import os
    import subprocess
    import sys

    import fastgd

    env = dict(os.environ, NUMBA_BOUNDSCHECK="1")
    src = Path(fastgd.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ---- a hang at interpreter exit fails the run, with every thread's stack --------------------
# CI once sat an hour after the suite's summary (its last step never started): something kept
# the process from exiting. If it has not exited EXIT_WATCHDOG_SECONDS after the session,
# faulthandler prints every Python thread's stack and exits with status 1: CI fails fast and
# says where.
EXIT_WATCHDOG_SECONDS = 300


def pytest_unconfigure(config):
    import faulthandler

    faulthandler.dump_traceback_later(EXIT_WATCHDOG_SECONDS, exit=True)
