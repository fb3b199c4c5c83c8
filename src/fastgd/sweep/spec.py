"""What a sweep runs: the spec (fixed settings, grid, search space, seeds, data) and its checks.

A spec is a plain dict (from Python, or a YAML/JSON/TOML file, or the CLI flags), e.g.::

    {"recipe": "best",                              # base settings from fastgd.recipes (optional)
     "settings": {"epochs": 5},                     # fixed Network/Trainer settings
     "grid": {"lr": [0.01, 0.05], "batch_size": [16, 32]},
     "random": {"lr": {"low": 1e-3, "high": 0.3, "log": True},     # search space for random/optuna
                "batch_size": {"low": 8, "high": 128, "int": True, "log": True},
                "activation": ["relu", "tanh"]},                  # a list: pick one
     "search": "grid",            # or "random" / "optuna" (default: random when "random" is given)
     "trials": 30,                # points to sample (random/optuna)
     "seeds": 3,                  # 3 means seeds 0, 1, 2; or a list [0, 7, 42]
     "metric": "test_accuracy",   # what "best" means
     "data": "mnist", "target": None, "train_size": None, "test_size": None}

Setting names are the keyword arguments of `fastgd.Network` and `fastgd.Trainer`, read from
their signatures, so a new Trainer option (e.g. ``optimizer="adam"``) is sweepable without any
change here. Every point is also checked by building its Network and Trainer (cheap: no
training) before anything runs, so a wrong type or value fails at once with the Trainer's own
message.
"""
from __future__ import annotations

import difflib
import inspect
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

SEARCHES = ("grid", "random", "optuna")
SPEC_KEYS = ("recipe", "settings", "grid", "random", "search", "trials", "seeds", "search_seed", "metric", "data",
             "target", "train_size", "test_size")
# Set by the sweep itself, or meaningless per trial.
RESERVED = {
    "seed": "the sweep sets each trial's seed: use 'seeds' (a count or a list)",
    "net": "the sweep builds the network from the Network settings (sizes, activation, ...)",
    "checkpoint": "trials would overwrite one another's checkpoint; the sweep saves the best model itself",
    "checkpoint_every": "trials write no checkpoints in a sweep",
    "self": "not a setting",
}
DEFAULT_SETTINGS = {"threads": 1}  # each trial single-threaded: many trials at once beat one wide trial


def _signature_names(func):
    """(names, open): keyword parameters of `func`, and whether it also takes **kwargs."""
    params = inspect.signature(func).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def setting_names():
    """(network_names, trainer_names, trainer_open) read from the current Network and Trainer."""
    from ..network import Network
    from ..trainer import Trainer

    net_names, _ = _signature_names(Network.__init__)
    trainer_names, trainer_open = _signature_names(Trainer.__init__)
    return net_names - set(RESERVED), trainer_names - set(RESERVED), trainer_open


def split_settings(settings):
    """Split one trial's settings into (Network kwargs, Trainer kwargs)."""
    net_names, _, _ = setting_names()
    net = {k: v for k, v in settings.items() if k in net_names}
    return net, {k: v for k, v in settings.items() if k not in net_names}


def check_setting_name(name, where):
    if not isinstance(name, str):
        raise TypeError(f"{where}: setting names must be strings, got {name!r}")
    if name in RESERVED:
        raise ValueError(f"{where}: {name!r} cannot be swept or set: {RESERVED[name]}")
    net_names, trainer_names, trainer_open = setting_names()
    if name in net_names or name in trainer_names or trainer_open:
        return name
    known = sorted(net_names | trainer_names)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"{where}: unknown setting {name!r}{hint}; settings are the Network and Trainer keyword "
                     f"arguments: {', '.join(known)}")


# ---- search-space dimensions ---------------------------------------------------------------
@dataclass(frozen=True)
class Uniform:
    """A real (or, with integer=True, whole) number between low and high, optionally log-uniform."""
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def describe(self):
        kind = ("log-" if self.log else "") + ("int" if self.integer else "uniform")
        return f"{kind}[{self.low}, {self.high}]"


@dataclass(frozen=True)
class Choice:
    """One of a list of values."""
    values: tuple

    def describe(self):
        return "one of " + ", ".join(map(repr, self.values))


def _real(value, where):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{where} must be a finite number, got {value!r}")
    return value


def parse_dimension(name, value):
    """A search-space entry: a list (Choice) or {"low", "high", "log"?, "int"?} (Uniform)."""
    where = f"random.{name}"
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{where} is an empty list of choices")
        return Choice(tuple(value))
    if isinstance(value, dict):
        if "choices" in value:
            return parse_dimension(name, value["choices"])
        unknown = set(value) - {"low", "high", "log", "int"}
        if unknown or "low" not in value or "high" not in value:
            raise ValueError(f"{where} must be a list of choices or {{low, high, log?, int?}}, got {value!r}")
        low, high = _real(value["low"], f"{where}.low"), _real(value["high"], f"{where}.high")
        log, integer = value.get("log", False), value.get("int", False)
        if not isinstance(log, bool) or not isinstance(integer, bool):
            raise TypeError(f"{where}: log and int must be true or false")
        if integer and (low != int(low) or high != int(high)):
            raise TypeError(f"{where}: an int range needs whole-number bounds, got {low}..{high}")
        if not low < high:
            raise ValueError(f"{where}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ValueError(f"{where}: a log range needs low > 0, got {low}")
        return Uniform(int(low) if integer else float(low), int(high) if integer else float(high), log, integer)
    raise TypeError(f"{where} must be a list of choices or a {{low, high}} range, got {value!r}")


# ---- the spec ------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    settings: dict = field(default_factory=dict)   # fixed settings (recipe + explicit + defaults)
    grid: dict = field(default_factory=dict)       # name -> list of values
    space: dict = field(default_factory=dict)      # name -> Uniform | Choice (random / optuna)
    search: str = "grid"
    trials: int | None = None
    seeds: list = field(default_factory=lambda: [0])
    search_seed: int = 0
    metric: str | None = None
    data: object = None
    target: str | None = None
    train_size: int | None = None
    test_size: int | None = None

    @property
    def swept(self):
        """Names of the settings that vary between points, in order."""
        return list(self.grid) + [k for k in self.space if k not in self.grid]

    def identity(self):
        """What makes two sweeps the same search (for an Optuna study picking up where it stopped)."""
        return json.dumps({"search": self.search, "settings": self.settings, "grid": self.grid,
                           "space": {k: repr(v) for k, v in self.space.items()}, "seeds": self.seeds,
                           "search_seed": self.search_seed, "metric": self.metric}, sort_keys=True, default=repr)


def _positive_int(value, where, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where} must be >= {minimum}, got {value}")
    return int(value)


def _seeds(value):
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("seeds is an empty list")
        seeds = [_positive_int(s, "each seed", minimum=0) for s in value]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds has repeats: {seeds}")
        return seeds
    return list(range(_positive_int(value, "seeds (a count or a list of seeds)")))


def parse_spec(spec):
    """A `SweepSpec` from a dict (keys in SPEC_KEYS), a SweepSpec, or a YAML/JSON/TOML file path.

    Checks the structure and setting names; `check_points` checks the values.
    """
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, (str, Path)):
        spec = load_spec_file(spec)
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise TypeError(f"a sweep spec must be a dict or a file path, got {type(spec).__name__}")
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown sweep spec key(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"keys: {', '.join(SPEC_KEYS)}")
    out = SweepSpec()

    from ..recipes import RECIPES

    # Like `fastgd train`: the lesson's settings, then the recipe's, then explicit ones. Without a
    # recipe or explicit sizes, the network's input width follows the data (see `default_sizes`).
    settings = dict(DEFAULT_SETTINGS)
    settings.update({k: v for k, v in RECIPES["lesson"].items() if k != "sizes"})
    recipe = spec.get("recipe")
    if recipe is not None:
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; recipes: {', '.join(sorted(RECIPES))}")
        settings.update(RECIPES[recipe])
    fixed = spec.get("settings") or {}
    if not isinstance(fixed, dict):
        raise TypeError(f"settings must be a mapping of name: value, got {fixed!r}")
    settings.update(fixed)
    for name in settings:
        check_setting_name(name, "settings")

    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise TypeError(f"grid must be a mapping of name: [values], got {grid!r}")
    for name, values in grid.items():
        check_setting_name(name, "grid")
        if not isinstance(values, (list, tuple)):
            raise TypeError(f"grid.{name} must be a list of values, got {values!r}")
        if not values:
            raise ValueError(f"grid.{name} is empty: give at least one value")
        out.grid[name] = list(values)
    space = spec.get("random") or {}
    if not isinstance(space, dict):
        raise TypeError(f"random must be a mapping of name: range or [choices], got {space!r}")
    for name, value in space.items():
        check_setting_name(name, "random")
        out.space[name] = parse_dimension(name, value)
    both = set(out.grid) & set(out.space)
    if both:
        raise ValueError(f"{', '.join(sorted(both))} is both in grid and random; put it in one")

    search = spec.get("search") or ("random" if out.space else "grid")
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}; choose one of: {', '.join(SEARCHES)}")
    out.search = search
    if search == "grid":
        if out.space:
            raise ValueError("a grid search takes 'grid' only; for 'random' ranges use search: random or optuna")
        if spec.get("trials") is not None:
            raise ValueError("trials applies to random and optuna searches; a grid runs every point")
    else:
        # Grid lists join the random space as choices.
        for name, values in out.grid.items():
            out.space[name] = Choice(tuple(values))
        out.grid = {}
        if not out.space:
            raise ValueError(f"a {search} search needs a 'random' space (ranges or choices) to sample from")
        out.trials = _positive_int(spec.get("trials", 20), "trials")
    out.settings = {k: v for k, v in settings.items() if k not in out.swept}

    out.seeds = _seeds(spec.get("seeds", 1))
    out.search_seed = _positive_int(spec.get("search_seed", 0), "search_seed", minimum=0)
    metric = spec.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise TypeError(f"metric must be a name like 'test_accuracy', got {metric!r}")
    out.metric = metric
    out.data = spec.get("data")
    out.target = spec.get("target")
    if out.target is not None and not isinstance(out.target, str):
        raise TypeError(f"target must be a column name, got {out.target!r}")
    out.train_size = _positive_int(spec.get("train_size"), "train_size", allow_none=True)
    out.test_size = _positive_int(spec.get("test_size"), "test_size", allow_none=True)
    return out


def load_spec_file(path):
    """A spec dict from a .yaml/.yml, .json or .toml file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep spec file {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json", ".toml"):
        raise ValueError(f"sweep spec {path}: unknown format {suffix or '(none)'}; use .yaml, .json or .toml")
    try:
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ImportError("reading a YAML sweep spec needs PyYAML: pip install pyyaml "
                                  "(or use a .json or .toml spec)") from exc
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                try:
                    import tomli as tomllib
                except ImportError as exc:
                    raise ImportError("reading a TOML sweep spec on Python 3.10 needs tomli: "
                                      "pip install tomli") from exc
            data = tomllib.loads(text)
    except ImportError:
        raise
    except Exception as exc:  # JSONDecodeError, TOMLDecodeError, yaml.YAMLError
        raise ValueError(f"sweep spec {path} is not valid {suffix[1:].upper()}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"sweep spec {path} must hold a mapping of keys ({', '.join(SPEC_KEYS)})")
    return data


def check_point(settings, n_inputs=None):
    """Build the Network and Trainer of one point (no training) so bad values fail before any run."""
    from ..network import Network
    from ..trainer import Trainer

    net_kw, trainer_kw = split_settings(settings)
    where = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    try:
        net = Network(**net_kw, seed=0)
        if n_inputs is not None and net.sizes[0] != n_inputs:
            raise ValueError(f"the network takes {net.sizes[0]} inputs but the data has {n_inputs} features "
                             f"(set sizes=[{n_inputs}, ...])")
        Trainer(net, **trainer_kw, seed=0)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"bad sweep setting: {exc} (in the point {where})") from exc
