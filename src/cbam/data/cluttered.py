"""Cluttered translated images, after Mnih et al. 2014 (RAM) and Jaderberg et al. 2015 (STN).

Each item of a split is pasted at a uniformly random position on an empty ``canvas`` x
``canvas`` image, on top of ``pieces`` random ``piece_size`` x ``piece_size`` crops of
*other* items of the same split, each at its own random position. The label is the
pasted item's: to classify, a network has to find the item among distractors that look
locally like items, which is the job CBAM's spatial gate is for. Layers combine by
pixel-wise maximum, so every layer's strokes stay visible and values stay in 0..255.

Generation is deterministic for a (seed, split): numpy's generator seeded with both,
so train and test clutter differ and every run of a grid sees the same images. It
works over any IDX data (``--data-root``) and costs a few seconds for 60,000 items.

Registered names: ``cluttered-fashion-mnist`` (60 x 60 canvas, 4 pieces of 8 x 8: the
60 x 60 setting of Mnih et al.), and ``cluttered-fashion-mnist-48`` / ``-40`` (smaller
canvases for smaller budgets). :func:`register_cluttered` adds other settings.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .datasets import Split, dataset_spec, register_dataset

_SPLIT_IDS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class ClutterConfig:
    canvas: int = 60        # side of the square output image
    pieces: int = 4         # clutter crops per image (K)
    piece_size: int = 8     # side of each clutter crop
    seed: int = 0


@dataclass
class Cluttered:
    """Canvases and everything needed to check them (all coordinates are top-left (y, x))."""

    images: np.ndarray      # uint8 (N, C, canvas, canvas)
    labels: np.ndarray      # int64 (N,): the pasted item's label
    positions: np.ndarray   # (N, 2): where the item sits on its canvas
    piece_src: np.ndarray   # (N, K): index of the item each clutter piece was cut from (never the item itself)
    piece_crop: np.ndarray  # (N, K, 2): where in that item the piece was cut
    piece_pos: np.ndarray   # (N, K, 2): where on the canvas the piece sits


def _paste_max(canvas: np.ndarray, patches: np.ndarray, pos: np.ndarray) -> None:
    """``canvas[n, :, y:y+h, x:x+w] = max(that, patches[n])`` for every n at once (one patch per canvas,
    so no two writes of one call touch the same pixel)."""
    n, c, h, w = patches.shape
    rows = (pos[:, 0, None] + np.arange(h))[:, None, :, None]
    cols = (pos[:, 1, None] + np.arange(w))[:, None, None, :]
    idx = (np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols)
    canvas[idx] = np.maximum(canvas[idx], patches)


def make_cluttered(images: np.ndarray, labels: np.ndarray, cfg: ClutterConfig = ClutterConfig(),
                   split: str = "train") -> Cluttered:
    """Clutter every item of ``images`` (uint8 ``(N, C, H, W)`` or ``(N, H, W)``) as described above."""
    if images.ndim == 3:
        images = images[:, None]
    n, _, h, w = images.shape
    p, k = cfg.piece_size, cfg.pieces
    if cfg.canvas < max(h, w) or p > min(h, w):
        raise ValueError(f"canvas {cfg.canvas} must hold a {h}x{w} item and pieces of {p} must fit in one")
    if k > 0 and n < 2:
        raise ValueError("clutter needs at least 2 items: pieces are cut from other items")
    rng = np.random.default_rng([cfg.seed, _SPLIT_IDS.get(split, 2)])
    pos = np.stack([rng.integers(0, cfg.canvas - h + 1, n), rng.integers(0, cfg.canvas - w + 1, n)], 1)
    src = (np.arange(n)[:, None] + rng.integers(1, max(n, 2), (n, k))) % n  # an offset of 1..n-1: never itself
    crop = np.stack([rng.integers(0, h - p + 1, (n, k)), rng.integers(0, w - p + 1, (n, k))], 2)
    ppos = rng.integers(0, cfg.canvas - p + 1, (n, k, 2))
    out = np.zeros((n, images.shape[1], cfg.canvas, cfg.canvas), np.uint8)
    ar = np.arange(p)
    for j in range(k):
        rows = (crop[:, j, 0, None] + ar)[:, None, :, None]
        cols = (crop[:, j, 1, None] + ar)[:, None, None, :]
        pieces = images[src[:, j, None, None, None], np.arange(images.shape[1])[None, :, None, None], rows, cols]
        _paste_max(out, pieces, ppos[:, j])
    _paste_max(out, images, pos)
    return Cluttered(out, np.asarray(labels, np.int64), pos, src, crop, ppos)


def cluttered_loader(base: str, cfg: ClutterConfig):
    """A registry loader: split ``split`` of dataset ``base`` (read from ``root``), cluttered."""
    def load(split: str, root: Optional[str], image_size: int = 0) -> Split:
        s = dataset_spec(base).loader(split, root, image_size)
        c = make_cluttered(np.asarray(s.images), np.asarray(s.labels), cfg, split)
        return Split(c.images, c.labels, s.classes,
                     f"{s.source}, cluttered: {cfg.canvas}x{cfg.canvas} canvas, {cfg.pieces} pieces of "
                     f"{cfg.piece_size}x{cfg.piece_size}, seed {cfg.seed}")
    return load


def register_cluttered(name: str, base: str = "fashion-mnist", cfg: ClutterConfig = ClutterConfig(),
                       mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> None:
    """Register ``name`` as cluttered ``base``; without ``mean``/``std`` they come from its training split."""
    register_dataset(name, cluttered_loader(base, cfg), mean, std)


# Normalisation constants measured on the full Fashion-MNIST training split with these settings (seed 0);
# close enough for other IDX data, since they only centre and scale the input.
register_cluttered("cluttered-fashion-mnist", cfg=ClutterConfig(60, 4), mean=(0.0868,), std=(0.2358,))
register_cluttered("cluttered-fashion-mnist-48", cfg=ClutterConfig(48, 4), mean=(0.1326,), std=(0.2816,))
register_cluttered("cluttered-fashion-mnist-40", cfg=ClutterConfig(40, 4), mean=(0.1855,), std=(0.3191,))
