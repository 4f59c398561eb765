"""Spatial attention: CBAM's spatial gate, for 1-D, 2-D and 3-D inputs."""

from typing import Optional, Tuple

from torch import Tensor, nn

from .. import functional as Fn
from ._base import (LayerSpec, check_channels, check_dims, check_input, check_kernel_size, either, module_attr,
                    resolve_activation)

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018, eq. 3).

    ``y = x * gate(BN?(conv_k([mean_c(x); max_c(x)])))``.

    Args:
        kernel_size: any odd k >= 1 (paper: 7); padding ``k // 2`` keeps the size.
        channels: C of the input; optional, used to validate inputs, and required
            with ``pool="conv"``.
        pool: ``"avgmax"`` (paper) or ``"conv"`` (a learned 1x1 conv C -> 1, the
            paper's ablation). Also accepted as ``spatial_pool`` (CBAM's name).
        pool_order: ``"avg_max"`` (paper) or ``"max_avg"`` (the authors' code).
        norm: BatchNorm after the conv, as in the authors' code and timm (also ``spatial_norm``).
        bn_zero_init: start the BN weight at 0, so the gate starts at sigmoid(0) = 0.5
            everywhere (the authors' ResNet init).
        bn_momentum: as in ``nn.BatchNorm2d``; ``None`` is a cumulative moving average.
        bias: bias in the conv (the paper's equation has none; also ``spatial_bias``).
        gate_layer: name, ``nn.Module`` class, ``functools.partial`` or callable (default sigmoid).
        act_layer, rd_ratio, rd_channels, rd_divisor: accepted so that one set of timm-style
            arguments fits every attention module; unused (this gate has no bottleneck).
        dims: spatial dimensions: 1 ``(N, C, L)``, 2 ``(N, C, H, W)``, 3 ``(N, C, D, H, W)``.

    The BN is called as a module, so a converted one (``SyncBatchNorm``) does its own work.

    Shape: ``(N, C, *S) -> (N, C, *S)``; ``last_map`` is ``(N, 1, *S)``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(
        self,
        kernel_size: int = 7,
        *,
        channels: Optional[int] = None,
        pool: Optional[str] = None,
        pool_order: str = "avg_max",
        norm: Optional[bool] = None,
        bn_zero_init: bool = False,
        bn_momentum: Optional[float] = 0.1,
        bn_eps: float = 1e-5,
        bias: Optional[bool] = None,
        gate_layer: LayerSpec = "sigmoid",
        spatial_pool: Optional[str] = None,
        spatial_norm: Optional[bool] = None,
        spatial_bias: Optional[bool] = None,
        act_layer: LayerSpec = None,
        rd_ratio: Optional[float] = None,
        rd_channels: Optional[int] = None,
        rd_divisor: Optional[int] = None,
        dims: int = 2,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.kernel_size = check_kernel_size(kernel_size, "SpatialAttention")
        self.channels = 0 if channels is None else check_channels(channels, "SpatialAttention")
        self.dims = check_dims(dims, "SpatialAttention")
        pool = either("pool", pool, "spatial_pool", spatial_pool, "avgmax")
        if pool not in ("avgmax", "conv"):
            raise ValueError(f"SpatialAttention: pool must be 'avgmax' or 'conv', got '{pool}'")
        if pool_order not in ("avg_max", "max_avg"):
            raise ValueError(f"SpatialAttention: pool_order must be 'avg_max' or 'max_avg', got '{pool_order}'")
        if pool == "conv" and channels is None:
            raise ValueError("SpatialAttention(pool='conv') needs channels= for its 1x1 pooling conv")
        if bn_momentum is not None and not 0 <= bn_momentum <= 1:
            raise ValueError(f"SpatialAttention: bn_momentum must be in [0, 1] or None, got {bn_momentum}")
        self.pool = pool
        self.pool_order = pool_order
        self.bn_zero_init = bn_zero_init
        self.gate = resolve_activation(gate_layer, "gate_layer")
        fk = {"device": device, "dtype": dtype}
        conv = _CONV[dims]
        self.pool_conv = conv(self.channels, 1, 1, bias=False, **fk) if pool == "conv" else None
        with_bias = bool(either("bias", bias, "spatial_bias", spatial_bias, False))
        self.conv = conv(1 if pool == "conv" else 2, 1, kernel_size, padding=kernel_size // 2, bias=with_bias, **fk)
        with_norm = bool(either("norm", norm, "spatial_norm", spatial_norm, False))
        self.bn = _BN[dims](1, eps=bn_eps, momentum=bn_momentum, **fk) if with_norm else None
        if self.bn is not None and bn_zero_init:
            nn.init.zeros_(self.bn.weight)
        self.record_maps = False
        self.last_map = None

    def reset_parameters(self) -> None:
        """PyTorch's default init; the BN weight at 0 with ``bn_zero_init`` (the authors' init)."""
        for m in (self.pool_conv, self.conv, self.bn):
            if m is not None:
                m.reset_parameters()
        if self.bn is not None and self.bn_zero_init:
            nn.init.zeros_(self.bn.weight)

    def compute_gate(self, x: Tensor) -> Tensor:
        """The weights M_s, ``(N, C, *S) -> (N, 1, *S)``."""
        pool_w = self.pool_conv.weight if self.pool_conv is not None else None
        s = Fn.spatial_logits(x, self.conv.weight, self.conv.bias, self.pool_order, pool_w)
        if self.bn is not None:
            if self.bn.training and s.numel() == 1:
                raise ValueError("spatial attention with BatchNorm needs more than one value per batch in "
                                 "training (got N=1 and a 1x1 map); use eval() or a larger batch")
            s = self.bn(s)
        return Fn.activation(s, self.gate)

    def plain_bn(self) -> bool:
        """Whether the BN (if any) is a plain affine ``nn.BatchNorm2d``, whose math the fused
        kernels reproduce; a subclass such as ``SyncBatchNorm`` must run itself."""
        bn = module_attr(self, "bn")
        return bn is None or (type(bn) is nn.BatchNorm2d and bn.affine)

    def bn_args(self, x: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], Optional[Tensor],
                                          bool, float, float, bool]:
        """BatchNorm arguments ``(weight, bias, running_mean, running_var, training, momentum, eps,
        use_bn)`` for :func:`cbam.functional.spatial_gate` and the fused op, computed as
        ``nn.BatchNorm2d.forward`` does (``momentum=None``: cumulative average), with its bookkeeping."""
        bn = module_attr(self, "bn")
        if bn is None:
            return None, None, None, None, False, 0.1, 1e-5, False
        if bn.training and x.shape[0] * x[0, 0].numel() == 1:
            raise ValueError("spatial attention with BatchNorm needs more than one value per batch in "
                             "training (got N=1 and a 1x1 map); use eval() or a larger batch")
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        batch_stats = bn.training or bn.running_mean is None
        track = not bn.training or bn.track_running_stats
        rm, rv = (bn.running_mean, bn.running_var) if track else (None, None)
        return bn.weight, bn.bias, rm, rv, batch_stats, momentum, bn.eps, True

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "SpatialAttention", self.dims)
        w = self.compute_gate(x)
        if self.record_maps:
            self.last_map = w.detach()
        return x * w

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, pool={self.pool}, pool_order={self.pool_order}, "
                f"norm={self.bn is not None}, gate={self.gate}" + (f", dims={self.dims}" if self.dims != 2 else ""))
