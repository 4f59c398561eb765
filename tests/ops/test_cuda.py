"""The CUDA path on a real GPU (skipped without one; the same kernels run on the CPU under
Triton's interpreter in test_triton_interp.py): each Triton kernel against the torch kernels,
the fused module and the block tail against the reference in every dtype and layout, values and
gradients, float64 gradcheck, and a whole CBAM ResNet's training step."""
import pytest
import torch

import cbam
from cbam import functional as Fn
from cbam.models import create_model
from cbam.ops import backend_name, fused_cbam_tail
from tests.helpers import randomize_, rel_err as _rel

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 convolutions and matmuls in full precision: TF32 (cuDNN's default) rounds the spatial
    conv to ~5e-4, beyond the float32 tolerances against the float64 reference."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


LIM = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 5, 7, 9), (3, 17, 16, 16), (2, 4, 33, 35), (4, 64, 56, 56)])
def test_triton_kernels_match_torch_on_gpu(shape, dt, ties):
    from tests.ops.test_triton_interp import KERNELS, ROUNDED, ROUNDED_KERNELS, TOL, _compare, _inputs
    x, mc, ms, g = (t.cuda() for t in _inputs(shape, getattr(torch, dt), ties))
    assert backend_name(x) == "triton"
    for name in KERNELS:
        errs = _compare(name, x, mc, ms, g)
        tol = max(TOL[dt], ROUNDED[dt]) if name in ROUNDED_KERNELS else TOL[dt]
        assert max(errs) <= tol, (name, errs)


def _grads(m, x, g):
    x = x.clone().requires_grad_()
    for p in m.parameters():
        p.grad = None
    y = m(x)
    (y.to(g.dtype) * g).sum().backward()
    return [y, x.grad] + [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("preset,train", [("paper", True), ("official", True), ("official", False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_module_matches_reference_on_gpu(preset, train, dtype, layout):
    """impl='fused' against the float64 reference on the same rounded input; in half precision the
    reference run in that precision sets the bar too (no worse than 3x it)."""
    torch.manual_seed(5)
    ref = randomize_(cbam.CBAM.from_preset(preset, 48, impl="reference", dtype=torch.float64)).train(train).cuda()
    fus = cbam.CBAM.from_preset(preset, 48, impl="fused").train(train).cuda().to(dtype)
    fus.load_state_dict(ref.state_dict())
    x = torch.randn(6, 48, 13, 17, device="cuda").to(dtype).contiguous(memory_format=layout)
    g = torch.randn(6, 48, 13, 17, device="cuda", dtype=torch.float64)
    want = _grads(ref, x.double(), g)
    got = _grads(fus, x, g.to(dtype))
    assert got[0].dtype == dtype
    base = _grads(ref.to(dtype), x, g.to(dtype)) if dtype in (torch.bfloat16, torch.float16) else None
    for i, (a, b) in enumerate(zip(got, want)):
        allowed = LIM[dtype] * (1 if i < 2 else 10)
        if base is not None:
            allowed = max(allowed, 3 * _rel(base[i], b))
        assert _rel(a, b) <= allowed, (i, _rel(a, b), allowed)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_tail_matches_reference_on_gpu(layout, dtype):
    torch.manual_seed(11)
    m = randomize_(cbam.CBAM(32, dtype=torch.float64)).cuda()
    w = dict(fc1_weight=m.channel.fc1.weight, fc1_bias=m.channel.fc1.bias, fc2_weight=m.channel.fc2.weight,
             fc2_bias=m.channel.fc2.bias, conv_weight=m.spatial.conv.weight)
    x = torch.randn(4, 32, 10, 12, device="cuda").to(dtype).contiguous(memory_format=layout)
    ident = torch.randn(4, 32, 10, 12, device="cuda").to(dtype).contiguous(memory_format=layout)
    xs, ids = x.clone().requires_grad_(), ident.clone().requires_grad_()
    wd = torch.float64 if dtype == torch.float64 else torch.float32
    y = fused_cbam_tail(xs, ids, **{k: v.to(wd) if v is not None else v for k, v in w.items()})
    g = torch.randn_like(y)
    y.backward(g)
    xr, ir = x.double().requires_grad_(), ident.double().requires_grad_()
    yr = Fn.cbam_tail(xr, ir, **w)
    yr.backward(g.double())
    assert y.dtype == dtype and _rel(y, yr) <= LIM[dtype]
    torch.testing.assert_close(ids.grad, g * (y > 0), rtol=0, atol=0)  # relu routes the identity's gradient
    assert _rel(xs.grad, xr.grad) <= 3 * LIM[dtype]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_float64_on_gpu(layout):
    m = randomize_(cbam.CBAM(6, dtype=torch.float64)).cuda()
    w1, w2, wc = m.channel.fc1.weight, m.channel.fc2.weight, m.spatial.conv.weight
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64, device="cuda").contiguous(memory_format=layout)
    ident = torch.randn_like(x)
    assert backend_name(x) == "torch"  # Triton computes in float32: float64 takes the torch kernels
    args = [t.detach().clone().requires_grad_() for t in (x, ident, w1, w2, wc)]
    f = lambda x, i, a, b, c: fused_cbam_tail(x, i, a, None, b, None, c)  # noqa: E731
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_resnet_training_step_fused_equals_reference_on_gpu(layout):
    """A CBAM ResNet-20's loss and every parameter gradient, fused vs reference, on one batch."""
    (l1, g1), (l2, g2) = (_resnet_step(impl, layout) for impl in ("reference", "fused"))
    assert abs(l1 - l2) <= 1e-4 * abs(l1)
    # 19 layers of float32 in another summation order: the whole gradient to 1e-3, each tensor to 1e-2
    assert _rel(torch.cat([g.flatten() for g in g2]), torch.cat([g.flatten() for g in g1])) <= 1e-3
    assert max(_rel(a, b) for a, b in zip(g2, g1)) <= 1e-2


def _resnet_step(impl, layout):
    torch.manual_seed(0)
    m = create_model("resnet20_cbam", num_classes=10, in_chans=1, attention_kwargs={"impl": impl})
    m = m.cuda().to(memory_format=layout).train()
    torch.manual_seed(1)
    x = torch.randn(32, 1, 28, 28, device="cuda").contiguous(memory_format=layout)
    y = torch.randint(0, 10, (32,), device="cuda")
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in m.parameters()]
