"""torch.use_deterministic_algorithms(True): forward and backward of every module and impl run, and
repeat bit for bit (CPU)."""
import copy

import pytest
import torch

import cbam
from tests.helpers import randomize_

CASES = [(n, {}) for n in cbam.list_attention() if not n.startswith("cbam")]
CASES += [(n, {"impl": impl}) for n in ("cbam", "cbam_official", "cbam_timm") for impl in ("reference", "fused")]
CASES += [("cbam_official", {"impl": "fused", "channels_last": True}), ("cbam1d", {}), ("cbam3d", {})]
SHAPES = {"cbam1d": (4, 16, 9), "cbam3d": (4, 16, 3, 4, 5)}


def _build(name, kw):
    if name in SHAPES:
        cls = cbam.CBAM1d if name == "cbam1d" else cbam.CBAM3d
        return randomize_(cls.from_preset("official", 16, reduction=4))
    return randomize_(cbam.create_attention(name, 16, **kw) if name != "none" else cbam.create_attention(name, 16))


def _step(m, x, g):
    m = copy.deepcopy(m).train()
    x = x.clone().requires_grad_()
    y = m(x)
    (y * g).sum().backward()
    return [y, x.grad] + [p.grad for p in m.parameters()] + list(m.buffers())


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in CASES])
def test_bit_identical_on_repeat(deterministic, name, kw):
    kw = dict(kw)
    channels_last = kw.pop("channels_last", False)
    m = _build(name, kw)
    x = torch.randn(SHAPES.get(name, (4, 16, 7, 6)))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    first, second = _step(m, x, g), _step(m, x, g)
    assert len(first) >= 2 and first[1] is not None
    for a, b in zip(first, second):
        assert (a is None and b is None) or torch.equal(a, b)
    if kw.get("impl") == "fused":
        assert m.uses_fused(x)
