"""Channel attention: CBAM's channel gate (and SE as its avg-only special case)."""

from typing import List, Optional, Sequence

from torch import Tensor, nn

from .. import functional as Fn
from ._base import LayerSpec, check_channels, check_dims, check_input, either, hidden_width, resolve_activation


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al., ECCV 2018, eq. 2).

    ``y = x * gate(sum_p MLP(pool_p(x)))``: global descriptors (``pool_types`` from
    ``avg``, ``max``, ``lp``, ``lse``) share one MLP ``C -> C/r -> C``.

    Args:
        channels: C of the input.
        reduction: r (default 16); the hidden width is ``max(min_channels, C // r)``.
        pool_types: non-empty subset of ``("avg", "max", "lp", "lse")``; paper: avg and max.
        hidden_channels: explicit hidden width (overrides ``reduction``).
        mlp_bias: biases in the MLP (the paper's equation has none; the authors' code has them).
            ``bias`` is accepted as the same argument (as :class:`SqueezeExcite` and timm's SE call it).
        act_layer, gate_layer: name, ``nn.Module`` class, ``functools.partial`` or callable
            (default ReLU / sigmoid); see :func:`cbam.attention._base.resolve_activation`.
        rd_ratio, rd_channels, rd_divisor: timm's names for ``1 / reduction``, ``hidden_channels``
            and the rounding divisor of the hidden width.
        dims: spatial dimensions of the input: 1 ``(N, C, L)``, 2 ``(N, C, H, W)``, 3 ``(N, C, D, H, W)``.

    Shape: ``(N, C, *S) -> (N, C, *S)``. With ``record_maps = True`` the last
    gate ``(N, C, 1, ...)`` is kept (detached) in ``last_map``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(
        self,
        channels: int,
        reduction: Optional[float] = None,
        pool_types: Sequence[str] = ("avg", "max"),
        *,
        hidden_channels: Optional[int] = None,
        min_channels: int = 1,
        mlp_bias: Optional[bool] = None,
        bias: Optional[bool] = None,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        rd_ratio: Optional[float] = None,
        rd_channels: Optional[int] = None,
        rd_divisor: Optional[int] = None,
        dims: int = 2,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels, "ChannelAttention")
        self.dims = check_dims(dims, "ChannelAttention")
        if isinstance(pool_types, str):
            pool_types = (pool_types,)
        if len(pool_types) == 0:
            raise ValueError("ChannelAttention: pool_types must be non-empty, e.g. ('avg', 'max')")
        for p in pool_types:
            if p not in Fn.POOL_TYPES:
                raise ValueError(f"ChannelAttention: unknown pool type '{p}'; valid: {', '.join(Fn.POOL_TYPES)}")
        self.pool_types: List[str] = list(pool_types)
        self.hidden_channels = hidden_width(channels, reduction, min_channels, hidden_channels, rd_ratio=rd_ratio,
                                            rd_channels=rd_channels, rd_divisor=rd_divisor)
        self.act = resolve_activation(act_layer, "act_layer")
        self.gate = resolve_activation(gate_layer, "gate_layer")
        use_bias = bool(either("mlp_bias", mlp_bias, "bias", bias, False))
        fk = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(channels, self.hidden_channels, bias=use_bias, **fk)
        self.fc2 = nn.Linear(self.hidden_channels, channels, bias=use_bias, **fk)
        self.record_maps = False
        self.last_map = None

    def reset_parameters(self) -> None:
        """PyTorch's default init of the two linear layers."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def compute_gate(self, x: Tensor) -> Tensor:
        """The weights M_c, ``(N, C, *S) -> (N, C, 1, ...)``."""
        return Fn.channel_gate(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                               self.pool_types, self.act, self.gate)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "ChannelAttention", self.dims)
        w = self.compute_gate(x)
        if self.record_maps:
            self.last_map = w.detach()
        return x * w

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden={self.hidden_channels}, pool_types={tuple(self.pool_types)}, "
                f"act={self.act}, gate={self.gate}, bias={self.fc1.bias is not None}"
                + (f", dims={self.dims}" if self.dims != 2 else ""))


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018): ``x * sigmoid(W2 relu(W1 avgpool(x)))``.

    Paper defaults: reduction 16, FC layers with bias (``bias``, also accepted as
    ``mlp_bias``). ``act_layer``, ``gate_layer``, ``rd_ratio``, ``rd_channels`` and
    ``rd_divisor`` as in :class:`ChannelAttention`. ``(N, C, H, W) -> (N, C, H, W)``;
    ``last_map`` is ``(N, C, 1, 1)``.
    """

    record_maps: bool
    last_map: Optional[Tensor]

    def __init__(self, channels: int, reduction: Optional[float] = None, *, hidden_channels: Optional[int] = None,
                 min_channels: int = 1, bias: Optional[bool] = None, mlp_bias: Optional[bool] = None,
                 act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid", rd_ratio: Optional[float] = None,
                 rd_channels: Optional[int] = None, rd_divisor: Optional[int] = None, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.channels = check_channels(channels, "SqueezeExcite")
        self.hidden_channels = hidden_width(channels, reduction, min_channels, hidden_channels, rd_ratio=rd_ratio,
                                            rd_channels=rd_channels, rd_divisor=rd_divisor)
        self.act = resolve_activation(act_layer, "act_layer")
        self.gate = resolve_activation(gate_layer, "gate_layer")
        use_bias = bool(either("bias", bias, "mlp_bias", mlp_bias, True))
        fk = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(channels, self.hidden_channels, bias=use_bias, **fk)
        self.fc2 = nn.Linear(self.hidden_channels, channels, bias=use_bias, **fk)
        self.record_maps = False
        self.last_map = None

    def reset_parameters(self) -> None:
        """PyTorch's default init of the two linear layers."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.channels, "SqueezeExcite")
        w = Fn.channel_gate(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                            ["avg"], self.act, self.gate)
        if self.record_maps:
            self.last_map = w.detach()
        return x * w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden_channels}, act={self.act}, gate={self.gate}"
