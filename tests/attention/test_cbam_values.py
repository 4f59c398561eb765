"""CBAM, its halves and SE/ECA/SimAM against independent numpy oracles (tests/reference_np.py)."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import cbam
from cbam import functional as Fn
from tests import reference_np as R
from tests.attention._oracle import cbam_oracle as _cbam_oracle, to_np as _np
from tests.helpers import randomize_

shapes = st.tuples(st.integers(1, 3), st.integers(1, 2048), st.integers(1, 9), st.integers(1, 9))


@given(shape=shapes, preset=st.sampled_from(["paper", "official", "timm"]),
       arrangement=st.sampled_from(["channel_first", "spatial_first", "parallel"]),
       k=st.sampled_from([1, 3, 5, 7]), channels_last=st.booleans(), impl=st.sampled_from(["reference", "auto"]))
def test_cbam_matches_oracle(shape, preset, arrangement, k, channels_last, impl):
    n, c, h, w = shape
    m = cbam.CBAM.from_preset(preset, c, kernel_size=k, arrangement=arrangement, impl=impl, dtype=torch.float64)
    randomize_(m).eval()
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = m(x)
    np.testing.assert_allclose(y.detach().numpy(), _cbam_oracle(m, x.numpy()), rtol=1e-9, atol=1e-10)


@given(shape=shapes, pools=st.lists(st.sampled_from(["avg", "max", "lp", "lse"]), min_size=1, max_size=4,
                                    unique=True), bias=st.booleans())
def test_channel_attention_pool_types(shape, pools, bias):
    n, c, h, w = shape
    m = randomize_(cbam.ChannelAttention(c, reduction=4, pool_types=pools, mlp_bias=bias, dtype=torch.float64))
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    ref = x.numpy() * R.channel_gate(x.numpy(), _np(m.fc1.weight), _np(m.fc1.bias), _np(m.fc2.weight),
                                     _np(m.fc2.bias), tuple(pools))
    np.testing.assert_allclose(m(x).detach().numpy(), ref, rtol=1e-9, atol=1e-10)


@given(shape=shapes, k=st.sampled_from([1, 3, 7, 9]), order=st.sampled_from(["avg_max", "max_avg"]))
def test_spatial_attention(shape, k, order):
    n, c, h, w = shape
    m = randomize_(cbam.SpatialAttention(k, pool_order=order, bias=True, dtype=torch.float64))
    x = torch.randn(n, c, h, w, dtype=torch.float64).to(memory_format=torch.channels_last)
    ref = x.numpy() * R.spatial_gate(x.numpy(), _np(m.conv.weight), _np(m.conv.bias), order)
    np.testing.assert_allclose(m(x).detach().numpy(), ref, rtol=1e-9, atol=1e-10)


@given(shape=shapes)
def test_se_eca_simam(shape):
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    se = randomize_(cbam.SqueezeExcite(c, dtype=torch.float64))
    np.testing.assert_allclose(se(x).detach().numpy(), R.se(x.numpy(), _np(se.fc1.weight), _np(se.fc1.bias),
                                                             _np(se.fc2.weight), _np(se.fc2.bias)), rtol=1e-9)
    eca = randomize_(cbam.EfficientChannelAttention(c, dtype=torch.float64))
    np.testing.assert_allclose(eca(x).detach().numpy(), R.eca(x.numpy(), _np(eca.conv.weight)), rtol=1e-9)
    sim = cbam.SimAM(c)
    np.testing.assert_allclose(sim(x).numpy(), R.simam(x.numpy()), rtol=1e-9, atol=1e-12)


def test_coord_attention_matches_direct_computation():
    torch.manual_seed(1)
    c, h, w = 40, 5, 7
    m = randomize_(cbam.CoordAttention(c, dtype=torch.float64)).eval()
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    # direct: adaptive pools, explicit BN formula, h-swish written out
    xh = torch.nn.functional.adaptive_avg_pool2d(x, (h, 1))
    xw = torch.nn.functional.adaptive_avg_pool2d(x, (1, w)).permute(0, 1, 3, 2)
    y = torch.einsum("oc,nchw->nohw", m.conv1.weight[:, :, 0, 0], torch.cat([xh, xw], 2))
    y = y + m.conv1.bias[None, :, None, None]
    bn = m.bn1
    y = (y - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    y = y * torch.clamp(y + 3, 0, 6) / 6
    ah = torch.sigmoid(torch.einsum("cm,nmhw->nchw", m.conv_h.weight[:, :, 0, 0], y[:, :, :h])
                       + m.conv_h.bias[None, :, None, None])
    aw = torch.sigmoid(torch.einsum("cm,nmhw->nchw", m.conv_w.weight[:, :, 0, 0], y[:, :, h:].permute(0, 1, 3, 2))
                       + m.conv_w.bias[None, :, None, None])
    torch.testing.assert_close(m(x), x * ah * aw, rtol=1e-10, atol=1e-12)
    assert m.hidden_channels == 8  # max(8, 40 // 32)
    fn = Fn.coord_attention(x, m.conv1.weight, m.conv1.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                            False, m.conv_h.weight, m.conv_h.bias, m.conv_w.weight, m.conv_w.bias)
    torch.testing.assert_close(fn, m(x), rtol=0, atol=0)  # the functional twin


def test_bam_matches_direct_computation():
    m = randomize_(cbam.BAM(32, dtype=torch.float64)).eval()
    x = torch.randn(2, 32, 9, 8, dtype=torch.float64)
    c = m.channel_mlp(x.mean((2, 3)))[:, :, None, None]
    s = m.spatial(x)
    torch.testing.assert_close(m(x), x + x * torch.sigmoid(c + s))
    assert m.spatial[3].dilation == (4, 4) and m.hidden_channels == 2


# ---- hand-checkable values -------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["paper", "official", "timm"])
def test_zero_weights_give_quarter(preset):
    """Zero MLP and zero conv -> both gates sigmoid(0) = 0.5 -> y = x / 4."""
    m = cbam.CBAM.from_preset(preset, 8).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    x = torch.randn(3, 8, 5, 6)
    torch.testing.assert_close(m(x), x / 4)


def test_official_preset_starts_at_half_spatial_gate():
    m = cbam.CBAM.from_preset("official", 16)
    assert torch.all(m.spatial.bn.weight == 0)
    x = torch.randn(4, 16, 6, 6)
    assert torch.allclose(m.spatial.compute_gate(x), torch.full((4, 1, 6, 6), 0.5))
    assert m.spatial.bn.momentum == 0.01 and m.spatial.pool_order == "max_avg" and m.channel.fc1.bias is not None


def test_channel_gate_known_value():
    """One channel, hidden 1, weights 1: M_c = sigmoid(relu(avg) + relu(max))."""
    x = torch.tensor([[[[1.0, 3.0], [-2.0, 2.0]]]])  # avg 1, max 3
    m = cbam.ChannelAttention(1, reduction=16)
    with torch.no_grad():
        m.fc1.weight.fill_(1.0)
        m.fc2.weight.fill_(1.0)
    torch.testing.assert_close(m(x), x * torch.sigmoid(torch.tensor(4.0)))
    assert m.hidden_channels == 1  # C < r floors at min_channels


def test_spatial_gate_known_value_center_tap():
    """1x1-equivalent kernel (only the centre tap of 'avg' is 1): gate = sigmoid(mean_c x)."""
    m = cbam.SpatialAttention(3)
    with torch.no_grad():
        m.conv.weight.zero_()
        m.conv.weight[0, 0, 1, 1] = 1.0
    x = torch.randn(2, 5, 4, 3)
    torch.testing.assert_close(m(x), x * torch.sigmoid(x.mean(1, keepdim=True)))
    m2 = cbam.SpatialAttention(3, pool_order="max_avg")
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), x * torch.sigmoid(x.amax(1, keepdim=True)))


def test_simam_constant_input():
    x = torch.full((1, 2, 3, 3), 7.0)
    torch.testing.assert_close(cbam.SimAM()(x), x * torch.sigmoid(torch.tensor(0.5)))


def test_hidden_width_and_reduction():
    assert cbam.CBAM(64).channel.hidden_channels == 4
    assert cbam.CBAM(64, reduction=8).channel.hidden_channels == 8
    assert cbam.CBAM(3).channel.hidden_channels == 1
    assert cbam.CBAM(64, hidden_channels=5).channel.hidden_channels == 5
    assert cbam.CBAM(64, min_channels=8).channel.hidden_channels == 8


def test_functional_equals_module():
    m = randomize_(cbam.CBAM.from_preset("official", 24)).eval()
    x = torch.randn(2, 24, 7, 5)
    ch, sp, bn = m.channel, m.spatial, m.spatial.bn
    y = Fn.cbam(x, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight, sp.conv.bias,
                bn.weight, bn.bias, bn.running_mean, bn.running_var, False, 0.01, 1e-5, True, ["avg", "max"],
                "max_avg")
    torch.testing.assert_close(m(x), y)


def test_spatial_conv_pooling_ablation():
    m = randomize_(cbam.CBAM(16, spatial_pool="conv", dtype=torch.float64))
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    x1 = x * m.channel.compute_gate(x)
    s = torch.einsum("c,nchw->nhw", m.spatial.pool_conv.weight[0, :, 0, 0], x1)[:, None]
    ref = x1 * torch.sigmoid(torch.nn.functional.conv2d(s, m.spatial.conv.weight, padding=3))
    torch.testing.assert_close(m(x), ref)
    assert m.spatial.conv.weight.shape == (1, 1, 7, 7)
