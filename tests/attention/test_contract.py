"""The contract every registry entry shares: gradients, dtypes, scripting, compiling, state dicts, errors."""
import io

import pytest
import torch

import cbam
from tests.helpers import randomize_

NAMES = cbam.list_attention()
C = 32


def build(name, dtype=torch.float32, **kw):
    return randomize_(cbam.create_attention(name, C, dtype=dtype, **kw) if name != "none"
                      else cbam.create_attention(name, C))


def test_registry_has_required_members():
    need = {"cbam", "channel", "spatial", "se", "eca", "bam", "coord", "simam", "none"}
    assert need <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    m = build(name, torch.float64).eval()
    x = torch.randn(2, C, 5, 4, dtype=torch.float64, requires_grad=True)
    params = [p for p in m.parameters()]
    assert torch.autograd.gradcheck(lambda x, *ps: m(x), (x, *params), eps=1e-6, atol=1e-5)


def test_gradcheck_cbam_official_training_bn():
    m = build("cbam_official", torch.float64).train()
    x = torch.randn(3, C, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *ps: m(x), (x, *m.parameters()), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)])
def test_low_precision_close_to_float32(name, dtype, tol):
    m32 = build(name).eval()
    m16 = build(name, dtype).eval()
    m16.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in m32.state_dict().items()})
    x = torch.randn(2, C, 6, 6)
    y32 = m32(x)
    y16 = m16(x.to(dtype)).float()
    scale = y32.abs().max().clamp_min(1.0)
    assert torch.isfinite(y16).all()
    assert (y16 - y32).abs().max() / scale < tol


@pytest.mark.parametrize("name", NAMES)
def test_autocast_channels_last_no_nan(name):
    """AMP + channels_last produced NaN with adaptive pooling elsewhere; reductions must not."""
    m = build(name).eval()
    x = (torch.randn(4, C, 7, 7) * 3).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    ref = m(x)
    assert torch.isfinite(y).all()
    assert ((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1)) < 5e-2
    loss = y.float().square().mean()
    if loss.requires_grad:
        loss.backward()
        for p in m.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_and_state_dict(name):
    m = build(name).eval()
    x = torch.randn(2, C, 5, 3)
    s = torch.jit.script(m)
    torch.testing.assert_close(s(x), m(x))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = cbam.create_attention(name, C).eval()
    m2.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(m2(x), m(x))


@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_fullgraph(name):
    torch._dynamo.reset()
    m = build(name).eval()
    x = torch.randn(2, C, 5, 3)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(cm(x), m(x))


def test_torch_compile_inductor_cbam():
    torch._dynamo.reset()
    m = build("cbam").eval()
    x = torch.randn(2, C, 5, 3)
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x), rtol=1e-4, atol=1e-5)


def test_factory_kwargs_and_repr():
    m = cbam.CBAM(16, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in m.parameters())
    r = repr(m)
    assert "hidden=1" in r and "kernel_size=7" in r and "arrangement=channel_first" in r
    assert "impl=" in r


def test_class_and_callable_pass_through():
    m = cbam.create_attention(cbam.SqueezeExcite, 16, reduction=4)
    assert isinstance(m, cbam.SqueezeExcite) and m.hidden_channels == 4
    m = cbam.create_attention(lambda c, **kw: torch.nn.BatchNorm2d(c), 16)
    assert isinstance(m, torch.nn.BatchNorm2d)
    assert isinstance(cbam.create_attention(None, 16), torch.nn.Identity)
    assert isinstance(cbam.create_attention("none", 16), torch.nn.Identity)


def test_activation_injection():
    m = cbam.CBAM(16, act_layer=torch.nn.SiLU, gate_layer="hard_sigmoid")
    assert m.channel.act == "silu" and m.channel.gate == "hard_sigmoid" and m.spatial.gate == "hard_sigmoid"
    assert not m.fusable
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    x = torch.randn(1, 16, 3, 3)
    torch.testing.assert_close(m(x), x * 0.25)  # hard_sigmoid(0) = 0.5


def test_record_maps():
    net = torch.nn.Sequential(cbam.CBAM(8), torch.nn.Conv2d(8, 8, 1), cbam.SqueezeExcite(8))
    x = torch.randn(2, 8, 5, 6)
    y0 = net(x)
    with cbam.record_attention(net) as maps:
        y = net(x)
    torch.testing.assert_close(y, y0)
    assert set(maps) == {"0", "2"}
    assert maps["0"]["channel"].shape == (2, 8, 1, 1) and maps["0"]["spatial"].shape == (2, 1, 5, 6)
    torch.testing.assert_close(maps["0"]["channel"], net[0].channel.compute_gate(x))
    assert net[0].last_channel_map is None and not net[0].record_maps


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in NAMES if n != "none"])
def test_bad_inputs(name):
    m = build(name).eval()
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(C, 5, 5))
    with pytest.raises(ValueError, match="empty"):
        m(torch.randn(0, C, 5, 5))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(1, C, 4, 4, dtype=torch.int64))
    if name not in ("spatial", "simam"):
        with pytest.raises(ValueError, match=f"channels={C}\\) got input with 16 channels"):
            m(torch.randn(1, 16, 4, 4))


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="reduction must be >= 1"):
        cbam.CBAM(16, reduction=0.5)
    for k in (0, 4, -1):
        with pytest.raises(ValueError, match="odd int"):
            cbam.CBAM(16, kernel_size=k)
    with pytest.raises(ValueError, match="unknown pool type 'median'.*avg, max, lp, lse"):
        cbam.CBAM(16, pool_types=("avg", "median"))
    with pytest.raises(ValueError, match="non-empty"):
        cbam.ChannelAttention(16, pool_types=())
    with pytest.raises(ValueError, match="unknown attention 'cbma'; valid names: .*cbam.*se"):
        cbam.create_attention("cbma", 16)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        cbam.CBAM(0)
    with pytest.raises(ValueError, match="unknown arrangement"):
        cbam.CBAM(16, arrangement="sideways")
    with pytest.raises(ValueError, match="unknown CBAM preset"):
        cbam.CBAM.from_preset("authors", 16)
    with pytest.raises(TypeError, match="cannot be built without arguments"):
        cbam.CBAM(16, act_layer=torch.nn.Conv2d)
    with pytest.raises(TypeError, match="not supported"):
        cbam.CBAM(16, act_layer=3)
    with pytest.raises(ValueError, match="unknown act_layer"):
        cbam.CBAM(16, act_layer="swishy")
    with pytest.raises(ValueError, match="impl='fused'"):
        cbam.CBAM(16, arrangement="parallel", impl="fused")
