"""The dataset registry, label range checks, and image-folder splits labelled by class name."""
import pickle

import numpy as np
import pytest
import torch

from cbam.data import Split, list_datasets, load_dataset, register_dataset, write_idx
from cbam.data.datasets import _REGISTRY


def _folder(root, classes, n=3, size=12):
    """root/<class>/<i>.png, every pixel of class k equal to 20 * (k + 1) + i, so content names the class."""
    from PIL import Image
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            v = 20 * (ord(c) - ord("a") + 1) + i
            Image.fromarray(np.full((size, size, 3), v, np.uint8)).save(root / c / f"{i}.png")


def _class_of(images):
    return [(int(x[0, 0, 0]) // 20) - 1 for x in images]  # a=0, b=1, c=2 from the pixel values


def test_test_classes_map_by_name_to_the_training_split(tmp_path):
    _folder(tmp_path / "train", "abc")
    _folder(tmp_path / "test", "ac")
    tr = load_dataset("folder", "train", str(tmp_path), image_size=8)
    te = load_dataset("folder", "test", str(tmp_path), image_size=8)
    assert tr.classes == te.classes == ["a", "b", "c"]
    assert te.labels.tolist() == [0, 0, 0, 2, 2, 2] == _class_of(te.images)  # c is 2, not b's 1
    assert te.mean == tr.mean  # normalised with the training split's statistics


def test_test_class_unknown_to_training_is_an_error(tmp_path):
    _folder(tmp_path / "train", "ab")
    _folder(tmp_path / "test", "ac")
    with pytest.raises(ValueError, match=r"test: class folder\(s\) \['c'\] are not classes of the training split"):
        load_dataset("folder", "test", str(tmp_path))


def test_empty_class_folder_is_an_error(tmp_path):
    _folder(tmp_path, "ab")
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match=r"[/\\]c: empty class folder"):
        load_dataset("folder", "train", str(tmp_path))


def test_no_split_holds_out_a_seeded_part_with_a_note(tmp_path, caplog):
    _folder(tmp_path, "ab", n=10)
    tr = load_dataset("folder", "train", str(tmp_path), image_size=8)
    te = load_dataset("folder", "test", str(tmp_path), image_size=8)
    assert "holding out 20% of every class (seed 0)" in caplog.text
    assert len(tr) == 16 and len(te) == 4 and te.labels.tolist() == [0, 0, 1, 1]
    values = lambda d: sorted(int(x[0, 0, 0]) for x in d.images)  # noqa: E731
    assert not set(values(tr)) & set(values(te))  # disjoint: the old code tested on the training set
    assert sorted(values(tr) + values(te)) == [20 * k + i for k in (1, 2) for i in range(10)]
    assert values(load_dataset("folder", "test", str(tmp_path), image_size=8)) == values(te)  # deterministic
    assert _class_of(te.images) == te.labels.tolist()


def test_idx_label_out_of_range(tmp_path):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.array([1, 200, 3, 4], np.uint8))
    with pytest.raises(ValueError, match="label 200 is out of range for 10 classes"):
        load_dataset("fashion-mnist", "train", str(tmp_path))


def test_cifar_label_out_of_range(tmp_path):
    d = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 57]}
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(ValueError, match="label 57 is out of range for 10 classes"):
        load_dataset("cifar10", "test", str(tmp_path))


def test_register_dataset_one_call_with_constants(monkeypatch):
    monkeypatch.setattr("cbam.data.datasets._REGISTRY", dict(_REGISTRY))
    calls = []

    def loader(split, root, image_size):
        calls.append(split)
        n = 4 if split == "train" else 2
        return Split(np.full((n, 1, 5, 5), 51 if split == "train" else 255, np.uint8), np.arange(n) % 2,
                     ["x", "y"], "made up")

    register_dataset("Toy_Set", loader, mean=(0.25,), std=(0.5,))
    d = load_dataset("toy-set", "test")
    assert (d.name, d.mean, d.std, len(d), d.classes) == ("toy-set", (0.25,), (0.5,), 2, ["x", "y"])
    assert "toy-set" in list_datasets()
    register_dataset("toy2", loader)  # no constants: computed from the training split, also for test
    assert load_dataset("toy2", "test").mean == pytest.approx((0.2,)) and calls[-2:] == ["test", "train"]
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("toy_set", loader, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="unknown dataset 'nope'; valid: fashion-mnist, mnist"):
        load_dataset("nope")


def test_dataset_checks_labels_of_every_loader():
    with pytest.raises(ValueError, match="label -1 is out of range"):
        from cbam.data import Dataset
        Dataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, -1]), ["a", "b"], "t", "t")
