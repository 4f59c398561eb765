"""The math of CBAM and its family, as plain functions on tensors and weights.

This is the one readable definition: every module in :mod:`cbam.attention`
calls these functions, and every fast path in :mod:`cbam.ops` is tested
against them. All functions are TorchScript-compatible, so non-linearities
are passed by name (see :data:`ACTIVATIONS`) rather than as callables.

Shapes: ``x`` is ``(N, C, H, W)``; every ``*_attention`` function returns a
tensor of the same shape, every ``*_gate`` function the weights that multiply
``x`` (broadcastable to it).

Pooling uses reductions (``mean``/``max``), never adaptive pooling: adaptive
pooling produced NaN under AMP with channels_last in other projects, and
exports to ONNX less cleanly. Max pooling is ``max(dim)`` rather than ``amax``:
equal values, but the gradient goes to the first maximal element only, as with
the authors' max pooling (``amax`` splits it among ties); the fused kernels
route it the same way, so low-precision inputs with tied maxima agree exactly.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "POOL_TYPES",
    "activation",
    "channel_descriptors",
    "channel_gate",
    "channel_attention",
    "spatial_descriptors",
    "spatial_gate",
    "spatial_attention",
    "cbam",
    "cbam_with_gates",
    "se",
    "eca",
    "eca_kernel_size",
    "simam",
    "coord_attention",
    "bam",
]

#: Names accepted wherever a non-linearity is chosen (``act``/``gate``).
ACTIVATIONS = (
    "relu", "relu6", "leaky_relu", "silu", "swish", "gelu", "tanh",
    "sigmoid", "hard_sigmoid", "hard_swish", "identity",
)
#: Descriptor types for :func:`channel_descriptors` (paper section 3 and the authors' code).
POOL_TYPES = ("avg", "max", "lp", "lse")


def activation(x: Tensor, name: str) -> Tensor:
    """Apply the non-linearity called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.01)
    if name == "silu" or name == "swish":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "hard_sigmoid":
        return F.hardsigmoid(x)
    if name == "hard_swish":
        return F.hardswish(x)
    if name == "identity":
        return x
    raise ValueError("unknown activation '" + name + "'; valid names: relu, relu6, leaky_relu, silu, swish, gelu, tanh, sigmoid, hard_sigmoid, hard_swish, identity")


def channel_descriptors(x: Tensor, pool_types: List[str]) -> Tensor:
    """Global descriptors over H x W: ``(N, C, H, W) -> (P, N, C)``, one per pool type.

    ``avg`` mean, ``max`` maximum, ``lp`` the L2 norm (the authors' ``lp_pool2d``
    with p=2 over the whole map), ``lse`` log-sum-exp (numerically stable).
    """
    out: List[Tensor] = []
    for p in pool_types:
        if p == "avg":
            out.append(x.mean((2, 3)))
        elif p == "max":
            out.append(x.flatten(2).max(2)[0])
        elif p == "lp":
            out.append(x.square().sum((2, 3)).sqrt())
        elif p == "lse":
            out.append(torch.logsumexp(x.flatten(2), dim=2))
        else:
            raise ValueError("unknown pool type '" + p + "'; valid: avg, max, lp, lse")
    return torch.stack(out, 0)


def channel_gate(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    pool_types: Optional[List[str]] = None,
    act: str = "relu",
    gate: str = "sigmoid",
) -> Tensor:
    """Channel attention weights M_c, ``(N, C, H, W) -> (N, C, 1, 1)``.

    ``M_c = gate(sum_p MLP(pool_p(x)))`` with one MLP ``C -> C/r -> C`` shared by
    all descriptors (paper eq. 2). ``fc1_weight`` is ``(C/r, C)``, ``fc2_weight``
    is ``(C, C/r)``, as for :func:`torch.nn.functional.linear`. ``pool_types``
    defaults to ``["avg", "max"]``.
    """
    d = channel_descriptors(x, pool_types if pool_types is not None else ["avg", "max"])
    logits = F.linear(activation(F.linear(d, fc1_weight, fc1_bias), act), fc2_weight, fc2_bias)
    return activation(logits.sum(0), gate)[:, :, None, None]


def channel_attention(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    pool_types: Optional[List[str]] = None,
    act: str = "relu",
    gate: str = "sigmoid",
) -> Tensor:
    """``x * M_c(x)``: ``(N, C, H, W) -> (N, C, H, W)``."""
    return x * channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool_types, act, gate)


def spatial_descriptors(x: Tensor, order: str = "avg_max") -> Tensor:
    """Channel-wise mean and max maps, ``(N, C, H, W) -> (N, 2, H, W)``.

    ``order="avg_max"`` is the paper's ``[AvgPool; MaxPool]``; ``"max_avg"`` is
    the authors' code (``ChannelPool`` concatenates max first).
    """
    avg = x.mean(1, keepdim=True)
    mx = x.max(1, keepdim=True)[0]
    if order == "avg_max":
        return torch.cat([avg, mx], 1)
    if order == "max_avg":
        return torch.cat([mx, avg], 1)
    raise ValueError("unknown pool order '" + order + "'; valid: avg_max, max_avg")


def spatial_gate(
    x: Tensor,
    conv_weight: Tensor,
    conv_bias: Optional[Tensor] = None,
    bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None,
    bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None,
    bn_training: bool = False,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    use_bn: bool = False,
    order: str = "avg_max",
    gate: str = "sigmoid",
    pool_weight: Optional[Tensor] = None,
) -> Tensor:
    """Spatial attention weights M_s, ``(N, C, H, W) -> (N, 1, H, W)``.

    ``M_s = gate(BN?(conv_kxk([avg_c(x); max_c(x)])))`` (paper eq. 3; the BN is
    the authors' code). ``conv_weight`` is ``(1, 2, k, k)``, padding ``k // 2``
    keeps H x W. With ``pool_weight`` of shape ``(1, C, 1, 1)`` the channel
    pooling is a learned 1x1 conv instead (the paper's ablation) and
    ``conv_weight`` is ``(1, 1, k, k)``.
    """
    if pool_weight is None:
        d = spatial_descriptors(x, order)
    else:
        d = F.conv2d(x, pool_weight)
    pad = conv_weight.shape[-1] // 2
    s = F.conv2d(d, conv_weight, conv_bias, padding=pad)
    if use_bn:
        s = F.batch_norm(s, bn_running_mean, bn_running_var, bn_weight, bn_bias, bn_training, bn_momentum, bn_eps)
    return activation(s, gate)


def spatial_attention(
    x: Tensor,
    conv_weight: Tensor,
    conv_bias: Optional[Tensor] = None,
    order: str = "avg_max",
    gate: str = "sigmoid",
) -> Tensor:
    """``x * M_s(x)`` without normalisation (the paper's form): ``(N, C, H, W) -> (N, C, H, W)``."""
    return x * spatial_gate(x, conv_weight, conv_bias, order=order, gate=gate)


def cbam_with_gates(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    conv_weight: Tensor,
    conv_bias: Optional[Tensor] = None,
    bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None,
    bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None,
    bn_training: bool = False,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    use_bn: bool = False,
    pool_types: Optional[List[str]] = None,
    order: str = "avg_max",
    arrangement: str = "channel_first",
    act: str = "relu",
    gate: str = "sigmoid",
    pool_weight: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """CBAM returning ``(y, M_c, M_s)``; see :func:`cbam` for the arguments.

    ``channel_first``: ``x' = M_c(x) * x``, ``y = M_s(x') * x'`` (the paper's
    choice); ``spatial_first`` swaps the two; ``parallel`` computes both gates
    from ``x`` and applies their product, ``y = M_c(x) * M_s(x) * x``.
    """
    if arrangement == "channel_first":
        mc = channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool_types, act, gate)
        x1 = x * mc
        ms = spatial_gate(x1, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                          bn_training, bn_momentum, bn_eps, use_bn, order, gate, pool_weight)
        return x1 * ms, mc, ms
    if arrangement == "spatial_first":
        ms = spatial_gate(x, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                          bn_training, bn_momentum, bn_eps, use_bn, order, gate, pool_weight)
        x1 = x * ms
        mc = channel_gate(x1, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool_types, act, gate)
        return x1 * mc, mc, ms
    if arrangement == "parallel":
        mc = channel_gate(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, pool_types, act, gate)
        ms = spatial_gate(x, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                          bn_training, bn_momentum, bn_eps, use_bn, order, gate, pool_weight)
        return x * mc * ms, mc, ms
    raise ValueError("unknown arrangement '" + arrangement + "'; valid: channel_first, spatial_first, parallel")


def cbam(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    conv_weight: Tensor,
    conv_bias: Optional[Tensor] = None,
    bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None,
    bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None,
    bn_training: bool = False,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    use_bn: bool = False,
    pool_types: Optional[List[str]] = None,
    order: str = "avg_max",
    arrangement: str = "channel_first",
    act: str = "relu",
    gate: str = "sigmoid",
    pool_weight: Optional[Tensor] = None,
) -> Tensor:
    """CBAM (paper eq. 1), ``(N, C, H, W) -> (N, C, H, W)``.

    Channel gate weights as in :func:`channel_gate`, spatial conv/BN as in
    :func:`spatial_gate` (``use_bn`` switches the authors' BatchNorm on),
    ``arrangement`` one of ``channel_first`` (paper), ``spatial_first``,
    ``parallel`` (the paper's ablation). ``pool_weight`` replaces the spatial
    avg/max pooling by a learned 1x1 conv (ablation, see :func:`spatial_gate`).
    """
    return cbam_with_gates(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                           bn_weight, bn_bias, bn_running_mean, bn_running_var, bn_training, bn_momentum,
                           bn_eps, use_bn, pool_types, order, arrangement, act, gate, pool_weight)[0]


def se(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Optional[Tensor],
    fc2_weight: Tensor,
    fc2_bias: Optional[Tensor],
    act: str = "relu",
    gate: str = "sigmoid",
) -> Tensor:
    """Squeeze-and-Excitation (Hu et al., CVPR 2018): CBAM's channel gate with average pooling only."""
    return channel_attention(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, ["avg"], act, gate)


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """ECA-Net's adaptive kernel: ``k = |log2(C)/gamma + beta/gamma|`` rounded to the nearest odd number (paper eq. 12)."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 == 1 else t + 1


def eca(x: Tensor, conv_weight: Tensor, gate: str = "sigmoid") -> Tensor:
    """Efficient Channel Attention (Wang et al., CVPR 2020): a 1-D conv of size k across the
    average-pooled channel vector. ``conv_weight`` is ``(1, 1, k)``."""
    y = x.mean((2, 3))[:, None, :]
    y = F.conv1d(y, conv_weight, padding=conv_weight.shape[-1] // 2)
    return x * activation(y[:, 0, :], gate)[:, :, None, None]


def simam(x: Tensor, e_lambda: float = 1e-4) -> Tensor:
    """SimAM (Yang et al., ICML 2021), parameter-free: ``x * sigmoid(d / (4 (v + lambda)) + 0.5)``
    with ``d = (x - mean_hw)^2`` and ``v = sum_hw d / (H W - 1)``. For a 1x1 map the
    divisor ``H W - 1`` is clamped to 1 (d is 0 there, so the gate is sigmoid(0.5))."""
    n = max(x.shape[2] * x.shape[3] - 1, 1)
    d = (x - x.mean((2, 3), keepdim=True)).square()
    v = d.sum((2, 3), keepdim=True) / n
    return x * torch.sigmoid(d / (4 * (v + e_lambda)) + 0.5)


def coord_attention(
    x: Tensor,
    conv1_weight: Tensor,
    conv1_bias: Optional[Tensor],
    bn_weight: Tensor,
    bn_bias: Tensor,
    bn_running_mean: Optional[Tensor],
    bn_running_var: Optional[Tensor],
    bn_training: bool,
    conv_h_weight: Tensor,
    conv_h_bias: Optional[Tensor],
    conv_w_weight: Tensor,
    conv_w_bias: Optional[Tensor],
    act: str = "hard_swish",
    gate: str = "sigmoid",
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
) -> Tensor:
    """Coordinate attention (Hou et al., CVPR 2021). Pool along W and along H, a shared
    1x1 conv + BN + act on the concatenation, then one 1x1 conv per direction:
    ``y = x * g(conv_h(f_h)) * g(conv_w(f_w))``."""
    h, w = x.shape[2], x.shape[3]
    x_h = x.mean(3, keepdim=True)                       # (N, C, H, 1)
    x_w = x.mean(2, keepdim=True).transpose(2, 3)       # (N, C, W, 1)
    y = F.conv2d(torch.cat([x_h, x_w], 2), conv1_weight, conv1_bias)
    y = F.batch_norm(y, bn_running_mean, bn_running_var, bn_weight, bn_bias, bn_training, bn_momentum, bn_eps)
    y = activation(y, act)
    y_h, y_w = y[:, :, :h], y[:, :, h:].transpose(2, 3)
    a_h = activation(F.conv2d(y_h, conv_h_weight, conv_h_bias), gate)
    a_w = activation(F.conv2d(y_w, conv_w_weight, conv_w_bias), gate)
    return x * a_h * a_w


def bam(x: Tensor, channel_logits: Tensor, spatial_logits: Tensor) -> Tensor:
    """BAM's combination (Park et al., BMVC 2018): ``y = x * (1 + sigmoid(M_c + M_s))`` with
    channel logits ``(N, C, 1, 1)`` and spatial logits ``(N, 1, H, W)`` from its two branches."""
    return x * (1 + torch.sigmoid(channel_logits + spatial_logits))
