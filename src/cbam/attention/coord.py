"""Coordinate attention: direction-aware channel attention."""

from typing import Optional

from torch import Tensor, nn

from .. import functional as Fn
from ._base import LayerSpec, check_channels, check_input, hidden_width, resolve_activation


class CoordAttention(nn.Module):
    """Coordinate attention (Hou, Zhou, Feng, CVPR 2021).

    Pools along W and along H, a shared 1x1 conv (C -> mip) + BN + h-swish on the
    concatenation, then per-direction 1x1 convs (mip -> C) and sigmoid gates:
    ``y = x * a_h * a_w``. Paper defaults: reduction 32, ``mip = max(8, C // 32)``.
    ``(N, C, H, W) -> (N, C, H, W)``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(self, channels: int, reduction: float = 32, *, min_channels: int = 8,
                 hidden_channels: Optional[int] = None, act_layer: LayerSpec = "hard_swish",
                 gate_layer: LayerSpec = "sigmoid", device=None, dtype=None) -> None:
        super().__init__()
        self.channels = check_channels(channels, "CoordAttention")
        mip = hidden_width(channels, reduction, min_channels, hidden_channels)
        self.hidden_channels = mip
        self.act = resolve_activation(act_layer, "act_layer")
        self.gate = resolve_activation(gate_layer, "gate_layer")
        fk = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(channels, mip, 1, **fk)
        self.bn1 = nn.BatchNorm2d(mip, **fk)
        self.conv_h = nn.Conv2d(mip, channels, 1, **fk)
        self.conv_w = nn.Conv2d(mip, channels, 1, **fk)
        self.record_maps = False
        self.last_map = None

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "CoordAttention")
        bn = self.bn1
        if bn.training and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        y = Fn.coord_attention(x, self.conv1.weight, self.conv1.bias, bn.weight, bn.bias, bn.running_mean,
                               bn.running_var, bn.training, self.conv_h.weight, self.conv_h.bias,
                               self.conv_w.weight, self.conv_w.bias, self.act, self.gate,
                               bn.momentum if bn.momentum is not None else 0.1, bn.eps)
        if self.record_maps:
            self.last_map = (y / x).detach()
        return y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden_channels}, act={self.act}, gate={self.gate}"
