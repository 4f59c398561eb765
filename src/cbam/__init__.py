"""cbam: the Convolutional Block Attention Module (Woo et al., ECCV 2018) and its family.

Paper-faithful modules (:mod:`cbam.attention`), their math as plain functions
(:mod:`cbam.functional`), fused fast paths (:mod:`cbam.ops`) and attention
ResNets (:mod:`cbam.models`). ``import cbam`` makes every public subpackage an
attribute, as ``import torchvision`` gives ``torchvision.models``; ``data``,
``train``, ``viz`` and ``export`` load on first use (they pull in optional
dependencies).
"""
import importlib
from typing import Any, List

from . import attention, functional, models, ops
from .attention import (BAM, CBAM, PRESETS, CBAM1d, CBAM3d, ChannelAttention, CoordAttention,
                        EfficientChannelAttention, SimAM, SpatialAttention, SqueezeExcite, attention_maps,
                        create_attention, get_attention, list_attention, record_attention, register_attention)

__version__ = "0.1.0"

_LAZY = ("data", "train", "viz", "export")

__all__ = [
    "attention", "functional", "models", "ops", *_LAZY,
    "BAM", "CBAM", "CBAM1d", "CBAM3d", "PRESETS", "ChannelAttention", "CoordAttention", "EfficientChannelAttention",
    "SimAM", "SpatialAttention", "SqueezeExcite", "attention_maps", "create_attention", "get_attention",
    "list_attention", "record_attention", "register_attention", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)  # also binds cbam.<name>
    raise AttributeError(f"module 'cbam' has no attribute '{name}'")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
