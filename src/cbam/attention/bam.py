"""BAM: bottleneck attention module (same authors as CBAM)."""

from typing import Optional

from torch import Tensor, nn

from .. import functional as Fn
from ._base import LayerSpec, activation_module, check_channels, check_input, hidden_width, resolve_activation


class BAM(nn.Module):
    """BAM (Park, Woo, Lee, Kweon, BMVC 2018): ``y = x * (1 + sigmoid(M_c(x) + M_s(x)))``.

    Channel branch: avgpool -> FC(C, C/r) -> BN -> act -> FC(C/r, C). Spatial branch:
    1x1 conv (C -> C/r) -> BN -> act -> ``num_dilated`` x [3x3 conv, dilation d,
    BN, act] -> 1x1 conv (-> 1). Paper defaults: r = 16, d = 4, two dilated convs,
    ReLU, sigmoid. Note the residual ``1 +``: BAM never suppresses a feature below its input.

    ``act_layer`` / ``gate_layer`` (name, class, ``functools.partial`` or callable) and
    ``hidden_channels`` / ``rd_ratio`` / ``rd_channels`` / ``rd_divisor`` as in :class:`ChannelAttention`.

    Shape: ``(N, C, H, W) -> (N, C, H, W)``; ``last_map`` is the gate ``1 + sigmoid(...)``, ``(N, C, H, W)``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(self, channels: int, reduction: Optional[float] = None, dilation: int = 4, num_dilated: int = 2, *,
                 hidden_channels: Optional[int] = None, min_channels: int = 1, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid", rd_ratio: Optional[float] = None,
                 rd_channels: Optional[int] = None, rd_divisor: Optional[int] = None, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.channels = check_channels(channels, "BAM")
        hid = hidden_width(channels, reduction, min_channels, hidden_channels, rd_ratio=rd_ratio,
                           rd_channels=rd_channels, rd_divisor=rd_divisor)
        self.hidden_channels = hid
        self.gate = resolve_activation(gate_layer, "gate_layer")
        fk = {"device": device, "dtype": dtype}
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, hid, **fk), nn.BatchNorm1d(hid, **fk), activation_module(act_layer),
            nn.Linear(hid, channels, **fk))
        layers = [nn.Conv2d(channels, hid, 1, **fk), nn.BatchNorm2d(hid, **fk), activation_module(act_layer)]
        for _ in range(num_dilated):
            layers += [nn.Conv2d(hid, hid, 3, padding=dilation, dilation=dilation, **fk),
                       nn.BatchNorm2d(hid, **fk), activation_module(act_layer)]
        layers.append(nn.Conv2d(hid, 1, 1, **fk))
        self.spatial = nn.Sequential(*layers)
        self.dilation = dilation
        self.record_maps = False
        self.last_map = None

    def reset_parameters(self) -> None:
        """PyTorch's default init of every layer."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "BAM")
        if self.training and x.shape[0] == 1:
            raise ValueError("BAM's channel branch uses BatchNorm1d and needs a batch of N > 1 in training; "
                             "use eval() or a larger batch")
        c = self.channel_mlp(x.mean((2, 3)))[:, :, None, None]
        w = Fn.bam_gate(c, self.spatial(x), self.gate)
        if self.record_maps:
            self.last_map = w.detach()
        return x * w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden_channels}, dilation={self.dilation}, gate={self.gate}"
