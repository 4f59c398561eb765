"""Batched tensor transforms (no torchvision): each maps a float batch ``(N, C, H, W)`` to a batch.

Random transforms take a ``torch.Generator`` so that a run is reproducible and
resumable: the generator is seeded per epoch by the training loop.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def random_hflip(x: Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """Flip each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], generator=generator) < p
    if not flip.any():
        return x
    out = x.clone()
    out[flip] = x[flip].flip(-1)
    return out


def random_crop(x: Tensor, size: int, padding: int = 4, generator: Optional[torch.Generator] = None) -> Tensor:
    """Zero-pad by ``padding`` and take a random ``size`` x ``size`` crop per image (one gather)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, h + 2 * padding - size + 1, (n,), generator=generator)
    ox = torch.randint(0, w + 2 * padding - size + 1, (n,), generator=generator)
    ar = torch.arange(size)
    rows = (oy[:, None] + ar[None]).view(n, 1, size, 1).expand(n, c, size, w + 2 * padding)
    out = xp.gather(2, rows)
    cols = (ox[:, None] + ar[None]).view(n, 1, 1, size).expand(n, c, size, size)
    return out.gather(3, cols)


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize to ``size`` x ``size`` (antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < min(x.shape[-2:]))


class TrainTransform:
    """uint8 batch -> float, random crop with padding, horizontal flip, normalise."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: int, crop_padding: int = 4,
                 hflip: bool = True) -> None:
        self.mean, self.std, self.size, self.pad, self.hflip = mean, std, size, crop_padding, hflip

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        x = resize(x.float().div_(255), self.size)
        if self.pad > 0:
            x = random_crop(x, self.size, self.pad, generator)
        if self.hflip:
            x = random_hflip(x, 0.5, generator)
        return normalize(x, self.mean, self.std)


class EvalTransform:
    def __init__(self, mean: Sequence[float], std: Sequence[float], size: int) -> None:
        self.mean, self.std, self.size = mean, std, size

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return normalize(resize(x.float().div_(255), self.size), self.mean, self.std)
