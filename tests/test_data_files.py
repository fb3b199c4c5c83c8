"""The user's own data files: formats, labels, tasks, and the errors a user sees."""
import numpy as np
import pytest

from fastgd.data_files import encode_labels, infer_task, load_inputs, load_training_data, split
from fastgd.datasets import DatasetError

pd = pytest.importorskip("pandas")


def _table(n=40, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    df["label"] = np.where(df["a"] > 0, "yes", "no")
    return df


def test_npz_with_and_without_test_set(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.random((20, 3)), rng.integers(0, 3, 20)
    np.savez(tmp_path / "full.npz", X_train=X[:15], y_train=y[:15], X_test=X[15:], y_test=y[15:])
    ds = load_training_data(tmp_path / "full.npz")
    np.testing.assert_array_equal(ds.X_test, X[15:])
    np.testing.assert_array_equal(ds.y_train, y[:15])
    np.savez(tmp_path / "train.npz", X_train=X, y_train=y)
    assert load_training_data(tmp_path / "train.npz").X_test is None
    np.savez(tmp_path / "bad.npz", X=X, y=y)
    with pytest.raises(DatasetError, match="X_train and y_train"):
        load_training_data(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", X_train=X, y_train=y[:-1])
    with pytest.raises(DatasetError, match="20 samples but 19 targets"):
        load_training_data(tmp_path / "short.npz")
    np.savez(tmp_path / "obj.npz", X_train=np.array([object()] * 3, dtype=object), y_train=y[:3])
    with pytest.raises(DatasetError, match="unpickle"):
        load_training_data(tmp_path / "obj.npz")


def test_npy_pair_and_npy_folder(tmp_path):
    X, y = np.arange(12.0).reshape(6, 2), np.array([0, 1, 0, 1, 1, 0])
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    ds = load_training_data(f"{tmp_path / 'X.npy'},{tmp_path / 'y.npy'}")
    np.testing.assert_array_equal(ds.X_train, X)
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "X_train.npy", X)
    np.save(folder / "y_train.npy", y)
    assert load_training_data(folder).X_train.shape == (6, 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="X_train.npy and y_train.npy"):
        load_training_data(empty)
    with pytest.raises(DatasetError, match="holds no targets"):
        load_training_data(tmp_path / "X.npy")
    X_pred, y_pred, _ = load_inputs(tmp_path / "X.npy")
    assert y_pred is None and X_pred.shape == (6, 2)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_tables_with_a_target_column(tmp_path, suffix):
    df = _table()
    path = tmp_path / f"t{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    ds = load_training_data(path, target="label")
    assert ds.feature_names == ["a", "b", "c"] and ds.X_train.dtype == np.float64
    np.testing.assert_allclose(ds.X_train, df[["a", "b", "c"]].to_numpy())
    assert set(ds.y_train) == {"yes", "no"}
    with pytest.raises(DatasetError, match="--target COLUMN"):
        load_training_data(path)
    with pytest.raises(DatasetError, match="--target 'price' is not a column"):
        load_training_data(path, target="price")
    # predict: the model's feature columns by name, in the model's order, wherever they are
    X, y, _ = load_inputs(path, target="label", feature_names=["c", "a", "b"])
    np.testing.assert_allclose(X, df[["c", "a", "b"]].to_numpy())
    assert list(y[:3]) == list(df["label"][:3])


def test_table_problems_are_named(tmp_path):
    df = _table()
    df["city"] = "Paris"
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DatasetError, match="'city' are not numeric"):
        load_training_data(tmp_path / "t.csv", target="label")
    df = _table()
    df["a"] = df["a"].astype("Float64")
    df.loc[7, "a"] = pd.NA
    df.to_parquet(tmp_path / "na.parquet")
    with pytest.raises(DatasetError, match="column 'a' has 1 missing value.*row 8"):
        load_training_data(tmp_path / "na.parquet", target="label")
    df = _table()
    df["n"] = pd.array(range(len(df)), dtype="Int64")  # nullable integers without NA simply work
    df.to_parquet(tmp_path / "nullable.parquet")
    assert load_training_data(tmp_path / "nullable.parquet", target="label").X_train.shape == (40, 4)
    (tmp_path / "bad.csv").write_bytes(b"a,b\n1,2,3,4\n\x00\xff")
    with pytest.raises(DatasetError):
        load_training_data(tmp_path / "bad.csv", target="a")
    with pytest.raises(DatasetError, match="no such file"):
        load_training_data(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(DatasetError, match="unknown data format"):
        load_training_data(tmp_path / "x.txt")


def test_sparse_npz_predicts(tmp_path):
    sp = pytest.importorskip("scipy.sparse")
    X = sp.random(10, 5, density=0.3, format="csr", random_state=0)
    sp.save_npz(tmp_path / "sparse.npz", X)
    dense, y, _ = load_inputs(tmp_path / "sparse.npz")
    np.testing.assert_array_equal(dense, X.toarray())
    with pytest.raises(DatasetError, match="scipy.sparse matrix .* no targets"):
        load_training_data(tmp_path / "sparse.npz")


@pytest.mark.parametrize("y,task", [
    (np.array(["a", "b", "a"]), "classify"),
    (np.array([1, 2, 3, 2]), "classify"),
    (np.array([True, False]), "classify"),
    (np.random.default_rng(0).normal(size=50), "regress"),
    (np.random.default_rng(0).normal(size=(50, 2)), "regress"),
])
def test_infer_task(y, task):
    assert infer_task(y) == task


def test_infer_task_asks_when_ambiguous():
    with pytest.raises(ValueError, match="--task classify or --task regress"):
        infer_task(np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="--task"):
        infer_task(np.arange(1000))
    assert infer_task(np.arange(1000), "regress") == "regress"
    assert infer_task(np.array([0.0, 1.0, 2.0]), "classify") == "classify"
    with pytest.raises(ValueError, match="numeric targets"):
        infer_task(np.array(["a", "b"]), "regress")


def test_encode_labels():
    idx, test_idx, classes = encode_labels(np.array(["b", "a", "c", "a"]), np.array(["c", "a"]))
    assert list(classes) == ["a", "b", "c"] and list(idx) == [1, 0, 2, 0] and list(test_idx) == [2, 0]
    idx, _, classes = encode_labels(np.array([1, 2, 3, 3]))  # 1..K
    assert list(classes) == [1, 2, 3] and list(idx) == [0, 1, 2, 2]
    idx, _, classes = encode_labels(np.array([0, 1, 1, 0]))  # already 0..K-1: no mapping stored
    assert classes is None and list(idx) == [0, 1, 1, 0]
    idx, _, classes = encode_labels(np.array([0.0, 2.0, 1.0]))
    assert classes is None and idx.dtype == np.int64
    with pytest.raises(ValueError, match="never shows"):
        encode_labels(np.array([0, 1]), np.array([2]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        encode_labels(np.array([4, 4, 4]))
    with pytest.raises(ValueError, match="whole numbers"):
        encode_labels(np.array([0.5, 1.0]))


def test_split_is_seeded_and_disjoint():
    a, b = split(100, 0.2, seed=3)
    assert len(b) == 20 and len(a) == 80 and not set(a) & set(b)
    np.testing.assert_array_equal(split(100, 0.2, seed=3)[1], b)
    with pytest.raises(ValueError):
        split(3, 0.01, seed=0)


def test_integer_features_are_numbers_and_uint8_are_pixels(tmp_path):
    X = np.arange(12, dtype=np.int64).reshape(6, 2) * 40
    np.savez(tmp_path / "d.npz", X_train=X, y_train=np.array([0, 1] * 3), X_test=X.astype(np.uint8) // 2,
             y_test=np.array([1, 0] * 3))
    ds = load_training_data(tmp_path / "d.npz")
    assert ds.X_train.dtype == np.float64 and ds.X_test.dtype == np.uint8
    np.testing.assert_array_equal(ds.X_train, X)


def test_damaged_array_files_are_dataset_errors(tmp_path):
    np.savez(tmp_path / "d.npz", X_train=np.zeros((4, 2)), y_train=np.arange(4))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_training_data(tmp_path / "cut.npz")
    np.save(tmp_path / "X.npy", np.zeros((4, 2)))
    (tmp_path / "bad.npy").write_bytes((tmp_path / "X.npy").read_bytes()[:20])
    with pytest.raises(DatasetError, match="not a readable .npy"):
        load_inputs(tmp_path / "bad.npy")
