"""Shipped pretrained weights, loaded offline: ``create_model("resnet20_cbam", pretrained="fashion-mnist")``.

Each checkpoint is package data in ``models/pretrained/``: ``<name>-<tag>.safetensors``
and its model card ``<name>-<tag>.json`` (the command that trained it, its test accuracy
as ``cbam eval`` measures it, seed, data source and normalisation, licence, and the
sha256 of the weights, checked on every load). Nothing is downloaded, so a checkpoint
cannot go missing behind a dead link.

A finished run becomes a shipped checkpoint with one command::

    cbam publish runs/x --tag fashion-mnist --min-acc 92

which evaluates the run on the full test split, writes both files into the package
folder, and refuses a run that is unfinished or below ``--min-acc``.
"""
import dataclasses
import glob
import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .._io import atomic_write, write_json
from .convert import load_checkpoint
from .registry import parse_model_name

# Folders searched in order; the first holds the package's own checkpoints.
SEARCH_PATH: List[str] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")]
FASHION_LICENCE = ("weights: MIT, like this package; trained on Fashion-MNIST, MIT licence, Copyright (c) 2017 "
                   "Zalando SE (src/cbam/data/assets/FASHION_MNIST_LICENSE.txt)")


def canonical_name(name: str, attention: Optional[str] = None) -> str:
    """``"ResNet20-CBAM"`` -> ``"resnet20_cbam"``; an explicit ``attention`` replaces a suffix."""
    arch, att = parse_model_name(name)
    att = attention if attention is not None else att
    return f"{arch}_{att}" if att and att != "none" else arch


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def available() -> List[Tuple[str, str]]:
    """Every (model name, tag) with weights and a card on the search path."""
    found = []
    for d in SEARCH_PATH:
        for card in sorted(glob.glob(os.path.join(d, "*.json"))):
            if os.path.exists(card[:-5] + ".safetensors"):
                with open(card, encoding="utf-8") as f:
                    c = json.load(f)
                found.append((c["model"], c["tag"]))
    return list(dict.fromkeys(found))


def find(name: str, tag: str) -> Tuple[str, Dict[str, Any]]:
    """(weights path, model card) of ``name`` with ``tag``; a one-line error lists what exists."""
    key = canonical_name(name)
    for d in SEARCH_PATH:
        base = os.path.join(d, f"{key}-{tag}")
        if os.path.exists(base + ".json") and os.path.exists(base + ".safetensors"):
            with open(base + ".json", encoding="utf-8") as f:
                return base + ".safetensors", json.load(f)
    have = available()
    listing = ", ".join(f"{m} (pretrained='{t}')" for m, t in have) if have else "none in this version"
    raise ValueError(f"no pretrained weights '{tag}' for {key}; available: {listing}")


def create_pretrained(name: str, tag: str, **kwargs: Any) -> nn.Module:
    """Build ``name`` as its model card describes (``kwargs`` win) and load the verified weights.

    The card is attached as ``model.pretrained_card``: its ``data`` entry holds the
    class names and the normalisation the network was trained with.
    """
    weights, card = find(name, tag)
    digest = sha256_of(weights)
    if digest != card["sha256"]:
        raise ValueError(f"{weights}: sha256 {digest[:16]}... does not match its model card ({card['sha256'][:16]}...);"
                         " the file is damaged or was modified: reinstall the package")
    from .registry import create_model
    merged = {**card["model_kwargs"], **kwargs}
    if kwargs.get("attention_kwargs") and card["model_kwargs"].get("attention_kwargs"):  # e.g. impl= on top
        merged["attention_kwargs"] = {**card["model_kwargs"]["attention_kwargs"], **kwargs["attention_kwargs"]}
    model = create_model(name, **merged)
    load_checkpoint(model, weights)
    model.pretrained_card = card
    return model


def train_command(cfg_dict: Dict[str, Any]) -> str:
    """The ``cbam train`` command line that sets every field that differs from the defaults and
    decides what is computed (not the run folder, resuming, logging or thread count)."""
    from ..train.config import RUNTIME_FIELDS, TrainConfig
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
    from ..data import load_dataset
    from ..train import TrainConfig, build_model, evaluate
    from ..train.checkpoint import latest_checkpoint
    from ..train.report import load_run
    info = load_run(run)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig.from_dict({k: v for k, v in info["config"].items() if k in names})
    ck = latest_checkpoint(run)
    if ck is None or ck[0] < cfg.epochs:
        raise ValueError(f"{run} is not finished ({ck[0] if ck else 0} of {cfg.epochs} epochs); publish finished runs")
    data = load_dataset(cfg.data, "test", cfg.data_root)
    model = load_checkpoint(build_model(cfg, data.num_classes, data.in_chans), ck[1])
    return cfg, info, model, data, evaluate(model, data, image_size=cfg.image_size)


def builtin_subset_top1(model: nn.Module, image_size: Optional[int] = None) -> float:
    """Top-1 (%) on the 1,000 Fashion-MNIST test images shipped in the package: a check of shipped
    weights against their card that needs neither the full data set nor a network."""
    import numpy as np
    from ..data import Dataset, dataset_spec
    from ..data.builtin import FASHION_CLASSES, SUBSET_FILE
    from ..train import evaluate
    with np.load(SUBSET_FILE) as z:
        images, labels = z["test_images"][:, None], z["test_labels"].astype(np.int64)
    spec = dataset_spec("fashion-mnist")
    data = Dataset(torch.from_numpy(images.copy()), torch.from_numpy(labels), FASHION_CLASSES, "fashion-mnist",
                   "built-in subset", spec.mean, spec.std)
    return 100 * evaluate(model, data, image_size=image_size)["test_acc"]


def publish(run: str, tag: str, name: Optional[str] = None, dest: Optional[str] = None,
            min_acc: Optional[float] = None, licence: Optional[str] = None) -> Tuple[str, str]:
    """Turn a finished run folder into ``<dest>/<name>-<tag>.safetensors`` + ``.json``; returns both paths."""
    from safetensors.torch import save_file
    cfg, info, model, data, ev = _evaluate_run(run)
    top1 = 100 * ev["test_acc"]
    if min_acc is not None and top1 < min_acc:
        raise ValueError(f"{run}: test top-1 {top1:.2f} % is below --min-acc {min_acc}; not published")
    if licence is None:
        if "fashion-mnist" not in cfg.data:
            raise ValueError(f"state the licence of weights trained on '{cfg.data}' (--licence)")
        licence = FASHION_LICENCE
    name = canonical_name(name or cfg.model, None if name else cfg.attention)
    base = os.path.join(dest or SEARCH_PATH[0], f"{name}-{tag}")
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(base + ".safetensors", lambda p: save_file(sd, p, metadata={"model": name, "tag": tag}))
    att_kwargs = {k: v for k, v in cfg.attention_kwargs.items() if k != "impl"}  # a kernel choice, not the model
    card = {
        "model": name, "tag": tag, "sha256": sha256_of(base + ".safetensors"),
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
