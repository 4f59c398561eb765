"""Per-epoch checkpoints: weights in safetensors, optimiser/schedule/history in a weights-only
torch file, and a manifest written last. A run killed at any moment (even ``kill -9``) leaves
the manifest pointing at a complete, older checkpoint."""
import glob
import json
import os
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .._io import atomic_write, write_json

MANIFEST = "last.json"


def _contiguous(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(out: str, epoch: int, model: nn.Module, state: Dict[str, Any], keep: int = 2) -> str:
    from safetensors.torch import save_file
    ckdir = os.path.join(out, "checkpoints")
    os.makedirs(ckdir, exist_ok=True)
    wpath = os.path.join(ckdir, f"epoch_{epoch:04d}.safetensors")
    spath = os.path.join(ckdir, f"epoch_{epoch:04d}.state.pt")
    atomic_write(wpath, lambda p: save_file(_contiguous(model.state_dict()), p))
    atomic_write(spath, lambda p: torch.save(state, p))
    write_json(os.path.join(out, MANIFEST), {"epoch": epoch, "weights": os.path.basename(wpath),
                                              "state": os.path.basename(spath)})
    # prune old epochs only after the manifest points at the new one
    for old in sorted(glob.glob(os.path.join(ckdir, "epoch_*.safetensors")))[:-keep]:
        for p in (old, old.replace(".safetensors", ".state.pt")):
            if os.path.exists(p):
                os.remove(p)
    return wpath


def latest_checkpoint(out: str) -> Optional[Tuple[int, str, str]]:
    """``(epoch, weights path, state path)`` of the last complete checkpoint, or None."""
    m = os.path.join(out, MANIFEST)
    if not os.path.exists(m):
        return None
    with open(m, encoding="utf-8") as f:
        info = json.load(f)
    ckdir = os.path.join(out, "checkpoints")
    return int(info["epoch"]), os.path.join(ckdir, info["weights"]), os.path.join(ckdir, info["state"])


def load_state(path: str) -> Dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
