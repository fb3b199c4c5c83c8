"""`fastgd bench`: time a chosen subset of the benchmark matrix and print the comparison table.

    fastgd bench                              # the quick subset, every backend that loads here
    fastgd bench --preset full --networks large --batch-sizes 128
    fastgd bench --peers --plot bench.png     # add PyTorch / JAX when installed, write a chart
    fastgd bench --preset readme --markdown --update-readme README.md
"""
from __future__ import annotations

import json
import sys


def _list(kind=str):
    def parse(text):
        import argparse

        try:
            return [kind(s.strip()) for s in text.split(",") if s.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return parse


def _threads(text):
    import argparse

    from . import _checks

    out = []
    for s in text.split(","):
        s = s.strip()
        if not s:
            continue
        if s == "all":
            out.append(_checks.available_cores())
            continue
        try:
            out.append(int(s))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--threads takes numbers or 'all', e.g. 1,all; got {text!r}")
    return out


def add_arguments(p):
    from .benchmarks import KINDS, NETWORKS, PRESETS

    nets = ", ".join(f"{n.key} ({n.name})" for n in NETWORKS)
    p.add_argument("--preset", default="quick", choices=tuple(PRESETS),
                   help="which configurations: quick (the CI smoke subset, default), readme (the README table) "
                        "or full (every network x batch size x threads x dtype); the filters below narrow it")
    p.add_argument("--backends", type=_list(), default=None,
                   help="comma-separated backends (default: every one that loads here)")
    p.add_argument("--networks", type=_list(), default=None, help=f"comma-separated networks: {nets}")
    p.add_argument("--batch-sizes", type=_list(int), default=None, help="e.g. 10,128")
    p.add_argument("--threads", type=_threads, default=None, help="e.g. 1,all")
    p.add_argument("--dtypes", type=_list(), default=None, help="float32 and/or float64 (float64: lesson network)")
    p.add_argument("--kinds", type=_list(), default=None, help=f"comma-separated: {', '.join(KINDS)}")
    p.add_argument("--nondeterministic", action="store_true",
                   help="let compiled backends use their faster nondeterministic (Hogwild-style) mode")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per config; medians are reported (default 5)")
    p.add_argument("--budget-seconds", type=float, default=0.3,
                   help="slow cases time a subsample: what the NumPy reference gets through in about this long "
                        "(same samples for every backend; default 0.3)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="never time more than this many training samples per round (default: a full epoch)")
    p.add_argument("--peers", action="store_true", help="also time PyTorch and JAX (each if installed)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG chart (needs matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the compact Markdown table (as in the README)")
    p.add_argument("--update-readme", default=None, metavar="PATH",
                   help="replace the text between <!-- bench-table:start --> and <!-- bench-table:end --> in PATH "
                        "with the Markdown table")


def _command_line(args):
    """The command that reproduces this run, for the README."""
    parts = ["fastgd bench", f"--preset {args.preset}"]
    for flag, value in (("--backends", args.backends), ("--networks", args.networks),
                        ("--batch-sizes", args.batch_sizes), ("--threads", args.threads),
                        ("--dtypes", args.dtypes), ("--kinds", args.kinds)):
        if value is not None:
            parts.append(f"{flag} {','.join(str(v) for v in value)}")
    if args.nondeterministic:
        parts.append("--nondeterministic")
    if args.peers:
        parts.append("--peers")
    return " ".join(parts)


def run(args):
    from . import benchmarks as B
    from . import _checks
    from .backends import available_backends, backend_names

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if not args.budget_seconds > 0:
        raise ValueError(f"--budget-seconds must be > 0, got {args.budget_seconds}")
    if args.max_samples is not None and args.max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1, got {args.max_samples}")
    for bs in args.batch_sizes or ():
        _checks.check_positive_int(bs, "batch size")
    for t in args.threads or ():
        _checks.check_positive_int(t, "threads")
    for d in args.dtypes or ():
        _checks.check_choice(d, ("float32", "float64"), "dtype")
    here = available_backends()
    if args.backends is not None:
        for b in args.backends:
            _checks.check_choice(b, tuple(n for n in backend_names() if n != "auto"), "backend")
            if b not in here:
                raise ValueError(f"backend {b!r} is not available here (available: {', '.join(here)})")
    configs = B.select_configs(args.preset, backends=args.backends or here, networks=args.networks,
                               batch_sizes=args.batch_sizes, threads=args.threads, dtypes=args.dtypes,
                               kinds=args.kinds, deterministic=not args.nondeterministic)
    if not configs:
        raise ValueError("no configuration matches those filters (the filters narrow --preset; try --preset full)")

    log = sys.stderr if args.json else sys.stdout
    n_cases = len({c.case for c in configs})
    machine = B.machine_info()
    print(f"fastgd bench: {n_cases} cases x backends {', '.join(B.ordered_backends({c.backend for c in configs}))}, "
          f"{args.repeats} rounds each; {machine['cpu']}, {machine['cores']} cores, load average "
          f"{machine['load_average']}", file=log, flush=True)
    if machine["load_average"] is not None and machine["load_average"] > 0.5:
        print("fastgd bench: the machine is busy; multithreaded timings will be noisy and ratios unreliable",
              file=log, flush=True)

    def progress(result):
        print(f"  {result.config.label:<48} {result.config.backend:<7} {B.fmt_rate(result.samples_per_second):>8} samples/s",
              file=log, flush=True)

    results = B.measure(configs, repeats=args.repeats, budget_seconds=args.budget_seconds, progress=progress,
                        max_samples=args.max_samples)
    messages = []
    if args.peers:
        peer_configs = [c for c in configs]
        peer_results, messages = B.measure_peers(peer_configs, repeats=args.repeats, budget_seconds=args.budget_seconds,
                                                 max_samples=args.max_samples)
        for m in messages:
            print(f"fastgd bench: {m}", file=log, flush=True)
        results = _merge(results, peer_results)

    print("", file=log)
    print(B.format_table(results), file=log, flush=True)
    if args.markdown or args.update_readme:
        block = B.markdown_table(results, machine, command=_command_line(args))
        if args.markdown:
            print("", file=log)
            print(block, file=log)
        if args.update_readme:
            path = B.update_readme(args.update_readme, block)
            print(f"updated the benchmark table in {path}", file=log)
    if args.plot:
        path = B.plot(results, args.plot)
        print(f"wrote {path}", file=log)
    if args.json:
        settings = {"command": _command_line(args), "repeats": args.repeats, "budget_seconds": args.budget_seconds,
                    "max_samples": args.max_samples, "messages": messages}
        print(json.dumps(B.to_json(results, machine, settings)))
    return 0


def _merge(results, peer_results):
    """Peers' rows placed after the fastgd backends of the same case."""
    by_case = {}
    for r in peer_results:
        by_case.setdefault(r.config.case, []).append(r)
    out, seen = [], set()
    for i, r in enumerate(results):
        out.append(r)
        last_of_case = i + 1 == len(results) or results[i + 1].config.case != r.config.case
        if last_of_case and r.config.case not in seen:
            seen.add(r.config.case)
            out.extend(by_case.get(r.config.case, []))
    return out
