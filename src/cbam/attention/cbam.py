"""CBAM: channel then spatial attention, with the paper's, the authors' and timm's forms."""

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import functional as Fn
from .. import ops
from ._base import LayerSpec, check_channels, check_input
from .channel import ChannelAttention
from .spatial import SpatialAttention

#: Named presets. ``paper`` follows the equations of the paper; ``official`` the
#: authors' code (Linear MLP with bias; conv 7x7 + BatchNorm(momentum 0.01) with
#: the BN weight initialised to 0; spatial descriptors concatenated [max, mean]);
#: ``timm`` follows timm's ``CbamModule`` (1x1-conv MLP without bias, conv + BN,
#: [mean, max]).
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(mlp_bias=False, spatial_bias=False, spatial_norm=False, pool_order="avg_max"),
    "official": dict(mlp_bias=True, spatial_bias=False, spatial_norm=True, bn_zero_init=True,
                     bn_momentum=0.01, pool_order="max_avg"),
    "timm": dict(mlp_bias=False, spatial_bias=False, spatial_norm=True, bn_zero_init=False,
                 bn_momentum=0.1, pool_order="avg_max"),
}

ARRANGEMENTS = ("channel_first", "spatial_first", "parallel")
IMPLS = ("auto", "reference", "fused")


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo, Park, Lee, Kweon, ECCV 2018).

    ``x' = M_c(x) * x``, ``y = M_s(x') * x'`` (paper eq. 1) with the channel gate
    of :class:`ChannelAttention` and the spatial gate of :class:`SpatialAttention`.
    Returns the attended feature map, not the gate.

    Args:
        channels: C of the input.
        reduction: MLP ratio r (paper: 16); hidden width ``max(min_channels, C // r)``.
        kernel_size: spatial conv size, any odd k >= 1 (paper: 7).
        pool_types: channel descriptors (paper: avg and max; also lp, lse).
        arrangement: ``channel_first`` (paper), ``spatial_first`` or ``parallel``.
        mlp_bias, spatial_bias, spatial_norm, pool_order, bn_zero_init, bn_momentum:
            the switches in which the paper, the authors' code and timm differ;
            see :data:`PRESETS` and :meth:`from_preset`.
        spatial_pool: ``avgmax`` (paper) or ``conv`` (1x1-conv pooling, ablation).
        impl: ``auto`` uses the fused kernels of :mod:`cbam.ops` where they apply
            (channel-first, avg+max, ReLU/sigmoid) and the reference otherwise;
            ``reference`` always uses :mod:`cbam.functional`; ``fused`` insists.

    Shape: ``(N, C, H, W) -> (N, C, H, W)``. With ``record_maps = True`` the last
    gates are kept (detached) in ``last_channel_map`` ``(N, C, 1, 1)`` and
    ``last_spatial_map`` ``(N, 1, H, W)``.
    """

    record_maps: bool
    last_channel_map: Optional[Tensor]
    last_spatial_map: Optional[Tensor]

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        kernel_size: int = 7,
        *,
        pool_types: Sequence[str] = ("avg", "max"),
        arrangement: str = "channel_first",
        mlp_bias: bool = False,
        spatial_bias: bool = False,
        spatial_norm: bool = False,
        pool_order: str = "avg_max",
        bn_zero_init: bool = False,
        bn_momentum: float = 0.1,
        spatial_pool: str = "avgmax",
        hidden_channels: Optional[int] = None,
        min_channels: int = 1,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        impl: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels, "CBAM")
        if arrangement not in ARRANGEMENTS:
            raise ValueError(f"CBAM: unknown arrangement '{arrangement}'; valid: {', '.join(ARRANGEMENTS)}")
        if impl not in IMPLS:
            raise ValueError(f"CBAM: unknown impl '{impl}'; valid: {', '.join(IMPLS)}")
        self.arrangement = arrangement
        fk = {"device": device, "dtype": dtype}
        self.channel = ChannelAttention(channels, reduction, pool_types, hidden_channels=hidden_channels,
                                        min_channels=min_channels, mlp_bias=mlp_bias, act_layer=act_layer,
                                        gate_layer=gate_layer, **fk)
        self.spatial = SpatialAttention(kernel_size, channels=channels, pool=spatial_pool, pool_order=pool_order,
                                        norm=spatial_norm, bn_zero_init=bn_zero_init, bn_momentum=bn_momentum,
                                        bias=spatial_bias, gate_layer=gate_layer, **fk)
        self.impl = impl
        self.fusable = (arrangement == "channel_first" and sorted(self.channel.pool_types) == ["avg", "max"]
                        and len(self.channel.pool_types) == 2 and self.channel.act == "relu"
                        and self.channel.gate == "sigmoid" and self.spatial.gate == "sigmoid"
                        and spatial_pool == "avgmax")
        if impl == "fused" and not self.fusable:
            raise ValueError("CBAM(impl='fused') covers channel_first, pool_types=('avg', 'max'), ReLU and "
                             "sigmoid with avg/max spatial pooling; use impl='auto' or 'reference' for this "
                             "configuration")
        self.record_maps = False
        self.last_channel_map = None
        self.last_spatial_map = None

    @classmethod
    def from_preset(cls, preset: str, channels: int, **overrides: Any) -> "CBAM":
        """Build the ``paper``, ``official`` (authors' code) or ``timm`` form; keyword
        arguments override single switches."""
        if preset not in PRESETS:
            raise ValueError(f"unknown CBAM preset '{preset}'; valid: {', '.join(PRESETS)}")
        return cls(channels, **{**PRESETS[preset], **overrides})

    @torch.jit.unused
    def uses_fused(self, x: Tensor) -> bool:
        """Whether ``forward(x)`` takes the fused path of :mod:`cbam.ops`."""
        if self.impl == "reference" or not self.fusable:
            return False
        return ops.fused_available(x, require=self.impl == "fused")

    @torch.jit.unused
    def _fused(self, x: Tensor, bn_args: Tuple) -> Tuple[Tensor, Tensor, Tensor]:
        ch, sp = self.channel, self.spatial
        return ops.fused_cbam_with_gates(x, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight,
                                         sp.conv.bias, *bn_args, order=sp.pool_order)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "CBAM")
        ch, sp = self.channel, self.spatial
        bw, bb, rm, rv, training, momentum, eps, use_bn = sp.bn_args(x)
        if not torch.jit.is_scripting() and self.uses_fused(x):
            y, mc, ms = self._fused(x, (bw, bb, rm, rv, training, momentum, eps, use_bn))
        else:
            pool_w = sp.pool_conv.weight if sp.pool_conv is not None else None
            y, mc, ms = Fn.cbam_with_gates(
                x, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight, sp.conv.bias,
                bw, bb, rm, rv, training, momentum, eps, use_bn,
                ch.pool_types, sp.pool_order, self.arrangement, ch.act, ch.gate, pool_w)
        if self.record_maps:
            self.last_channel_map = mc.detach()
            self.last_spatial_map = ms.detach()
        return y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, arrangement={self.arrangement}, impl={self.impl}" + (
            "" if self.fusable else " (reference only)")
