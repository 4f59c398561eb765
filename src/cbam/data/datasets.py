"""Datasets held in memory as uint8 tensors, and the built-in default data.

Names: ``fashion-mnist`` (default), ``mnist``, ``cifar10``, ``cifar100``, ``digits``
(scikit-learn's 8x8 digits) and ``folder`` (an image tree). Fashion-MNIST comes
from Debian's ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist);
when that is missing, a 4,000-image subset shipped in this package (MIT licence,
``assets/``) is used, and :attr:`Dataset.source` says so.
"""
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .cifar import read_cifar_batch
from .folder import read_image_folder
from .idx import read_idx

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
SUBSET_FILE = os.path.join(os.path.dirname(__file__), "assets", "fashion_mnist_subset.npz")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "digits", "folder")


@dataclass
class Dataset:
    """Images ``uint8 (N, C, H, W)``, labels ``int64 (N,)`` and metadata."""

    images: Tensor
    labels: Tensor
    classes: List[str]
    name: str
    source: str
    mean: Tuple[float, ...] = field(default=(0.5,))
    std: Tuple[float, ...] = field(default=(0.5,))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, n: Optional[int], seed: int = 0) -> "Dataset":
        """A fixed random subset of ``n`` items (stratification is not needed at these sizes)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return Dataset(self.images[idx], self.labels[idx], self.classes, self.name, self.source + f" (subset {n})",
                       self.mean, self.std)


def _stats(images: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    x = images.astype(np.float64) / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(np.maximum(x.std((0, 2, 3)), 1e-3).tolist())


def _idx_pair(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        cands = [os.path.join(root, f"{prefix}-{kind}{ext}") for ext in (".gz", "")]
        hit = next((c for c in cands if os.path.exists(c)), None)
        if hit is None:
            raise FileNotFoundError(
                f"missing {prefix}-{kind}[.gz] in {root}; expected the four IDX files "
                "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                "t10k-labels-idx1-ubyte.gz (Fashion-MNIST: `apt-get install dataset-fashion-mnist`)")
        found.append(read_idx(hit))
    images, labels = found
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{root}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    return images[:, None], labels.astype(np.int64)


def load_dataset(name: str = "fashion-mnist", split: str = "train", root: Optional[str] = None,
                 image_size: int = 32) -> Dataset:
    """Load ``split`` (``train`` or ``test``) of dataset ``name`` into memory."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    key = name.lower().replace("_", "-")
    if key in ("fashion-mnist", "fmnist", "mnist"):
        default = FASHION_MNIST_DIR if key != "mnist" else None
        root = root or default
        if root is None:
            raise ValueError("mnist needs --data-root pointing at the IDX files")
        classes = FASHION_CLASSES if key != "mnist" else [str(i) for i in range(10)]
        if os.path.isdir(root):
            images, labels = _idx_pair(root, split)
            source = f"{root} (IDX)"
        elif key != "mnist" and root == FASHION_MNIST_DIR and os.path.exists(SUBSET_FILE):
            with np.load(SUBSET_FILE) as z:
                images, labels = z[f"{split}_images"][:, None], z[f"{split}_labels"].astype(np.int64)
            source = f"built-in subset ({len(labels)} images; {FASHION_MNIST_DIR} not found)"
        else:
            raise FileNotFoundError(f"data folder not found: {root} (expected the four IDX files; for "
                                    "Fashion-MNIST run `apt-get install dataset-fashion-mnist`)")
        return Dataset(torch.from_numpy(images.copy()), torch.from_numpy(labels), classes, key, source,
                       (0.2860,), (0.3530,)) if key != "mnist" else \
            Dataset(torch.from_numpy(images.copy()), torch.from_numpy(labels), classes, key, source,
                    (0.1307,), (0.3081,))
    if key in ("cifar10", "cifar100"):
        if root is None:
            raise ValueError(f"{key} needs --data-root (the extracted cifar-*-python folder)")
        if key == "cifar10":
            files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        else:
            files = ["train" if split == "train" else "test"]
        parts = [read_cifar_batch(os.path.join(root, f)) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        n_cls = 10 if key == "cifar10" else 100
        mean, std = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)) if key == "cifar10" else \
            ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
        return Dataset(torch.from_numpy(images), torch.from_numpy(labels), [str(i) for i in range(n_cls)], key,
                       root, mean, std)
    if key == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        images = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
        labels = d.target.astype(np.int64)
        perm = np.random.default_rng(0).permutation(len(labels))
        cut = int(0.8 * len(labels))  # fixed 80/20 split
        sel = perm[:cut] if split == "train" else perm[cut:]
        mean, std = _stats(images[perm[:cut]])
        return Dataset(torch.from_numpy(images[sel]), torch.from_numpy(labels[sel]), [str(i) for i in range(10)],
                       key, "scikit-learn load_digits (8x8)", mean, std)
    if key == "folder":
        if root is None:
            raise ValueError("folder needs --data-root (root/<class>/<images>; optional train/ and test/ splits)")
        sub = os.path.join(root, split)
        images, labels, classes = read_image_folder(sub if os.path.isdir(sub) else root, image_size)
        mean, std = _stats(images)
        return Dataset(torch.from_numpy(images), torch.from_numpy(labels), classes, key, root, mean, std)
    raise ValueError(f"unknown dataset '{name}'; valid: {', '.join(DATASETS)}")
