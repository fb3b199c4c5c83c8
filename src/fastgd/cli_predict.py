"""`fastgd predict MODEL.npz DATA [--out preds.csv|.npy]`: a saved model's predictions on a data file.

The model applies its own input scaler and maps class indices back to the labels it was trained
on. When DATA carries targets (an IDX folder's test labels, y/y_test in an .npz, --target of a
table), the accuracy (or R² and MAE) is reported too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

EPILOG = """examples:
  fastgd predict lesson.npz path/to/mnist/ --out digits.csv      an IDX folder: its test set
  fastgd predict price.npz new_houses.csv --out prices.csv      a table: the model's feature columns
  fastgd predict model.npz X.npy --out preds.npy --proba         output activations, one column per unit
  fastgd predict model.npz data.npz                              keys X, X_test or X_train; prints predictions
"""


def add_arguments(p):
    from .backends import backend_names

    p.add_argument("model", metavar="MODEL.npz", help="a network saved by `fastgd train --save` or Network.save")
    p.add_argument("data", metavar="DATA",
                   help="inputs: .npy (X), .npz (key X, X_test or X_train), 'X.npy,y.npy', .csv/.parquet "
                        "(the model's feature columns; every column when the model has no names) or an IDX "
                        "folder (its test set)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="write predictions to PATH: .csv (a 'prediction' column, or one per output) or .npy "
                        "(default: print them, one per line)")
    p.add_argument("--target", default=None, metavar="COLUMN",
                   help="a .csv/.parquet column holding the true targets: left out of the inputs, and "
                        "accuracy or R² is reported (default: none)")
    p.add_argument("--proba", action="store_true",
                   help="write the output activations (class probabilities; values for regression) "
                        "instead of predictions (default: off)")
    p.add_argument("--backend", default="auto", choices=backend_names(),
                   help="where the forward pass runs (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="threads for the forward pass (default: every core)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary object as the last line of stdout (default: off)")


def _write(path, values, columns):
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        from .network import atomic_write

        atomic_write(path, lambda f: np.save(f, values, allow_pickle=False))
    elif suffix == ".csv":
        import csv
        import io

        from .network import atomic_write

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        rows = values.reshape(len(values), -1)
        for row in rows:
            w.writerow([_fmt(v) for v in row])
        atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
    else:
        raise ValueError(f"--out {path}: write .csv or .npy")


def _fmt(v):
    return repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)


def run(args):
    from .data_files import load_inputs
    from .network import Network

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.out is not None:
        suffix = Path(args.out).suffix.lower()
        if suffix not in (".csv", ".npy"):
            raise ValueError(f"--out {args.out}: write .csv or .npy")
        if not Path(args.out).parent.is_dir():
            raise ValueError(f"--out {args.out}: the folder {str(Path(args.out).parent)!r} does not exist")
    log = sys.stderr if (args.json or args.out is None) else sys.stdout
    net = Network.load(args.model)
    X, y, source = load_inputs(args.data, args.target, net.feature_names)
    if X.shape[1] != net.sizes[0]:
        raise ValueError(f"DATA {args.data} has {X.shape[1]} features per sample but the model takes {net.sizes[0]}")
    kw = dict(backend=args.backend, threads=args.threads)
    proba = net.predict_proba(X, **kw)
    pred = net.predict(X, **kw)
    print(f"fastgd predict: {args.model}: {net} ({net.task}) on {len(X)} samples from {source}", file=log)
    summary = {"model": str(args.model), "data": str(args.data), "n": int(len(X)), "task": net.task}
    if y is not None:
        summary.update(_score(net, pred, y))
        shown = {k: v for k, v in summary.items() if k in ("accuracy", "r2", "mae")}
        print("against the data's targets: " + ", ".join(
            f"{k} {100 * v:.2f}%" if k == "accuracy" else f"{k} {v:.4g}" for k, v in shown.items()), file=log)
    if args.proba:
        values = proba
        if net.task == "classification" and net.classes is not None:
            columns = [f"proba_{c}" for c in net.classes]
        elif net.task == "binary":
            columns = [f"proba_{net.classes[1] if net.classes is not None else 1}"]
        else:
            columns = [f"output_{j}" for j in range(proba.shape[1])] if proba.shape[1] > 1 else ["output"]
    else:
        values = pred
        columns = ["prediction"] if np.ndim(pred) == 1 else [f"prediction_{j}" for j in range(pred.shape[1])]
    if args.out is not None:
        _write(args.out, np.asarray(values), columns)
        print(f"wrote {len(values)} {'output rows' if args.proba else 'predictions'} to {args.out}", file=log)
        summary["out"] = str(args.out)
    elif not args.json:
        out = sys.stdout
        for row in np.asarray(values).reshape(len(values), -1):
            out.write(",".join(_fmt(v) for v in row) + "\n")
    if args.json:
        print(json.dumps(summary))
    return 0


def _score(net, pred, y):
    y = np.asarray(y)
    if net.task == "regression":
        t = y.astype(np.float64).reshape(len(y), -1)
        p = np.asarray(pred, dtype=np.float64).reshape(t.shape)
        ss_res, ss_tot = np.sum((t - p) ** 2, axis=0), np.sum((t - t.mean(axis=0)) ** 2, axis=0)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
        return {"r2": float(r2.mean()), "mae": float(np.mean(np.abs(t - p)))}
    y = y.reshape(-1)
    pred = np.asarray(pred)
    if (y.dtype.kind in "biuf") and (pred.dtype.kind in "biuf"):
        same = pred.astype(np.float64) == y.astype(np.float64)
    else:
        same = pred.astype(str) == y.astype(str)
    return {"accuracy": float(np.mean(same))}
