"""The `fastgd` command line: CLI -> Trainer -> backend -> kernels.

Subcommands are listed in SUBCOMMANDS as (name, module, help); each module provides
``add_arguments(parser)`` and ``run(args) -> int`` (and optionally an ``EPILOG`` of examples) and is
imported only when its subcommand runs.

Errors a user can fix (bad flags, files, data) print ``fastgd CMD: error: ...`` and exit 2; a run
that fails (diverged training, a failing disk) exits 1; Ctrl-C exits 130. Never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = [
    ("train", "fastgd.cli_train", "train a network (default: the lesson's 784-16-16-10 on MNIST)"),
    ("bench", "fastgd.cli_bench", "time training epochs and inference per backend; table, JSON, plot"),
    ("predict", "fastgd.cli_predict", "predictions of a saved model on a data file (.npy, .npz, .csv, .parquet, IDX)"),
    ("export", "fastgd.cli_export", "convert a saved model to ONNX (onnxruntime, other frameworks)"),
    ("inspect", "fastgd.cli_inspect", "pictures of a saved model: first-layer weights, confusion matrix, errors, curves"),
    ("experiment", "fastgd.cli_experiment", "the lesson's experiments: noise over-confidence, random-label memorisation"),
]


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fastgd", description="Train dense neural networks with minibatch SGD on the CPU, fast.")
    parser.add_argument("--version", action="version", version=f"fastgd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in SUBCOMMANDS:
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=getattr(mod, "EPILOG", None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return importlib.import_module(args._module).run(args) or 0
    except (ValueError, TypeError, ImportError) as exc:
        print(f"fastgd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"fastgd {args.command}: error: {exc.filename or exc}: no such file", file=sys.stderr)
        return 2
    except (FloatingPointError, OSError, MemoryError) as exc:
        print(f"fastgd {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fastgd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
