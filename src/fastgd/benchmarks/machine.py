"""Machine info for tables and JSON, and replacing a marked block of the README (shared with
bench/recipe_accuracy.py)."""
from __future__ import annotations

import datetime as _dt
import os
import platform

import numpy as np

from .. import _checks

README_START = "<!-- bench-table:start -->"
README_END = "<!-- bench-table:end -->"


def machine_info():
    """CPU model, cores, date and versions, for tables and JSON."""
    from .. import __version__

    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    return {
        "cpu": cpu,
        "cores": _checks.available_cores(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fastgd": __version__,
        "platform": platform.platform(),
        "load_average": _load_average(),
    }


def _load_average():
    """The 1-minute load average (None where unknown): above ~0 other work shared the cores."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def update_readme(path, block, start=README_START, end=README_END):
    """Replace the text between the `start` and `end` markers in `path` with `block` (markers kept)."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text()
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0:
        raise ValueError(f"{path} has no '{start}' ... '{end}' markers")
    if j < i or text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"{path} must hold exactly one '{start}' followed by one '{end}'")
    new = text[:i + len(start)] + "\n" + block.strip("\n") + "\n" + text[j:]
    path.write_text(new)
    return path
