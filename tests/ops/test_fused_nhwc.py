"""channels_last per-sample kernels at channel counts that are multiples of 16, where the register
paths of the build's ISA run (AVX-512: 16x16 tile transposes, AVX2: 8x8 ones, for the per-pixel
reductions; register accumulators for the per-channel pooling): values, gradients and first-argmax
routing against cbam.functional."""
import pytest
import torch

import cbam
from cbam.ops import _cpu

pytestmark = pytest.mark.skipif(_cpu.load() is None, reason="C++ kernels not built here")
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
       torch.float16: dict(rtol=5e-3, atol=5e-3)}


def _pair(c):
    torch.manual_seed(c)
    ref = cbam.CBAM(c, impl="reference")
    for p in ref.parameters():
        p.data.normal_(0, 0.3)
    fus = cbam.CBAM(c, impl="fused")
    fus.load_state_dict(ref.state_dict())
    return ref, fus


def _run(m, x, g, identity=None):
    x = x.clone().requires_grad_()
    idn = None if identity is None else identity.clone().requires_grad_()
    y = m(x) if idn is None else m.forward_tail(x, idn)
    (y.float() * g).sum().backward()
    return [y.float(), x.grad.float()] + ([] if idn is None else [idn.grad.float()])


def _against_float64(c, dtype, tail, tol, hw=(7, 9)):
    """A 4 x c x 7 x 9 channels_last input (63 pixels: the tile transpose leaves a 15-pixel remainder to
    the scalar loop) through the fused module, against the reference in float64."""
    ref, fus = _pair(c)
    torch.manual_seed(c + 1)
    x = torch.randn(4, c, *hw).to(dtype).to(memory_format=torch.channels_last)
    g = torch.randn(4, c, *hw)
    idn = torch.randn_like(x) if tail else None
    assert fus.uses_fused(x)
    want = _run(ref.double(), x.double(), g.double(), None if idn is None else idn.double())
    got = _run(fus, x, g, idn)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), **tol)


@pytest.mark.parametrize("c", [16, 32, 48, 64, 80])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tail", [False, True])
def test_channels_last_multiples_of_16(c, dtype, tail):
    _against_float64(c, dtype, tail, TOL[dtype])


@pytest.mark.parametrize("c", [256, 1024, 1040])
@pytest.mark.parametrize("tail", [False, True])
def test_channels_last_wide(c, tail):
    """Up to 1024 channels the AVX2 build transposes tiles for the per-pixel pooling (in blocks of 16
    pixels from 256 channels on), and 1040 reduces each pixel row. float32 with a tolerance for sums
    over a thousand channels; bf16's near-ties over that many channels would send a few max-pool
    routes elsewhere than float64's, so the narrow dtypes are checked above."""
    _against_float64(c, torch.float32, tail, dict(rtol=1e-4, atol=1e-4))


@pytest.mark.parametrize("c", [64, 96])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tail", [False, True])
def test_channels_last_wide_rows(c, dtype, tail):
    """A sample past 64 KiB with C >= 64: the per-channel sums walk the sample once, row by row, on
    AVX-512 and AVX2 builds (575 pixels: a remainder after blocks of 8 and of 16 pixels)."""
    _against_float64(c, dtype, tail, TOL[dtype], hw=(23, 25))


@pytest.mark.parametrize("c, hw", [(16, (6, 10)), (16, (5, 7)), (32, (3, 3)), (64, (6, 10)), (64, (24, 30)),
                                   (67, (6, 10)), (100, (5, 7))])
def test_channels_last_ties_route_to_the_first(c, hw):
    """Integer-valued input: channel and pixel maxima tie often; the gradient routes through the
    first maximum in both layouts, as the reference's max(dim) does (24 x 30 at 64 channels: the
    single walk over wide rows; 67 and 100 channels: pixel rows that end in a partial vector, after
    an odd and an even number of whole ones, where the AVX-512 row pooling alternates two sets of
    accumulators; 16 and 32 channels at 35 and 9 pixels: the per-channel register accumulators of
    short rows)."""
    ref, fus = _pair(c)
    torch.manual_seed(7)
    x = torch.randint(-3, 4, (4, c, *hw)).float()
    x[0, 0] = 2.0  # a channel whose every pixel ties
    g = torch.randn_like(x)
    want = _run(ref, x, g)
    got = _run(fus, x.contiguous(memory_format=torch.channels_last), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c", [16, 24, 20])
@pytest.mark.parametrize("hw", [(5, 7), (9, 9), (13, 13)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tail", [False, True])
def test_channels_last_routes_added_in_the_row_pass(c, hw, dtype, tail):
    """The input gradient's row pass adds the max-pool routes (the channel routes too below 48 pixels
    for float, 160 for the narrow dtypes; after the pass above that): spikes make channel c's maximum
    and pixel p's maximum the same element, where both routes land. 16 channels take the 16-lane rows,
    24 the 8-lane ones where the build has them, 20 the generic loop; 35, 81 and 169 pixels sit on both
    sides of the two thresholds."""
    ref, fus = _pair(c)
    torch.manual_seed(c * hw[0])
    x = torch.randn(3, c, *hw)
    n_px = hw[0] * hw[1]
    spikes = [(n, j, ch, (7 * j + n) % n_px) for n in range(3) for j, ch in enumerate(range(n, c, 5))]
    for n, j, ch, p in spikes:  # distinct channels and pixels, so the maxima are these; the pixel's other
        x[n].view(c, -1)[:, p] = 0.0  # channels at 0: the spike stays its maximum whatever the channel gate
        x[n, ch].view(-1)[p] = 6.0 + j
    x = x.to(dtype).to(memory_format=torch.channels_last)
    ref.double().record_maps = True
    with torch.no_grad():
        ref(x.double())
    gated = (x.double() * ref.last_channel_map).flatten(2)  # what the spatial gate's max pool sees
    ref.record_maps = False
    for n, _, ch, p in spikes:  # the premise: both routes of each spike land on the same element
        assert int(x[n, ch].flatten().argmax()) == p and int(gated[n, :, p].argmax()) == ch, (n, ch, p)
    g = torch.randn(3, c, *hw)
    idn = torch.randn_like(x) if tail else None
    want = _run(ref.double(), x.double(), g.double(), None if idn is None else idn.double())
    got = _run(fus, x, g, idn)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), **TOL[dtype])
