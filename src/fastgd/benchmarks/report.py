"""Reports: speed-ups within a case, the text and Markdown tables, JSON and the PNG chart."""
from __future__ import annotations

import numpy as np

from .configs import PEERS, ordered_backends
from .machine import machine_info


def compare(results):
    """Rows for the table: every result with `ratios`, its samples/s divided by that of each fastgd
    backend measured on the same case (a row's own backend excluded)."""
    by_case = {}
    for r in results:
        by_case.setdefault(r.config.case, {})[r.config.backend] = r
    rows = []
    for r in results:
        peers = by_case[r.config.case]
        ratios = {}
        for name, other in peers.items():
            if name != r.config.backend and name not in PEERS:
                ratios[name] = r.samples_per_second / other.samples_per_second
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
    return [b for b in ordered_backends(present) if b not in PEERS]


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


def table_rows(results):
    """The table as a header and string rows: config, backend, samples, samples/s, ms/epoch, x <backend>..."""
    columns = _ratio_columns(results)
    header = ["config", "backend", "samples", "samples/s", "ms/epoch"] + [f"x {b}" for b in columns]
    body = []
    last_case = None
    for row in compare(results):
        r = row["result"]
        label = r.config.label if r.config.case != last_case else ""
        last_case = r.config.case
        star = "*" if r.subsampled else ""
        line = [label, r.config.backend, f"{r.n_samples}{star}", fmt_rate(r.samples_per_second),
                f"{_fmt_ms(r.ms_per_epoch)}{star}"]
        line += [f"{row['ratios'][b]:.2f}" if b in row["ratios"] else "" for b in columns]
        body.append(line)
    return header, body


FOOTNOTE = ("ms/epoch: per 60,000-sample training epoch, or per 10,000-image forward pass for infer rows; "
            "x B: samples/s relative to backend B on the same case (median of the rounds, same run); "
            "* timed on a random subsample of that many images, epoch time extrapolated.")


def format_table(results):
    """The plain-text table, with a footnote."""
    header, body = table_rows(results)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    right = set(range(2, len(header)))

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    return "\n".join(lines + ["", FOOTNOTE])


def markdown_table(results, machine=None, command=None):
    """A compact Markdown table for the README: one row per case, one column per backend, each cell
    'ms per epoch (speed-up over numpy)', preceded by the machine and date."""
    machine = machine or machine_info()
    backends = ordered_backends({r.config.backend for r in results})
    cases = {}
    for r in results:
        cases.setdefault(r.config.case, {})[r.config.backend] = r
    lines = []
    intro = (f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores, load average "
             f"{machine['load_average']} at the start), Python {machine['python']}, NumPy {machine['numpy']}, "
             f"fastgd {machine['fastgd']}")
    if command:
        intro += f", with `{command}`"
    lines.append(intro + ". Milliseconds per 60,000-image training epoch (forward: per 10,000-image pass); "
                 "in brackets the speed-up over NumPy, from medians of the same run"
                 + ("; * timed on a random subsample and extrapolated" if any(r.subsampled for r in results) else "")
                 + ".")
    lines.append("")
    lines.append("| config | " + " | ".join(backends) + " |")
    lines.append("|---|" + "---:|" * len(backends))
    for per_backend in cases.values():
        any_r = next(iter(per_backend.values()))
        ref = per_backend.get("numpy")
        cells = []
        for b in backends:
            r = per_backend.get(b)
            if r is None:
                cells.append("—")
                continue
            star = "*" if r.subsampled else ""
            cell = f"{_fmt_ms(r.ms_per_epoch)}{star} ms"
            if ref is not None and b != "numpy":
                cell += f" ({_fmt_ratio(r.samples_per_second / ref.samples_per_second)}×)"
            cells.append(cell)
        lines.append(f"| {any_r.config.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(results, machine=None, settings=None):
    """A JSON-ready dict: machine, settings, and one record per result with its ratios."""
    records = []
    for row in compare(results):
        d = row["result"].to_dict()
        d["ratios"] = row["ratios"]
        records.append(d)
    return {"machine": machine or machine_info(), "settings": settings or {}, "results": records}


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
