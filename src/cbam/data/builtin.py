"""The built-in datasets, each registered beside its loader with its normalisation constants.

Fashion-MNIST (the default) comes from Debian's ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist); when that is missing, a 4,000-image subset
shipped in this package (MIT licence, ``assets/``) is used, and the dataset's
``source`` says so.
"""
import os
from typing import Optional, Tuple

import numpy as np

from .cifar import read_cifar_batch
from .datasets import Split, register_dataset
from .idx import read_idx

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
SUBSET_FILE = os.path.join(os.path.dirname(__file__), "assets", "fashion_mnist_subset.npz")
_IDX_HINT = ("expected the four IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
             "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (Fashion-MNIST: `apt-get install "
             "dataset-fashion-mnist`)")


def _idx_pair(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        cands = [os.path.join(root, f"{prefix}-{kind}{ext}") for ext in (".gz", "")]
        hit = next((c for c in cands if os.path.exists(c)), None)
        if hit is None:
            raise FileNotFoundError(f"missing {prefix}-{kind}[.gz] in {root}; {_IDX_HINT}")
        found.append(read_idx(hit))
    images, labels = found
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{root}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    return images[:, None], labels.astype(np.int64)


def _idx_split(split: str, root: str, classes) -> Split:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder not found: {root} ({_IDX_HINT})")
    images, labels = _idx_pair(root, split)
    return Split(images, labels, classes, f"{root} (IDX)")


def load_fashion_mnist(split: str, root: Optional[str], image_size: int = 28) -> Split:
    root = root or FASHION_MNIST_DIR
    if not os.path.isdir(root) and root == FASHION_MNIST_DIR and os.path.exists(SUBSET_FILE):
        with np.load(SUBSET_FILE) as z:
            images, labels = z[f"{split}_images"][:, None], z[f"{split}_labels"].astype(np.int64)
        return Split(images, labels, FASHION_CLASSES,
                     f"built-in subset ({len(labels)} images; {FASHION_MNIST_DIR} not found)")
    return _idx_split(split, root, FASHION_CLASSES)


def load_mnist(split: str, root: Optional[str], image_size: int = 28) -> Split:
    if root is None:
        raise ValueError("mnist needs --data-root pointing at the IDX files")
    return _idx_split(split, root, [str(i) for i in range(10)])


def _cifar(split: str, root: Optional[str], n_classes: int) -> Split:
    name = f"cifar{n_classes}"
    if root is None:
        raise ValueError(f"{name} needs --data-root (the extracted cifar-{n_classes}-python folder)")
    if n_classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    else:
        files = [split]
    parts = [read_cifar_batch(os.path.join(root, f)) for f in files]
    return Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                 [str(i) for i in range(n_classes)], root)


def load_cifar10(split: str, root: Optional[str], image_size: int = 32) -> Split:
    return _cifar(split, root, 10)


def load_cifar100(split: str, root: Optional[str], image_size: int = 32) -> Split:
    return _cifar(split, root, 100)


def load_digits(split: str, root: Optional[str] = None, image_size: int = 8) -> Split:
    """scikit-learn's 8x8 digits with a fixed 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
    perm = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    sel = perm[:cut] if split == "train" else perm[cut:]
    return Split(images[sel], d.target.astype(np.int64)[sel], [str(i) for i in range(10)],
                 "scikit-learn load_digits (8x8)")


register_dataset("fashion-mnist", load_fashion_mnist, (0.2860,), (0.3530,), aliases=("fmnist",))
register_dataset("mnist", load_mnist, (0.1307,), (0.3081,))
register_dataset("cifar10", load_cifar10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
register_dataset("cifar100", load_cifar100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
register_dataset("digits", load_digits)  # constants computed from its training split
