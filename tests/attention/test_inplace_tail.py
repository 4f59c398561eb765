"""``CBAM.forward_tail(x, identity, inplace=True)``: where no gradient is recorded the fused path
writes the block's output over ``x`` (as ``nn.ReLU(inplace=True)``), bumping its version; where a
gradient is recorded, or torch would refuse an in-place write, ``x`` is left alone. The values
equal the reference tail in every case."""
import pytest
import torch

import cbam
from cbam.models import create_model
from cbam.ops import _cpu
from cbam.ops import _forward as FW
from tests.helpers import randomize_, rel_err

CL = torch.channels_last
pytestmark = pytest.mark.skipif(_cpu.load() is None, reason="C++ kernels not built here")


def _pair(c=16, dtype=torch.float64):
    torch.manual_seed(0)
    m = randomize_(cbam.CBAM(c, 4).to(dtype))
    ref = cbam.CBAM(c, 4, impl="reference").to(dtype)
    ref.load_state_dict(m.state_dict())
    return m, ref


def _expected(ref, x, ident):
    with torch.no_grad():
        return torch.relu(ref(x.clone()) + ident)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_inference_writes_over_x(layout, dtype):
    m, ref = _pair(dtype=dtype)
    x = torch.randn(3, 16, 9, 7, dtype=dtype).contiguous(memory_format=layout)
    ident = torch.randn_like(x)
    want = _expected(ref, x, ident)
    ident_before, version = ident.clone(), x._version
    with torch.no_grad():
        y = m.forward_tail(x, ident, inplace=True)
    assert y.data_ptr() == x.data_ptr() and x._version > version
    assert y.is_contiguous(memory_format=layout)
    assert torch.equal(ident, ident_before)  # only x is written
    tol = 1e-10 if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 1e-2)
    assert rel_err(y, want) < tol


def test_not_inplace_by_default_and_equal_either_way():
    m, ref = _pair()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    ident = torch.randn_like(x)
    x_before = x.clone()
    with torch.no_grad():
        y = m.forward_tail(x, ident)
        assert torch.equal(x, x_before) and y.data_ptr() != x.data_ptr()
        y2 = m.forward_tail(x.clone(), ident, inplace=True)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    assert rel_err(y, _expected(ref, x, ident)) < 1e-10


def test_recorded_gradient_keeps_x():
    m, ref = _pair()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    ident = torch.randn_like(x)
    x_before = x.detach().clone()
    y = m.forward_tail(x, ident, inplace=True)
    assert torch.equal(x.detach(), x_before) and y.data_ptr() != x.data_ptr()
    (gx,) = torch.autograd.grad(y.sum(), x)
    xr = x_before.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(torch.relu(ref(xr) + ident).sum(), xr)
    assert rel_err(gx, gr) < 1e-10


def test_inference_tensor_outside_inference_mode_is_not_written():
    m, ref = _pair()
    with torch.inference_mode():
        x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
        ident = torch.randn_like(x)
    x_before = x.clone()
    with torch.no_grad():  # torch refuses in-place writes to inference tensors here: so does the op
        y = m.forward_tail(x, ident, inplace=True)
    assert torch.equal(x, x_before) and y.data_ptr() != x.data_ptr()
    assert rel_err(y, _expected(ref, x_before, ident)) < 1e-10
    with torch.inference_mode():
        y = m.forward_tail(x, ident, inplace=True)
    assert y.data_ptr() == x.data_ptr()
    assert rel_err(y, _expected(ref, x_before, ident)) < 1e-10


def test_a_graph_that_saved_x_fails_after_the_write():
    m, _ = _pair()
    w = torch.randn(1, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    z = (x * w).sum()  # saves x for w's gradient
    with torch.no_grad():
        m.forward_tail(x, torch.randn_like(x), inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


def test_three_pass_path_writes_over_x(monkeypatch):
    # a last-level cache of 1 KiB makes every NCHW sample "too big": the batch-wide passes run
    monkeypatch.setattr(FW, "_LLC", {})
    monkeypatch.setenv("CBAM_LLC_BYTES", "1024")
    m, ref = _pair()
    x = torch.randn(4, 16, 9, 9, dtype=torch.float64)
    assert not FW.per_sample(_cpu.load(), x)
    ident = torch.randn_like(x)
    want = _expected(ref, x, ident)
    with torch.no_grad():
        y = m.forward_tail(x, ident, inplace=True)
    assert y.data_ptr() == x.data_ptr()
    assert rel_err(y, want) < 1e-10


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_resnet_inference_unchanged_and_input_kept(layout):
    torch.manual_seed(0)
    m = randomize_(create_model("resnet20_cbam", num_classes=10, in_chans=1)).eval()
    ref = create_model("resnet20_cbam", num_classes=10, in_chans=1, attention_kwargs=dict(impl="reference")).eval()
    ref.load_state_dict(m.state_dict())
    m, ref = m.to(memory_format=layout), ref.to(memory_format=layout)
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=layout)
    x_before = x.clone()
    with torch.no_grad():
        y, y_ref = m(x), ref(x)
    assert torch.equal(x, x_before)
    assert rel_err(y, y_ref) < 1e-4


def test_a_two_argument_forward_tail_still_works_in_the_blocks():
    class OldTail(cbam.CBAM):  # written against forward_tail(x, identity)
        def forward_tail(self, x, identity):
            return super().forward_tail(x, identity)

    torch.manual_seed(0)
    m = create_model("resnet20", num_classes=10, in_chans=1, attention=OldTail).eval()
    ref = create_model("resnet20_cbam", num_classes=10, in_chans=1).eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert rel_err(m(x), ref(x)) < 1e-6
