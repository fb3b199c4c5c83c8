"""`fastgd inspect MODEL.npz --out DIR`: pictures of what a trained network learned.

Writes weights.png (first-layer weights, one tile per hidden unit), confusion.png, errors.png
(the most confidently misclassified test images), history.png (when the model carries its
training history) and inspect.json (the numbers behind them). Needs matplotlib: fastgd[plot].
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def image_shape_arg(text):
    import argparse

    try:
        rows, cols = (int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image-shape must be ROWS,COLS like 28,28, got {text!r}") from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"--image-shape needs positive sizes, got {text!r}")
    return rows, cols


def add_arguments(p):
    from .backends import backend_names

    p.add_argument("model", metavar="MODEL.npz", help="a network saved by `fastgd train --save` or Network.save")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG pictures and inspect.json")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="a folder with the four IDX files whose test set to use (default: the shipped MNIST)")
    p.add_argument("--errors", type=int, default=24, metavar="K",
                   help="how many confidently misclassified test images to show (default 24)")
    p.add_argument("--max-units", type=int, default=100, metavar="N",
                   help="draw the weights of at most this many hidden units (default 100; 0 = all)")
    p.add_argument("--image-shape", type=image_shape_arg, default=None, metavar="ROWS,COLS",
                   help="shape of one input image when it is not square (default: square)")
    p.add_argument("--backend", default="auto", choices=backend_names(), help="where the forward pass runs")
    p.add_argument("--threads", type=int, default=None, help="threads for the forward pass (default: every core)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs (default 100)")
    p.add_argument("--json", action="store_true", help="print one JSON summary object as the last line of stdout")


def run(args):
    from . import experiments, viz
    from .datasets import load_idx, load_mnist
    from .network import Network

    viz._figure(1, 1)  # fail early, before any work, when matplotlib is missing
    if args.errors < 0:
        raise ValueError(f"--errors must be >= 0, got {args.errors}")
    if args.dpi < 1:
        raise ValueError(f"--dpi must be >= 1, got {args.dpi}")
    if args.max_units < 0:
        raise ValueError(f"--max-units must be >= 0, got {args.max_units}")
    net = Network.load(args.model)
    if net.task != "classification" or net.classes is not None:
        raise ValueError(f"{args.model} is a {net.task} model" + (" with its own class labels" if net.classes is not None
                         else "") + "; `fastgd inspect` works on image classifiers with labels 0..K-1 "
                         "(use `fastgd predict` for other models)")
    _, _, X_test, y_test = load_idx(args.data) if args.data else load_mnist()
    if X_test.shape[1] != net.sizes[0]:
        raise ValueError(f"the model takes {net.sizes[0]} inputs but the test images have {X_test.shape[1]} pixels")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = sys.stderr if args.json else sys.stdout
    written, skipped = [], []

    ins = experiments.inspect_model(net, X_test, y_test, k=args.errors, backend=args.backend,
                                     threads=args.threads)
    print(f"fastgd inspect: {args.model}: network {net}; test accuracy {100 * ins.accuracy:.2f}% "
          f"on {ins.n} samples", file=log)

    try:
        fig = viz.plot_weights(net, 0, image_shape=args.image_shape, max_units=args.max_units or None,
                               path=out / "weights.png", dpi=args.dpi)
        written.append(out / "weights.png")
        W = net.weights[0]
        print(f"first-layer weights: {len(fig.axes) - 1} tiles of {W.shape[1]} hidden units, "
              f"colour limits ±{abs(W).max():.3f}", file=log)
    except ValueError as exc:  # inputs that are not an image
        skipped.append(f"weights.png ({exc})")

    viz.plot_confusion_matrix(ins.confusion, path=out / "confusion.png", dpi=args.dpi)
    written.append(out / "confusion.png")
    pairs = experiments.top_confusions(ins.confusion, k=5)
    print("most frequent confusions (true->predicted: count): "
          + ", ".join(f"{t}->{p}: {c}" for t, p, c in pairs), file=log)

    n_err = len(ins.errors["index"])
    if n_err:
        try:
            viz.plot_errors(X_test, ins.errors, image_shape=args.image_shape, path=out / "errors.png", dpi=args.dpi)
            written.append(out / "errors.png")
        except ValueError as exc:
            skipped.append(f"errors.png ({exc})")
        e = ins.errors
        print(f"{n_err} most confident mistakes, confidence {e['confidence'][0]:.3f} down to "
              f"{e['confidence'][-1]:.3f}; "
              "surest: " + ", ".join(f"#{i} {t}->{p} ({c:.3f})" for i, t, p, c in
                                     list(zip(e["index"], e["true"], e["predicted"], e["confidence"]))[:5]), file=log)
    else:
        skipped.append("errors.png (no misclassified test images)" if args.errors else "errors.png (--errors 0)")

    if net.history:
        viz.plot_history(net.history, path=out / "history.png", dpi=args.dpi)
        written.append(out / "history.png")
        last = net.history[-1]
        val = last.get("val_accuracy")
        print(f"training curves: {len(net.history)} epochs, last train accuracy "
              f"{100 * last['train_accuracy']:.2f}%" + (f", validation {100 * val:.2f}%" if val is not None else ""),
              file=log)
    else:
        skipped.append("history.png (the model carries no training history)")

    summary = {"model": str(args.model), "sizes": [int(s) for s in net.sizes], "activation": net.activation,
               "output": net.output, **ins.to_dict(), "history_epochs": len(net.history or [])}
    (out / "inspect.json").write_text(json.dumps(summary, indent=1))
    written.append(out / "inspect.json")
    print("wrote " + ", ".join(str(p) for p in written), file=log)
    for note in skipped:
        print(f"skipped {note}", file=log)
    if args.json:
        summary["files"] = [str(p) for p in written]
        print(json.dumps(summary))
    return 0
