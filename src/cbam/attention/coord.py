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
    ``act_layer`` / ``gate_layer`` and ``hidden_channels`` / ``rd_ratio`` / ``rd_channels`` /
    ``rd_divisor`` as in :class:`ChannelAttention`. The BN is called as a module, so a
    converted one (``SyncBatchNorm``) does its own work.

    Shape: ``(N, C, H, W) -> (N, C, H, W)``; with ``record_maps`` the gates are kept in
    ``last_h_map`` ``(N, C, H, 1)`` and ``last_w_map`` ``(N, C, 1, W)``.
    """

    record_maps: bool
    last_h_map: Optional[Tensor]
    last_w_map: Optional[Tensor]

    def __init__(self, channels: int, reduction: Optional[float] = None, *, min_channels: int = 8,
                 hidden_channels: Optional[int] = None, act_layer: LayerSpec = "hard_swish",
                 gate_layer: LayerSpec = "sigmoid", rd_ratio: Optional[float] = None,
                 rd_channels: Optional[int] = None, rd_divisor: Optional[int] = None, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.channels = check_channels(channels, "CoordAttention")
        mip = hidden_width(channels, reduction, min_channels, hidden_channels, default_reduction=32,
                           rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor)
        self.hidden_channels = mip
        self.act = resolve_activation(act_layer, "act_layer")
        self.gate = resolve_activation(gate_layer, "gate_layer")
        fk = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(channels, mip, 1, **fk)
        self.bn1 = nn.BatchNorm2d(mip, **fk)
        self.conv_h = nn.Conv2d(mip, channels, 1, **fk)
        self.conv_w = nn.Conv2d(mip, channels, 1, **fk)
        self.record_maps = False
        self.last_h_map = None
        self.last_w_map = None

    def reset_parameters(self) -> None:
        """PyTorch's default init of the convs and the BN."""
        for m in (self.conv1, self.bn1, self.conv_h, self.conv_w):
            m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "CoordAttention")
        y = Fn.activation(self.bn1(self.conv1(Fn.coord_pool(x))), self.act)
        a_h, a_w = Fn.coord_split_gates(y, x.shape[2], self.conv_h.weight, self.conv_h.bias, self.conv_w.weight,
                                        self.conv_w.bias, self.gate)
        if self.record_maps:
            self.last_h_map = a_h.detach()
            self.last_w_map = a_w.detach()
        return x * a_h * a_w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden_channels}, act={self.act}, gate={self.gate}"
