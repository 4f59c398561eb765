"""Attention modules and their registry; every module maps (N, C, H, W) -> (N, C, H, W)
(:class:`CBAM1d` / :class:`CBAM3d`: (N, C, L) / (N, C, D, H, W))."""
from .bam import BAM
from .cbam import CBAM, PRESETS, CBAM1d, CBAM3d
from .channel import ChannelAttention, SqueezeExcite
from .coord import CoordAttention
from .eca import EfficientChannelAttention
from .maps import attention_maps, record_attention
from .registry import create_attention, get_attention, list_attention, register_attention
from .simam import SimAM
from .spatial import SpatialAttention

__all__ = [
    "BAM", "CBAM", "CBAM1d", "CBAM3d", "PRESETS", "ChannelAttention", "SqueezeExcite", "CoordAttention",
    "EfficientChannelAttention", "SimAM", "SpatialAttention", "create_attention", "get_attention", "list_attention",
    "register_attention", "attention_maps", "record_attention",
]
