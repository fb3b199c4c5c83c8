"""Correctness of the benchmark library (fastgd.benchmarks) and `fastgd bench`; no timing assertions."""
import argparse
import json

import numpy as np
import pytest

from fastgd import benchmarks as B
from fastgd import cli_bench
from fastgd.backends import available_backends


def result(backend, seconds, n=60_000, kind="train", network="lesson", batch_size=10, threads=1, dtype="float32",
           threads_used=0, mode=""):
    config = B.Config(kind, backend, network, dtype, threads, batch_size if kind == "train" else 0)
    return B.Result(config, n, list(seconds), subsampled=kind == "train" and n < B.MNIST_TRAIN,
                    threads_used=threads_used, mode=mode, separate_process=backend in B.PEERS)


@pytest.fixture(scope="module")
def small_workload(mnist):
    X_train, y_train, X_test, y_test = mnist
    return B.Workload((X_train[:600], y_train[:600], X_test[:200], y_test[:200]))


# ---- the matrix ---------------------------------------------------------------------------------
def test_matrix_enumerates_the_issue_spec():
    threads = B.thread_counts()
    assert threads[0] == 1 and len(threads) == len(set(threads)) and B.issue_threads() in threads
    train = B.all_configs(["numpy"], kinds=("train",))
    infer = B.all_configs(["numpy"], kinds=("infer",))
    latency = B.all_configs(["numpy"], kinds=("latency",))
    matrix = [c for c in train if c.net.matrix and c.data == "mnist"]
    assert {c.net.sizes for c in matrix} == {(784, 16, 16, 10), (784, 128, 10), (784, 512, 512, 10)}
    assert {c.batch_size for c in matrix} == {1, 10, 32, 128}
    assert {c.threads for c in train} == set(threads)
    assert {(c.network, c.dtype) for c in matrix} == {
        ("lesson", "float32"), ("lesson", "float32"), ("lesson", "float64"), ("wide", "float32"), ("large", "float32")}
    # (lesson x 2 dtypes + wide + large) x 4 batch sizes x thread counts, and no duplicates
    assert len(matrix) == len(set(matrix)) == 4 * 4 * len(threads)
    extra = [c for c in train if c not in matrix]  # the issue cases outside the matrix, at every thread count
    assert {(c.net.sizes, c.batch_size, c.data) for c in extra} == {
        ((784, 256, 10), 64, "mnist"), ((784, 512, 512, 10), 128, "gauss")}
    assert len(extra) == 2 * len(threads) and len(set(train)) == len(train)
    assert len(infer) == len(set(infer)) == 4 * len(threads)
    assert all(c.batch_size == 0 for c in infer + latency)
    assert {(c.network, c.dtype) for c in latency} == {("wide", "float32")}


def test_issue_preset_is_the_issue_table_in_order():
    got = B.select_configs("issue", backends=["numpy"])
    t = B.issue_threads()
    assert [(c.net.name, c.batch_size, c.data) for c in got] == [
        ("784-16-16-10", 10, "mnist"), ("784-128-10", 32, "mnist"), ("784-128-10", 128, "mnist"),
        ("784-256-10", 64, "mnist"), ("784-512-512-10", 32, "mnist"), ("784-512-512-10", 128, "mnist"),
        ("784-512-512-10", 128, "gauss")]
    assert all(c.kind == "train" and c.dtype == "float32" and c.threads == t and c.deterministic for c in got)
    assert got[0].net.activation == "sigmoid" and got[0].net.loss == "mse"
    assert "dense Gaussian input" in got[-1].label and got[-1].id.endswith("-gauss-numpy")
    readme = B.select_configs("readme", backends=["numpy"])
    assert readme[:7] == got  # the README table: the issue table, then inference and latency
    assert [(c.kind, c.network, c.threads) for c in readme[7:]] == [
        ("infer", "lesson", t), ("infer", "wide", t), ("infer", "large", t), ("latency", "wide", 1)]


def test_backends_of_a_case_are_adjacent_with_numpy_first():
    configs = B.all_configs(["numba", "numpy", "cython"])
    assert len(configs) == 3 * len(B.all_configs(["numpy"]))
    for i in range(0, len(configs), 3):
        trio = configs[i:i + 3]
        assert [c.backend for c in trio] == ["numpy", "cython", "numba"]
        assert len({c.case for c in trio}) == 1
    assert len({c.id for c in configs}) == len(configs)
    assert len({c.label for c in configs}) == len(configs) // 3


def test_quick_and_readme_are_subsets_with_numpy_in_every_case():
    backends = available_backends()
    full = B.select_configs("full", backends=backends)
    assert full == B.all_configs(backends)
    for preset in ("quick", "issue", "readme"):
        sub = B.select_configs(preset, backends=backends)
        assert sub and set(sub) < set(full)
        assert {c.kind for c in sub} == ({"train"} if preset == "issue" else {"train", "infer", "latency"})
        assert {c.backend for c in sub} == set(backends)
        for case in {c.case for c in sub}:
            assert any(c.case == case and c.backend == "numpy" for c in sub)
    quick = B.select_configs("quick", backends=backends)
    assert all(c.quick for c in quick) and not all(c.quick for c in full)


def test_select_configs_filters_and_rejects_bad_names():
    got = B.select_configs("full", backends=["numpy"], networks=["large"], batch_sizes=[128], threads=[1],
                           kinds=["train"])
    assert [c.id for c in got] == ["train-large-float32-bs128-t1-numpy", "train-large-float32-bs128-t1-gauss-numpy"]
    nondet = B.select_configs("quick", backends=["numpy"], deterministic=False)
    assert nondet and not any(c.deterministic for c in nondet)
    with pytest.raises(ValueError, match="unknown network 'huge'"):
        B.select_configs("full", networks=["huge"])
    with pytest.raises(ValueError, match="unknown preset"):
        B.select_configs("fast")
    with pytest.raises(ValueError, match="unknown kind"):
        B.select_configs("full", kinds=["predict"])


def test_epoch_samples_full_epochs_by_default():
    for c in B.all_configs(["numpy"], kinds=("train",)):
        assert B.epoch_samples(c) == B.MNIST_TRAIN  # never a subsample unless asked for
    assert B.epoch_samples(B.Config("infer", "numpy", "lesson", "float32", 1)) == B.MNIST_TEST
    assert B.epoch_samples(B.Config("latency", "numpy", "wide", "float32", 1)) == B.LATENCY_CALLS
    import inspect

    for fn in (B.epoch_samples, B.measure, B.Runner.__init__, B.measure_peers):
        params = inspect.signature(fn).parameters
        assert params["budget_seconds"].default is None and params["max_samples"].default is None


def test_epoch_samples_subsample_only_when_asked():
    for c in B.all_configs(["numpy"], kinds=("train",)):
        n = B.epoch_samples(c, budget_seconds=0.3)
        assert n == B.MNIST_TRAIN or (n % c.batch_size == 0 and n // c.batch_size >= 20)
        assert n == B.epoch_samples(c.with_backend("cython"), budget_seconds=0.3)  # same work for every backend
        assert B.epoch_samples(c, max_samples=100) == 100
    cheap = B.Config("train", "numpy", "lesson", "float32", 1, 128)
    costly = B.Config("train", "numpy", "large", "float32", 1, 1)
    assert B.epoch_samples(cheap, budget_seconds=0.3) == B.MNIST_TRAIN
    assert B.epoch_samples(costly, budget_seconds=0.3) < B.epoch_samples(costly, budget_seconds=3.0) < B.MNIST_TRAIN


# ---- FLOP and peak -------------------------------------------------------------------------------
def test_flop_counts_follow_the_performance_notes():
    # the lesson network: forward 2*(784*16 + 16*16 + 16*10) = 25,920; gradients the same; deltas 2*(256 + 160)
    assert B.forward_flops_per_sample([784, 16, 16, 10]) == 25_920
    assert B.train_flops_per_sample([784, 16, 16, 10]) == 2 * 25_920 + 832 == 52_672
    # the large network: 192.6 GFLOP per 60,000-sample epoch
    assert B.train_flops_per_sample((784, 512, 512, 10)) * 60_000 / 1e9 == pytest.approx(192.55, abs=0.01)
    assert B.train_flops_per_sample([784, 10]) == 4 * 7840  # one layer: no deltas propagated back
    with pytest.raises(ValueError):
        B.train_flops_per_sample([784])


def test_gflops_and_percent_of_peak():
    r = result("cython", [0.5], network="large", batch_size=128, threads=2)
    assert r.gflops == pytest.approx(192.55296 / 0.5)
    assert r.percent_of_peak({2: 770.0}) == pytest.approx(100 * 385.10592 / 770)
    assert r.percent_of_peak({1: 180.0}) is None and r.percent_of_peak(None) is None
    inf = result("cython", [0.01], n=10_000, kind="infer", network="lesson")
    assert inf.gflops == pytest.approx(25_920 * 1e6 / 1e9)
    lat = result("cython", [0.05], n=1000, kind="latency", network="wide")
    assert lat.gflops is None and lat.percent_of_peak({1: 100.0}) is None
    assert lat.ms_per_epoch == pytest.approx(0.05)  # 50 microseconds per call
    assert B.fmt_time(lat) == "50.0 µs" and B.fmt_time(r) == "500 ms"


def test_peak_warnings_flag_a_shared_machine():
    assert B.peak_warnings({1: 180.0, 2: 350.0}) == []
    assert B.peak_warnings({2: 10.0}) == []  # nothing to compare with
    (w,) = B.peak_warnings({1: 180.0, 2: 200.0})
    assert "2 threads" in w and "unreliable" in w


def test_parse_peaks():
    assert B.parse_peaks("1=180, 2=350.5") == {1: 180.0, 2: 350.5}
    for bad in ("", "2", "two=3", "0=100", "1=-5", "1=nan"):
        with pytest.raises(ValueError):
            B.parse_peaks(bad)


def test_peak_probe_is_positive_finite_and_respects_threads():
    from fastgd import _checks
    from fastgd._kernels import openmp_info, peak_fma  # built with the Cython kernels

    assert B.probe_available()
    assert peak_fma.best_isa() in ("avx512", "avx2", "generic")
    assert peak_fma.flops_per_iter() == 2 * peak_fma.CHAINS * (16 if peak_fma.best_isa() == "avx512" else 8)
    one = B.measure_peak(1, seconds=0.02, run_ms=1.0)
    assert np.isfinite(one.gflops) and one.gflops > 0 and one.threads == one.threads_used == 1
    assert "1 thread" in one.describe()
    cores = _checks.available_cores()
    two = B.measure_peak(2, seconds=0.02, run_ms=1.0)
    assert np.isfinite(two.gflops) and two.gflops > 0 and two.threads == 2
    assert two.threads_used == (2 if openmp_info.openmp_enabled() else 1)
    used, checksum = peak_fma.run(1000, 3)
    assert used == (3 if openmp_info.openmp_enabled() else 1) and np.isfinite(checksum)
    assert cores >= 1
    generic = B.measure_peak(1, seconds=0.02, run_ms=1.0, isa="generic")
    assert generic.isa == "generic" and generic.gflops > 0


def test_peak_probe_rejects_bad_arguments():
    from fastgd._kernels import peak_fma

    with pytest.raises(ValueError, match="iters"):
        peak_fma.run(0, 1)
    with pytest.raises(ValueError, match="threads"):
        peak_fma.run(10, 0)
    with pytest.raises(ValueError, match="unknown isa"):
        peak_fma.run(10, 1, "sse9")
    with pytest.raises(ValueError, match="threads"):
        B.measure_peak(0)
    with pytest.raises(TypeError):
        B.measure_peak(1.5)
    with pytest.raises(ValueError, match="seconds"):
        B.measure_peak(1, seconds=0)


# ---- ratios and output formats from given timings ------------------------------------------------
def test_ratios_and_table_from_given_timings():
    results = [result("numpy", [1.2, 1.0, 0.9], threads_used=1, mode="numpy"),
               result("cython", [0.1, 0.3, 0.1], threads_used=1, mode="serial"),
               result("numba", [0.2, 0.2, 0.25], threads_used=1, mode="serial")]
    np_r, cy_r, nb_r = results
    assert np_r.median == 1.0 and np_r.samples_per_second == 60_000 and np_r.ms_per_epoch == pytest.approx(1000)
    assert cy_r.median == 0.1 and cy_r.ms_per_epoch == pytest.approx(100)
    rows = B.compare(results)
    assert rows[0]["ratios"] == pytest.approx({"cython": 0.1, "numba": 0.2})
    assert rows[1]["ratios"] == pytest.approx({"numpy": 10.0, "numba": 2.0})
    assert rows[2]["ratios"] == pytest.approx({"numpy": 5.0, "cython": 0.5})
    assert B.speedup(results, cy_r.config) == pytest.approx(10.0)
    assert B.speedup(results, cy_r.config, over="numba") == pytest.approx(2.0)
    assert B.speedup(results[:2], nb_r.config) is None

    header, body = B.table_rows(results)
    assert header == ["config", "backend", "ran", "samples", "time", "GFLOP/s", "x numpy", "x cython", "x numba"]
    assert body[0][:6] == ["train 784-16-16-10 float32 batch 10, 1 thread", "numpy", "numpy, 1 thread", "60000",
                           "1,000 ms", f"{52_672 * 60_000 / 1e9:.1f}"]
    assert body[0][6:] == ["", "0.10", "0.20"]
    assert body[1] == ["", "cython", "serial, 1 thread", "60000", "100 ms", "31.6", "10.00", "", "2.00"]
    assert body[2][6:] == ["5.00", "0.50", ""]
    header, body = B.table_rows(results, peaks={1: 100.0})  # the % of peak column on every row
    assert header[6] == "% peak" and [b[6] for b in body] == ["3%", "32%", "16%"]
    text = B.format_table(results, peaks={1: 100.0})
    assert text.splitlines()[0].split()[:8] == ["config", "backend", "ran", "samples", "time", "GFLOP/s", "%", "peak"]
    assert "1 thread: 100 GFLOP/s" in text and "in one process" in text and "NOT a full epoch" not in text
    assert "†" not in text  # no peers here


def test_rows_say_when_fewer_threads_ran_than_labelled():
    r = result("cython", [0.03], threads=2, threads_used=1, mode="serial")
    assert r.ran == "serial, 1 thread (of 2)"
    assert B.table_rows([r])[1][0][2] == "serial, 1 thread (of 2)"
    md = B.markdown_table([result("numpy", [0.6], threads=2, threads_used=2, mode="numpy"), r], MACHINE)
    assert "| 600 ms (2 thr) | 30.0 ms (serial, 1 thr of 2) |" in md
    assert result("cython", [0.03], threads=2, threads_used=2, mode="sync").ran == "sync, 2 threads"
    assert result("torch", [0.03]).ran == ""  # peers report nothing


def test_subsampled_rows_are_marked_and_extrapolated():
    r = result("numpy", [0.5], n=3000, batch_size=1)
    assert r.subsampled and r.samples_per_second == 6000
    assert r.ms_per_epoch == pytest.approx(10_000)  # 60,000 samples at 6,000/s
    _, body = B.table_rows([r])
    assert body[0][3] == "3000*" and body[0][4].endswith("*")
    assert "NOT a full epoch" in B.format_table([r]) and "NOT a full epoch" in B.markdown_table([r], MACHINE)
    inf = result("numpy", [0.02], n=10_000, kind="infer")
    assert not inf.subsampled and inf.ms_per_epoch == pytest.approx(20)


def test_backend_order_is_fixed():
    assert B.ordered_backends({"jax", "numba", "torch", "numpy", "cython"}) == ["numpy", "cython", "numba", "torch", "jax"]
    assert B.ordered_backends(["numba", "numpy"]) == ["numpy", "numba"]


def test_small_ratios_keep_two_decimals():
    md = B.markdown_table([result("numpy", [1.0]), result("cython", [40.0])], MACHINE)
    assert "| cython | 0.03× |" in md
    md = B.markdown_table([result("numpy", [1.0]), result("torch", [40.0])], MACHINE)
    assert "| numpy | — | 3.2 |" in md  # numpy is the only fastgd backend: no speed-up over itself


def test_peer_rows_are_marked_as_separate_runs():
    results = [result("numpy", [1.0]), result("cython", [0.5]), result("jax", [4.0])]
    rows = B.compare(results)
    assert rows[0]["ratios"] == pytest.approx({"cython": 0.5, "jax": 4.0})
    assert rows[2]["ratios"] == pytest.approx({"numpy": 0.25, "cython": 0.125})
    header, body = B.table_rows(results)
    assert header[-3:] == ["x numpy", "x cython", "x jax†"]
    assert body[2][1:3] == ["jax†", "own process"]
    text = B.format_table(results)
    assert "† PyTorch/JAX ran afterwards in a process of their own" in text and "not the same run" in text
    md = B.markdown_table(results, MACHINE)
    assert "| config | numpy | cython | jax† | fastest fastgd | × NumPy | × JAX† | GFLOP/s |" in md
    assert "| 1,000 ms | 500 ms | 4,000 ms | cython | 2.0× | 8.0× |" in md
    assert "ratios to them compare separate runs" in md


def test_merge_places_peers_after_their_case():
    a = [result("numpy", [1.0]), result("cython", [0.5]), result("numpy", [1.0], batch_size=128)]
    peers = [result("torch", [2.0], batch_size=128), result("torch", [3.0])]
    merged = cli_bench._merge(a, peers)
    assert [(r.config.backend, r.config.batch_size) for r in merged] == [
        ("numpy", 10), ("cython", 10), ("torch", 10), ("numpy", 128), ("torch", 128)]


MACHINE = {"cpu": "Test CPU", "cores": 2, "date": "2026-01-01 00:00 UTC", "python": "3.11", "numpy": "2",
           "fastgd": "0.1.0", "platform": "x", "load_average": 0.05}


def test_json_and_markdown():
    results = [result("numpy", [1.0]), result("cython", [0.1], threads_used=1, mode="serial"),
               result("numpy", [0.04], n=10_000, kind="infer"), result("numpy", [0.03], n=1000, kind="latency",
                                                                       network="wide")]
    data = json.loads(json.dumps(B.to_json(results, MACHINE, {"repeats": 1}, peaks={1: 100.0})))
    assert data["machine"]["cpu"] == "Test CPU" and data["settings"] == {"repeats": 1}
    assert data["peaks_gflops"] == {"1": 100.0}
    rec = data["results"][1]
    assert rec["backend"] == "cython" and rec["samples_per_second"] == pytest.approx(600_000)
    assert rec["ratios"] == pytest.approx({"numpy": 10.0}) and rec["ms_per_epoch"] == pytest.approx(100)
    assert rec["threads_used"] == 1 and rec["mode"] == "serial" and not rec["separate_process"]
    assert rec["gflops"] == pytest.approx(31.6032) and rec["percent_of_peak"] == pytest.approx(31.6032)
    assert data["results"][3]["gflops"] is None and data["results"][3]["percent_of_peak"] is None
    md = B.markdown_table(results, MACHINE, command="fastgd bench --preset readme", peaks={1: 100.0})
    assert "Test CPU (2 cores, load average 0.05 at the start)" in md and "2026-01-01" in md
    assert "`fastgd bench --preset readme`" in md and "full 60,000-image training epoch" in md
    assert "100 GFLOP/s on 1" in md
    lines = md.splitlines()
    assert "| config | numpy | cython | fastest fastgd | × NumPy | GFLOP/s (% of peak) |" in lines
    assert "| train 784-16-16-10 float32 batch 10, 1 thread | 1,000 ms | 100 ms (serial, 1 thr) | cython | 10× | 31.6 (32%) |" in lines
    assert "| infer 784-16-16-10 float32 forward 10k, 1 thread | 40.0 ms | — | numpy | — | 6.5 (6%) |" in lines
    assert "| latency 784-128-10 float32 predict 1 image, 1 thread | 30.0 µs | — | numpy | — | — |" in lines


def test_machine_info_has_cpu_cores_and_date():
    m = B.machine_info()
    assert m["cpu"] and m["cores"] >= 1 and m["date"].endswith("UTC")
    assert m["load_average"] is None or m["load_average"] >= 0


def test_update_readme_rewrites_only_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# fastgd\n\nintro\n", "\n\n## More\ntext\n"
    readme.write_text(before + B.README_START + "\nold table\n" + B.README_END + after)
    B.update_readme(readme, "| new | table |\n")
    assert readme.read_text() == before + B.README_START + "\n| new | table |\n" + B.README_END + after
    B.update_readme(readme, "second")
    assert readme.read_text() == before + B.README_START + "\nsecond\n" + B.README_END + after
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="markers"):
        B.update_readme(readme, "x")
    readme.write_text(B.README_END + "\n" + B.README_START + "\n")
    with pytest.raises(ValueError, match="exactly one"):
        B.update_readme(readme, "x")


def test_plot_writes_a_png_or_names_the_missing_extra(tmp_path):
    import importlib.util

    results = [result("numpy", [1.0]), result("cython", [0.1]), result("numpy", [0.04], n=10_000, kind="infer")]
    if importlib.util.find_spec("matplotlib") is None:  # the `plot` extra is not installed
        with pytest.raises(ImportError, match=r"fastgd\[plot\]"):
            B.plot(results, tmp_path / "bench.png")
    else:
        path = B.plot(results, tmp_path / "bench.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- tiny real runs -------------------------------------------------------------------------------
def test_runner_times_the_same_work_every_round(small_workload):
    config = B.Config("train", "numpy", "lesson", "float32", 1, 10)
    runner = B.Runner(config, small_workload, max_samples=200)
    assert runner.result.n_samples == 200 and runner.result.subsampled
    assert len(runner.plan.order) == 200 and runner.plan.n_steps == 20
    first = runner.call()
    runner.reset()
    second = runner.call()
    assert first == second  # reset restores the initial weights: identical epochs
    assert runner.run() > 0 and len(runner.result.seconds) == 1
    assert runner.result.threads_used == first.threads_used >= 1 and runner.result.mode == first.mode == "numpy"
    full = B.Runner(config, small_workload)  # the default: the whole training set
    assert full.result.n_samples == small_workload.n_train and len(full.plan.order) == small_workload.n_train


def test_runner_gaussian_input_and_latency(small_workload):
    gauss = B.Runner(B.Config("train", "numpy", "large", "float32", 1, 128, data="gauss"), small_workload)
    X = gauss.plan.X
    assert X.dtype == np.float32 and X.shape == small_workload.X_train.shape and gauss.plan.x_scale == 1.0
    assert np.array_equal(X, B.gaussian_inputs(X.shape))  # the input the peers' worker builds too
    assert abs(float(X.mean())) < 0.01 and 0.98 < float(X.std()) < 1.02
    latency = B.Runner(B.Config("latency", "numpy", "wide", "float32", 1), small_workload)
    out = latency.call()
    assert latency.result.n_samples == B.LATENCY_CALLS and out.shape == (1, 10)
    net = latency.net
    assert np.allclose(out, net.predict_proba(small_workload.X_test[(B.LATENCY_CALLS - 1) % 200][None]))


def test_measure_on_a_small_subsample(small_workload):
    configs = [B.Config("train", "numpy", "lesson", "float32", 1, 10),
               B.Config("train", "numpy", "wide", "float32", 1, 32),
               B.Config("infer", "numpy", "lesson", "float64", 1)]
    seen = []
    results = B.measure(configs, small_workload, repeats=2, warmup=1, max_samples=160, progress=seen.append)
    assert [r.config for r in results] == configs and len(seen) == 3
    assert [r.n_samples for r in results] == [160, 160, 200]
    for r in results:
        assert len(r.seconds) == 2 and min(r.seconds) > 0 and np.isfinite(r.samples_per_second)


def test_measure_wakes_infer_and_latency_before_timing(small_workload, monkeypatch):
    """Backends timed against each other idle before each call; an infer or latency call then
    gets untimed calls of its own first (its threads awake, like the peers' back-to-back calls),
    at least one, for timing.WAKE_SECONDS, after the garbage collection; a training epoch does
    not."""
    from fastgd.benchmarks import timing

    calls, timed = [], []
    real_call, real_timed, real_collect = B.Runner.call, timing._timed, timing.gc.collect

    def call(self):
        calls.append((self.config.kind, self.config.backend))
        return real_call(self)

    def timed_(fn, collect=True):
        timed.append((fn.__self__.config.kind, fn.__self__.config.backend, len(calls), collect))
        return real_timed(fn, collect)

    def collect(*a):
        calls.append("gc")
        return real_collect(*a)

    monkeypatch.setattr(B.Runner, "call", call)
    monkeypatch.setattr(timing, "_timed", timed_)
    monkeypatch.setattr(timing.gc, "collect", collect)
    configs = [B.Config(kind, backend, "lesson", "float32", 1, 10 if kind == "train" else None)
               for kind in ("train", "infer") for backend in ("numpy", "cython")]
    B.measure(configs, small_workload, repeats=2, warmup=1, max_samples=60, settle_seconds=0.001)
    assert len(timed) == 12
    for kind, backend, before, collected in timed:
        prior = calls[before - 1] if before else None  # what ran just before this timed call
        if kind == "infer":
            assert prior == (kind, backend) and not collected  # its own untimed call, no collection after it
        else:
            assert prior != (kind, backend) and collected
    # 3 timed rounds (warm-up + 2 repeats) each; infer also at least one untimed call per round
    assert calls.count(("train", "numpy")) == 3 and calls.count(("infer", "numpy")) >= 6


def _cli(argv):
    p = argparse.ArgumentParser()
    cli_bench.add_arguments(p)
    return cli_bench.run(p.parse_args(argv))


def test_cli_json_table_and_readme(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{B.README_START}\n{B.README_END}\nbottom\n")
    rc = _cli(["--preset", "full", "--backends", "numpy", "--networks", "lesson", "--batch-sizes", "128",
               "--threads", "1", "--dtypes", "float32", "--kinds", "train,infer", "--repeats", "1", "--json",
               "--peak-gflops", "1=100", "--update-readme", str(readme)])
    assert rc == 0
    out, err = capsys.readouterr()
    data = json.loads(out.strip().splitlines()[-1])
    assert [(r["kind"], r["backend"], r["n_samples"]) for r in data["results"]] == [
        ("train", "numpy", 60_000), ("infer", "numpy", 10_000)]
    assert data["settings"]["full_epochs"] and data["peaks_gflops"] == {"1": 100.0}
    assert data["results"][0]["percent_of_peak"] > 0 and data["results"][0]["mode"] == "numpy"
    assert "full 60,000-image epochs" in err and "% peak" in err
    text = readme.read_text()
    assert text.startswith("top\n" + B.README_START + "\nMeasured ") and text.endswith(B.README_END + "\nbottom\n")
    assert "| train 784-16-16-10 float32 batch 128, 1 thread |" in text and "*" not in text.split("|", 1)[1]
    assert "--preset full --backends numpy --networks lesson" in text and "--peak-gflops 1=100" in text


def test_cli_subsample_is_explicit_and_never_published(tmp_path, capsys):
    rc = _cli(["--preset", "quick", "--backends", "numpy", "--networks", "lesson", "--batch-sizes", "10",
               "--threads", "1", "--kinds", "train", "--repeats", "1", "--max-samples", "100"])
    assert rc == 0
    out, _ = capsys.readouterr()
    assert "NOT full epochs" in out and "100*" in out and "NOT a full epoch" in out
    readme = tmp_path / "README.md"
    readme.write_text(f"{B.README_START}\n{B.README_END}\n")
    for flag in (["--max-samples", "100"], ["--budget-seconds", "0.1"]):
        with pytest.raises(ValueError, match="full epochs only"):
            _cli(["--backends", "numpy", "--update-readme", str(readme)] + flag)


def test_cli_peak_only(capsys):
    assert _cli(["--peak-only", "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out.strip().splitlines()[-1])
    assert set(data["peaks_gflops"]) == {str(t) for t in B.thread_counts()}
    assert all(np.isfinite(g) and g > 0 for g in data["peaks_gflops"].values())
    assert "FP32 FMA peak" in err


def test_cli_rejects_bad_choices():
    with pytest.raises(ValueError, match="unknown backend"):
        _cli(["--backends", "fortran"])
    with pytest.raises(ValueError, match="no configuration"):
        _cli(["--preset", "quick", "--networks", "mid"])  # quick holds no 784-256-10 case
    with pytest.raises(ValueError, match="repeats"):
        _cli(["--repeats", "0"])
    with pytest.raises(ValueError, match="budget"):
        _cli(["--budget-seconds", "0"])
    with pytest.raises(ValueError, match="THREADS=GFLOPS"):
        _cli(["--backends", "numpy", "--peak-gflops", "lots"])
    with pytest.raises(SystemExit):
        _cli(["--threads", "two"])


def test_peers_run_in_a_worker_or_say_they_are_missing(monkeypatch, small_workload):
    configs = [B.Config("train", "numpy", "lesson", "float32", 1, 10), B.Config("infer", "numpy", "lesson", "float32", 1),
               B.Config("latency", "numpy", "wide", "float32", 1)]
    results, messages = B.measure_peers(configs, repeats=1, warmup=0, max_samples=50, workload=small_workload)
    for peer in B.PEERS:
        mine = [r for r in results if r.config.backend == peer]
        if B.peer_available(peer):
            assert [(r.config.kind, r.n_samples) for r in mine] == [("train", 50), ("infer", 200),
                                                                    ("latency", B.LATENCY_CALLS)]
            assert all(len(r.seconds) == 1 and r.seconds[0] > 0 and r.separate_process for r in mine)
            assert any(m.startswith(f"{peer}: ") and "own process" in m for m in messages)
        else:
            assert not mine and any(m.startswith(f"{peer} is not installed") for m in messages)
    monkeypatch.setattr(B.peers, "peer_python", lambda name, python=None: None)  # where measure_peers looks it up
    results, messages = B.measure_peers(configs)
    assert results == [] and len(messages) == len(B.PEERS)
    assert all("--peer-python" in m and B.PEER_PYTHON_ENV in m for m in messages)
    nondet = [B.Config("train", "numpy", "lesson", "float32", 1, 10, deterministic=False)]
    assert B.measure_peers(nondet) == ([], ["peers skipped: they have no nondeterministic mode to compare with"])


def test_peer_python_is_configurable(monkeypatch, tmp_path):
    import sys

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")  # a "Python" with no peer installed
    fake.chmod(0o755)
    for peer in B.PEERS:  # falls back to this interpreter when the given one lacks the peer
        assert B.peer_python(peer, str(fake)) in (None, sys.executable)
    monkeypatch.setenv(B.PEER_PYTHON_ENV, str(fake))
    assert B.peers.default_peer_python() == str(fake)
    assert B.peers._candidates(None) == [str(fake), sys.executable]
    assert B.peers._candidates("/x/python") == ["/x/python", sys.executable]
    if B.peer_python("jax", str(fake)) is None:  # no jax here either: the message names what was tried
        _, messages = B.measure_peers([B.Config("infer", "numpy", "lesson", "float32", 1)], peers=("jax",),
                                      python=str(fake))
        assert str(fake) in messages[0] and sys.executable in messages[0]


def test_peer_worker_needs_no_fastgd():
    """The worker runs under interpreters without fastgd: it imports only the stdlib, NumPy and the peer."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(B.peers.WORKER).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports in the worker"
            modules.add(node.module.split(".")[0])
    assert "fastgd" not in modules and modules <= {"json", "os", "sys", "time", "gc", "numpy", "torch", "jax",
                                                    "jaxlib"}
    # the JAX epoch: one jitted lax.scan over index rows
    text = Path(B.peers.WORKER).read_text()
    assert "@jax.jit" in text and "lax.scan" in text and "intra_op_parallelism_threads" not in text


def test_recipe_accuracy_reuses_machine_info_and_readme_updating(tmp_path, monkeypatch):
    """bench/recipe_accuracy.py builds its table from fastgd.benchmarks.machine_info and writes it with
    update_readme between its own markers, leaving the benchmark block alone."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "recipe_accuracy", Path(__file__).parent.parent / "bench" / "recipe_accuracy.py")
    ra = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ra)
    runs = {"best": [{"test_accuracy": 0.9650, "train_seconds": 0.5, "sizes": [784, 16, 16, 10], "activation": "relu",
                      "output": "softmax"}, {"test_accuracy": 0.9660, "train_seconds": 0.7, "sizes": [784, 16, 16, 10],
                                             "activation": "relu", "output": "softmax"}]}
    text = ra.table(runs, "cython")
    machine = B.machine_info()
    assert machine["cpu"] in text and f"{machine['cores']} cores" in text
    assert "| `best` | 784-16-16-10 relu/softmax | 96.55% (96.50–96.60) | 2 | 0.60 s (0.70 s) |" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{B.README_START}\nbench\n{B.README_END}\nb\n{ra.START}\nold\n{ra.END}\nc\n")
    B.update_readme(readme, text, ra.START, ra.END)
    assert readme.read_text() == f"a\n{B.README_START}\nbench\n{B.README_END}\nb\n{ra.START}\n{text}\n{ra.END}\nc\n"


def test_cli_help_renders(capsys):
    """argparse %-formats help texts: a stray % (as in '% peak') would crash `fastgd bench --help`."""
    p = argparse.ArgumentParser()
    cli_bench.add_arguments(p)
    text = p.format_help()
    assert "--peak-only" in text and "% peak" in text and "--peer-python" in text
