"""`fastgd bench`: time a chosen subset of the benchmark matrix and print the comparison table.

    fastgd bench                              # the quick subset, every backend that loads here
    fastgd bench --preset full --networks large --batch-sizes 128
    fastgd bench --peers --plot bench.png     # add PyTorch / JAX when installed, write a chart
    fastgd bench --preset issue --peers --peer-python /path/to/jax-venv/bin/python --peak
    fastgd bench --preset readme --peers --peak --update-readme README.md
    fastgd bench --peak-only                  # just this machine's FP32 FMA peak

Training rounds are full 60,000-image epochs; --budget-seconds / --max-samples time a subsample
instead (marked *, never written to the README).
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
    from .benchmarks import KINDS, NETWORKS, PEER_PYTHON_ENV, PRESETS

    nets = ", ".join(f"{n.key} ({n.name})" for n in NETWORKS)
    p.add_argument("--preset", default="quick", choices=tuple(PRESETS),
                   help="which configurations: quick (a smoke subset, default), issue (the issue-11 table: 7 training "
                        "cases, float32, 2 threads), readme (issue + 10k-image inference + single-image predict "
                        "latency: the README table) or full (every network x batch size x threads x dtype); the "
                        "filters below narrow it")
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
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="time a subsample instead of full epochs: what the NumPy reference gets through in about "
                        "this long (same samples for every backend; marked *, epoch time extrapolated)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="time at most this many training samples per round (a subsample, marked *; default: "
                        "full 60,000-image epochs)")
    p.add_argument("--peers", action="store_true",
                   help="also time PyTorch and JAX (each if installed), afterwards, each in a process of its own")
    p.add_argument("--peer-python", default=None, metavar="PYTHON",
                   help=f"interpreter for the peers (e.g. a venv with jax; default ${PEER_PYTHON_ENV} if set); "
                        "each peer runs under the first of this one and the current one that has it")
    p.add_argument("--peak", action="store_true",
                   help="measure this machine's FP32 FMA peak (compiled probe, per thread count) first and add a "
                        "'%% peak' column")
    p.add_argument("--peak-gflops", default=None, metavar="T=G,...",
                   help="give the peak instead of measuring it, GFLOP/s per thread count, e.g. 1=180,2=350")
    p.add_argument("--peak-only", action="store_true", help="measure the peak (1 and every core) and stop")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG chart (needs matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the compact Markdown table (as in the README)")
    p.add_argument("--update-readme", default=None, metavar="PATH",
                   help="replace the text between <!-- bench-table:start --> and <!-- bench-table:end --> in PATH "
                        "with the Markdown table (full epochs only)")


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
    if args.budget_seconds is not None:
        parts.append(f"--budget-seconds {args.budget_seconds:g}")
    if args.max_samples is not None:
        parts.append(f"--max-samples {args.max_samples}")
    if args.peers:
        parts.append("--peers")
        if args.peer_python:
            parts.append(f"--peer-python {args.peer_python}")
    if args.peak_gflops:
        parts.append(f"--peak-gflops {args.peak_gflops}")
    elif args.peak:
        parts.append("--peak")
    return " ".join(parts)


def _peaks(args, thread_counts, log):
    """GFLOP/s per thread count: given (--peak-gflops) or measured (--peak); {} for neither."""
    from . import benchmarks as B

    peaks = B.parse_peaks(args.peak_gflops) if args.peak_gflops else {}
    if args.peak or args.peak_only:
        if not B.probe_available():
            raise RuntimeError("--peak needs the compiled probe fastgd._kernels.peak_fma, which is not built here "
                               "(build the package with a C compiler: pip install .)")
        for t in sorted(thread_counts):
            if t in peaks:
                continue
            p = B.measure_peak(t)
            peaks[t] = p.gflops
            print(f"fastgd bench: FP32 FMA peak {p.describe()}", file=log, flush=True)
        for w in B.peak_warnings(peaks):
            print(f"fastgd bench: {w}", file=log, flush=True)
    return peaks


def run(args):
    from . import benchmarks as B
    from . import _checks
    from .backends import available_backends, backend_names

    log = sys.stderr if args.json else sys.stdout
    if args.peak_only:
        machine = B.machine_info()
        print(f"fastgd bench: {machine['cpu']}, {machine['cores']} cores, load average {machine['load_average']}",
              file=log, flush=True)
        peaks = _peaks(args, B.thread_counts(), log)
        if args.json:
            print(json.dumps({"machine": machine, "peaks_gflops": {str(t): g for t, g in sorted(peaks.items())}}))
        return 0
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.budget_seconds is not None and not args.budget_seconds > 0:
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
    subsample = args.budget_seconds is not None or args.max_samples is not None
    if subsample and args.update_readme:
        raise ValueError("--update-readme publishes full epochs only: drop --budget-seconds/--max-samples")
    peaks = B.parse_peaks(args.peak_gflops) if args.peak_gflops else {}  # bad text fails before any timing

    n_cases = len({c.case for c in configs})
    machine = B.machine_info()
    print(f"fastgd bench: {n_cases} cases x backends {', '.join(B.ordered_backends({c.backend for c in configs}))}, "
          f"{args.repeats} rounds each; {machine['cpu']}, {machine['cores']} cores, load average "
          f"{machine['load_average']}", file=log, flush=True)
    if machine["load_average"] is not None and machine["load_average"] > 0.5:
        print("fastgd bench: the machine is busy; multithreaded timings will be noisy and ratios unreliable",
              file=log, flush=True)
    if subsample:
        print("fastgd bench: NOT full epochs: --budget-seconds/--max-samples time a random subsample (rows marked *, "
              "epoch time extrapolated)", file=log, flush=True)
    else:
        print("fastgd bench: training rounds are full 60,000-image epochs", file=log, flush=True)
    peaks = _peaks(args, {c.threads for c in configs}, log) if (args.peak or peaks) else {}

    def progress(result):
        ran = f"  [{result.ran}]" if result.ran else ("  [own process]" if result.separate_process else "")
        print(f"  {result.config.label:<58} {result.config.backend:<7} {B.fmt_time(result):>10}"
              f"{'*' if result.subsampled else ''}{ran}", file=log, flush=True)

    workload = B.Workload()
    results = B.measure(configs, workload, repeats=args.repeats, budget_seconds=args.budget_seconds, progress=progress,
                        max_samples=args.max_samples)
    messages = []
    if args.peers:
        print("fastgd bench: peers, each in a process of its own", file=log, flush=True)
        peer_results, messages = B.measure_peers(configs, repeats=args.repeats, budget_seconds=args.budget_seconds,
                                                 max_samples=args.max_samples, python=args.peer_python,
                                                 workload=workload, progress=progress)
        for m in messages:
            print(f"fastgd bench: {m}", file=log, flush=True)
        results = _merge(results, peer_results)

    print("", file=log)
    print(B.format_table(results, peaks), file=log, flush=True)
    if args.markdown or args.update_readme:
        block = B.markdown_table(results, machine, command=_command_line(args), peaks=peaks,
                                 peak_note="measured with --peak" if args.peak and not args.peak_gflops else
                                 "given with --peak-gflops" if args.peak_gflops else None)
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
                    "max_samples": args.max_samples, "full_epochs": not subsample, "messages": messages}
        print(json.dumps(B.to_json(results, machine, settings, peaks)))
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
