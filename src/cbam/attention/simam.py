"""SimAM: a parameter-free, energy-based 3-D attention."""

from typing import Optional

from torch import Tensor, nn

from .. import functional as Fn
from ._base import LayerSpec, check_factory, check_input, resolve_activation


class SimAM(nn.Module):
    """SimAM (Yang et al., ICML 2021): ``x * sigmoid(1/E)`` with the closed-form minimal
    energy of each neuron; ``e_lambda`` = 1e-4 as in the paper. No parameters.

    ``channels`` is only used to validate inputs; ``device`` / ``dtype`` are validated
    (there is nothing to place: the gate follows the input's device and dtype).
    ``gate_layer`` as in :class:`CBAM`; ``act_layer``, ``rd_ratio``, ``rd_channels`` and
    ``rd_divisor`` are accepted (timm-style argument sets fit every module) and unused.

    Shape: ``(N, C, H, W) -> (N, C, H, W)``; ``last_map`` is the gate, ``(N, C, H, W)``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(self, channels: Optional[int] = None, e_lambda: float = 1e-4, *, gate_layer: LayerSpec = "sigmoid",
                 act_layer: LayerSpec = None, rd_ratio: Optional[float] = None, rd_channels: Optional[int] = None,
                 rd_divisor: Optional[int] = None, device=None, dtype=None) -> None:
        super().__init__()
        if not e_lambda > 0:
            raise ValueError(f"SimAM: e_lambda must be > 0, got {e_lambda}")
        check_factory(device, dtype, "SimAM")
        self.channels = 0 if channels is None else int(channels)
        self.e_lambda = float(e_lambda)
        self.gate = resolve_activation(gate_layer, "gate_layer")
        self.record_maps = False
        self.last_map = None

    def reset_parameters(self) -> None:
        """Nothing to initialise (no parameters); present so every attention module has it."""

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "SimAM")
        w = Fn.simam_gate(x, self.e_lambda, self.gate)
        if self.record_maps:
            self.last_map = w.detach()
        return x * w

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda}, gate={self.gate}"
