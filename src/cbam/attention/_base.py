"""Shared helpers for attention modules: input validation, layer resolution, widths."""
from __future__ import annotations

from typing import Optional, Type, Union

import torch
from torch import Tensor, nn

from ..functional import ACTIVATIONS

LayerSpec = Union[str, Type[nn.Module], None]

# torch.nn classes accepted for act_layer / gate_layer, mapped to the names the
# functional API understands (functional code must stay TorchScript-compatible,
# so non-linearities travel by name).
_CLASS_TO_NAME = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.SiLU: "silu",
    nn.GELU: "gelu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hard_sigmoid",
    nn.Hardswish: "hard_swish", nn.Identity: "identity",
}


def resolve_activation(layer: LayerSpec, what: str = "act_layer") -> str:
    """Turn ``"relu"``, ``nn.ReLU`` or ``None`` (identity) into an activation name."""
    if layer is None:
        return "identity"
    if isinstance(layer, str):
        name = layer.lower().replace("-", "_")
        if name == "hardsigmoid":
            name = "hard_sigmoid"
        if name == "hardswish":
            name = "hard_swish"
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown {what} '{layer}'; valid names: {', '.join(ACTIVATIONS)}")
        return name
    if isinstance(layer, type) and layer in _CLASS_TO_NAME:
        return _CLASS_TO_NAME[layer]
    valid = ", ".join(sorted(c.__name__ for c in _CLASS_TO_NAME))
    raise TypeError(f"{what}={layer!r} is not supported; pass a name ({', '.join(ACTIVATIONS)}) "
                    f"or one of the torch.nn classes {valid}")


def hidden_width(channels: int, reduction: float, min_channels: int = 1,
                 hidden_channels: Optional[int] = None) -> int:
    """Width of the bottleneck ``C -> C/r -> C``, floored at ``min_channels`` so that
    ``C < r`` never yields a zero-width layer (the seed snippet's bug)."""
    if hidden_channels is not None:
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        return int(hidden_channels)
    if not reduction >= 1:
        raise ValueError(f"reduction must be >= 1 (the ratio C / hidden), got {reduction}")
    if min_channels < 1:
        raise ValueError(f"min_channels must be >= 1, got {min_channels}")
    return max(int(min_channels), int(channels // reduction))


def check_channels(channels: int, name: str) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{name}: channels must be a positive int, got {channels!r}")
    return channels


def check_kernel_size(kernel_size: int, name: str) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name}: kernel_size must be an odd int >= 1 so that padding k//2 keeps H x W, "
                         f"got {kernel_size!r}")
    return kernel_size


def check_input(x: Tensor, channels: int, name: str) -> None:
    """Clear errors for the inputs every attention module rejects (TorchScript-compatible).

    ``channels <= 0`` skips the channel check (channel-agnostic modules).
    """
    if x.dim() != 4:
        raise ValueError(name + " expects a 4-D input (N, C, H, W), got shape " + str(list(x.shape))
                         + "; add a batch dimension with x.unsqueeze(0) or reshape your features")
    if channels > 0 and x.shape[1] != channels:
        raise ValueError(name + "(channels=" + str(channels) + ") got input with " + str(x.shape[1])
                         + " channels; build the module with channels=" + str(x.shape[1])
                         + " or fix the layer that feeds it")
    if x.numel() == 0:
        raise ValueError(name + " got an empty input of shape " + str(list(x.shape))
                         + "; every dimension must be >= 1")
    if not x.is_floating_point():
        raise TypeError(name + " needs a floating-point input, got " + str(x.dtype)
                        + "; convert with x.float() (integer images: x.float() / 255)")


def factory_kwargs(device: Optional[Union[str, torch.device]], dtype: Optional[torch.dtype]) -> dict:
    return {"device": device, "dtype": dtype}
