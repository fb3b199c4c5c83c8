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
    from .recipes import RECIPES
    from .schedules import SCHEDULES

    # Options a recipe may set default to None here; run() fills them from the recipe, then from
    # the lesson's defaults, so an explicit flag always wins.
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a named set of settings: 'lesson' (the default), 'best' (the lesson network trained well: ~96.5%%) or 'mlp' (784-256-10 with shifts: ~98.9%%)")
    p.add_argument("--sizes", type=_sizes, default=None,
                   help="layer widths, input first (default 784,16,16,10; the input width must match the data)")
    p.add_argument("--activation", default=None, choices=_checks.ACTIVATIONS, help="hidden activation (sigmoid)")
    p.add_argument("--output", default=None, choices=_checks.OUTPUTS, help="output activation (sigmoid)")
    p.add_argument("--loss", default=None, choices=_checks.LOSSES, help="cost function (mse)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (3.0)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size (10)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the training data (30)")
    p.add_argument("--backend", default="auto", choices=backend_names(), help="where the arithmetic runs")
    p.add_argument("--threads", type=int, default=None, help="threads (default: every core)")
    p.add_argument("--hogwild", action="store_true",
                   help="let compiled backends update asynchronously across threads (faster, not bit-reproducible)")
    p.add_argument("--seed", type=int, default=None, help="seed for weights, shuffling, dropout and shifts")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    g = p.add_argument_group("training recipe")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (0)")
    g.add_argument("--nesterov", action="store_const", const=True, default=None, help="Nesterov momentum")
    g.add_argument("--l2", type=float, default=None, help="L2 weight decay (0)")
    g.add_argument("--l1", type=float, default=None, help="L1 penalty (0)")
    g.add_argument("--dropout", type=float, default=None, help="dropout rate on hidden layers (0)")
    g.add_argument("--lr-schedule", default=None, choices=SCHEDULES, help="learning-rate schedule (constant)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up length in epochs (0)")
    g.add_argument("--lr-step-size", type=int, default=None, help="step schedule: epochs between decays (10)")
    g.add_argument("--lr-gamma", type=float, default=None, help="step schedule: decay factor (0.1)")
    g.add_argument("--min-lr", type=float, default=None, help="cosine schedule: final learning rate (0)")
    g.add_argument("--augment-shift", type=int, default=None, help="shift training images by up to N pixels (0)")
    g.add_argument("--validation-split", type=float, default=None,
                   help="hold out this fraction of the training data for validation (default: validate on the test set)")
    g.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation loss; keep the best weights")
    g.add_argument("--checkpoint", default=None, metavar="PATH", help="write a checkpoint here every --checkpoint-every epochs")
    g.add_argument("--checkpoint-every", type=int, default=1, metavar="N")
    g.add_argument("--resume", default=None, metavar="PATH", help="continue a run from its checkpoint")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="a folder with the four IDX files (MNIST layout, optionally .gz); default: the shipped MNIST")
    p.add_argument("--save", default=None, metavar="PATH", help="write the trained network here (.npz)")
    p.add_argument("--json", action="store_true", help="print one JSON summary object as the last line of stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


TRAINER_OPTIONS = ("loss", "lr", "batch_size", "epochs", "momentum", "nesterov", "l2", "l1", "dropout", "lr_schedule",
                   "warmup_epochs", "lr_step_size", "lr_gamma", "min_lr", "augment_shift", "validation_split",
                   "early_stopping")


def resolve_settings(args):
    """Network and Trainer settings: explicit flags, then the recipe, then the lesson's defaults."""
    from .recipes import RECIPES

    settings = dict(RECIPES["lesson"])
    settings.update(RECIPES.get(args.recipe) or {})
    for key in ("sizes", "activation", "output") + TRAINER_OPTIONS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return settings


def run(args):
    from .datasets import load_idx, load_mnist
    from .network import Network
    from .trainer import Trainer

    settings = resolve_settings(args)
    data = load_idx(args.data) if args.data else load_mnist()
    X_train, y_train, X_test, y_test = data
    sizes = settings["sizes"] if args.sizes or args.recipe else [X_train.shape[1], 16, 16, 10]
    net = Network(sizes, activation=settings["activation"], output=settings["output"], dtype=args.dtype,
                  seed=args.seed)
    trainer = Trainer(net, backend=args.backend, threads=args.threads, seed=args.seed,
                      deterministic=not args.hogwild, checkpoint=args.checkpoint,
                      checkpoint_every=args.checkpoint_every, **{k: settings[k] for k in TRAINER_OPTIONS if k in settings})
    log = sys.stderr if args.json else sys.stdout
    print(f"fastgd: {len(X_train)} training and {len(X_test)} test samples; network {net}; "
          f"backend {trainer.backend.name}, {trainer.threads} thread(s)", file=log, flush=True)

    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=trainer.epochs, unit="epoch", file=sys.stderr, leave=False, dynamic_ncols=True)
    val_name = "val" if trainer.validation_split else "test"

    def progress(record, _trainer):
        line = (f"epoch {record['epoch']:3d}/{trainer.epochs}  loss {record['train_loss']:.4f}  "
                f"train acc {100 * record['train_accuracy']:6.2f}%  {val_name} acc {100 * record['val_accuracy']:6.2f}%  "
                f"{record['seconds']:.3f} s  {record['samples_per_second'] / 1e3:,.0f}k samples/s")
        if bar is not None:
            bar.write(line, file=log)
            bar.update(record["epoch"] - bar.n)
        else:
            print(line, file=log, flush=True)

    validation = None if trainer.validation_split else (X_test, y_test)
    try:
        history = trainer.fit(X_train, y_train, validation_data=validation, callbacks=[progress], resume=args.resume)
    finally:
        if bar is not None:
            bar.close()
    if history.stopped_early:
        print(f"early stopping after epoch {len(history)}; kept the weights of epoch {history.best_epoch}", file=log)
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
            "recipe": args.recipe or "lesson",
            "settings": {k: getattr(trainer, k) for k in TRAINER_OPTIONS},
            "dtype": net.dtype.name,
            "seed": args.seed,
            "history": history.to_list(),
        }
        print(json.dumps(summary))
    return 0
