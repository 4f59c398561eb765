"""Spatial attention: CBAM's spatial gate."""

from typing import Optional, Tuple

from torch import Tensor, nn

from .. import functional as Fn
from ._base import LayerSpec, check_channels, check_input, check_kernel_size, resolve_activation


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018, eq. 3).

    ``y = x * gate(BN?(conv_kxk([mean_c(x); max_c(x)])))``.

    Args:
        kernel_size: any odd k >= 1 (paper: 7); padding ``k // 2`` keeps H x W.
        channels: C of the input; optional, used to validate inputs, and required
            with ``pool="conv"``.
        pool: ``"avgmax"`` (paper) or ``"conv"`` (a learned 1x1 conv C -> 1, the
            paper's ablation).
        pool_order: ``"avg_max"`` (paper) or ``"max_avg"`` (the authors' code).
        norm: BatchNorm after the conv, as in the authors' code and timm.
        bn_zero_init: start the BN weight at 0, so the gate starts at sigmoid(0) = 0.5
            everywhere (the authors' ResNet init).
        bias: bias in the conv (the paper's equation has none).

    Shape: ``(N, C, H, W) -> (N, C, H, W)``; ``last_map`` is ``(N, 1, H, W)``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(
        self,
        kernel_size: int = 7,
        *,
        channels: Optional[int] = None,
        pool: str = "avgmax",
        pool_order: str = "avg_max",
        norm: bool = False,
        bn_zero_init: bool = False,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        bias: bool = False,
        gate_layer: LayerSpec = "sigmoid",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.kernel_size = check_kernel_size(kernel_size, "SpatialAttention")
        self.channels = 0 if channels is None else check_channels(channels, "SpatialAttention")
        if pool not in ("avgmax", "conv"):
            raise ValueError(f"SpatialAttention: pool must be 'avgmax' or 'conv', got '{pool}'")
        if pool_order not in ("avg_max", "max_avg"):
            raise ValueError(f"SpatialAttention: pool_order must be 'avg_max' or 'max_avg', got '{pool_order}'")
        if pool == "conv" and channels is None:
            raise ValueError("SpatialAttention(pool='conv') needs channels= for its 1x1 pooling conv")
        self.pool = pool
        self.pool_order = pool_order
        self.gate = resolve_activation(gate_layer, "gate_layer")
        fk = {"device": device, "dtype": dtype}
        self.pool_conv = nn.Conv2d(self.channels, 1, 1, bias=False, **fk) if pool == "conv" else None
        in_maps = 1 if pool == "conv" else 2
        self.conv = nn.Conv2d(in_maps, 1, kernel_size, padding=kernel_size // 2, bias=bias, **fk)
        self.bn = nn.BatchNorm2d(1, eps=bn_eps, momentum=bn_momentum, **fk) if norm else None
        if self.bn is not None and bn_zero_init:
            nn.init.zeros_(self.bn.weight)
        self.record_maps = False
        self.last_map = None

    def bn_args(self, x: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor],
                                          bool, float, float, bool]:
        """BatchNorm arguments for :func:`cbam.functional.spatial_gate`; in training also
        does the BN bookkeeping that ``nn.BatchNorm2d.forward`` would do."""
        if self.bn is not None:
            bn = self.bn
            if bn.training:
                if x.shape[0] * x.shape[2] * x.shape[3] == 1:
                    raise ValueError("spatial attention with BatchNorm needs more than one value per batch in "
                                     "training (got N=1 and a 1x1 map); use eval() or a larger batch")
                if bn.num_batches_tracked is not None:
                    bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 0.1
            return bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.training, momentum, bn.eps, True
        return None, None, None, None, False, 0.1, 1e-5, False

    def compute_gate(self, x: Tensor) -> Tensor:
        """The weights M_s, ``(N, C, H, W) -> (N, 1, H, W)``."""
        pool_w = self.pool_conv.weight if self.pool_conv is not None else None
        bw, bb, rm, rv, training, momentum, eps, use_bn = self.bn_args(x)
        return Fn.spatial_gate(x, self.conv.weight, self.conv.bias, bw, bb, rm, rv, training, momentum, eps,
                               use_bn, self.pool_order, self.gate, pool_w)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "SpatialAttention")
        w = self.compute_gate(x)
        if self.record_maps:
            self.last_map = w.detach()
        return x * w

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, pool={self.pool}, pool_order={self.pool_order}, "
                f"norm={self.bn is not None}, gate={self.gate}")
