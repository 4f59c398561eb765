"""Datasets held in memory as uint8 tensors, and the name -> loader registry.

A loader is ``loader(split, root, image_size) -> Split`` (raw uint8 images, int64
labels, class names, a source description). It is registered with the
normalisation constants of its data, or without them: then they are computed
from the training split, so train and test are normalised alike. The built-in
loaders are in :mod:`cbam.data.builtin` and :mod:`cbam.data.folder`; another is
one call away::

    register_dataset("my-data", my_loader, mean=(0.5,), std=(0.25,))
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "test")


@dataclass
class Dataset:
    """Images ``uint8 (N, C, H, W)``, labels ``int64 (N,)`` and metadata.

    Labels are checked against ``classes`` here, once for every loader: a label
    out of range would otherwise surface as an ``IndexError`` deep inside the loss.
    """

    images: Tensor
    labels: Tensor
    classes: List[str]
    name: str
    source: str
    mean: Tuple[float, ...] = field(default=(0.5,))
    std: Tuple[float, ...] = field(default=(0.5,))

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or len(self.images) != len(self.labels):
            raise ValueError(f"{self.source}: expected images (N, C, H, W) and N labels, got "
                             f"{tuple(self.images.shape)} and {len(self.labels)} labels")
        if len(self.labels):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.classes):
                bad = lo if lo < 0 else hi
                raise ValueError(f"{self.source}: label {bad} is out of range for {len(self.classes)} classes "
                                 f"(0..{len(self.classes) - 1}); the label file is corrupt or belongs to another "
                                 "dataset")

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


class Split(NamedTuple):
    """What a loader returns for one split."""

    images: np.ndarray      # uint8 (N, C, H, W)
    labels: np.ndarray      # integer (N,)
    classes: Sequence[str]
    source: str


Loader = Callable[[str, Optional[str], int], Split]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: Loader
    mean: Optional[Tuple[float, ...]]   # None: computed from the training split
    std: Optional[Tuple[float, ...]]


_REGISTRY: Dict[str, DatasetSpec] = {}


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


def register_dataset(name: str, loader: Loader, mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None, aliases: Sequence[str] = ()) -> None:
    """Make ``load_dataset(name, ...)`` call ``loader(split, root, image_size)``.

    ``mean``/``std`` are per-channel constants on the 0..1 scale; leave both out to
    compute them from the training split.
    """
    if (mean is None) != (std is None):
        raise ValueError(f"dataset '{name}': give both mean and std, or neither")
    spec = DatasetSpec(_key(name), loader, tuple(mean) if mean is not None else None,
                       tuple(std) if std is not None else None)
    for n in (name, *aliases):
        if _key(n) in _REGISTRY:
            raise ValueError(f"dataset '{n}' is already registered")
        _REGISTRY[_key(n)] = spec


def list_datasets() -> List[str]:
    """Registered names in registration order (aliases left out)."""
    return list(dict.fromkeys(s.name for s in _REGISTRY.values()))


def dataset_spec(name: str) -> DatasetSpec:
    spec = _REGISTRY.get(_key(name))
    if spec is None:
        raise ValueError(f"unknown dataset '{name}'; valid: {', '.join(list_datasets())}")
    return spec


def image_stats(images: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0..1 scale (std floored: constant images)."""
    x = images.astype(np.float64) / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(np.maximum(x.std((0, 2, 3)), 1e-3).tolist())


def load_dataset(name: str = "fashion-mnist", split: str = "train", root: Optional[str] = None,
                 image_size: int = 32) -> Dataset:
    """Load ``split`` (``train`` or ``test``) of the registered dataset ``name`` into memory.

    ``image_size`` is used by loaders that resize (image folders); the others keep
    their native size.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    spec = dataset_spec(name)
    s = spec.loader(split, root, image_size)
    if spec.mean is not None:
        mean, std = spec.mean, spec.std
    else:
        mean, std = image_stats((s if split == "train" else spec.loader("train", root, image_size)).images)
    # np.require copies read-only buffers (IDX files are read with frombuffer): tensors must own writable memory
    images = torch.from_numpy(np.require(s.images, np.uint8, ["C", "W"]))
    labels = torch.from_numpy(np.require(s.labels, np.int64, ["C", "W"]))
    return Dataset(images, labels, list(s.classes), spec.name, s.source, mean, std)
