"""The rest of the family (SE, ECA, SimAM, coordinate attention, BAM) as plain functions;
see :mod:`cbam.functional`."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._core import activation, channel_attention


def squeeze_excite(
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


se = squeeze_excite  # the earlier name


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """ECA-Net's adaptive kernel: ``k = |log2(C)/gamma + beta/gamma|`` rounded to the nearest odd
    number (paper eq. 12)."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 == 1 else t + 1


def efficient_channel_gate(x: Tensor, conv_weight: Tensor, gate: str = "sigmoid") -> Tensor:
    """ECA's weights ``(N, C, H, W) -> (N, C, 1, 1)``: a 1-D conv of size k across the
    average-pooled channel vector. ``conv_weight`` is ``(1, 1, k)``."""
    y = x.mean((2, 3))[:, None, :]
    y = F.conv1d(y, conv_weight, padding=conv_weight.shape[-1] // 2)
    return activation(y[:, 0, :], gate)[:, :, None, None]


def efficient_channel_attention(x: Tensor, conv_weight: Tensor, gate: str = "sigmoid") -> Tensor:
    """Efficient Channel Attention (Wang et al., CVPR 2020), ``x * efficient_channel_gate(x)``."""
    return x * efficient_channel_gate(x, conv_weight, gate)


eca = efficient_channel_attention  # the earlier name


def simam_gate(x: Tensor, e_lambda: float = 1e-4, gate: str = "sigmoid") -> Tensor:
    """SimAM's weights ``gate(d / (4 (v + lambda)) + 0.5)`` with ``d = (x - mean_hw)^2`` and
    ``v = sum_hw d / (H W - 1)``, ``(N, C, H, W) -> (N, C, H, W)``. For a 1x1 map the divisor
    ``H W - 1`` is clamped to 1 (d is 0 there, so the gate is gate(0.5))."""
    n = max(x.shape[2] * x.shape[3] - 1, 1)
    d = (x - x.mean((2, 3), keepdim=True)).square()
    v = d.sum((2, 3), keepdim=True) / n
    return activation(d / (4 * (v + e_lambda)) + 0.5, gate)


def simam(x: Tensor, e_lambda: float = 1e-4, gate: str = "sigmoid") -> Tensor:
    """SimAM (Yang et al., ICML 2021), parameter-free: ``x * simam_gate(x)``."""
    return x * simam_gate(x, e_lambda, gate)


def coord_pool(x: Tensor) -> Tensor:
    """Coordinate attention's pooling: means along W and along H, stacked,
    ``(N, C, H, W) -> (N, C, H + W, 1)``."""
    return torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], 2)


def coord_split_gates(y: Tensor, h: int, conv_h_weight: Tensor, conv_h_bias: Optional[Tensor],
                      conv_w_weight: Tensor, conv_w_bias: Optional[Tensor], gate: str = "sigmoid"
                      ) -> Tuple[Tensor, Tensor]:
    """From the shared hidden map ``y`` ``(N, mip, H + W, 1)`` to the gates ``a_h`` ``(N, C, H, 1)``
    and ``a_w`` ``(N, C, 1, W)``, one 1x1 conv per direction."""
    a_h = activation(F.conv2d(y[:, :, :h], conv_h_weight, conv_h_bias), gate)
    a_w = activation(F.conv2d(y[:, :, h:].transpose(2, 3), conv_w_weight, conv_w_bias), gate)
    return a_h, a_w


def coord_attention(
    x: Tensor,
    conv1_weight: Tensor,
    conv1_bias: Optional[Tensor],
    bn_weight: Optional[Tensor],
    bn_bias: Optional[Tensor],
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
    """Coordinate attention (Hou et al., CVPR 2021): ``y = x * a_h * a_w``. :func:`coord_pool`, a
    shared 1x1 conv + BN + act, then one 1x1 conv and gate per direction (:func:`coord_split_gates`)."""
    y = F.conv2d(coord_pool(x), conv1_weight, conv1_bias)
    y = F.batch_norm(y, bn_running_mean, bn_running_var, bn_weight, bn_bias, bn_training, bn_momentum, bn_eps)
    a_h, a_w = coord_split_gates(activation(y, act), x.shape[2], conv_h_weight, conv_h_bias, conv_w_weight,
                                 conv_w_bias, gate)
    return x * a_h * a_w


def bam_gate(channel_logits: Tensor, spatial_logits: Tensor, gate: str = "sigmoid") -> Tensor:
    """BAM's weights ``1 + gate(M_c + M_s)`` from channel logits ``(N, C, 1, 1)`` and spatial
    logits ``(N, 1, H, W)``: ``(N, C, H, W)``."""
    return 1 + activation(channel_logits + spatial_logits, gate)


def bam(x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, gate: str = "sigmoid") -> Tensor:
    """BAM's combination (Park et al., BMVC 2018): ``y = x * (1 + sigmoid(M_c + M_s))`` with
    the logits of its two branches (see :func:`bam_gate`)."""
    return x * bam_gate(channel_logits, spatial_logits, gate)
