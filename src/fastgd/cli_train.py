"""`fastgd train`: the lesson's network on the shipped MNIST, or any network on the user's own data
(IDX folder, .npz, .npy pair, .csv/.parquet), for classification or regression."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from . import _checks

EPILOG = """examples:
  fastgd train                                   the lesson: 784-16-16-10 sigmoid on MNIST, 30 epochs
  fastgd train --recipe best --save best.npz     the same network trained well (~96.5%)
  fastgd train --data fashion/ --epochs 10       any folder of the four IDX files
  fastgd train --data houses.csv --target price --standardize --sizes 8,64,1 --save price.npz
                                                 regression on a table (task inferred from the target)
  fastgd train --data iris.parquet --target species --output softmax --loss cross_entropy --lr 0.1
                                                 string labels; the model keeps their names
  fastgd train --data data.npz --early-stopping 5 --checkpoint run.npz
                                                 .npz with X_train, y_train (X_test, y_test optional)
  fastgd predict price.npz new_houses.csv --out predictions.csv
"""

#: Task-specific defaults between the lesson's and a recipe's (explicit flags win over all).
REGRESSION_DEFAULTS = dict(output="linear", loss="mse", lr=0.01)
DEFAULT_TEST_SPLIT = 0.2
DEFAULT_EARLY_STOPPING_SPLIT = 0.1


def _sizes(text):
    import argparse

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes must be comma-separated integers like 784,16,16,10, got {text!r}") \
            from None


def add_arguments(p):
    from .backends import backend_names
    from .recipes import RECIPES
    from .schedules import SCHEDULES

    # Options a recipe may set default to None here; run() fills them from the recipe, then from
    # the lesson's defaults, so an explicit flag always wins.
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a named set of settings for MNIST: 'lesson' (default), 'best' (the lesson network trained "
                        "well: ~96.5%%), 'fast97' (the lesson network in ~1 s: ~97.1%%), 'mlp' (784-256-10 with "
                        "shifts: ~98.9%%) or 'mlp99' (784-256-10, 40 epochs with shifts: ~99.0%% in ~17 s)")
    p.add_argument("--sizes", type=_sizes, default=None, metavar="N0,N1,...",
                   help="layer widths, input first (default: 784,16,16,10 for MNIST; for other data the data's "
                        "width, 16, 16 and one unit per class, 1 for two classes, or one per regression target)")
    p.add_argument("--activation", default=None, choices=_checks.ACTIVATIONS, help="hidden activation (default: sigmoid)")
    p.add_argument("--output", default=None, choices=_checks.OUTPUTS,
                   help="output activation (default: sigmoid; linear for --task regress)")
    p.add_argument("--loss", default=None, choices=_checks.LOSSES, help="cost function (default: mse)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 3.0; 0.01 for --task regress; 0.001 for --optimizer adam/adamw)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size (default: 10)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the training data (default: 30)")
    p.add_argument("--backend", default="auto", choices=backend_names(),
                   help="where the arithmetic runs (default: auto, the fastest available)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: every core)")
    p.add_argument("--hogwild", action="store_true",
                   help="let compiled backends update asynchronously across threads (faster, not bit-reproducible; "
                        "default: off)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for weights, splits, shuffling, dropout and shifts (default: a random seed, printed "
                        "so the run can be repeated)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="precision (default: float32)")

    d = p.add_argument_group("data")
    d.add_argument("--data", default=None, metavar="PATH",
                   help="training data: a folder of the four IDX files (MNIST layout, optionally .gz), a folder "
                        "with X_train.npy and y_train.npy, 'X.npy,y.npy', an .npz with X_train and y_train "
                        "(X_test and y_test optional), or a .csv/.parquet table with --target "
                        "(default: the shipped MNIST)")
    d.add_argument("--target", default=None, metavar="COLUMN",
                   help="the target column of a .csv/.parquet --data table; every other column is a feature "
                        "(default: none; required for tables)")
    d.add_argument("--task", default=None, choices=("classify", "regress"),
                   help="classification or regression (default: inferred from the targets: text and integer "
                        "labels classify, real numbers regress; asks when it cannot tell)")
    d.add_argument("--test-split", type=float, default=None, metavar="F",
                   help=f"when the data has no test set, hold out this fraction of it as the test set "
                        f"(default: {DEFAULT_TEST_SPLIT}; 0 for no test set)")
    d.add_argument("--standardize", action="store_true",
                   help="scale each input feature (and regression target) to mean 0, std 1 using the training "
                        "data; the scaler is saved in the model and predict applies it (default: off)")

    g = p.add_argument_group("training recipe")
    g.add_argument("--optimizer", default=None, choices=("sgd", "adam", "adamw"),
                   help="sgd (PyTorch's SGD, with --momentum/--nesterov), adam or adamw (PyTorch's Adam/AdamW) "
                        "(default: sgd)")
    g.add_argument("--beta1", type=float, default=None, help="adam/adamw: first-moment decay (default: 0.9)")
    g.add_argument("--beta2", type=float, default=None, help="adam/adamw: second-moment decay (default: 0.999)")
    g.add_argument("--eps", type=float, default=None, help="adam/adamw: denominator epsilon (default: 1e-8)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay on weights, not biases: L2 in the gradient for sgd/adam, decoupled for "
                        "adamw (default: 0; 0.01 for adamw); --l2 is its older name")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: 0)")
    g.add_argument("--nesterov", action="store_const", const=True, default=None,
                   help="Nesterov momentum (default: off)")
    g.add_argument("--l2", type=float, default=None, help="L2 weight decay (default: 0)")
    g.add_argument("--l1", type=float, default=None, help="L1 penalty (default: 0)")
    g.add_argument("--dropout", type=float, default=None, help="dropout rate on hidden layers (default: 0)")
    g.add_argument("--lr-schedule", default=None, choices=SCHEDULES, help="learning-rate schedule (default: constant)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up length in epochs (default: 0)")
    g.add_argument("--lr-step-size", type=int, default=None, help="step schedule: epochs between decays (default: 10)")
    g.add_argument("--lr-gamma", type=float, default=None, help="step schedule: decay factor (default: 0.1)")
    g.add_argument("--min-lr", type=float, default=None, help="cosine schedule: final learning rate (default: 0)")
    g.add_argument("--pct-start", type=float, default=None, metavar="F",
                   help="onecycle schedule: fraction of the run rising to the peak --lr (default: 0.25)")
    g.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="fit the run into this many seconds of training (compiling and evaluation not counted): "
                        "after epoch 1 the number of epochs is set from its measured time and the schedule "
                        "stretches to it, so it completes; --epochs is then the first guess (default: none)")
    g.add_argument("--label-smoothing", type=float, default=None, metavar="EPS",
                   help="cross_entropy: train on targets (1-EPS)*onehot + EPS/classes (default: 0)")
    g.add_argument("--augment-shift", type=int, default=None,
                   help="shift training images by up to N pixels (default: 0)")
    g.add_argument("--augment-rotate", type=float, default=None, metavar="DEG",
                   help="rotate training images by up to DEG degrees (default: 0)")
    g.add_argument("--augment-elastic", type=float, default=None, metavar="ALPHA",
                   help="elastic distortion of training images, displacement scale ALPHA pixels (default: 0)")
    g.add_argument("--validation-split", type=float, default=None, metavar="F",
                   help="hold out this fraction of the training data for validation (default: none; the test "
                        "set is shown each epoch but never used to choose weights)")
    g.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation loss and keep the best weights; "
                        f"without --validation-split, {DEFAULT_EARLY_STOPPING_SPLIT:g} of the training data is held "
                        "out for it (default: off)")
    g.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="write a checkpoint here every --checkpoint-every epochs and on Ctrl-C (default: none)")
    g.add_argument("--checkpoint-every", type=int, default=1, metavar="N", help="epochs between checkpoints (default: 1)")
    g.add_argument("--resume", default=None, metavar="PATH",
                   help="continue a run from its checkpoint (same settings and data; default: none)")

    o = p.add_argument_group("output")
    o.add_argument("--save", default=None, metavar="PATH",
                   help="write the trained network here (.npz; also written on Ctrl-C; default: not saved)")
    o.add_argument("--json", action="store_true",
                   help="print one JSON summary object as the last line of stdout (default: off)")
    o.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar on stderr when stderr is a terminal)")


TRAINER_OPTIONS = ("loss", "lr", "batch_size", "epochs", "momentum", "nesterov", "l2", "l1", "dropout", "lr_schedule",
                   "warmup_epochs", "lr_step_size", "lr_gamma", "min_lr", "pct_start", "augment_shift",
                   "augment_rotate", "augment_elastic", "label_smoothing", "time_budget", "validation_split",
                   "early_stopping")
#: Passed to the Trainer only when given (its defaults depend on the optimiser).
OPTIMIZER_OPTIONS = ("optimizer", "beta1", "beta2", "eps", "weight_decay")
SGD_ONLY = ("momentum", "nesterov")


def resolve_settings(args, task="classify"):
    """Network and Trainer settings: explicit flags, then the recipe, then task defaults, then the lesson's."""
    from .recipes import RECIPES

    settings = dict(RECIPES["lesson"])
    if task == "regress":
        settings.update(REGRESSION_DEFAULTS)
    settings.update(RECIPES.get(args.recipe) or {})
    optimizer = getattr(args, "optimizer", None) or "sgd"
    if optimizer != "sgd":
        for key in SGD_ONLY:  # a recipe's SGD momentum does not carry over to Adam
            settings.pop(key, None)
        for key in SGD_ONLY:
            if getattr(args, key, None):
                raise ValueError(f"--{key} applies to --optimizer sgd, not {optimizer}")
        if getattr(args, "lr", None) is None:
            settings.pop("lr", None)  # the Trainer's default for the optimiser (1e-3)
    elif any(getattr(args, k, None) is not None for k in ("beta1", "beta2", "eps")):
        raise ValueError("--beta1, --beta2 and --eps apply to --optimizer adam or adamw")
    if getattr(args, "weight_decay", None) is not None and getattr(args, "l2", None) is not None:
        raise ValueError("pass --weight-decay or --l2 (its older name), not both")
    if getattr(args, "weight_decay", None) is not None:
        settings.pop("l2", None)
    for key in ("sizes", "activation", "output") + TRAINER_OPTIONS + OPTIMIZER_OPTIONS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return settings


def _random_seed():
    return int(np.random.SeedSequence().entropy % (2 ** 32))


def _check_fraction_flag(value, flag):
    if value is not None and not 0 <= value < 1:
        raise ValueError(f"{flag} must lie in [0, 1), got {value}")


def _check_writable_folder(path, flag):
    if path is not None:
        folder = Path(path).parent
        if not folder.is_dir():
            raise ValueError(f"{flag} {path}: the folder {str(folder)!r} does not exist")


def _resume_path(path):
    """--resume run finds run.npz, as --checkpoint run wrote it."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists() and p.suffix != ".npz" and p.with_name(p.name + ".npz").exists():
        return p.with_name(p.name + ".npz")
    if not p.exists() and not p.with_name(p.name + ".npz").exists():
        raise ValueError(f"--resume {path}: no such checkpoint")
    return p


def load_data(args, seed, log):
    """The data set, split into train/test, its task, and encoded targets."""
    from . import data_files
    from .datasets import load_mnist

    _check_fraction_flag(args.test_split, "--test-split")
    if args.data is None:
        if args.target is not None:
            raise ValueError("--target names a column of a --data table; the shipped MNIST has none")
        X_train, y_train, X_test, y_test = load_mnist()
        ds = data_files.Dataset(X_train, y_train, X_test, y_test, source="the shipped MNIST")
    else:
        ds = data_files.load_training_data(args.data, args.target)
    if ds.X_test is None:
        fraction = DEFAULT_TEST_SPLIT if args.test_split is None else args.test_split
        if fraction > 0:
            rest, test = data_files.split(len(ds.X_train), fraction, seed)
            ds.X_test, ds.y_test = ds.X_train[test], np.asarray(ds.y_train)[test]
            ds.X_train, ds.y_train = ds.X_train[rest], np.asarray(ds.y_train)[rest]
            ds.notes.append(f"the data has no test set: holding out {fraction:g} of it ({len(test)} samples) as "
                            f"the test set (--test-split)")
    elif args.test_split is not None:
        raise ValueError(f"--test-split: {args.data} already has a test set")
    try:
        task = data_files.infer_task(ds.y_train, args.task)
    except ValueError as exc:
        raise ValueError(str(exc) if "--task" in str(exc) else f"{exc} (--task)") from exc
    return ds, task


def build_network(args, settings, ds, task, seed):
    """The Network for this data: sizes checked against the data's width and classes/targets."""
    from . import data_files
    from .network import Network

    n_in = ds.X_train.shape[1]
    classes = None
    if task == "classify":
        y_train, y_test, classes = data_files.encode_labels(ds.y_train, ds.y_test)
        n_classes = len(classes) if classes is not None else int(max(y_train.max(), -1 if y_test is None
                                                                      else y_test.max())) + 1
    else:
        y_train = np.asarray(ds.y_train, dtype=np.float64)
        y_train = y_train.reshape(len(y_train), -1)
        y_test = None if ds.y_test is None else np.asarray(ds.y_test, dtype=np.float64).reshape(len(ds.y_test), -1)
        n_classes = None
    output = settings["output"]
    n_out = y_train.shape[1] if task == "regress" else 1 if n_classes == 2 and output == "sigmoid" else n_classes
    if args.sizes is not None:
        sizes = list(settings["sizes"])
    elif args.recipe is not None:  # the recipe's hidden layers between this data's input and output widths
        sizes = [n_in] + list(settings["sizes"][1:-1]) + [n_out]
    else:
        sizes = [n_in, 16, 16, n_out]
    try:
        sizes = _checks.check_sizes(sizes)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--sizes: {exc}") from exc
    _checks.check_loss_output(settings["loss"], output)
    if sizes[0] != n_in:
        raise ValueError(f"--sizes starts with {sizes[0]} inputs but the data has {n_in} features per sample")
    if task == "regress":
        if output != "linear":
            raise ValueError(f"--output {output}: regression (--task regress) needs --output linear")
        if sizes[-1] != y_train.shape[1]:
            raise ValueError(f"--sizes ends with {sizes[-1]} output units but the data has {y_train.shape[1]} "
                             f"regression target(s); end --sizes with {y_train.shape[1]}")
    else:
        if output == "linear":
            raise ValueError("--output linear is for regression; classification needs --output sigmoid or softmax")
        binary_unit = n_classes == 2 and sizes[-1] == 1
        if binary_unit and output != "sigmoid":
            raise ValueError(f"--sizes ends with 1 output unit: two classes with one unit need --output sigmoid, "
                             f"not {output}")
        if sizes[-1] != n_classes and not binary_unit:
            hint = " (or 1 with --output sigmoid)" if n_classes == 2 else ""
            raise ValueError(f"--sizes ends with {sizes[-1]} output units but the data has {n_classes} classes; "
                             f"end --sizes with {n_classes}{hint}")
    net = Network(sizes, activation=settings["activation"], output=output, dtype=args.dtype, seed=seed)
    if classes is not None:
        net.classes = classes
    net.feature_names = ds.feature_names
    if args.standardize:
        net.fit_scalers(ds.X_train, y_train if task == "regress" else None)
    return net, y_train, y_test


def _metrics_line(record, prefix, label):
    if record.get(prefix + "r2") is not None:
        return f"  {label} r2 {record[prefix + 'r2']:.4f}  {label} mae {record[prefix + 'mae']:.4g}"
    if record.get(prefix + "accuracy") is not None:
        return f"  {label} acc {100 * record[prefix + 'accuracy']:6.2f}%"
    return ""


def test_metrics(net, trainer, X_test, y_test_raw, y_test_encoded, task):
    """Metrics on the test set in the data's own units and labels (predict undoes the scalers)."""
    out = {"loss": trainer.evaluate(X_test, y_test_encoded)["loss"]}
    pred = net.predict(X_test, backend=trainer.backend.name, threads=trainer.threads)
    if task == "classify":
        truth = np.asarray(y_test_raw).reshape(-1)
        if truth.dtype.kind == "f":
            truth = truth.astype(np.int64)
        out["accuracy"] = float(np.mean(pred == truth))
    else:
        t = np.asarray(y_test_encoded, dtype=np.float64)
        p = np.asarray(pred, dtype=np.float64).reshape(t.shape)
        ss_res = np.sum((t - p) ** 2, axis=0)
        ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
        out["r2"] = float(r2.mean())
        out["mae"] = float(np.mean(np.abs(t - p)))
    return out


def run(args):
    from .trainer import Trainer

    log = sys.stderr if args.json else sys.stdout
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--threads", args.threads),
                        ("--checkpoint-every", args.checkpoint_every)):
        if value is not None and value < (0 if flag == "--epochs" else 1):
            raise ValueError(f"{flag} must be >= {0 if flag == '--epochs' else 1}, got {value}")
    if args.lr is not None and not (args.lr > 0 and np.isfinite(args.lr)):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    for flag, value in (("--time-budget", getattr(args, "time_budget", None)),):
        if value is not None and not (value > 0 and np.isfinite(value)):
            raise ValueError(f"{flag} must be a finite number of seconds > 0, got {value}")
    for flag, value in (("--augment-rotate", getattr(args, "augment_rotate", None)),
                        ("--augment-elastic", getattr(args, "augment_elastic", None))):
        if value is not None and not (value >= 0 and np.isfinite(value)):
            raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
    _check_fraction_flag(getattr(args, "label_smoothing", None), "--label-smoothing")
    _check_fraction_flag(args.validation_split, "--validation-split")
    _check_writable_folder(args.save, "--save")
    _check_writable_folder(args.checkpoint, "--checkpoint")
    resume = _resume_path(args.resume)
    seed_was_random = args.seed is None
    seed = _random_seed() if seed_was_random else args.seed

    ds, task = load_data(args, seed, log)
    settings = resolve_settings(args, task)
    if settings.get("early_stopping") and not settings.get("validation_split"):
        settings["validation_split"] = DEFAULT_EARLY_STOPPING_SPLIT
        ds.notes.append(f"--early-stopping: holding out {DEFAULT_EARLY_STOPPING_SPLIT:g} of the training data for "
                        f"validation (choose the fraction with --validation-split); the test set is never used "
                        f"to stop or to choose weights")
    net, y_train, y_test = build_network(args, settings, ds, task, seed)
    trainer_kw = {k: settings[k] for k in TRAINER_OPTIONS + OPTIMIZER_OPTIONS if k in settings}
    try:
        trainer = Trainer(net, backend=args.backend, threads=args.threads, seed=seed, deterministic=not args.hogwild,
                          checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, **trainer_kw)
    except (ValueError, TypeError) as exc:
        raise type(exc)(_name_the_flag(str(exc))) from exc

    n_test = 0 if ds.X_test is None else len(ds.X_test)
    print(f"fastgd: {ds.source}: {len(ds.X_train)} training and {n_test} test samples, task "
          f"{'regression' if task == 'regress' else 'classification'}"
          + (f" ({len(net.classes)} classes: {', '.join(map(str, net.classes[:10]))}"
             f"{' ...' if len(net.classes) > 10 else ''})" if net.classes is not None else ""), file=log)
    print(f"fastgd: network {net}{' with standardised inputs' if args.standardize else ''}; backend "
          f"{trainer.backend.name}, {trainer.threads} thread(s); seed {seed}"
          + (" (random; pass --seed to repeat this run)" if seed_was_random else ""), file=log, flush=True)
    for note in ds.notes:
        print(f"fastgd: {note}", file=log, flush=True)

    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=trainer.epochs, unit="epoch", file=sys.stderr, leave=False, dynamic_ncols=True)
    validating = bool(trainer.validation_split)
    val_name = "val" if validating else "test"

    def progress(record, _trainer):
        line = (f"epoch {record['epoch']:3d}/{trainer.epochs}  loss {record['train_loss']:.4f}"
                f"{_metrics_line(record, 'train_', 'train')}{_metrics_line(record, 'val_', val_name)}  "
                f"{record['seconds']:.3f} s  {record['samples_per_second'] / 1e3:,.0f}k samples/s")
        if bar is not None:
            bar.total = trainer.epochs  # a --time-budget plans the number of epochs after the first
            bar.write(line, file=log)
            bar.update(record["epoch"] - bar.n)
        else:
            print(line, file=log, flush=True)

    validation = None if validating or ds.X_test is None else (ds.X_test, y_test)
    try:
        history = trainer.fit(ds.X_train, y_train, validation_data=validation, callbacks=[progress], resume=resume)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        _save_after_interrupt(args, net, trainer, log)
        return 130
    except FloatingPointError as exc:
        hint = f"; lower --lr (now {trainer.lr:g})"
        if not args.standardize and ds.X_train.dtype != np.uint8:
            hint += (f" or pass --standardize (unscaled features{' and targets' if task == 'regress' else ''} "
                     f"often diverge)")
        raise FloatingPointError(f"{exc}{hint}") from exc
    finally:
        if bar is not None:
            bar.close()
    if history.stopped_early:
        print(f"early stopping after epoch {len(history)}; kept the weights of epoch {history.best_epoch}", file=log)
    if history.compile_seconds > 0.05:
        print(f"compiling the {trainer.backend.name} kernels took {history.compile_seconds:.2f} s "
              f"(not counted as training time)", file=log)
    test = None
    if ds.X_test is not None:
        test = test_metrics(net, trainer, ds.X_test, ds.y_test, y_test, task)
        what = (f"accuracy {100 * test['accuracy']:.2f}%" if "accuracy" in test
                else f"r2 {test['r2']:.4f}, mae {test['mae']:.4g}")
        print(f"test {what} after {len(history)} epochs, {history.train_seconds:.2f} s of training", file=log)
    else:
        print(f"trained {len(history)} epochs in {history.train_seconds:.2f} s (no test set)", file=log)
    if args.save:
        path = net.save(args.save)
        print(f"saved the network to {path}", file=log)
    if args.json:
        train_seconds = history.train_seconds
        summary = {
            "task": "regression" if task == "regress" else "classification",
            "test_accuracy": None if test is None else test.get("accuracy"),
            "test_loss": None if test is None else test["loss"],
            "train_seconds": train_seconds,
            "compile_seconds": history.compile_seconds,
            "epochs": len(history),
            "samples_per_second": len(ds.X_train) * len(history) / train_seconds if train_seconds > 0 else None,
            "backend": trainer.backend.name,
            "threads": trainer.threads,
            "sizes": [int(s) for s in net.sizes],
            "activation": net.activation,
            "output": net.output,
            "loss": trainer.loss,
            "recipe": args.recipe or "lesson",
            "settings": {k: _jsonable(getattr(trainer, k, None)) for k in TRAINER_OPTIONS},
            "optimizer": _optimizer_summary(trainer),
            "dtype": net.dtype.name,
            "seed": seed,
            "standardize": bool(args.standardize),
            "classes": None if net.classes is None else [_jsonable(c) for c in net.classes],
            "n_train": len(ds.X_train),
            "n_test": n_test,
            "history": history.to_list(),
        }
        if test is not None and "r2" in test:
            summary.update(test_r2=test["r2"], test_mae=test["mae"])
        print(json.dumps(summary))
    return 0


def _name_the_flag(message):
    """The Trainer names its keyword ("dropout must lie in ..."); the user typed --dropout."""
    import re

    if message.startswith("--"):
        return message
    names = TRAINER_OPTIONS + OPTIMIZER_OPTIONS + ("threads", "checkpoint_every", "checkpoint", "augment_shift")
    m = re.match(r"(?:unknown )?([a-z_0-9]+)", message)
    for name in sorted(names, key=len, reverse=True):
        if m and m.group(1) == name:
            return f"--{name.replace('_', '-')}: {message}"
    for name in sorted(names, key=len, reverse=True):
        if re.search(rf"\b{name}\b", message):
            return f"--{name.replace('_', '-')}: {message}"
    return message


def _optimizer_summary(trainer):
    opt = getattr(trainer, "optimizer", None)
    if opt is None or isinstance(opt, str):
        return {"name": opt or "sgd"}
    out = {"name": getattr(opt, "name", type(opt).__name__)}
    hyper = getattr(opt, "hyperparameters", None)
    if callable(hyper):
        out.update({k: _jsonable(v) for k, v in hyper().items()})
    return out


def _jsonable(v):
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return v


def _save_after_interrupt(args, net, trainer, log):
    """Ctrl-C: the Trainer left the state of the last completed step; keep it."""
    done = len([r for r in trainer.history.records if not r.get("partial")])
    print(f"fastgd train: interrupted after {done} complete epoch(s)", file=sys.stderr, flush=True)
    if args.checkpoint and getattr(trainer, "_run", None) is not None and hasattr(trainer, "save_checkpoint"):
        path = trainer.save_checkpoint(args.checkpoint)
        print(f"fastgd train: wrote the checkpoint {path} (continue with --resume {path})", file=sys.stderr)
    if args.save:
        path = net.save(args.save)
        print(f"fastgd train: saved the network as it stands to {path}", file=sys.stderr)
