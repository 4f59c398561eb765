"""SimAM: a parameter-free, energy-based 3-D attention."""

from typing import Optional

from torch import Tensor, nn

from .. import functional as Fn
from ._base import check_input


class SimAM(nn.Module):
    """SimAM (Yang et al., ICML 2021): ``x * sigmoid(1/E)`` with the closed-form minimal
    energy of each neuron; ``e_lambda`` = 1e-4 as in the paper. No parameters.

    ``channels`` is only used to validate inputs. ``(N, C, H, W) -> (N, C, H, W)``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(self, channels: Optional[int] = None, e_lambda: float = 1e-4, device=None, dtype=None) -> None:
        super().__init__()
        if not e_lambda > 0:
            raise ValueError(f"SimAM: e_lambda must be > 0, got {e_lambda}")
        self.channels = 0 if channels is None else int(channels)
        self.e_lambda = float(e_lambda)
        self.record_maps = False
        self.last_map = None

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "SimAM")
        y = Fn.simam(x, self.e_lambda)
        if self.record_maps:
            self.last_map = (y / x).detach()
        return y

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda}"
