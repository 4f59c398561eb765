"""ECA-Net: efficient channel attention with an adaptive 1-D kernel."""

from typing import Optional

from torch import Tensor, nn

from .. import functional as Fn
from ._base import LayerSpec, check_channels, check_input, check_kernel_size, resolve_activation


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al., CVPR 2020): ``x * sigmoid(conv1d_k(avgpool(x)))`` across channels.

    ``kernel_size=None`` uses the paper's adaptive size ``|log2(C)/gamma + b/gamma|_odd``
    with gamma=2, b=1. No dimensionality reduction: ``act_layer``, ``rd_ratio``,
    ``rd_channels`` and ``rd_divisor`` are accepted (timm-style argument sets fit every
    module) and unused. ``gate_layer``: name, class, ``functools.partial`` or callable.

    Shape: ``(N, C, H, W) -> (N, C, H, W)``; ``last_map`` is ``(N, C, 1, 1)``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(self, channels: int, kernel_size: Optional[int] = None, *, gamma: float = 2.0, beta: float = 1.0,
                 gate_layer: LayerSpec = "sigmoid", act_layer: LayerSpec = None, rd_ratio: Optional[float] = None,
                 rd_channels: Optional[int] = None, rd_divisor: Optional[int] = None, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.channels = check_channels(channels, "EfficientChannelAttention")
        k = Fn.eca_kernel_size(channels, gamma, beta) if kernel_size is None else kernel_size
        self.kernel_size = check_kernel_size(k, "EfficientChannelAttention")
        self.gate = resolve_activation(gate_layer, "gate_layer")
        self.conv = nn.Conv1d(1, 1, self.kernel_size, padding=self.kernel_size // 2, bias=False,
                              device=device, dtype=dtype)
        self.record_maps = False
        self.last_map = None

    def reset_parameters(self) -> None:
        """PyTorch's default init of the 1-D conv."""
        self.conv.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "EfficientChannelAttention")
        w = Fn.efficient_channel_gate(x, self.conv.weight, self.gate)
        if self.record_maps:
            self.last_map = w.detach()
        return x * w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, gate={self.gate}"
