"""BAM: bottleneck attention module (same authors as CBAM)."""

from typing import Optional

from torch import Tensor, nn

from .. import functional as Fn
from ._base import check_channels, check_input, hidden_width


class BAM(nn.Module):
    """BAM (Park, Woo, Lee, Kweon, BMVC 2018): ``y = x * (1 + sigmoid(M_c(x) + M_s(x)))``.

    Channel branch: avgpool -> FC(C, C/r) -> BN -> ReLU -> FC(C/r, C). Spatial branch:
    1x1 conv (C -> C/r) -> BN -> ReLU -> ``num_dilated`` x [3x3 conv, dilation d,
    BN, ReLU] -> 1x1 conv (-> 1). Paper defaults: r = 16, d = 4, two dilated convs.
    Note the residual ``1 +``: BAM never suppresses a feature below its input.
    ``(N, C, H, W) -> (N, C, H, W)``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(self, channels: int, reduction: float = 16, dilation: int = 4, num_dilated: int = 2, *,
                 min_channels: int = 1, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = check_channels(channels, "BAM")
        hid = hidden_width(channels, reduction, min_channels)
        self.hidden_channels = hid
        fk = {"device": device, "dtype": dtype}
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, hid, **fk), nn.BatchNorm1d(hid, **fk), nn.ReLU(inplace=True),
            nn.Linear(hid, channels, **fk))
        layers = [nn.Conv2d(channels, hid, 1, **fk), nn.BatchNorm2d(hid, **fk), nn.ReLU(inplace=True)]
        for _ in range(num_dilated):
            layers += [nn.Conv2d(hid, hid, 3, padding=dilation, dilation=dilation, **fk),
                       nn.BatchNorm2d(hid, **fk), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(hid, 1, 1, **fk))
        self.spatial = nn.Sequential(*layers)
        self.dilation = dilation
        self.record_maps = False
        self.last_map = None

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "BAM")
        if self.training and x.shape[0] == 1:
            raise ValueError("BAM's channel branch uses BatchNorm1d and needs a batch of N > 1 in training; "
                             "use eval() or a larger batch")
        c = self.channel_mlp(x.mean((2, 3)))[:, :, None, None]
        s = self.spatial(x)
        y = Fn.bam(x, c, s)
        if self.record_maps:
            self.last_map = (y / x).detach()
        return y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden_channels}, dilation={self.dilation}"
