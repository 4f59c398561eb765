"""Publishing a finished run as shipped pretrained weights (``cbam publish``): the run evaluated on its
full test split, its weights in safetensors and a model card with the command that reproduces it.
Loading them back is :mod:`cbam.models.pretrained`'s part."""
import json
import os
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .._io import atomic_write, write_json
from ..data import Dataset, dataset_spec, load_dataset
from ..data.builtin import FASHION_CLASSES, SUBSET_FILE
from ..models import pretrained as P
from ..models.convert import load_checkpoint
from ..models.registry import parse_model_name
from .checkpoint import latest_checkpoint
from .config import RUNTIME_FIELDS, TrainConfig
from .loop import build_model, evaluate
from .report import load_run
from .runs import CONFIG_FIELDS


def train_command(cfg_dict: Dict[str, Any]) -> str:
    """The ``cbam train`` command line that sets every field that differs from the defaults and
    decides what is computed (not the run folder, resuming, logging or thread count)."""
    defaults = TrainConfig().to_dict()
    skip = set(RUNTIME_FIELDS) | {"overwrite", "log_interval"}
    parts = ["cbam train"]
    for k, v in cfg_dict.items():
        if k not in defaults or v == defaults[k] or k in skip:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, dict):
            parts.append(f"{flag} '{json.dumps(v)}'")
        elif v is not None:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def _evaluate_run(run: str):
    """What ``cbam eval RUN`` measures: the last checkpoint on the run's full test split."""
    info = load_run(run)
    cfg = TrainConfig.from_dict({k: v for k, v in info["config"].items() if k in CONFIG_FIELDS})
    ck = latest_checkpoint(run)
    if ck is None or ck[0] < cfg.epochs:
        raise ValueError(f"{run} is not finished ({ck[0] if ck else 0} of {cfg.epochs} epochs); publish finished runs")
    data = load_dataset(cfg.data, "test", cfg.data_root)
    model = load_checkpoint(build_model(cfg, data.num_classes, data.in_chans), ck[1])
    return cfg, info, model, data, evaluate(model, data, image_size=cfg.image_size)


def builtin_subset_top1(model: nn.Module, image_size: Optional[int] = None) -> float:
    """Top-1 (%) on the 1,000 Fashion-MNIST test images shipped in the package: a check of shipped
    weights against their card that needs neither the full data set nor a network."""
    with np.load(SUBSET_FILE) as z:
        images, labels = z["test_images"][:, None], z["test_labels"].astype(np.int64)
    spec = dataset_spec("fashion-mnist")
    data = Dataset(torch.from_numpy(images.copy()), torch.from_numpy(labels), FASHION_CLASSES, "fashion-mnist",
                   "built-in subset", spec.mean, spec.std)
    return 100 * evaluate(model, data, image_size=image_size)["test_acc"]


def publish(run: str, tag: str, name: Optional[str] = None, dest: Optional[str] = None,
            min_acc: Optional[float] = None, licence: Optional[str] = None) -> Tuple[str, str]:
    """Turn a finished run folder into ``<dest>/<name>-<tag>.safetensors`` + ``.json``; returns both paths."""
    from safetensors.torch import save_file  # the `train` extra
    cfg, info, model, data, ev = _evaluate_run(run)
    top1 = 100 * ev["test_acc"]
    if min_acc is not None and top1 < min_acc:
        raise ValueError(f"{run}: test top-1 {top1:.2f} % is below --min-acc {min_acc}; not published")
    if licence is None:
        if "fashion-mnist" not in cfg.data:
            raise ValueError(f"state the licence of weights trained on '{cfg.data}' (--licence)")
        licence = P.FASHION_LICENCE
    name = P.canonical_name(name or cfg.model, None if name else cfg.attention)
    base = os.path.join(dest or P.SEARCH_PATH[0], f"{name}-{tag}")
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(base + ".safetensors", lambda p: save_file(sd, p, metadata={"model": name, "tag": tag}))
    att_kwargs = {k: v for k, v in cfg.attention_kwargs.items() if k != "impl"}  # a kernel choice, not the model
    card = {
        "model": name, "tag": tag, "sha256": P.sha256_of(base + ".safetensors"),
        "model_kwargs": {"num_classes": data.num_classes, "in_chans": data.in_chans, "attention":
                         parse_model_name(cfg.model)[1] if cfg.attention is None else cfg.attention,
                         "attention_kwargs": att_kwargs or None},
        "params": sum(p.numel() for p in model.parameters()),
        "test_top1": round(top1, 2), "test_top5": round(100 * ev["test_top5"], 2),
        "eval": {"command": f"cbam eval {name} --pretrained {tag}", "split": "test", "images": len(data),
                 "loss": ev["test_loss"]},
        "train_command": train_command(cfg.to_dict()), "config": cfg.to_dict(), "seed": cfg.seed,
        "epochs": len(info["history"]), "train_s": round(sum(h["epoch_time_s"] for h in info["history"])),
        "data": {"name": cfg.data, "source": data.source, "classes": data.classes, "mean": list(data.mean),
                 "std": list(data.std), "image_size": cfg.image_size or data.image_size},
        "licence": licence, "torch": torch.__version__, "published": time.strftime("%Y-%m-%d"),
    }
    if cfg.data in ("fashion-mnist", "fmnist"):
        card["builtin_subset_top1"] = round(builtin_subset_top1(model, cfg.image_size), 2)
    write_json(base + ".json", card)
    return base + ".safetensors", base + ".json"
