"""Batched transforms: values, determinism, loader sharding."""
import torch

from cbam.data import BatchLoader, EvalTransform, normalize, random_crop, random_hflip, resize
from cbam.data.datasets import Dataset


def test_random_crop_values_match_slicing():
    x = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).view(2, 3, 6, 5)
    g = torch.Generator().manual_seed(3)
    out = random_crop(x, 4, padding=2, generator=g)
    g = torch.Generator().manual_seed(3)
    oy = torch.randint(0, 6 + 4 - 4 + 1, (2,), generator=g)
    ox = torch.randint(0, 5 + 4 - 4 + 1, (2,), generator=g)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        torch.testing.assert_close(out[i], xp[i, :, oy[i]:oy[i] + 4, ox[i]:ox[i] + 4])


def test_hflip_normalize_resize():
    x = torch.randn(64, 2, 4, 4)
    y = random_hflip(x, 1.0)
    torch.testing.assert_close(y, x.flip(-1))
    torch.testing.assert_close(random_hflip(x, 0.0), x)
    z = random_hflip(x, 0.5, torch.Generator().manual_seed(0))
    flipped = (z != x).flatten(1).any(1)
    assert 10 < flipped.sum() < 54
    n = normalize(torch.full((1, 2, 2, 2), 0.5), (0.25, 0.5), (0.5, 2.0))
    torch.testing.assert_close(n[0, :, 0, 0], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(resize(x, 4), x)
    assert resize(torch.ones(1, 1, 28, 28), 32).allclose(torch.ones(1, 1, 32, 32))


def test_loader_shards_equal_global_batch():
    data = Dataset(torch.randint(0, 255, (40, 1, 8, 8), dtype=torch.uint8), torch.arange(40) % 10,
                   [str(i) for i in range(10)], "t", "t")
    tf = EvalTransform((0.5,), (0.5,), 8)
    one = list(BatchLoader(data, 8, tf, seed=1))
    r0 = list(BatchLoader(data, 8, tf, seed=1, rank=0, world=2))
    r1 = list(BatchLoader(data, 8, tf, seed=1, rank=1, world=2))
    for (x, y), (x0, y0), (x1, y1) in zip(one, r0, r1):
        assert sorted(torch.cat([y0, y1]).tolist()) == sorted(y.tolist())
        torch.testing.assert_close(x[0::2], x0)
    l2 = BatchLoader(data, 8, tf, seed=1)
    l2.set_epoch(1)
    assert [y.tolist() for _, y in l2] != [y.tolist() for _, y in one]  # epochs reshuffle
