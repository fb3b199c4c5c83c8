"""`fastgd experiment noise|random-labels`: two experiments from the lesson, with numbers and pictures.

``noise MODEL.npz --out DIR``: how sure the network is about uniform and Gaussian noise images,
beside real test digits (noise.json, noise.png).
``random-labels --out DIR``: train on MNIST with shuffled labels and watch training accuracy
climb while test accuracy stays at chance (random_labels.json, random_labels.png).
The PNGs need matplotlib (fastgd[plot]); ``--no-plot`` writes only the JSON.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

EXPERIMENTS = {
    "noise": "the network's confidence on uniform and Gaussian noise images vs real test digits",
    "random-labels": "memorising shuffled MNIST labels: train accuracy climbs, test accuracy stays at chance",
}


def _hidden(text):
    import argparse

    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"--hidden must be comma-separated positive widths like 512 or 256,256, got {text!r}")
    return sizes


def _fraction(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--fraction values must lie in [0, 1], got {text!r}")
    return value


def _common(p):
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the JSON and PNG results")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="a folder with the four IDX files (default: the shipped MNIST)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0): the same seed gives the same numbers")
    p.add_argument("--no-plot", action="store_true", help="write only the JSON (no matplotlib needed)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default 100)")
    p.add_argument("--json", action="store_true", help="print one JSON summary object as the last line of stdout")


def add_arguments(p):
    from . import _checks
    from .backends import backend_names

    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    noise = sub.add_parser("noise", help=EXPERIMENTS["noise"], description=EXPERIMENTS["noise"])
    noise.add_argument("model", metavar="MODEL.npz", help="a network saved by `fastgd train --save`")
    noise.add_argument("--n", type=int, default=1000, help="noise images of each kind (default 1000)")
    noise.add_argument("--threshold", type=float, default=0.9,
                       help="report the fraction of images whose top-class confidence exceeds this (default 0.9)")
    noise.add_argument("--backend", default="auto", choices=backend_names(), help="where the forward pass runs")
    noise.add_argument("--threads", type=int, default=None, help="threads for the forward pass (default: every core)")
    _common(noise)

    rl = sub.add_parser("random-labels", help=EXPERIMENTS["random-labels"], description=EXPERIMENTS["random-labels"])
    rl.add_argument("--fraction", type=_fraction, nargs="+", default=[1.0], metavar="P",
                    help="fraction of training labels to shuffle; several values run several trainings "
                         "(default 1.0: every label)")
    rl.add_argument("--n-train", type=int, default=5000,
                    help="training samples, a random subset (default 5000: small enough to memorise quickly)")
    rl.add_argument("--hidden", type=_hidden, default=[512], help="hidden layer widths (default 512)")
    rl.add_argument("--activation", default="relu", choices=_checks.ACTIVATIONS,
                    help="hidden activation (default relu)")
    rl.add_argument("--output", default="softmax", choices=_checks.OUTPUTS, help="output activation (default softmax)")
    rl.add_argument("--loss", default="cross_entropy", choices=_checks.LOSSES, help="cost (default cross_entropy)")
    rl.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    rl.add_argument("--batch-size", type=int, default=10, help="minibatch size (default 10)")
    rl.add_argument("--epochs", type=int, default=30, help="epochs (default 30)")
    rl.add_argument("--n-test", type=int, default=None,
                    help="measure test accuracy on a random subset of this many test samples (default: all)")
    rl.add_argument("--backend", default="auto", choices=backend_names(), help="where the arithmetic runs")
    rl.add_argument("--threads", type=int, default=None, help="threads (default: every core)")
    _common(rl)


def _load(data):
    from .datasets import load_idx, load_mnist

    return load_idx(data) if data else load_mnist()


def run(args):
    if args.dpi < 1:
        raise ValueError(f"--dpi must be >= 1, got {args.dpi}")
    if not args.no_plot:
        from . import viz

        viz._figure(1, 1)  # fail early, before any training, when matplotlib is missing
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = sys.stderr if args.json else sys.stdout
    if args.experiment == "noise":
        summary = _run_noise(args, out, log)
    else:
        summary = _run_random_labels(args, out, log)
    if args.json:
        print(json.dumps(summary))
    return 0


def _run_noise(args, out, log):
    from . import experiments
    from .network import Network

    net = Network.load(args.model)
    if net.task != "classification" or net.classes is not None:
        raise ValueError(f"{args.model} is a {net.task} model" + (" with its own class labels" if net.classes is not None
                         else "") + "; `fastgd experiment noise` works on image classifiers with labels 0..K-1 "
                         "(use `fastgd predict` for other models)")
    _, _, X_test, y_test = _load(args.data)
    if X_test.shape[1] != net.sizes[0]:
        raise ValueError(f"the model takes {net.sizes[0]} inputs but the test images have {X_test.shape[1]} pixels")
    result = experiments.noise_experiment(net, X_test, y_test, n=args.n, seed=args.seed, threshold=args.threshold,
                                          backend=args.backend, threads=args.threads)
    print(f"fastgd experiment noise: {args.model}: network {net}; test accuracy {100 * result.test_accuracy:.2f}%",
          file=log)
    print(f"top-class confidence = the largest output activation ({net.output} output)", file=log)
    print(f"{'images':<10}{'n':>7}{'pixel mean':>12}{'mean conf':>11}{'median':>8}"
          f"{f'> {args.threshold:g}':>8}  predicted-class histogram (classes 0..{net.sizes[-1] - 1})", file=log)
    for name, s in result.stats.items():
        print(f"{name:<10}{s['n']:>7}{s['pixel_mean']:>12.3f}{s['mean_confidence']:>11.3f}"
              f"{s['median_confidence']:>8.3f}"
              f"{100 * s['fraction_above_threshold']:>7.1f}%  {s['predicted_class_histogram']}", file=log)
    summary = {"model": str(args.model), "sizes": [int(s) for s in net.sizes], **result.to_dict()}
    (out / "noise.json").write_text(json.dumps(summary, indent=1))
    files = [out / "noise.json"]
    if not args.no_plot:
        from . import viz

        viz.plot_noise(result, path=out / "noise.png", dpi=args.dpi)
        files.append(out / "noise.png")
    print("wrote " + ", ".join(str(f) for f in files), file=log)
    return summary


def _run_random_labels(args, out, log):
    from . import experiments

    X_train, y_train, X_test, y_test = _load(args.data)
    if not 1 <= args.n_train <= len(X_train):
        raise ValueError(f"--n-train must lie in [1, {len(X_train)}] (the training samples), got {args.n_train}")
    results = []
    for fraction in args.fraction:
        print(f"fastgd experiment random-labels: {100 * fraction:g}% of the labels of {args.n_train} training "
              f"samples shuffled; network {X_train.shape[1]}-{'-'.join(map(str, args.hidden))}-"
              f"{int(max(y_train.max(), y_test.max())) + 1} {args.activation}/{args.output}, {args.loss}, "
              f"lr {args.lr}, batch {args.batch_size}", file=log, flush=True)

        def progress(rec, epochs=args.epochs):
            extra = ""
            if "changed_accuracy" in rec:
                extra = (f"  shuffled-label samples {100 * rec['changed_accuracy']:5.1f}% (vs true "
                         f"{100 * rec['changed_true_accuracy']:5.1f}%)  clean {100 * rec['clean_accuracy']:5.1f}%")
            print(f"epoch {rec['epoch']:3d}/{epochs}  train acc {100 * rec['train_accuracy']:5.1f}%  "
                  f"test acc (true labels) {100 * rec['test_accuracy']:5.1f}%{extra}  {rec['seconds']:.2f} s",
                  file=log, flush=True)

        result = experiments.random_labels_experiment(
            X_train, y_train, X_test, y_test, fraction=fraction, n_train=args.n_train, hidden=args.hidden,
            activation=args.activation, output=args.output, loss=args.loss, lr=args.lr,
            batch_size=args.batch_size, epochs=args.epochs, backend=args.backend, threads=args.threads,
            seed=args.seed, n_test=args.n_test, callback=progress)
        last = result.records[-1]
        print(f"after {len(result.records)} epochs: train accuracy {100 * last['train_accuracy']:.1f}% on the "
              f"labels it was trained on, test accuracy {100 * last['test_accuracy']:.1f}% "
              f"(chance {100 * result.chance:.0f}%); "
              f"{result.n_changed} labels changed; backend {result.config['backend']}, "
              f"{sum(result.series('seconds')):.1f} s of training", file=log, flush=True)
        results.append(result)
    summary = {"runs": [r.to_dict() for r in results]}
    (out / "random_labels.json").write_text(json.dumps(summary, indent=1))
    files = [out / "random_labels.json"]
    if not args.no_plot:
        from . import viz

        viz.plot_random_labels(results, path=out / "random_labels.png", dpi=args.dpi)
        files.append(out / "random_labels.png")
    print("wrote " + ", ".join(str(f) for f in files), file=log)
    return summary
