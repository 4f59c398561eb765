"""Shipped pretrained weights, loaded offline: ``create_model("resnet20_cbam", pretrained="fashion-mnist")``.

Each checkpoint is package data in ``models/pretrained/``: ``<name>-<tag>.safetensors``
and its model card ``<name>-<tag>.json`` (the command that trained it, its test accuracy
as ``cbam eval`` measures it, seed, data source and normalisation, licence, and the
sha256 of the weights, checked on every load). Nothing is downloaded, so a checkpoint
cannot go missing behind a dead link.

A finished run becomes a shipped checkpoint with one command (:mod:`cbam.train.publish`)::

    cbam publish runs/x --tag fashion-mnist --min-acc 92

which evaluates the run on the full test split, writes both files into the package
folder, and refuses a run that is unfinished or below ``--min-acc``.
"""
import glob
import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

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
