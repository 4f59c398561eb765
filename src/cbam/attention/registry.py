"""Name -> constructor registry of the attention family (timm's ``create_attn`` convention).

Every entry is called as ``factory(channels, **kwargs)`` and returns a module
mapping ``(N, C, H, W) -> (N, C, H, W)``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

from torch import nn

from .bam import BAM
from .cbam import CBAM
from .channel import ChannelAttention, SqueezeExcite
from .coord import CoordAttention
from .eca import EfficientChannelAttention
from .simam import SimAM
from .spatial import SpatialAttention

AttentionSpec = Union[str, Callable[..., nn.Module], None, bool]

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def _key(name: str) -> str:
    """Names are case-insensitive and ``-`` equals ``_``: ``"CBAM-Official"`` is ``"cbam_official"``."""
    return name.lower().replace("-", "_")


def register_attention(name: str, factory: Optional[Callable[..., nn.Module]] = None):
    """Register ``factory(channels, **kwargs)`` under ``name`` (normalised as :func:`get_attention`
    looks names up); usable as a decorator."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"attention name must be a non-empty string, got {name!r}")

    def _add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = _key(name)
        if key in _REGISTRY:
            raise ValueError(f"attention '{name}' is already registered")
        _REGISTRY[key] = f
        return f
    return _add(factory) if factory is not None else _add


def list_attention() -> List[str]:
    """Names accepted by :func:`create_attention`."""
    return sorted(_REGISTRY)


def _identity(channels: int, **kwargs: Any) -> nn.Module:
    return nn.Identity()


def get_attention(spec: AttentionSpec) -> Callable[..., nn.Module]:
    """Resolve a name, class or callable to a ``factory(channels, **kwargs)``; ``None`` / ``False``
    give ``nn.Identity``. ``True`` is refused: timm reads it as SE, a CBAM library might mean
    CBAM, so it must be named."""
    if spec is None or spec is False:
        return _identity
    if spec is True:
        raise ValueError("attention=True is ambiguous (timm reads it as 'se'); name the module, e.g. 'cbam' or 'se'")
    if isinstance(spec, str):
        key = _key(spec)
        if key not in _REGISTRY:
            raise ValueError(f"unknown attention '{spec}'; valid names: {', '.join(list_attention())}")
        return _REGISTRY[key]
    if callable(spec):
        return spec
    raise TypeError(f"attention must be a registry name, a class/callable or None, got {type(spec).__name__}")


def create_attention(spec: AttentionSpec, channels: int, **kwargs: Any) -> nn.Module:
    """Build the attention module ``spec`` for ``channels`` input channels.

    ``spec`` is a name from :func:`list_attention` (``"none"``/``None`` give
    ``nn.Identity``), or a class / callable called as ``spec(channels, **kwargs)``.
    """
    return get_attention(spec)(channels, **kwargs)


register_attention("none", _identity)
register_attention("cbam", CBAM)
register_attention("cbam_official", lambda channels, **kw: CBAM.from_preset("official", channels, **kw))
register_attention("cbam_timm", lambda channels, **kw: CBAM.from_preset("timm", channels, **kw))
register_attention("channel", ChannelAttention)
register_attention("spatial", lambda channels, **kw: SpatialAttention(channels=channels, **kw))
register_attention("se", SqueezeExcite)
register_attention("eca", EfficientChannelAttention)
register_attention("bam", BAM)
register_attention("coord", CoordAttention)
register_attention("simam", SimAM)
