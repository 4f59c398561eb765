"""cbam: the Convolutional Block Attention Module (Woo et al., ECCV 2018) and its family.

Paper-faithful modules (:mod:`cbam.attention`), their math as plain functions
(:mod:`cbam.functional`) and fused fast paths (:mod:`cbam.ops`).
"""
from . import functional
from .attention import (BAM, CBAM, PRESETS, ChannelAttention, CoordAttention, EfficientChannelAttention, SimAM,
                        SpatialAttention, SqueezeExcite, attention_maps, create_attention, get_attention,
                        list_attention, record_attention, register_attention)

__version__ = "0.1.0"

__all__ = [
    "functional", "BAM", "CBAM", "PRESETS", "ChannelAttention", "CoordAttention", "EfficientChannelAttention",
    "SimAM", "SpatialAttention", "SqueezeExcite", "attention_maps", "create_attention", "get_attention",
    "list_attention", "record_attention", "register_attention", "__version__",
]
