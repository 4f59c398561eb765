"""The per-sample kernels' k x k conv (register-blocked over output rows and taps) and gate sigmoid
(a polynomial exp on AVX-512) against cbam.functional: every odd kernel size the module accepts,
map sizes around the 4-row and 16-lane blocks, and pre-sigmoid values out to +-inf and NaN."""
import pytest
import torch

from cbam import functional as Fn
from cbam.ops import _cpu, fused_cbam_with_gates

pytestmark = pytest.mark.skipif(_cpu.load() is None, reason="C++ kernels not built here")


def _weights(c, k, dtype, scale=1.0):
    g = torch.Generator().manual_seed(c * 100 + k)
    hid = max(1, c // 4)
    w = [torch.randn(hid, c, generator=g) * 0.3, torch.randn(hid, generator=g) * 0.1,
         torch.randn(c, hid, generator=g) * 0.3, torch.randn(c, generator=g) * 0.1,
         torch.randn(1, 2, k, k, generator=g) * 0.2 * scale]
    return [t.to(dtype) for t in w]


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9, 11])
@pytest.mark.parametrize("hw", [(1, 1), (3, 17), (5, 16), (13, 7), (30, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_sizes_values_and_gradients(k, hw, dtype):
    """Rows below/at/past a 4-row block, widths below/at/past 16 lanes, 1 to 11 taps per kernel row
    (the weight gradient takes them 8 at a time)."""
    torch.manual_seed(k * 1000 + hw[0] * 37 + hw[1])
    n, c = 4, 8
    w = _weights(c, k, dtype)
    x = torch.randn(n, c, *hw, dtype=dtype)
    g = torch.randn(n, c, *hw, dtype=dtype)
    outs = []
    for f in (Fn.cbam_with_gates, fused_cbam_with_gates):
        xx = x.clone().requires_grad_()
        ww = [t.clone().requires_grad_() for t in w]
        y, mc, ms = f(xx, *ww)
        (y * g).sum().backward()
        outs.append([y, ms, xx.grad, ww[-1].grad])
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, **tol)


def test_gate_sigmoid_saturates_and_propagates_nan():
    """Pre-sigmoid values of +-1e4 (exp over/underflows), +-inf and NaN: the gate is 0, 1 or NaN
    exactly where torch.sigmoid gives them, and within 2 ulp-ish elsewhere."""
    c, k = 4, 3
    w = _weights(c, k, torch.float32)
    x = torch.randn(4, c, 9, 21)
    x[0] *= 1e4
    x[1, :, 2, 3] = float("inf")
    x[1, :, 5, 10] = -float("inf")
    x[2, 1, 4, 4] = float("nan")
    for scale in (1.0, 1e5):
        ww = w[:-1] + [w[-1] * scale]
        y_r, mc_r, ms_r = Fn.cbam_with_gates(x, *ww)
        y_f, mc_f, ms_f = fused_cbam_with_gates(x, *ww)
        assert torch.equal(ms_f.isnan(), ms_r.isnan())
        fin = ~ms_r.isnan()
        torch.testing.assert_close(ms_f[fin], ms_r[fin], rtol=2e-6, atol=1e-30)
        assert torch.equal(ms_f[fin] == 0, ms_r[fin] == 0) and torch.equal(ms_f[fin] == 1, ms_r[fin] == 1)
