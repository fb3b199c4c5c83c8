"""`fastgd train`: the lesson's network on the shipped MNIST, or any network and IDX folder."""
from __future__ import annotations

import json
import sys

import numpy as np

from . import _checks


def _sizes(text):
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse_error(f"--sizes must be comma-separated integers like 784,16,16,10, got {text!r}")


def argparse_error(msg):
    import argparse

    return argparse.ArgumentTypeError(msg)


def add_arguments(p):
    from .backends import backend_names

    p.add_argument("--sizes", type=_sizes, default=None,
                   help="layer widths, input first (default 784,16,16,10; the input width must match the data)")
    p.add_argument("--activation", default="sigmoid", choices=_checks.ACTIVATIONS, help="hidden activation")
    p.add_argument("--output", default="sigmoid", choices=_checks.OUTPUTS, help="output activation")
    p.add_argument("--loss", default="mse", choices=_checks.LOSSES, help="cost function")
    p.add_argument("--lr", type=float, default=3.0, help="learning rate (default 3.0)")
    p.add_argument("--batch-size", type=int, default=10, help="minibatch size (default 10)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training data (default 30)")
    p.add_argument("--backend", default="auto", choices=backend_names(), help="where the arithmetic runs")
    p.add_argument("--threads", type=int, default=None, help="threads (default: every core)")
    p.add_argument("--seed", type=int, default=None, help="seed for weights and shuffling")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--data", default=None, metavar="DIR",
                   help="a folder with the four IDX files (MNIST layout, optionally .gz); default: the shipped MNIST")
    p.add_argument("--save", default=None, metavar="PATH", help="write the trained network here (.npz)")
    p.add_argument("--json", action="store_true", help="print one JSON summary object as the last line of stdout")


def run(args):
    from .datasets import load_idx, load_mnist
    from .network import Network
    from .trainer import Trainer

    data = load_idx(args.data) if args.data else load_mnist()
    X_train, y_train, X_test, y_test = data
    sizes = args.sizes or [X_train.shape[1], 16, 16, 10]
    net = Network(sizes, activation=args.activation, output=args.output, dtype=args.dtype, seed=args.seed)
    trainer = Trainer(net, loss=args.loss, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                      backend=args.backend, threads=args.threads, seed=args.seed)
    log = sys.stderr if args.json else sys.stdout
    print(f"fastgd: {len(X_train)} training and {len(X_test)} test samples; network {net}; "
          f"backend {trainer.backend.name}, {trainer.threads} thread(s)", file=log, flush=True)

    def progress(record, _trainer):
        print(f"epoch {record['epoch']:3d}/{args.epochs}  loss {record['train_loss']:.4f}  "
              f"train acc {100 * record['train_accuracy']:6.2f}%  test acc {100 * record['val_accuracy']:6.2f}%  "
              f"{record['seconds']:.3f} s  {record['samples_per_second'] / 1e3:,.0f}k samples/s",
              file=log, flush=True)

    history = trainer.fit(X_train, y_train, validation_data=(X_test, y_test), callbacks=[progress])
    if history.compile_seconds > 0.05:
        print(f"compiling the {trainer.backend.name} kernels took {history.compile_seconds:.2f} s "
              f"(not counted as training time)", file=log)
    test = trainer.evaluate(X_test, y_test)
    print(f"test accuracy {100 * test['accuracy']:.2f}% after {len(history)} epochs, "
          f"{history.train_seconds:.2f} s of training", file=log)
    if args.save:
        path = net.save(args.save)
        print(f"saved the network to {path}", file=log)
    if args.json:
        train_seconds = history.train_seconds
        summary = {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "train_seconds": train_seconds,
            "compile_seconds": history.compile_seconds,
            "epochs": len(history),
            "samples_per_second": len(X_train) * len(history) / train_seconds if train_seconds > 0 else None,
            "backend": trainer.backend.name,
            "threads": trainer.threads,
            "sizes": [int(s) for s in net.sizes],
            "activation": net.activation,
            "output": net.output,
            "loss": trainer.loss,
            "lr": trainer.lr,
            "batch_size": trainer.batch_size,
            "dtype": net.dtype.name,
            "seed": args.seed,
            "history": history.to_list(),
        }
        print(json.dumps(summary))
    return 0
