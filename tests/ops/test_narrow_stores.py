"""float16 and bfloat16 outputs of the fused op are the float32 kernels' results on the same (widened)
values, rounded to nearest even as ``Tensor.to`` rounds: the 8-lane stores of the element-wise passes
(y, the block tail, dx and the identity's gradient) against that rounding, in both layouts, for
channel counts that take the vector rows (multiples of 8) and one that does not, with pixel counts
that leave a scalar remainder."""
import pytest
import torch

import cbam
from cbam.ops import _cpu
from cbam.ops import _forward as FW

pytestmark = pytest.mark.skipif(_cpu.load() is None, reason="C++ kernels not built here")


@pytest.fixture(autouse=True)
def _per_sample_kernels(monkeypatch):
    """The per-sample kernels (layout.h) whatever the thread count: with more threads than samples an
    NCHW input would take the batch-wide passes instead (tested on their own below)."""
    monkeypatch.setattr(FW, "per_sample", lambda K, x: hasattr(K, "forward_samples"))


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in units of the last place between two tensors of one 16-bit float dtype."""
    def key(t):  # the bit patterns as an integer line that is monotonic in the value
        i = t.view(torch.int16).int()
        return torch.where(i < 0, -32768 - i, i)
    return (key(a) - key(b)).abs()


def _outputs(m, x, idn, g, dtype):
    x = x.detach().to(dtype).requires_grad_()
    idn = idn.detach().to(dtype).requires_grad_()
    y_tail = m.forward_tail(x, idn)
    y_tail.backward(g.to(dtype))
    x2 = x.detach().requires_grad_()
    y = m(x2)
    y.backward(g.to(dtype))
    return {"y": y.detach(), "y_tail": y_tail.detach(), "dx": x.grad, "d_identity": idn.grad, "dx_plain": x2.grad}


def _check_against_float32(layout, dtype, c, h, w, keys=("y", "y_tail", "dx", "d_identity", "dx_plain")):
    torch.manual_seed(c)
    m = cbam.CBAM(c, reduction=4, impl="fused")
    for p in m.parameters():
        p.data.normal_(0, 0.3)
    x, idn, g = (torch.randn(4, c, h, w).to(dtype).contiguous(memory_format=layout) for _ in range(3))
    got = _outputs(m, x, idn, g, dtype)
    want32 = _outputs(m, x, idn, g, torch.float32)
    for k in keys:
        assert got[k].dtype == dtype and got[k].is_contiguous(memory_format=layout), k
        d = _ulps(got[k], want32[k].to(dtype))
        # the float32 sums of the two builds may differ in the last bit (reduction order), which moves
        # a rare rounding by one place; dx at the max-pool routes is formed in float32 and rounded once too
        assert d.max() <= 1 and (d == 0).float().mean() >= 0.995, (k, int(d.max()), float((d == 0).float().mean()))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("c,h,w", [(16, 7, 7), (24, 9, 9), (20, 5, 5)])
def test_narrow_outputs_are_the_float32_results_rounded(layout, dtype, c, h, w):
    _check_against_float32(layout, dtype, c, h, w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_narrow_outputs_of_the_batch_wide_passes(monkeypatch, dtype):
    """The same for NCHW's three batch-wide passes (large samples, or fewer samples than threads), whose
    apply pass forms the block tail too: relu(y + identity) rounded once, not y rounded and then added."""
    monkeypatch.setattr(FW, "per_sample", lambda K, x: False)
    _check_against_float32(torch.contiguous_format, dtype, 16, 7, 7)


def test_every_float16_value_widens_exactly():
    """All 65,536 float16 bit patterns (subnormals, infinities, NaNs included) through the channel
    pooling of 1x1 maps, whose max is the widened value itself: equal to torch's conversion."""
    K = _cpu.load()
    x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16).reshape(256, 256, 1, 1)
    w1, w2, wc, none = torch.zeros(1, 256), torch.zeros(256, 1), torch.zeros(2, 3, 3), torch.empty(0)
    p_max = K.forward_samples(x, w1, none, w2, none, wc, 0.0, 1.0, 0.0, False, False, True, 1, none)[4]
    want = x.reshape(256, 256).float()
    nan = want.isnan()
    assert torch.equal(p_max.isnan(), nan)
    assert torch.equal(p_max[~nan].view(torch.int32), want[~nan].view(torch.int32))  # bit for bit, signed zeros too


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (7, 7), (9, 9), (13, 13)])
@pytest.mark.parametrize("need_idx", [False, True])
def test_channel_max_of_a_row_that_starts_with_nan_is_nan(dtype, hw, need_idx):
    """NCHW channel pooling: a row whose first value is NaN has a NaN max (as torch.amax), routed to
    position 0, in every build's row reductions (one vector, the tail chunk, several accumulators from
    64 values on); the other rows keep their max and first argmax."""
    K = _cpu.load()
    torch.manual_seed(hw[0])
    x = torch.randn(2, 16, *hw).to(dtype)
    x[:, 3].view(2, -1)[:, 0] = float("nan")
    w1, w2, wc, none = torch.zeros(1, 16), torch.zeros(16, 1), torch.zeros(2, 3, 3), torch.empty(0)
    out = K.forward_samples(x, w1, none, w2, none, wc, 0.0, 1.0, 0.0, False, need_idx, True, 1, none)
    p_max, rows = out[4], x.float().flatten(2)
    assert p_max[:, 3].isnan().all()
    keep = torch.ones(16, dtype=torch.bool)
    keep[3] = False
    assert torch.equal(p_max[:, keep], rows.amax(2)[:, keep])
    if need_idx:
        idx = out[5]
        assert (idx[:, 3] == 0).all()
        assert torch.equal(idx[:, keep].long(), rows.argmax(2)[:, keep])


@pytest.mark.parametrize("layout,batch_wide", [(torch.contiguous_format, False), (torch.channels_last, False),
                                               (torch.contiguous_format, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nan_in_the_identity_stays_nan_and_gets_no_gradient(monkeypatch, layout, batch_wide, dtype):
    """relu(y + identity) keeps a NaN of the identity (as torch.relu does, and the generic loop's
    std::max), and relu's backward passes no gradient where the output is not > 0: per sample and
    in NCHW's batch-wide passes."""
    if batch_wide:
        monkeypatch.setattr(FW, "per_sample", lambda K, x: False)
    torch.manual_seed(3)
    m = cbam.CBAM(16, reduction=4, impl="fused")
    x, idn, g = (torch.randn(4, 16, 7, 7).to(dtype).contiguous(memory_format=layout) for _ in range(3))
    idn[0, 3, 2, 5] = idn[1, 8, 6, 0] = idn[3, 15, 0, 0] = float("nan")
    x.requires_grad_(), idn.requires_grad_()
    y = m.forward_tail(x, idn)
    y.backward(g)
    nan = idn.detach().isnan()
    assert torch.equal(y.detach().isnan(), nan)
    assert (idn.grad[nan] == 0).all() and idn.grad.isfinite().all() and x.grad.isfinite().all()
    torch.testing.assert_close(idn.grad, torch.where(y.detach() > 0, g, torch.zeros_like(g)), rtol=0, atol=0)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("c", [16, 32, 24])
def test_exact_ties_round_to_even(layout, dtype, c):
    """Saturated gates (both exactly 1.0) make the block tail's output relu(x + identity) formed in
    float32; x = 1 + k ulp and identity = +-half an ulp (or 1.5 ulp) put most sums exactly halfway
    between two storage values, which must go to the even one as ``Tensor.to`` rounds (round half up
    or truncation would not)."""
    m = cbam.CBAM(c, reduction=4, impl="fused")
    for p in m.parameters():
        p.data.fill_(10.0)  # x >= 1: every pre-activation is large and positive, both sigmoids give 1.0
    ulp = 2.0 ** -(7 if dtype == torch.bfloat16 else 10)
    g = torch.Generator().manual_seed(c)
    x = 1 + ulp * torch.randint(0, 64, (4, c, 9, 9), generator=g).float()
    half = torch.tensor([0.5, -0.5, 1.5, -1.5, 0.0])[torch.randint(0, 5, x.shape, generator=g)]
    x, idn = x.to(dtype).contiguous(memory_format=layout), (half * ulp).to(dtype).contiguous(memory_format=layout)
    with torch.no_grad():
        gate = m(x)
        y = m.forward_tail(x, idn)
    assert torch.equal(gate, x), "the gates are not saturated: the test's premise fails"
    want = torch.relu(x.float() + idn.float()).to(dtype)
    assert ((x.float() + idn.float()).to(dtype).float() != x.float() + idn.float()).float().mean() > 0.5
    assert torch.equal(y.view(torch.int16), want.view(torch.int16))
