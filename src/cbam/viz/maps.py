"""Attention maps per stage of a ResNet (the gates of each stage's last block)."""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import record_attention


@torch.no_grad()
def stage_attention(model: nn.Module, x: Tensor) -> Dict[str, Dict[str, Tensor]]:
    """``{"layer1": {"spatial": (N, H, W) upsampled to the input, "channel": (N, C)}, ...}`` from the
    last block of each stage that records maps; empty for networks without attention."""
    model.eval()
    with record_attention(model) as maps:
        model(x)
    out: Dict[str, Dict[str, Tensor]] = {}
    for name in sorted(maps):  # "layer2.1.attn" sorts after "layer2.0.attn": last block wins
        stage = name.split(".")[0]
        m = maps[name]
        entry: Dict[str, Tensor] = {}
        if "spatial" in m:
            entry["spatial"] = F.interpolate(m["spatial"].float(), size=x.shape[-2:], mode="bilinear",
                                             align_corners=False)[:, 0]
        if "channel" in m:
            entry["channel"] = m["channel"].float().flatten(1)
        if entry:
            out[stage] = entry
    return out
