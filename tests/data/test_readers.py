"""Readers on small files written in the exact on-disk formats, and their error messages."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from cbam.data import load_dataset, read_cifar_batch, read_idx, read_image_folder, write_idx
from cbam.data import builtin as ds


@pytest.mark.parametrize("ext", ["", ".gz"])
def test_idx_roundtrip(tmp_path, ext):
    a = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    p = tmp_path / f"x-idx3-ubyte{ext}"
    write_idx(p, a)
    raw = gzip.open(p).read() if ext else open(p, "rb").read()
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 7  # exact header layout
    np.testing.assert_array_equal(read_idx(p), a)


def test_idx_errors(tmp_path):
    a = np.zeros((4, 3, 3), np.uint8)
    p = tmp_path / "t.idx"
    write_idx(p, a)
    data = open(p, "rb").read()
    open(p, "wb").write(data[:-5])
    with pytest.raises(ValueError, match=r"t.idx: truncated .* expected 52 .*data ends at byte 47"):
        read_idx(p)
    open(p, "wb").write(b"\x12\x34\x56\x78" + data[4:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(p)
    g = tmp_path / "t.gz"
    g.write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_idx(g)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


def _fmnist_dir(tmp, n_train=20, n_test=10):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(tmp / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))
    return tmp


def test_fashion_mnist_from_idx_dir(tmp_path):
    d = load_dataset("fashion-mnist", "test", str(_fmnist_dir(tmp_path)))
    assert d.images.shape == (10, 1, 28, 28) and d.images.dtype == torch.uint8 and d.num_classes == 10
    np.testing.assert_array_equal(d.images[:, 0].numpy(), read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"))


def test_missing_files_say_what_is_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        load_dataset("fashion-mnist", "train", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid: fashion-mnist"):
        load_dataset("imagenet")


def test_builtin_subset_fallback(monkeypatch):
    monkeypatch.setattr(ds, "FASHION_MNIST_DIR", "/nonexistent/fashion-mnist")
    tr = load_dataset("fashion-mnist", "train")
    te = load_dataset("fashion-mnist", "test")
    assert len(tr) == 3000 and len(te) == 1000 and "built-in subset" in tr.source
    assert tr.images.shape[1:] == (1, 28, 28) and set(tr.labels.tolist()) == set(range(10))
    assert os.path.exists(os.path.join(os.path.dirname(ds.SUBSET_FILE), "FASHION_MNIST_LICENSE.txt"))
    if os.path.isdir("/usr/share/datasets/fashion-mnist"):  # the subset is the head of the real data
        full = load_dataset("fashion-mnist", "train", "/usr/share/datasets/fashion-mnist")
        assert torch.equal(full.images[:3000], tr.images)


def _cifar_batch(path, n, key="labels"):
    rng = np.random.default_rng(2)
    d = {b"batch_label": b"training batch 1 of 5", key.encode(): rng.integers(0, 10, n).tolist(),
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    return d


def test_cifar_batches(tmp_path):
    for i in range(1, 6):
        _cifar_batch(tmp_path / f"data_batch_{i}", 4)
    ref = _cifar_batch(tmp_path / "test_batch", 3)
    x, y = read_cifar_batch(tmp_path / "test_batch")
    assert x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(x[1, 2].ravel(), ref[b"data"][1, 2048:])  # channel-major rows as in CIFAR
    assert y.tolist() == ref[b"labels"]
    d = load_dataset("cifar10", "train", str(tmp_path))
    assert len(d) == 20 and d.in_chans == 3
    _cifar_batch(tmp_path / "c100", 2, key="fine_labels")
    assert read_cifar_batch(tmp_path / "c100")[0].shape == (2, 3, 32, 32)


def test_cifar_hostile_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing to load posix.system|refusing to load os.system"):
        read_cifar_batch(tmp_path / "test_batch")
    assert not marker.exists()


def test_image_folder(tmp_path):
    from PIL import Image
    for ci, c in enumerate(["cat", "dog"]):
        (tmp_path / c).mkdir()
        for j in range(3):
            Image.fromarray(np.full((40, 50, 3), 40 * ci + j, np.uint8)).save(tmp_path / c / f"{j}.png")
    x, y, classes = read_image_folder(tmp_path, size=16)
    assert classes == ["cat", "dog"] and x.shape == (6, 3, 16, 16) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x[4].min() == x[4].max() == 41  # constant images stay constant through resizing
    (tmp_path / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: cannot decode image"):
        read_image_folder(tmp_path)


def test_digits():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and tr.images.shape[1:] == (1, 8, 8)
    assert tr.images.max() == 255
