"""Run folders and per-epoch checkpoints.

Weights go to safetensors, optimiser/schedule/history to a weights-only torch file,
and a manifest (``last.json``) is written last. A run killed at any moment (even
``kill -9``) leaves the manifest pointing at a complete, older checkpoint; what the
kill left half-written is removed when the folder is next used. A checkpoint is
written only when every parameter and buffer is finite, so the one the manifest
names is always usable.
"""
import glob
import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .._io import atomic_write, remove_temporaries, write_json

MANIFEST = "last.json"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.(safetensors|state\.pt)$")
# what `train` writes into a run folder: all of it, and only it, is removed by --overwrite
RUN_FILES = ("checkpoints", MANIFEST, "config.json", "metrics.csv", "curves.png", "tb", "eval")


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""


def nonfinite_tensors(model: nn.Module) -> List[str]:
    """Names of the floating-point parameters and buffers holding a NaN or an infinity."""
    named = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in named]).tolist()  # one device sync
    return [n for (n, _), ok in zip(named, finite) if not ok]


def _contiguous(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _epoch_files(ckdir: str) -> Dict[int, List[str]]:
    out: Dict[int, List[str]] = {}
    for p in glob.glob(os.path.join(ckdir, "epoch_*")):
        m = _EPOCH_FILE.search(os.path.basename(p))
        if m:
            out.setdefault(int(m.group(1)), []).append(p)
    return out


def prune_checkpoints(out: str, keep: int) -> None:
    """Keep the epoch ``last.json`` names and the ``keep - 1`` epochs before it; remove the rest,
    including files of later epochs that a killed run wrote but never put in the manifest."""
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
    ck = latest_checkpoint(out)
    current = ck[0] if ck else 0
    epochs = _epoch_files(os.path.join(out, "checkpoints"))
    kept = sorted(e for e in epochs if e <= current)[-keep:] if ck else []
    for e, paths in epochs.items():
        if e not in kept:
            for p in paths:
                os.remove(p)


def save_checkpoint(out: str, epoch: int, model: nn.Module, state: Dict[str, Any], keep: int = 2) -> str:
    from safetensors.torch import save_file
    bad = nonfinite_tensors(model)
    if bad:
        raise TrainingDiverged(f"not saving epoch {epoch}: {len(bad)} tensors are not finite (first: {bad[0]})")
    ckdir = os.path.join(out, "checkpoints")
    os.makedirs(ckdir, exist_ok=True)
    wpath = os.path.join(ckdir, f"epoch_{epoch:04d}.safetensors")
    spath = os.path.join(ckdir, f"epoch_{epoch:04d}.state.pt")
    atomic_write(wpath, lambda p: save_file(_contiguous(model.state_dict()), p))
    atomic_write(spath, lambda p: torch.save(state, p))
    write_json(os.path.join(out, MANIFEST), {"epoch": epoch, "weights": os.path.basename(wpath),
                                              "state": os.path.basename(spath)})
    prune_checkpoints(out, keep)  # only after the manifest points at the new epoch
    return wpath


def latest_checkpoint(out: str) -> Optional[Tuple[int, str, str]]:
    """``(epoch, weights path, state path)`` of the last complete checkpoint, or None."""
    m = os.path.join(out, MANIFEST)
    if not os.path.exists(m):
        return None
    try:
        with open(m, encoding="utf-8") as f:
            info = json.load(f)
        epoch, weights, state = int(info["epoch"]), info["weights"], info["state"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{m}: not a checkpoint manifest ({e}); it was edited or not written by cbam") from None
    ckdir = os.path.join(out, "checkpoints")
    return epoch, os.path.join(ckdir, weights), os.path.join(ckdir, state)


def load_state(path: str) -> Dict[str, Any]:
    """The optimiser/scaler/history file of a checkpoint; never runs pickled code."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own message proposes the unsafe weights_only=False: do not pass it on
        raise ValueError(f"{path}: refusing to load: not a checkpoint state written by cbam, or corrupt "
                         f"({type(e).__name__}); pickled code is never executed") from None
    if not isinstance(state, dict) or not {"optimizer", "history"} <= set(state):
        raise ValueError(f"{path}: not a checkpoint state written by cbam (no optimizer and history)")
    return state


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load a run's safetensors weights; a truncated or corrupt file is named in the error."""
    from ..models import load_checkpoint
    try:
        return load_checkpoint(model, path)
    except (ValueError, FileNotFoundError):
        raise  # already one sentence naming the file or the first mismatching key
    except Exception as e:  # safetensors' own error type says "incomplete metadata" without the path
        raise ValueError(f"{path}: cannot read the weights ({type(e).__name__}: {e}); the file is truncated "
                         "or corrupt") from None


def describe_run(out: str) -> Optional[str]:
    """A few words on the run a folder holds, or None when it holds none."""
    ck = latest_checkpoint(out) if os.path.exists(os.path.join(out, MANIFEST)) else None
    if ck:
        return f"a run with {ck[0]} finished epoch(s)"
    if _epoch_files(os.path.join(out, "checkpoints")) or any(
            os.path.exists(os.path.join(out, f)) for f in ("config.json", "metrics.csv")):
        return "the files of an earlier run"  # an empty checkpoints/ alone is a run that failed before epoch 1
    return None


def check_run_folder(out: str, resume: bool, overwrite: bool) -> None:
    """Refuse an ``out`` that cannot hold a run, or that holds another run unless told what to do
    with it. Read-only, so every rank can call it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file, not a folder")
    parent = out if os.path.isdir(out) else os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: no permission to write in {parent}")
    held = describe_run(out)
    if held and not (resume or overwrite):
        raise ValueError(f"{out} already holds {held}; pass --resume to continue it, --overwrite to replace it, "
                         "or choose another --out")


def prepare_run_folder(out: str, overwrite: bool) -> None:
    """Create ``out``; with ``overwrite`` remove the earlier run's files (only those ``train`` writes);
    remove temporaries and unlisted checkpoint files a killed run left behind."""
    if overwrite:
        for f in RUN_FILES:
            p = os.path.join(out, f)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    remove_temporaries(out)
    remove_temporaries(os.path.join(out, "checkpoints"))
    prune_checkpoints(out, keep=1 << 30)  # orphans only: every listed epoch up to the manifest's stays
