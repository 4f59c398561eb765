"""Checkpoint converters between our layout, the authors' code and timm, and safe loading.

Layouts of the attention part of a residual block (the rest of a ResNet uses the
torchvision names in all three):

=========================  ==========================================  ======================================
ours (``cbam``)            authors' code (``official``)                timm (``timm``)
=========================  ==========================================  ======================================
``attn.channel.fc1.*``     ``cbam.ChannelGate.mlp.1.*`` (Linear)       ``se.channel.fc1.weight`` (1x1 conv)
``attn.channel.fc2.*``     ``cbam.ChannelGate.mlp.3.*`` (Linear)       ``se.channel.fc2.weight`` (1x1 conv)
``attn.spatial.conv.*``    ``cbam.SpatialGate.spatial.conv.*``         ``se.spatial.conv.conv.*``
``attn.spatial.bn.*``      ``cbam.SpatialGate.spatial.bn.*``           ``se.spatial.conv.bn.*``
``attn.fc1/fc2.*`` (SE)    --                                          ``se.fc1/fc2.*`` (1x1 conv)
=========================  ==========================================  ======================================

The authors concatenate the spatial descriptors as [max, mean], timm as
[mean, max]; ``pool_order`` says which order our model uses, and the two input
channels of the spatial conv are swapped whenever the orders differ. The
authors' DataParallel ``module.`` prefix is stripped on the way in.
"""
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

StateDict = Dict[str, Tensor]
SOURCES = ("cbam", "official", "timm")
_ORDER = {"official": "max_avg", "timm": "avg_max"}

# (our suffix, foreign suffix) per foreign layout; weights of 1x1 convs are (out, in, 1, 1)
_OFFICIAL = [("attn.channel.fc1.", "cbam.ChannelGate.mlp.1."), ("attn.channel.fc2.", "cbam.ChannelGate.mlp.3."),
             ("attn.spatial.conv.", "cbam.SpatialGate.spatial.conv."),
             ("attn.spatial.bn.", "cbam.SpatialGate.spatial.bn.")]
_TIMM = [("attn.channel.fc1.", "se.channel.fc1."), ("attn.channel.fc2.", "se.channel.fc2."),
         ("attn.spatial.conv.", "se.spatial.conv.conv."), ("attn.spatial.bn.", "se.spatial.conv.bn."),
         ("attn.fc1.", "se.fc1."), ("attn.fc2.", "se.fc2."), ("attn.conv.", "se.conv.")]
_TABLES = {"official": _OFFICIAL, "timm": _TIMM}
_CONV_MLP = re.compile(r"(channel\.)?fc[12]\.weight$")


def _rename(key: str, table: List[Tuple[str, str]], to_foreign: bool) -> str:
    for ours, theirs in table:
        a, b = (ours, theirs) if to_foreign else (theirs, ours)
        i = key.find(a)
        if i >= 0 and (i == 0 or key[i - 1] == "."):
            return key[:i] + b + key[i + len(a):]
    return key


def _swap_spatial(sd: StateDict) -> None:
    for k, v in sd.items():
        if (k.endswith("spatial.conv.weight") or k.endswith("spatial.conv.conv.weight")) and v.dim() == 4 \
                and v.shape[1] == 2:
            sd[k] = v.flip(1).contiguous()


def convert_state_dict(state_dict: Mapping[str, Tensor], source: str = "official", target: str = "cbam",
                       pool_order: Optional[str] = None) -> StateDict:
    """Convert ``state_dict`` from layout ``source`` to layout ``target`` (one of
    ``cbam``, ``official``, ``timm``; one side must be ``cbam``).

    ``pool_order`` is the spatial descriptor order of *our* model (``avg_max`` or
    ``max_avg``); by default it equals the foreign layout's order (nothing swapped),
    which matches our ``cbam_official`` / ``cbam_timm`` presets. Give
    ``pool_order="avg_max"`` to load the authors' weights into the paper preset.
    """
    for s in (source, target):
        if s not in SOURCES:
            raise ValueError(f"unknown checkpoint layout '{s}'; valid: {', '.join(SOURCES)}")
    if "cbam" not in (source, target):
        # foreign -> foreign: through our layout, kept in the source's order, swapped once at the end
        mid = convert_state_dict(state_dict, source, "cbam", _ORDER[source])
        return convert_state_dict(mid, "cbam", target, _ORDER[source])
    sd: StateDict = {k: v for k, v in state_dict.items()}
    if source == "official":
        sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    if source == target:
        return sd
    foreign = target if source == "cbam" else source
    order = pool_order or _ORDER[foreign]
    if order not in ("avg_max", "max_avg"):
        raise ValueError(f"pool_order must be 'avg_max' or 'max_avg', got '{order}'")
    table = _TABLES[foreign]
    to_foreign = source == "cbam"
    out: StateDict = {}
    for k, v in sd.items():
        nk = _rename(k, table, to_foreign)
        if foreign == "timm" and nk != k and _CONV_MLP.search(nk if to_foreign else k):
            v = v[:, :, None, None] if to_foreign else v.reshape(v.shape[0], v.shape[1])
        out[nk] = v
    if order != _ORDER[foreign]:
        _swap_spatial(out)
    return out


def first_mismatch(expected: Mapping[str, Tensor], got: Mapping[str, Tensor]) -> Optional[str]:
    """A sentence naming the first key that is missing, unexpected or of the wrong shape."""
    for k, v in expected.items():
        if k not in got:
            return f"missing key '{k}' (expected shape {tuple(v.shape)})"
        if tuple(got[k].shape) != tuple(v.shape):
            return f"key '{k}' has shape {tuple(got[k].shape)}, the model expects {tuple(v.shape)}"
    for k in got:
        if k not in expected:
            return f"unexpected key '{k}' (not in the model)"
    return None


def read_state_dict(path: Union[str, os.PathLike]) -> StateDict:
    """Read weights from ``.safetensors`` or a torch file, never executing pickled code."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses arbitrary objects: report, never fall back to full unpickling
        raise ValueError(f"{path}: refusing to load (not a plain tensor checkpoint; pickled code is never "
                         f"executed): {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # the authors' training script saves {'epoch', 'arch', 'state_dict', ...}
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor)")
    return obj


def load_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Tensor]],
                    source: str = "cbam", pool_order: Optional[str] = None, strict: bool = True) -> nn.Module:
    """Convert ``checkpoint`` (a path or a state dict) from ``source`` and load it into ``model``.

    With ``strict`` (default) any key or shape mismatch raises ``ValueError`` naming
    the first offending key, before anything is copied.
    """
    sd = read_state_dict(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else dict(checkpoint)
    sd = convert_state_dict(sd, source, "cbam", pool_order)
    expected = model.state_dict()
    if strict:
        problem = first_mismatch(expected, sd)
        if problem:
            raise ValueError(f"checkpoint does not fit {type(model).__name__}: {problem}. Is it the same "
                             f"architecture and attention, and is source='{source}' the right layout?")
    else:
        sd = {k: v for k, v in sd.items() if k in expected and tuple(v.shape) == tuple(expected[k].shape)}
    model.load_state_dict(sd, strict=strict)
    return model
