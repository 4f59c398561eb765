"""Cluttered translated data: deterministic, labelled by the pasted item, clutter cut from other items."""
import numpy as np
import pytest

from cbam.data import load_dataset, write_idx
from cbam.data.cluttered import ClutterConfig, make_cluttered


def _items(n=12, size=28, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, (n, 1, size, size), dtype=np.uint8), rng.integers(0, 10, n)


def _rebuild(images, c, cfg):
    """The canvases redrawn pixel by pixel from the recorded positions (an independent reference)."""
    n, ch, h, w = images.shape
    out = np.zeros((n, ch, cfg.canvas, cfg.canvas), np.uint8)
    p = cfg.piece_size
    for i in range(n):
        for j in range(cfg.pieces):
            (cy, cx), (py, px) = c.piece_crop[i, j], c.piece_pos[i, j]
            piece = images[c.piece_src[i, j], :, cy:cy + p, cx:cx + p]
            out[i, :, py:py + p, px:px + p] = np.maximum(out[i, :, py:py + p, px:px + p], piece)
        y, x = c.positions[i]
        out[i, :, y:y + h, x:x + w] = np.maximum(out[i, :, y:y + h, x:x + w], images[i])
    return out


def test_deterministic_for_a_seed_and_different_across_seeds_and_splits():
    x, y = _items()
    a = make_cluttered(x, y, ClutterConfig(40, 4, seed=3))
    b = make_cluttered(x, y, ClutterConfig(40, 4, seed=3))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.positions, b.positions)
    assert not np.array_equal(a.images, make_cluttered(x, y, ClutterConfig(40, 4, seed=4)).images)
    assert not np.array_equal(a.images, make_cluttered(x, y, ClutterConfig(40, 4, seed=3), split="test").images)


def test_label_and_pixels_are_the_items_at_the_recorded_position():
    x, y = _items()
    cfg = ClutterConfig(48, 0)  # no clutter: the item alone, exactly, and nothing else
    c = make_cluttered(x, y, cfg)
    assert c.images.shape == (12, 1, 48, 48) and np.array_equal(c.labels, y)
    for i, (py, px) in enumerate(c.positions):
        assert np.array_equal(c.images[i, :, py:py + 28, px:px + 28], x[i])
        assert c.images[i].sum() == x[i].sum()
    assert len(set(map(tuple, c.positions))) > 6  # positions vary across items


def test_clutter_comes_from_other_items_of_the_split_and_the_item_stays_on_top():
    x, y = _items()
    cfg = ClutterConfig(40, 6)
    c = make_cluttered(x, y, cfg)
    assert c.piece_src.shape == (12, 6) and (c.piece_src != np.arange(12)[:, None]).all()
    assert ((0 <= c.piece_src) & (c.piece_src < 12)).all()
    assert np.array_equal(c.images, _rebuild(x, c, cfg))  # every pixel accounted for by item + recorded pieces
    for i, (py, px) in enumerate(c.positions):
        assert (c.images[i, :, py:py + 28, px:px + 28] >= x[i]).all()
    assert np.array_equal(c.labels, y)


def test_values_stay_in_range():
    x = np.full((5, 1, 28, 28), 250, np.uint8)  # bright items overlapping bright clutter: no wrap-around
    c = make_cluttered(x, np.zeros(5, np.int64), ClutterConfig(30, 8))
    assert c.images.dtype == np.uint8 and set(np.unique(c.images).tolist()) == {0, 250}


def test_bad_settings_are_refused():
    x, y = _items(n=3)
    with pytest.raises(ValueError, match="canvas 20 must hold"):
        make_cluttered(x, y, ClutterConfig(20))
    with pytest.raises(ValueError, match="at least 2 items"):
        make_cluttered(x[:1], y[:1], ClutterConfig(40, 2))


def test_registered_loader_over_idx_data(tmp_path):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    d = load_dataset("cluttered-fashion-mnist-40", "train", str(tmp_path))
    src = load_dataset("fashion-mnist", "train", str(tmp_path))
    assert tuple(d.images.shape) == (20, 1, 40, 40) and d.labels.tolist() == src.labels.tolist()
    assert d.classes == src.classes and "cluttered: 40x40 canvas, 4 pieces of 8x8, seed 0" in d.source
    assert d.images.equal(load_dataset("cluttered-fashion-mnist-40", "train", str(tmp_path)).images)
    assert tuple(load_dataset("cluttered-fashion-mnist", "test", str(tmp_path)).images.shape) == (10, 1, 60, 60)
