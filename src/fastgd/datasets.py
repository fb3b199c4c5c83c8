"""Data sets: the MNIST files shipped inside the package, and any folder of IDX files.

MNIST: Yann LeCun, Corinna Cortes and Christopher J.C. Burges, http://yann.lecun.com/exdb/mnist/,
made available under the Creative Commons Attribution-Share Alike 3.0 licence (CC BY-SA 3.0).
See fastgd/data/README.md.
"""
from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

MNIST_DIR = Path(__file__).parent / "data" / "mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08  # IDX type code for unsigned bytes, the only one these data sets use


class DatasetError(ValueError):
    """A data file is missing, corrupt, or does not match its partner."""


def _read_raw(path):
    """Bytes of `path`, decompressed if it is gzip."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path} is a corrupt or truncated gzip file: {exc}") from exc
    return data


def parse_idx(data, ndim, name="IDX data"):
    """Parse IDX bytes of unsigned bytes with `ndim` dimensions into a uint8 array."""
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{name} is too short ({len(data)} bytes) to hold an IDX header")
    zero, dtype_code, dims = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code != _UBYTE or dims != ndim:
        raise DatasetError(
            f"{name} is not an IDX file of {ndim}-D unsigned bytes (magic {data[:4].hex()}, "
            f"expected 0000 08 {ndim:02x})"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(data) != expected:
        raise DatasetError(f"{name}: header says shape {shape} ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder, stem):
    for candidate in (folder / stem, folder / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{folder} has no {stem} (or {stem}.gz)")


def _read_sums(folder):
    sums_file = folder / "SHA256SUMS.raw"
    if not sums_file.is_file():
        return {}
    sums = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    return sums


def load_idx(folder, verify=True):
    """Load a folder holding the four standard IDX files (MNIST, Fashion-MNIST, KMNIST, ...).

    Each of train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
    t10k-labels-idx1-ubyte may be gzip-compressed (``.gz``). When the folder has a
    ``SHA256SUMS.raw`` file (sha256sum format, of the decompressed files) and `verify` is true,
    every file is checked against it.

    Returns ``(X_train, y_train, X_test, y_test)``: uint8 images flattened to (n, rows*cols) and
    uint8 labels. Raises DatasetError (a ValueError) for missing, corrupt or mismatched files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    sums = _read_sums(folder) if verify else {}
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find(folder, stem)
        raw = _read_raw(path)
        if stem in sums and hashlib.sha256(raw).hexdigest() != sums[stem]:
            raise DatasetError(f"{path} does not match its SHA-256 in {folder / 'SHA256SUMS.raw'}: the file is corrupt")
        arrays[key] = parse_idx(raw, 3 if key.endswith("images") else 1, name=str(path))
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(f"{split} set mismatch: {images.shape[0]} images but {labels.shape[0]} labels")
        out += [images.reshape(images.shape[0], -1), labels]
    if out[0].shape[1] != out[2].shape[1]:
        raise DatasetError(f"train images have {out[0].shape[1]} pixels but test images {out[2].shape[1]}")
    return tuple(out)


def load_mnist():
    """The MNIST digits shipped with fastgd, verified against their SHA-256 sums.

    Returns ``(X_train, y_train, X_test, y_test)``: uint8 images of shape (60000, 784) and
    (10000, 784), uint8 labels 0-9. Works offline.
    """
    sums = _read_sums(MNIST_DIR)
    if set(sums) != set(IDX_FILES.values()):
        raise DatasetError(f"the packaged MNIST checksums in {MNIST_DIR} are missing or incomplete")
    return load_idx(MNIST_DIR, verify=True)
