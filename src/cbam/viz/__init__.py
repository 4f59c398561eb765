"""Seeing what attention does: spatial/channel maps per stage, Grad-CAM, PNG reports."""
from .gradcam import GradCAM
from .maps import stage_attention

__all__ = ["GradCAM", "stage_attention"]
