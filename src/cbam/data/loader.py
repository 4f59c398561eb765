"""An in-memory batch iterator with per-epoch seeding and rank sharding (a DistributedSampler
without the DataLoader: at these sizes the whole dataset is a tensor, and batched transforms
are far cheaper than per-image worker processes)."""
import math
from typing import Callable, Iterator, Tuple

import torch
from torch import Tensor

from .datasets import Dataset


class BatchLoader:
    """Yields ``(images float (B, C, S, S), labels (B,))`` for one epoch.

    The order is a permutation seeded by ``(seed, epoch)``; with ``world > 1`` each
    rank takes an interleaved shard of every *global* batch (``batch_size`` is the
    global batch), so K ranks see exactly the samples one process would.
    """

    def __init__(self, data: Dataset, batch_size: int, transform: Callable, shuffle: bool = True,
                 drop_last: bool = True, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world}")
        self.data, self.batch_size, self.transform = data, batch_size, transform
        self.shuffle, self.drop_last, self.seed, self.rank, self.world = shuffle, drop_last, seed, rank, world
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, start: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        aug = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch * 31 + 1)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.transform(self.data.images[idx], aug)  # augment the global batch, then shard
            y = self.data.labels[idx]
            if b < start:
                continue
            if self.world > 1:
                x, y = x[self.rank::self.world], y[self.rank::self.world]
            yield x, y

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        return self.batches()

