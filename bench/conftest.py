"""pytest-benchmark suite: every backend that loads here x the benchmark matrix of fastgd.benchmarks.

    pytest bench/ --benchmark-only              # the full suite (under ~10 minutes on 2 cores)
    pytest bench/ --benchmark-only -m quick     # the smoke-test subset (under a minute)
    pytest bench/ --benchmark-only -m quick --bench-full-epochs   # full 60,000-image epochs

This suite is a regression and smoke test: to stay short it times training on a subsample by
default (rows marked * in its table, epoch times extrapolated). Published figures (the README) come
from `fastgd bench`, which times full epochs.

Benchmarks are grouped by case (network, dtype, batch size, threads), so each group lists the
backends side by side, numpy first. extra_info records samples/s and the speed-up over numpy (and
over any other backend already measured on that case); the session ends with the comparison table.
Options: --bench-backends numpy,cython (default: every backend that loads here); --bench-rounds N
(timed rounds, default 5); --bench-budget-seconds S (slow cases time the subsample the NumPy
reference gets through in about S seconds, the same for every backend; default 0.3);
--bench-full-epochs (no subsample).
"""
import pytest

from fastgd import benchmarks as B

_RESULTS = pytest.StashKey()
_BACKENDS = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("fastgd benchmarks")
    group.addoption("--bench-backends", default=None,
                    help="comma-separated backends to measure (default: every backend that loads here)")
    group.addoption("--bench-rounds", type=int, default=5, help="timed rounds per benchmark (default 5)")
    group.addoption("--bench-budget-seconds", type=float, default=0.3,
                    help="slow cases time the subsample numpy gets through in about this long (default 0.3)")
    group.addoption("--bench-full-epochs", action="store_true",
                    help="time full 60,000-image epochs (no subsample), as fastgd bench does")


def pytest_configure(config):
    config.stash[_RESULTS] = {}
    # Backends are discovered when the suite starts: compiled ones join as soon as they load.
    here = B.ordered_backends()
    chosen = config.getoption("--bench-backends", None)
    if chosen is None:
        config.stash[_BACKENDS] = here
    else:
        names = [s.strip() for s in chosen.split(",") if s.strip()]
        missing = [n for n in names if n not in here]
        if missing or not names:
            raise pytest.UsageError(f"--bench-backends: {', '.join(missing) or '(none given)'} not available here; "
                                    f"available: {', '.join(here)}")
        config.stash[_BACKENDS] = B.ordered_backends(names)


def pytest_report_header(config):
    import importlib.util

    from fastgd.backends import _REGISTRY

    backends = config.stash[_BACKENDS]
    missing = [name for name in _REGISTRY if name not in B.ordered_backends()]
    machine = B.machine_info()
    line = (f"fastgd benchmarks: backends {', '.join(backends)}; {machine['cpu']}, {machine['cores']} cores, "
            f"load average {machine['load_average']}")
    if missing:
        why = ["not built" if importlib.util.find_spec(_REGISTRY[m][0]) else "not shipped" for m in missing]
        line += "; not measured: " + ", ".join(f"{m} ({w})" for m, w in zip(missing, why))
    return line


def config_params(kind, backends):
    """pytest params for every config of `kind`, marked `quick` when in the smoke-test subset."""
    return [pytest.param(c, id=c.id, marks=[pytest.mark.quick] if c.quick else [])
            for c in B.all_configs(backends, kinds=(kind,))]


def pytest_generate_tests(metafunc):
    """A test taking `train_config` or `infer_config` runs once per config of that kind."""
    for kind in B.KINDS:
        if f"{kind}_config" in metafunc.fixturenames:
            metafunc.parametrize(f"{kind}_config", config_params(kind, metafunc.config.stash[_BACKENDS]))


@pytest.fixture(scope="session")
def workload():
    return B.Workload()


@pytest.fixture
def bench_config(request, benchmark, workload):
    """Returns run(config) -> (Result, output of the last timed call): times `config` with
    pytest-benchmark and fills extra_info."""
    results = request.config.stash[_RESULTS]
    rounds = request.config.getoption("--bench-rounds")
    budget = None if request.config.getoption("--bench-full-epochs") else request.config.getoption("--bench-budget-seconds")

    def run(config):
        runner = B.Runner(config, workload, budget_seconds=budget)  # prepare()/JIT happens here, untimed
        benchmark.group = config.label
        setup = runner.reset if config.kind == "train" else None
        output = benchmark.pedantic(runner.call, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
        result = runner.result
        if benchmark.stats is not None:  # measured by pytest-benchmark
            result.seconds = list(benchmark.stats.stats.data)
        else:  # --benchmark-disable: pytest-benchmark ran it once untimed; time it ourselves
            for _ in range(rounds):
                runner.reset()
                runner.run()
        results[config] = result
        reference = config.with_backend("numpy")
        if reference not in results:  # numpy deselected (-k): measure it here, it is the yardstick
            results[reference] = B.measure([reference], workload, repeats=rounds, budget_seconds=budget)[0]
        info = benchmark.extra_info
        info.update({"backend": config.backend, "case": config.label, "samples": result.n_samples,
                     "subsampled": result.subsampled, "samples_per_second": round(result.samples_per_second, 1),
                     "ms_per_epoch": round(result.ms_per_epoch, 3), "compile_seconds": round(result.compile_seconds, 3),
                     "threads_used": result.threads_used, "mode": result.mode})
        for other in request.config.stash[_BACKENDS]:
            if other != config.backend and config.with_backend(other) in results:
                info[f"speedup_vs_{other}"] = round(
                    result.samples_per_second / results[config.with_backend(other)].samples_per_second, 3)
        return result, output

    return run


def pytest_terminal_summary(terminalreporter, config):
    results = config.stash.get(_RESULTS, {})
    if results:
        ordered = [c for c in B.all_configs(B.BACKEND_ORDER) if c in results]
        ordered = [results[c] for c in ordered]
        title = "fastgd: comparison with numpy (medians, same run)"
        if any(r.subsampled for r in ordered):
            title += "; * subsampled, NOT full epochs (published figures: fastgd bench)"
        terminalreporter.section(title)
        terminalreporter.write_line(B.format_table(ordered))
