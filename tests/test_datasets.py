import gzip
import hashlib

import numpy as np
import pytest

from fastgd.datasets import DatasetError, IDX_FILES, load_idx, load_mnist, parse_idx


def idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder, n_train=12, n_test=5, rows=4, cols=3, gz=True, sums=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, rows, cols)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, rows, cols)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    lines = []
    for key, stem in IDX_FILES.items():
        raw = idx_bytes(arrays[key])
        lines.append(f"{hashlib.sha256(raw).hexdigest()}  {stem}")
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    if sums:
        (folder / "SHA256SUMS.raw").write_text("\n".join(lines) + "\n")
    return arrays


def test_shipped_mnist(mnist):
    X_train, y_train, X_test, y_test = mnist
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert X_train.dtype == np.uint8 and y_train.dtype == np.uint8
    assert set(np.unique(y_train)) == set(range(10)) and set(np.unique(y_test)) == set(range(10))
    assert 0.75 < (X_train == 0).mean() < 0.85  # MNIST is about 81% zero pixels
    assert np.bincount(y_test).tolist()[:3] == [980, 1135, 1032]  # the well-known test-set class counts


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_round_trip(tmp_path, gz):
    arrays = write_idx_folder(tmp_path, gz=gz, sums=True)
    X_train, y_train, X_test, y_test = load_idx(tmp_path)
    np.testing.assert_array_equal(X_train, arrays["train_images"].reshape(12, 12))
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert X_train.dtype == np.uint8


def test_missing_file(tmp_path):
    write_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_idx(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        load_idx(tmp_path / "nowhere")


def test_checksum_mismatch(tmp_path):
    write_idx_folder(tmp_path, gz=False, sums=True)
    path = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="SHA-256"):
        load_idx(tmp_path)
    load_idx(tmp_path, verify=False)  # still well-formed, so it loads when not verifying


def test_corrupt_and_truncated_files(tmp_path):
    write_idx_folder(tmp_path)
    gz = tmp_path / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-8])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip"):
        load_idx(tmp_path)
    gz.write_bytes(gzip.compress(idx_bytes(np.zeros(12))[:-3]))
    with pytest.raises(DatasetError, match="header says"):
        load_idx(tmp_path)
    gz.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + (12).to_bytes(4, "big") + bytes(48)))
    with pytest.raises(DatasetError, match="not an IDX file"):
        load_idx(tmp_path)


def test_mismatched_counts(tmp_path):
    write_idx_folder(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(11))))
    with pytest.raises(DatasetError, match="12 images but 11 labels"):
        load_idx(tmp_path)


def test_parse_idx_rejects_short_data():
    with pytest.raises(DatasetError, match="too short"):
        parse_idx(b"\x00\x00", 1)


def test_load_mnist_verifies_checksums(monkeypatch, tmp_path):
    """A damaged copy of the packaged files is caught by the SHA-256 check."""
    import shutil

    import fastgd.datasets as ds

    for f in ds.MNIST_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setattr(ds, "MNIST_DIR", tmp_path)
    with pytest.raises(DatasetError, match="SHA-256"):
        load_mnist()
