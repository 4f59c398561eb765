"""One consistent API: timm's argument names, activations in every form, sibling names,
reset_parameters, gates recorded directly, the registry's names, double backward."""
import functools

import pytest
import torch
from torch import nn

import cbam
from cbam import functional as Fn
from cbam.attention import registry
from tests.helpers import randomize_

NAMES = [n for n in cbam.list_attention() if n != "none"]
BOTTLENECK = {"cbam": "channel", "cbam_official": "channel", "cbam_timm": "channel", "channel": "", "se": "",
              "bam": "", "coord": ""}


def _hidden(m, name):
    sub = BOTTLENECK[name]
    return (getattr(m, sub) if sub else m).hidden_channels


@pytest.mark.parametrize("name", NAMES)
def test_every_module_takes_timm_arguments(name):
    m = cbam.create_attention(name, 128, rd_ratio=1 / 8, act_layer=nn.SiLU, gate_layer="hard_sigmoid")
    x = torch.randn(2, 128, 6, 5)
    assert m(x).shape == x.shape
    if name in BOTTLENECK:
        assert _hidden(m, name) == 16
        assert _hidden(cbam.create_attention(name, 32, rd_channels=5), name) == 5
        assert _hidden(cbam.create_attention(name, 64, rd_ratio=1 / 16, rd_divisor=8), name) == 8


def test_rd_ratio_rounds_as_timm_and_conflicts_are_errors():
    assert cbam.CBAM(24, rd_ratio=1 / 16).channel.hidden_channels == 2  # timm: round(1.5) = 2
    assert cbam.CBAM(24, reduction=16).channel.hidden_channels == 1  # ours: 24 // 16
    assert cbam.CBAM(100, rd_ratio=1 / 16, rd_divisor=8).channel.hidden_channels == 8
    assert cbam.CBAM(64, spatial_kernel_size=3).spatial.kernel_size == 3
    with pytest.raises(ValueError, match="give one of them"):
        cbam.CBAM(64, reduction=8, rd_ratio=1 / 8)
    with pytest.raises(ValueError, match="same argument"):
        cbam.CBAM(64, hidden_channels=4, rd_channels=5)
    with pytest.raises(ValueError, match=r"rd_ratio must be in \(0, 1\]"):
        cbam.SqueezeExcite(64, rd_ratio=4)
    with pytest.raises(ValueError, match="rd_divisor must be an int >= 1"):
        cbam.BAM(64, rd_divisor=0)


def test_timm_attn_layer_partial_contract():
    """timm's ResNet builds ``attn_layer(channels)``."""
    layer = functools.partial(cbam.CBAM, rd_ratio=1 / 8)
    m = layer(64)
    assert isinstance(m, cbam.CBAM) and m.channel.hidden_channels == 8


def test_sibling_names():
    assert cbam.ChannelAttention(16, bias=True).fc1.bias is not None
    assert cbam.SqueezeExcite(16, mlp_bias=False).fc1.bias is None and cbam.SqueezeExcite(16).fc1.bias is not None
    sp = cbam.SpatialAttention(3, channels=16, spatial_norm=True, spatial_bias=True, spatial_pool="conv")
    assert sp.bn is not None and sp.conv.bias is not None and sp.pool == "conv"
    with pytest.raises(ValueError, match="same argument"):
        cbam.ChannelAttention(16, mlp_bias=True, bias=False)
    with pytest.raises(ValueError, match="same argument"):
        cbam.SpatialAttention(norm=True, spatial_norm=False)


def _mlp_gate(m, x, act, gate):
    d = torch.stack([x.mean((2, 3)), x.amax((2, 3))])
    return gate(m.fc2(act(m.fc1(d))).sum(0))[:, :, None, None]


@pytest.mark.parametrize("act,expect", [
    ("ReLU", "relu"), ("hardsigmoid", "hard_sigmoid"), ("HARD-SWISH", "hard_swish"), (nn.SiLU, "silu"),
    (functools.partial(nn.ReLU, inplace=True), "relu"), (torch.relu, "relu"), (None, "identity"),
])
def test_activation_specs_resolving_to_names(act, expect):
    m = cbam.CBAM(16, act_layer=act)
    assert m.channel.act == expect
    assert m.fusable == (expect == "relu")


def test_activation_callables_compute_what_they_say():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 4)
    leaky = functools.partial(nn.LeakyReLU, negative_slope=0.2)
    ca = cbam.ChannelAttention(16, reduction=4, act_layer=leaky, gate_layer=lambda t: torch.sigmoid(2 * t))
    assert isinstance(ca.act, nn.LeakyReLU) and ca.act.negative_slope == 0.2
    want = x * _mlp_gate(ca, x, lambda t: nn.functional.leaky_relu(t, 0.2), lambda t: torch.sigmoid(2 * t))
    torch.testing.assert_close(ca(x), want)
    prelu = cbam.ChannelAttention(16, act_layer=nn.PReLU())  # an instance with a parameter is trained with the rest
    assert "act.weight" in prelu.state_dict()
    assert isinstance(cbam.ChannelAttention(16, act_layer=lambda: nn.Tanh()).act, nn.Tanh)  # a factory
    bam = cbam.BAM(32, act_layer=nn.SiLU, gate_layer="tanh")
    assert isinstance(bam.spatial[2], nn.SiLU) and isinstance(bam.channel_mlp[2], nn.SiLU) and bam.gate == "tanh"
    for bad, err in ((3, TypeError), ("swishy", ValueError), (nn.Conv2d, TypeError), (int, TypeError)):
        with pytest.raises(err):
            cbam.CBAM(16, act_layer=bad)


@pytest.mark.parametrize("name", NAMES)
def test_reset_parameters_restores_the_default_init(name):
    m = randomize_(cbam.create_attention(name, 32))
    m(torch.randn(4, 32, 5, 5))  # moves the BN statistics
    m.reset_parameters()
    for sub in m.modules():
        if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = sub.weight[0].numel()
            assert sub.weight.abs().max() <= fan_in ** -0.5 + 1e-6  # PyTorch's kaiming_uniform(a=sqrt(5)) bound
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            zero = name == "cbam_official"  # the authors' zero-initialised spatial BN weight
            assert torch.all(sub.weight == (0 if zero else 1)) and torch.all(sub.bias == 0)
            assert torch.all(sub.running_mean == 0) and torch.all(sub.running_var == 1)


def test_gates_recorded_directly_finite_at_zero_input():
    torch.manual_seed(0)
    net = nn.ModuleDict({"eca": cbam.EfficientChannelAttention(16), "simam": cbam.SimAM(16),
                         "coord": cbam.CoordAttention(16), "bam": cbam.BAM(16)}).eval()
    x = torch.randn(2, 16, 6, 5)
    x[:, :, 2] = 0.0  # y / x would be NaN here
    with cbam.record_attention(net) as maps:
        ys = {k: m(x) for k, m in net.items()}
    assert maps["eca"]["map"].shape == (2, 16, 1, 1)
    torch.testing.assert_close(maps["eca"]["map"], Fn.efficient_channel_gate(x, net["eca"].conv.weight))
    torch.testing.assert_close(maps["simam"]["map"], Fn.simam_gate(x))
    assert maps["coord"]["h"].shape == (2, 16, 6, 1) and maps["coord"]["w"].shape == (2, 16, 1, 5)
    torch.testing.assert_close(ys["coord"], x * maps["coord"]["h"] * maps["coord"]["w"])
    torch.testing.assert_close(ys["bam"], x * maps["bam"]["map"])
    assert all(torch.isfinite(v).all() for d in maps.values() for v in d.values())


def test_simam_device_dtype():
    m = cbam.SimAM(16, device="cpu", dtype=torch.float64)
    x = torch.randn(1, 16, 3, 3, dtype=torch.float64)
    assert m(x).dtype == torch.float64
    with pytest.raises(ValueError, match="floating-point"):
        cbam.SimAM(16, dtype=torch.int64)
    with pytest.raises(ValueError, match="invalid device"):
        cbam.SimAM(16, device="gpu:x")


def test_registry_names_normalised_and_true_refused():
    factory = registry.get_attention("se")
    try:
        cbam.register_attention("My-Attn", factory)
        assert cbam.get_attention("my_attn") is factory and cbam.get_attention("MY-ATTN") is factory
        with pytest.raises(ValueError, match="already registered"):
            cbam.register_attention("my_ATTN", factory)
    finally:
        registry._REGISTRY.pop("my_attn", None)
    with pytest.raises(ValueError, match="attention=True is ambiguous"):
        cbam.get_attention(True)


def test_double_backward_fused_names_the_fix_reference_works():
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    fused = cbam.CBAM.from_preset("official", 16, impl="fused").train()
    with pytest.raises(RuntimeError, match='impl="reference"'):
        torch.autograd.grad(fused(x).square().sum(), x, create_graph=True)
    ref = cbam.CBAM.from_preset("official", 16, impl="reference").train()
    (g,) = torch.autograd.grad(ref(x).square().sum(), x, create_graph=True)
    g.square().sum().backward()  # a gradient penalty
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ref.parameters())
    fused(x).sum().backward()  # first-order training is unaffected
    assert x.grad is not None
