"""fastgd.sklearn vs scikit-learn's MLPClassifier / MLPRegressor: accuracy or R² and wall time.

    PYTHONPATH=src python bench/sklearn_compare.py            # the README table (a few minutes)
    PYTHONPATH=src python bench/sklearn_compare.py --quick    # smaller data, a smoke run

Same architecture, same number of epochs (tol=0 and n_iter_no_change=max_iter so neither stops
early), Adam with the same learning rate, batch size and L2 alpha, inputs standardised in a
Pipeline for both. Time is wall time of `fit` only. fastgd's one-time JIT compilation (cached
on disk after a first run) is excluded by a tiny warm-up fit per dataset, and said so. A script,
not a test: numbers from a busy machine are noise.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SkClassifier
from sklearn.neural_network import MLPRegressor as SkRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import fastgd
from fastgd._checks import available_cores
from fastgd.sklearn import MLPClassifier, MLPRegressor


def datasets(quick):
    scale = 10 if quick else 1
    X, y = load_digits(return_X_y=True)
    yield "load_digits 1,797×64, 10 classes", "classify", X, y, (64,), 100
    X, y = make_classification(100_000 // scale, 54, n_informative=30, n_redundant=10, n_classes=7,
                               n_clusters_per_class=2, class_sep=1.5, random_state=0)
    yield f"make_classification {len(X):,}×54, 7 classes", "classify", X, y, (128, 64), 20
    X, y = make_regression(50_000 // scale, 20, n_informative=15, noise=10.0, random_state=0)
    y = y + 0.002 * y ** 2  # a little curvature, so that a network has something to learn beyond a plane
    yield f"make_regression {len(X):,}×20", "regress", X, y, (64, 32), 20


def run(make, X_tr, y_tr, X_te, y_te, threads):
    est = make_pipeline(StandardScaler(), make())
    start = time.perf_counter()
    # the same thread count for both: fastgd's threads=, and the BLAS pool scikit-learn's MLP uses
    with warnings.catch_warnings(), threadpool_limits(threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X_tr, y_tr)
    seconds = time.perf_counter() - start
    return est.score(X_te, y_te), seconds, est[-1].n_iter_


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the rows (default: the full sizes)")
    ap.add_argument("--seed", type=int, default=0, help="random_state for both libraries (default 0)")
    ap.add_argument("--backend", default="auto", help="fastgd backend (default auto)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both libraries (default: every core). On a machine shared with other "
                         "work, use 1: BLAS and OpenMP threads that wait for a busy core slow both sides ~10x")
    args = ap.parse_args(argv)

    threads = args.threads or available_cores()  # what threads=None means in fastgd
    rows = []
    for name, task, X, y, hidden, epochs in datasets(args.quick):
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=0)
        common = dict(hidden_layer_sizes=hidden, activation="relu", solver="adam", alpha=1e-4, batch_size=200,
                      learning_rate_init=1e-3, max_iter=epochs, tol=0.0, n_iter_no_change=epochs,
                      random_state=args.seed)
        ours, theirs = (MLPClassifier, SkClassifier) if task == "classify" else (MLPRegressor, SkRegressor)
        warm = dict(common, max_iter=1)
        mine = dict(backend=args.backend, threads=threads)
        run(lambda: ours(**warm, **mine), X_tr[:400], y_tr[:400], X_te[:50], y_te[:50], threads)  # JIT warm-up
        f_score, f_sec, f_it = run(lambda: ours(**common, **mine), X_tr, y_tr, X_te, y_te, threads)
        s_score, s_sec, s_it = run(lambda: theirs(**common), X_tr, y_tr, X_te, y_te, threads)
        assert f_it == s_it == epochs, (f_it, s_it, epochs)
        metric = "accuracy" if task == "classify" else "R²"
        n_out = len(np.unique(y)) if task == "classify" else 1
        rows.append((name, "-".join(map(str, (X.shape[1], *hidden, n_out))), epochs, metric, f_score, s_score, f_sec, s_sec))
        print(f"{name}: fastgd {f_score:.4f} in {f_sec:.2f} s, scikit-learn {s_score:.4f} in {s_sec:.2f} s",
              file=sys.stderr)

    import sklearn

    print(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.processor() or platform.machine()}"
          f", Python {platform.python_version()}, fastgd {fastgd.__version__}, scikit-learn {sklearn.__version__}, "
          f"{threads} thread{'s' if threads > 1 else ''} each; "
          f"`python bench/sklearn_compare.py{' --quick' if args.quick else ''}"
          f"{f' --threads {args.threads}' if args.threads else ''}`. Adam (lr 1e-3, batch 200, "
          f"alpha 1e-4), ReLU, StandardScaler in a Pipeline, the same epochs for both; test split 20%; fit wall "
          f"time, fastgd's one-time JIT compilation excluded.\n")
    print("| data | network | epochs | metric | fastgd | scikit-learn | fastgd time | scikit-learn time | speed-up |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for name, arch, epochs, metric, fs, ss, ft, st in rows:
        print(f"| {name} | {arch} | {epochs} | {metric} | {fs:.4f} | {ss:.4f} | {ft:.2f} s | {st:.2f} s | "
              f"{st / ft:.1f}× |")


if __name__ == "__main__":
    main()
