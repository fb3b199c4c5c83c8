"""Correctness of the benchmark library (fastgd.benchmarks) and `fastgd bench`; no timing assertions."""
import argparse
import json

import numpy as np
import pytest

from fastgd import benchmarks as B
from fastgd import cli_bench
from fastgd.backends import available_backends


def result(backend, seconds, n=60_000, kind="train", network="lesson", batch_size=10, threads=1, dtype="float32"):
    config = B.Config(kind, backend, network, dtype, threads, batch_size if kind == "train" else 0)
    return B.Result(config, n, list(seconds), subsampled=kind == "train" and n < B.MNIST_TRAIN)


@pytest.fixture(scope="module")
def small_workload(mnist):
    X_train, y_train, X_test, y_test = mnist
    return B.Workload((X_train[:600], y_train[:600], X_test[:200], y_test[:200]))


# ---- the matrix ---------------------------------------------------------------------------------
def test_matrix_enumerates_the_issue_spec():
    threads = B.thread_counts()
    assert threads[0] == 1 and len(threads) == len(set(threads))
    train = B.all_configs(["numpy"], kinds=("train",))
    infer = B.all_configs(["numpy"], kinds=("infer",))
    sizes = {c.net.sizes for c in train}
    assert sizes == {(784, 16, 16, 10), (784, 128, 10), (784, 512, 512, 10)}
    assert {c.batch_size for c in train} == {1, 10, 32, 128}
    assert {c.threads for c in train} == set(threads)
    assert {(c.network, c.dtype) for c in train} == {
        ("lesson", "float32"), ("lesson", "float64"), ("wide", "float32"), ("large", "float32")}
    # (lesson x 2 dtypes + wide + large) x 4 batch sizes x thread counts, and no duplicates
    assert len(train) == len(set(train)) == 4 * 4 * len(threads)
    assert len(infer) == len(set(infer)) == 4 * len(threads)
    assert all(c.batch_size == 0 for c in infer)


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
    for preset in ("quick", "readme"):
        sub = B.select_configs(preset, backends=backends)
        assert sub and set(sub) < set(full)
        assert {c.kind for c in sub} == {"train", "infer"}
        assert {c.backend for c in sub} == set(backends)
        for case in {c.case for c in sub}:
            assert any(c.case == case and c.backend == "numpy" for c in sub)
    quick = B.select_configs("quick", backends=backends)
    assert all(c.quick for c in quick) and not all(c.quick for c in full)


def test_select_configs_filters_and_rejects_bad_names():
    got = B.select_configs("full", backends=["numpy"], networks=["large"], batch_sizes=[128], threads=[1],
                           kinds=["train"])
    assert [c.id for c in got] == ["train-large-float32-bs128-t1-numpy"]
    nondet = B.select_configs("quick", backends=["numpy"], deterministic=False)
    assert nondet and not any(c.deterministic for c in nondet)
    with pytest.raises(ValueError, match="unknown network 'huge'"):
        B.select_configs("full", networks=["huge"])
    with pytest.raises(ValueError, match="unknown preset"):
        B.select_configs("fast")
    with pytest.raises(ValueError, match="unknown kind"):
        B.select_configs("full", kinds=["predict"])


def test_epoch_samples_whole_minibatches_or_a_full_epoch():
    for c in B.all_configs(["numpy"], kinds=("train",)):
        n = B.epoch_samples(c)
        assert n == B.MNIST_TRAIN or (n % c.batch_size == 0 and n // c.batch_size >= 20)
        assert n == B.epoch_samples(c.with_backend("cython"))  # same work for every backend of a case
        assert B.epoch_samples(c, max_samples=100) <= max(100, 20 * c.batch_size)
    cheap = B.Config("train", "numpy", "lesson", "float32", 1, 128)
    costly = B.Config("train", "numpy", "large", "float32", 1, 1)
    assert B.epoch_samples(cheap) == B.MNIST_TRAIN
    assert B.epoch_samples(costly) < B.epoch_samples(costly, budget_seconds=3.0) < B.MNIST_TRAIN
    assert B.epoch_samples(B.Config("infer", "numpy", "lesson", "float32", 1)) == B.MNIST_TEST


# ---- ratios and output formats from given timings ------------------------------------------------
def test_ratios_and_table_from_given_timings():
    results = [result("numpy", [1.2, 1.0, 0.9]), result("cython", [0.1, 0.3, 0.1]), result("numba", [0.2, 0.2, 0.25])]
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
    assert header == ["config", "backend", "samples", "samples/s", "ms/epoch", "x numpy", "x cython", "x numba"]
    assert body[0][:5] == ["train 784-16-16-10 float32 batch 10, 1 thread", "numpy", "60000", "60.0k", "1,000"]
    assert body[0][5:] == ["", "0.10", "0.20"]
    assert body[1] == ["", "cython", "60000", "600.0k", "100", "10.00", "", "2.00"]
    assert body[2][5:] == ["5.00", "0.50", ""]
    text = B.format_table(results)
    assert text.splitlines()[0].split() == ["config", "backend", "samples", "samples/s", "ms/epoch", "x", "numpy",
                                            "x", "cython", "x", "numba"]


def test_subsampled_rows_are_marked_and_extrapolated():
    r = result("numpy", [0.5], n=3000, batch_size=1)
    assert r.subsampled and r.samples_per_second == 6000
    assert r.ms_per_epoch == pytest.approx(10_000)  # 60,000 samples at 6,000/s
    _, body = B.table_rows([r])
    assert body[0][2] == "3000*" and body[0][4].endswith("*")
    inf = result("numpy", [0.02], n=10_000, kind="infer")
    assert not inf.subsampled and inf.ms_per_epoch == pytest.approx(20)


def test_backend_order_is_fixed():
    assert B.ordered_backends({"jax", "numba", "torch", "numpy", "cython"}) == ["numpy", "cython", "numba", "torch", "jax"]
    assert B.ordered_backends(["numba", "numpy"]) == ["numpy", "numba"]


def test_small_ratios_keep_two_decimals():
    md = B.markdown_table([result("numpy", [1.0]), result("torch", [40.0])], command=None)
    assert "(0.03×)" in md


def test_peer_rows_get_ratios_but_are_not_yardsticks():
    results = [result("numpy", [1.0]), result("torch", [4.0])]
    rows = B.compare(results)
    assert rows[0]["ratios"] == {}
    assert rows[1]["ratios"] == pytest.approx({"numpy": 0.25})
    header, _ = B.table_rows(results)
    assert header[-1] == "x numpy"


def test_merge_places_peers_after_their_case():
    a = [result("numpy", [1.0]), result("cython", [0.5]), result("numpy", [1.0], batch_size=128)]
    peers = [result("torch", [2.0], batch_size=128), result("torch", [3.0])]
    merged = cli_bench._merge(a, peers)
    assert [(r.config.backend, r.config.batch_size) for r in merged] == [
        ("numpy", 10), ("cython", 10), ("torch", 10), ("numpy", 128), ("torch", 128)]


def test_json_and_markdown():
    results = [result("numpy", [1.0]), result("cython", [0.1]), result("numpy", [0.04], n=10_000, kind="infer")]
    machine = {"cpu": "Test CPU", "cores": 2, "date": "2026-01-01 00:00 UTC", "python": "3.11", "numpy": "2",
               "fastgd": "0.1.0", "platform": "x", "load_average": 0.05}
    data = json.loads(json.dumps(B.to_json(results, machine, {"repeats": 1})))
    assert data["machine"]["cpu"] == "Test CPU" and data["settings"] == {"repeats": 1}
    rec = data["results"][1]
    assert rec["backend"] == "cython" and rec["samples_per_second"] == pytest.approx(600_000)
    assert rec["ratios"] == pytest.approx({"numpy": 10.0}) and rec["ms_per_epoch"] == pytest.approx(100)
    md = B.markdown_table(results, machine, command="fastgd bench --preset readme")
    assert "Test CPU (2 cores, load average 0.05 at the start)" in md and "2026-01-01" in md
    assert "`fastgd bench --preset readme`" in md
    lines = md.splitlines()
    assert "| config | numpy | cython |" in lines
    assert "| train 784-16-16-10 float32 batch 10, 1 thread | 1,000 ms | 100 ms (10×) |" in lines
    assert "| infer 784-16-16-10 float32 forward, 1 thread | 40.0 ms | — |" in lines


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


def _cli(argv):
    p = argparse.ArgumentParser()
    cli_bench.add_arguments(p)
    return cli_bench.run(p.parse_args(argv))


def test_cli_json_table_and_readme(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{B.README_START}\n{B.README_END}\nbottom\n")
    rc = _cli(["--preset", "full", "--backends", "numpy", "--networks", "lesson", "--batch-sizes", "10",
               "--threads", "1", "--dtypes", "float32", "--repeats", "1", "--max-samples", "100", "--json",
               "--update-readme", str(readme)])
    assert rc == 0
    out, err = capsys.readouterr()
    data = json.loads(out.strip().splitlines()[-1])
    assert [(r["kind"], r["backend"], r["n_samples"]) for r in data["results"]] == [
        ("train", "numpy", 100), ("infer", "numpy", 10_000)]
    assert "samples/s" in err and "x numpy" not in err.splitlines()[0]
    text = readme.read_text()
    assert text.startswith("top\n" + B.README_START + "\nMeasured ") and text.endswith(B.README_END + "\nbottom\n")
    assert "| train 784-16-16-10 float32 batch 10, 1 thread |" in text
    assert "--preset full --backends numpy --networks lesson" in text


def test_cli_rejects_bad_choices():
    with pytest.raises(ValueError, match="unknown backend"):
        _cli(["--backends", "fortran"])
    with pytest.raises(ValueError, match="no configuration"):
        _cli(["--preset", "quick", "--networks", "wide"])  # quick holds no 784-128-10 case
    with pytest.raises(ValueError, match="repeats"):
        _cli(["--repeats", "0"])
    with pytest.raises(SystemExit):
        _cli(["--threads", "two"])


def test_peers_run_in_a_worker_or_say_they_are_missing(monkeypatch):
    configs = [B.Config("train", "numpy", "lesson", "float32", 1, 10), B.Config("infer", "numpy", "lesson", "float32", 1)]
    results, messages = B.measure_peers(configs, repeats=1, warmup=0, max_samples=50)
    for peer in B.PEERS:
        mine = [r for r in results if r.config.backend == peer]
        if B.peer_available(peer):
            assert [(r.config.kind, r.n_samples) for r in mine] == [("train", 50), ("infer", 10_000)]
            assert all(len(r.seconds) == 1 and r.seconds[0] > 0 for r in mine)
        else:
            assert not mine and any(m.startswith(f"{peer} is not installed") for m in messages)
    monkeypatch.setattr(B.peers, "peer_available", lambda name: False)  # where measure_peers looks it up
    results, messages = B.measure_peers(configs)
    assert results == [] and len(messages) == len(B.PEERS)


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
