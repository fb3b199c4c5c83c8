"""Reports: speed-ups within a case, the text and Markdown tables, JSON and the PNG chart."""
from __future__ import annotations

import numpy as np

from .configs import PEERS, ordered_backends
from .machine import machine_info


def compare(results):
    """Rows for the table: every result with `ratios`, its samples/s divided by that of every other
    backend or peer measured on the same case (a row's own backend excluded). Ratios to or from a
    peer compare separate processes (`Result.separate_process`); the tables mark them with †."""
    by_case = {}
    for r in results:
        by_case.setdefault(r.config.case, {})[r.config.backend] = r
    rows = []
    for r in results:
        others = by_case[r.config.case]
        ratios = {name: r.samples_per_second / other.samples_per_second
                  for name, other in others.items() if name != r.config.backend}
        rows.append({"result": r, "ratios": ratios})
    return rows


def speedup(results, config, over="numpy"):
    """samples/s of `config` divided by that of `over` on the same case, or None if not measured."""
    mine = theirs = None
    for r in results:
        if r.config == config:
            mine = r
        elif r.config == config.with_backend(over):
            theirs = r
    if mine is None or theirs is None:
        return None
    return mine.samples_per_second / theirs.samples_per_second


def _ratio_columns(results):
    present = {r.config.backend for r in results}
    return ordered_backends(present)


def fmt_rate(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _fmt_ratio(x):
    if x >= 10:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _fmt_ms(x):
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_time(result):
    """'331 ms' per epoch or forward pass; '35.2 µs' per call for latency rows."""
    if result.config.kind == "latency":
        return f"{_fmt_ms(result.ms_per_epoch * 1e3)} µs"
    return f"{_fmt_ms(result.ms_per_epoch)} ms"


def _rounds(counts):
    """'5 timed rounds', '1 timed round', '3/5 timed rounds'."""
    counts = list(counts) or [0]
    return "/".join(map(str, counts)) + " timed round" + ("" if counts == [1] else "s")


def _dagger(backend):
    return "†" if backend in PEERS else ""


def _ran(result):
    if result.separate_process:
        return "own process"
    return result.ran


def table_rows(results, peaks=None):
    """The table as a header and string rows: config, backend, ran, samples, time, GFLOP/s,
    [% peak,] x <backend>... (`peaks`: GFLOP/s per thread count, adds the % peak column)."""
    columns = _ratio_columns(results)
    header = ["config", "backend", "ran", "samples", "time", "GFLOP/s"] + (["% peak"] if peaks else [])
    header += [f"x {b}{_dagger(b)}" for b in columns]
    body = []
    last_case = None
    for row in compare(results):
        r = row["result"]
        label = r.config.label if r.config.case != last_case else ""
        last_case = r.config.case
        star = "*" if r.subsampled else ""
        g = r.gflops
        line = [label, r.config.backend + _dagger(r.config.backend), _ran(r), f"{r.n_samples}{star}",
                fmt_time(r) + star, "" if g is None else f"{g:.1f}"]
        if peaks:
            pct = r.percent_of_peak(peaks)
            line.append("" if pct is None else f"{pct:.0f}%")
        line += [f"{row['ratios'][b]:.2f}" if b in row["ratios"] else "" for b in columns]
        body.append(line)
    return header, body


def footnote(results, peaks=None):
    """What the table's columns mean, for the results at hand."""
    kinds = {r.config.kind for r in results}
    parts = []
    time = ["per full 60,000-image training epoch" if "train" in kinds else "",
            "per 10,000-image forward pass (infer)" if "infer" in kinds else "",
            "per single-image predict call (latency)" if "latency" in kinds else ""]
    rounds = sorted({len(r.seconds) for r in results})
    parts.append("time: " + ", ".join(t for t in time if t) + "; median of " + _rounds(rounds)
                 + " after an untimed warm-up.")
    parts.append("ran: the mode and threads the kernel reported for its last epoch.")
    parts.append("GFLOP/s: dense FLOP per second (training: forward + weight gradients + back-propagated "
                 "deltas; infer: forward), zeros a kernel skips still counted.")
    if peaks:
        parts.append("% peak: of the FP32 FMA peak on the row's thread count ("
                     + ", ".join(f"{t} thread{'s' if t != 1 else ''}: {g:.0f} GFLOP/s" for t, g in sorted(peaks.items()))
                     + ").")
    parts.append("x B: samples/s relative to B on the same case; fastgd's backends alternate round by round in "
                 "one process.")
    if any(r.separate_process for r in results):
        parts.append("† PyTorch/JAX ran afterwards in a process of their own: ratios to them compare separate "
                     "runs, not the same run.")
    if any(r.subsampled for r in results):
        parts.append("* NOT a full epoch: timed on a random subsample of that many images (asked for with "
                     "--budget-seconds/--max-samples), epoch time extrapolated.")
    return "\n".join(parts)


def format_table(results, peaks=None):
    """The plain-text table, with a footnote."""
    header, body = table_rows(results, peaks)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    right = set(range(3, len(header)))

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    return "\n".join(lines + ["", footnote(results, peaks)])


def best_fastgd(per_backend):
    """The fastest fastgd backend of a case (compiled ones first; numpy only when alone), or None."""
    mine = {b: r for b, r in per_backend.items() if b not in PEERS}
    compiled = {b: r for b, r in mine.items() if b != "numpy"} or mine
    if not compiled:
        return None
    return max(compiled.values(), key=lambda r: r.samples_per_second)


def _short_ran(r):
    """' (sync, 2 thr)', ' (serial, 1 thr of 2)'; '' where nothing was reported."""
    if not r.threads_used:
        return ""
    t = f"{r.threads_used} thr" + (f" of {r.config.threads}" if r.threads_used != r.config.threads else "")
    return f" ({r.mode}, {t})" if r.mode and r.mode != "numpy" else f" ({t})"


def markdown_table(results, machine=None, command=None, peaks=None, peak_note=None):
    """The README's Markdown table: one row per case, one column per backend and peer (time, and for
    fastgd's training rows the mode and threads that really ran), then the fastest fastgd backend,
    its speed-up over NumPy and over JAX, and its GFLOP/s with % of peak (`peaks`: GFLOP/s per
    thread count). Preceded by the machine, date and command."""
    machine = machine or machine_info()
    backends = ordered_backends({r.config.backend for r in results})
    cases = {}
    for r in results:
        cases.setdefault(r.config.case, {})[r.config.backend] = r
    rounds = sorted({len(r.seconds) for r in results})
    intro = (f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores, load average "
             f"{machine['load_average']} at the start), Python {machine['python']}, NumPy {machine['numpy']}, "
             f"fastgd {machine['fastgd']}")
    if command:
        intro += f", with `{command}`"
    peer_notes = sorted({r.note for r in results if r.separate_process and r.note})
    if peer_notes:
        intro += " (" + ", ".join(peer_notes) + ")"
    text = [intro + "."]
    what = ("Milliseconds per full 60,000-image training epoch (infer: per 10,000-image forward pass; latency: "
            "microseconds per single-image `predict_proba` call), median of " + _rounds(rounds)
            + " after an untimed warm-up. fastgd's backends alternate round by round in one process, idle "
            "0.3 s before each call (infer and latency: then 0.05 s of untimed calls, so that the timed one finds "
            "its threads awake, as the peers' back-to-back calls do); in brackets the mode and threads the kernel "
            "reported.")
    if any(r.separate_process for r in results):
        what += (" † PyTorch and JAX ran afterwards, each in a process of its own pinned to the same number of "
                 "cores: ratios to them compare separate runs.")
    what += (" GFLOP/s counts dense work (forward + weight gradients + back-propagated deltas per training "
             "sample; forward only for infer), zero pixels included even where a kernel skips them")
    if peaks:
        what += ("; % of the FP32 FMA peak on the same number of threads ("
                 + ", ".join(f"{g:.0f} GFLOP/s on {t}" for t, g in sorted(peaks.items())) + " threads"
                 + (f", {peak_note}" if peak_note else "") + ")")
    what += "."
    if any(r.subsampled for r in results):
        what += " * NOT a full epoch: a random subsample, extrapolated."
    text += ["", what, ""]
    has_jax = "jax" in backends
    head = ["config"] + [b + _dagger(b) for b in backends] + ["fastest fastgd", "× NumPy"]
    head += ["× JAX†"] if has_jax else []
    head += ["GFLOP/s (% of peak)" if peaks else "GFLOP/s"]
    text.append("| " + " | ".join(head) + " |")
    text.append("|---|" + "---:|" * (len(head) - 2) + "---:|")
    for per_backend in cases.values():
        any_r = next(iter(per_backend.values()))
        cells = [any_r.config.label]
        for b in backends:
            r = per_backend.get(b)
            if r is None:
                cells.append("—")
                continue
            star = "*" if r.subsampled else ""
            cells.append(fmt_time(r) + star + ("" if b in PEERS else _short_ran(r)))
        best = best_fastgd(per_backend)
        ref, jax = per_backend.get("numpy"), per_backend.get("jax")
        cells.append(best.config.backend if best else "—")
        cells.append(f"{_fmt_ratio(best.samples_per_second / ref.samples_per_second)}×"
                     if best and ref and best is not ref else "—")
        if has_jax:
            cells.append(f"{_fmt_ratio(best.samples_per_second / jax.samples_per_second)}×" if best and jax else "—")
        g = best.gflops if best else None
        if g is None:
            cells.append("—")
        else:
            pct = best.percent_of_peak(peaks)
            cells.append(f"{g:.1f}" + (f" ({pct:.0f}%)" if pct is not None else ""))
        text.append("| " + " | ".join(cells) + " |")
    return "\n".join(text)


def to_json(results, machine=None, settings=None, peaks=None):
    """A JSON-ready dict: machine, settings, peaks, and one record per result with its ratios."""
    records = []
    for row in compare(results):
        d = row["result"].to_dict()
        d["ratios"] = row["ratios"]
        d["percent_of_peak"] = row["result"].percent_of_peak(peaks)
        records.append(d)
    return {"machine": machine or machine_info(), "settings": settings or {},
            "peaks_gflops": {str(t): g for t, g in sorted((peaks or {}).items())}, "results": records}


def plot(results, path):
    """Write a PNG bar chart of samples/s per case and backend (log scale). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install 'fastgd[plot]'") from exc
    backends = ordered_backends({r.config.backend for r in results})
    cases = {}
    for r in results:
        cases.setdefault(r.config.case, {})[r.config.backend] = r
    labels = [next(iter(v.values())).config.label for v in cases.values()]
    height = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(cases) * max(1, len(backends)) ** 0.5 + 1.6))
    y = np.arange(len(cases))
    for i, b in enumerate(backends):
        values = [v[b].samples_per_second if b in v else 0 for v in cases.values()]
        ax.barh(y + (i - (len(backends) - 1) / 2) * height, values, height=height, label=b)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("samples per second (log scale; higher is better)")
    m = machine_info()
    ax.set_title(f"fastgd {m['fastgd']} on {m['cpu']} ({m['cores']} cores), {m['date']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
