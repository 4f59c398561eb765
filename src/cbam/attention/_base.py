"""Shared helpers for attention modules: input validation, activations, widths, argument aliases."""
from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Callable, Optional, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import ACTIVATIONS

#: What ``act_layer`` / ``gate_layer`` accept, as in timm: a name, an ``nn.Module`` class, a
#: ``functools.partial`` of one, a factory called without arguments, a function of a tensor,
#: a module instance, or ``None`` (identity).
LayerSpec = Union[str, Type[nn.Module], Callable[..., Any], nn.Module, None]
#: A resolved activation: a name of :data:`cbam.functional.ACTIVATIONS` (TorchScript and the
#: fused kernels understand these) or a callable applied to the tensor.
Activation = Union[str, Callable[[Tensor], Tensor]]

_CLASS_TO_NAME = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.SiLU: "silu", nn.GELU: "gelu",
    nn.Mish: "mish", nn.ELU: "elu", nn.SELU: "selu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "hard_sigmoid", nn.Hardswish: "hard_swish", nn.Identity: "identity",
}
_FUNC_TO_NAME = (
    (torch.relu, "relu"), (F.relu, "relu"), (F.relu6, "relu6"), (F.leaky_relu, "leaky_relu"), (F.silu, "silu"),
    (F.gelu, "gelu"), (F.mish, "mish"), (F.elu, "elu"), (F.selu, "selu"), (torch.tanh, "tanh"), (F.tanh, "tanh"),
    (torch.sigmoid, "sigmoid"), (F.sigmoid, "sigmoid"), (F.hardsigmoid, "hard_sigmoid"),
    (F.hardswish, "hard_swish"),
)
_NAME_ALIASES = {"hardsigmoid": "hard_sigmoid", "hardswish": "hard_swish", "none": "identity",
                 "linear": "identity", "gelu_approximate": "gelu_tanh"}
_NAME_TO_MODULE: dict = {
    **{n: c for c, n in _CLASS_TO_NAME.items()}, "swish": nn.SiLU,
    "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"),
}


def _known_name(layer: Any) -> Optional[str]:
    """The activation name of a known class or function, also wrapped in a ``partial``
    that only sets ``inplace`` (which changes nothing here)."""
    func, kw = layer, {}
    if isinstance(layer, functools.partial) and not layer.args:
        func, kw = layer.func, {k: v for k, v in layer.keywords.items() if k != "inplace"}
    if kw:
        return None
    if isinstance(func, type):
        return _CLASS_TO_NAME.get(func)
    return next((n for f, n in _FUNC_TO_NAME if func is f), None)


def _takes_tensor(fn: Callable[..., Any]) -> bool:
    """A function of a tensor (one required positional argument) rather than a layer factory."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: treat as elementwise
        return True
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.default is p.empty and p.kind in kinds for p in params)


def resolve_activation(layer: LayerSpec, what: str = "act_layer") -> Activation:
    """Turn an ``act_layer`` / ``gate_layer`` (see :data:`LayerSpec`) into a name where one
    fits (``"relu"``, ``nn.ReLU``, ``partial(nn.ReLU, inplace=True)``, ``torch.sigmoid``) and
    into a callable otherwise (a module built from a class or factory, or the function itself).

    Only names script with TorchScript and run the fused kernels; callables work in eager
    mode, ``torch.compile`` and export.
    """
    if layer is None:
        return "identity"
    if isinstance(layer, str):
        name = layer.lower().replace("-", "_")
        name = _NAME_ALIASES.get(name, name)
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown {what} '{layer}'; valid names: {', '.join(ACTIVATIONS)}")
        return name
    known = _known_name(layer)
    if known is not None:
        return known
    if isinstance(layer, nn.Module):
        return layer
    if not callable(layer) or (isinstance(layer, type) and not issubclass(layer, nn.Module)):
        raise TypeError(f"{what}={layer!r} is not supported; pass a name ({', '.join(ACTIVATIONS)}), an nn.Module "
                        f"class, a functools.partial of one, or a function of a tensor")
    if isinstance(layer, type) or not _takes_tensor(layer):
        try:
            built = layer()
        except TypeError as e:
            raise TypeError(f"{what}={getattr(layer, '__name__', layer)!r} cannot be built without arguments "
                            f"({e}); pass a functools.partial with its arguments") from None
        if not callable(built):
            raise TypeError(f"{what}={layer!r} built {type(built).__name__}, which is not callable")
        return built
    return layer


def activation_module(layer: LayerSpec, what: str = "act_layer") -> nn.Module:
    """A fresh ``nn.Module`` for ``layer`` (for ``nn.Sequential`` bodies such as BAM's)."""
    act = resolve_activation(layer, what)
    if isinstance(act, str):
        return _NAME_TO_MODULE[act]()
    return act if isinstance(act, nn.Module) else _Lambda(act)


class _Lambda(nn.Module):
    """A function of a tensor as a module."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def either(name: str, value: Any, alias: str, alias_value: Any, default: Any = None) -> Any:
    """One argument under two names (ours and timm's, or a sibling module's); ``None`` means
    not given. Both given and different is a ``ValueError``."""
    if value is not None and alias_value is not None and value != alias_value:
        raise ValueError(f"{name}={value!r} and {alias}={alias_value!r} are the same argument; give one of them")
    v = value if value is not None else alias_value
    return default if v is None else v


def make_divisible(v: float, divisor: int = 1) -> int:
    """timm's rounding of ``rd_ratio`` widths: ``v`` to the nearest multiple of ``divisor``, at least ``divisor``."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def hidden_width(channels: int, reduction: Optional[float] = None, min_channels: int = 1,
                 hidden_channels: Optional[int] = None, *, default_reduction: float = 16.0,
                 rd_ratio: Optional[float] = None, rd_channels: Optional[int] = None,
                 rd_divisor: Optional[int] = None) -> int:
    """Width of the bottleneck ``C -> hidden -> C``.

    ``hidden_channels`` (timm: ``rd_channels``) wins. Otherwise ``max(min_channels, C // reduction)``
    (floored, so ``C < r`` never yields a zero-width layer, the seed snippet's bug); with timm's
    ``rd_ratio`` (= 1 / reduction) or ``rd_divisor``, timm's rounding ``make_divisible(C * rd_ratio,
    rd_divisor)`` instead.
    """
    hidden = either("hidden_channels", hidden_channels, "rd_channels", rd_channels)
    if hidden is not None:
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden_channels / rd_channels must be an int >= 1, got {hidden!r}")
        return hidden
    if min_channels < 1:
        raise ValueError(f"min_channels must be >= 1, got {min_channels}")
    if reduction is not None and rd_ratio is not None:
        raise ValueError(f"reduction={reduction} and rd_ratio={rd_ratio} both set the width (rd_ratio = 1 / "
                         f"reduction); give one of them")
    if rd_divisor is not None and (isinstance(rd_divisor, bool) or not isinstance(rd_divisor, int) or rd_divisor < 1):
        raise ValueError(f"rd_divisor must be an int >= 1, got {rd_divisor!r}")
    if rd_ratio is not None and not 0 < rd_ratio <= 1:
        raise ValueError(f"rd_ratio must be in (0, 1] (the ratio hidden / C), got {rd_ratio}")
    r = default_reduction if reduction is None else reduction
    if rd_ratio is None and not r >= 1:
        raise ValueError(f"reduction must be >= 1 (the ratio C / hidden), got {reduction}")
    if rd_ratio is None and rd_divisor is None:
        return max(int(min_channels), int(channels // r))
    ratio = rd_ratio if rd_ratio is not None else 1.0 / r
    return max(int(min_channels), make_divisible(channels * ratio, rd_divisor or 1))


def check_channels(channels: int, name: str) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{name}: channels must be a positive int, got {channels!r}")
    return channels


def check_kernel_size(kernel_size: int, name: str) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name}: kernel_size must be an odd int >= 1 so that padding k//2 keeps the size, "
                         f"got {kernel_size!r}")
    return kernel_size


def check_dims(dims: int, name: str) -> int:
    if dims not in (1, 2, 3):
        raise ValueError(f"{name}: dims must be 1 (N, C, L), 2 (N, C, H, W) or 3 (N, C, D, H, W), got {dims!r}")
    return dims


def check_factory(device: Any, dtype: Optional[torch.dtype], name: str) -> None:
    """Validate ``device`` / ``dtype`` for a module that has no parameters to place."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"{name}: dtype must be a floating-point torch.dtype, got {dtype!r}")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{name}: invalid device {device!r} ({e})") from None


def _layout(dims: int) -> str:
    if dims == 1:
        return "(N, C, L)"
    if dims == 3:
        return "(N, C, D, H, W)"
    return "(N, C, H, W)"


def module_attr(m: nn.Module, name: str) -> Any:
    """``getattr(m, name)`` for a parameter, buffer or submodule, without ``nn.Module.__getattr__``
    (about 2 us a lookup on a slow core; the fused path of a small layer makes a dozen per call):
    the instance's own attributes, then the dicts ``__getattr__`` searches, in its order; anything
    else (a parametrization's property, a missing name) through the normal lookup."""
    d = m.__dict__
    if name in d:
        return d[name]
    for store in ("_parameters", "_buffers", "_modules"):
        s = d.get(store)
        if s is not None and name in s:
            return s[name]
    return getattr(m, name)


def check_input(x: Tensor, channels: int, name: str, dims: int = 2) -> None:
    """Clear errors for the inputs every attention module rejects (TorchScript-compatible).

    ``channels <= 0`` skips the channel check (channel-agnostic modules). Skipped while
    tracing, where the checks would be baked into the graph as constants.
    """
    if torch.jit.is_tracing():
        return
    if x.dim() != dims + 2:
        raise ValueError(name + " expects a " + str(dims + 2) + "-D input " + _layout(dims) + ", got shape "
                         + str(list(x.shape)) + "; add a batch dimension with x.unsqueeze(0) or reshape your features")
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


def exporting() -> bool:
    """Whether a graph is being recorded for deployment (``torch.export`` and the dynamo ONNX
    exporter, the TorchScript ONNX exporter, ``torch.jit.trace``): modules then record the
    reference math, which is made of standard ops, instead of the fused custom op."""
    if torch.compiler.is_compiling():  # what dynamo traces (it cannot trace the C-level checks below)
        return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
    return torch.compiler.is_exporting() or torch._C._is_tracing() or _in_onnx_export()


_ONNX_FLAGS: list = []  # the ONNX exporters' state flags, once torch.onnx has been imported


def _in_onnx_export() -> bool:
    """``torch.onnx.is_in_onnx_export()`` without its two imports per call (about 14 us with the cold
    caches a module meets inside a network); no exporter can run before ``torch.onnx`` is imported."""
    if not _ONNX_FLAGS:
        if "torch.onnx" not in sys.modules:
            return False
        try:
            from torch.onnx._internal.exporter import _flags
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
        except ImportError:  # another torch layout: the public function, from now on
            _ONNX_FLAGS.extend((None, None))
            return torch.onnx.is_in_onnx_export()
        _ONNX_FLAGS.extend((_flags, GLOBALS))
    flags, glob = _ONNX_FLAGS
    if flags is None:
        return torch.onnx.is_in_onnx_export()
    return bool(glob.in_onnx_export or flags._is_onnx_exporting)
