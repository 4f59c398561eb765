"""Put attention into an existing network, and take it out again.

Residual blocks are found by structure, not by import: a module with ``conv1``,
``bn1``, ``conv2``, ``bn2`` (and ``conv3``/``bn3`` for bottlenecks) and a
``downsample`` attribute is a torchvision-, timm- or cbam-style block, and its
residual branch ends at the last of those norms. The attention goes right after
that norm, before the addition, as in the paper.

Identity at insertion (``identity_init=True``): each inserted module is wrapped as
``y = x + gamma * (attn(x) - x)`` with a learnable per-channel ``gamma``
initialised to 0, so a pretrained network computes exactly what it computed
before, yet ``gamma`` receives a gradient at once and the attention's own
weights learn as soon as ``gamma`` moves off zero. This is the remedy for
"accuracy dropped after adding CBAM to a pretrained model": a freshly inserted
CBAM multiplies every feature by two gates near 0.5, i.e. scales the residual
branch by ~1/4 and destroys what the network had learned.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..attention.registry import AttentionSpec, create_attention

Where = Union[None, Iterable[str], Callable[[str, nn.Module], bool]]


class IdentityInitAttention(nn.Module):
    """``y = x + gamma * (attn(x) - x)`` with ``gamma`` of shape ``(C,)`` starting at 0.

    ``(N, C, H, W) -> (N, C, H, W)``; an exact identity until ``gamma`` is trained.
    """

    def __init__(self, attn: nn.Module, channels: int) -> None:
        super().__init__()
        self.attn = attn
        self.gamma = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gamma.view(1, -1, 1, 1).to(x.dtype) * (self.attn(x) - x)


@dataclass
class InsertionReport:
    """Where :func:`insert_attention` put what."""

    entries: List[Tuple[str, str, int, int]] = field(default_factory=list)  # (after, module, channels, params)

    @property
    def added_parameters(self) -> int:
        return sum(e[3] for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __str__(self) -> str:
        lines = [f"{'after':40s} {'module':28s} {'channels':>8s} {'params':>10s}"]
        lines += [f"{a:40s} {m:28s} {c:8d} {p:10,d}" for a, m, c, p in self.entries]
        lines.append(f"{len(self.entries)} modules inserted, {self.added_parameters:,} parameters added")
        return "\n".join(lines)


def _apply_inserted(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    # forward hook: a module-level function so that models stay picklable / deep-copyable
    return module.inserted_attention(output)


def _last_norm_of_block(m: nn.Module) -> Optional[str]:
    names = dict(m.named_children())
    if not all(k in names for k in ("conv1", "bn1", "conv2", "bn2")) or not hasattr(m, "downsample"):
        return None
    return "bn3" if "bn3" in names and "conv3" in names else "bn2"


def _channels_of(m: nn.Module) -> int:
    for attr in ("num_features", "out_channels", "num_channels", "out_features"):
        v = getattr(m, attr, None)
        if isinstance(v, int):
            return v
    raise ValueError(f"cannot infer the channel count after {type(m).__name__}; insert after a norm or conv "
                     "layer, or give channels=... in attention_kwargs")


def _targets(model: nn.Module, where: Where) -> List[Tuple[str, nn.Module, Optional[nn.Module]]]:
    """(name, module to attend after, owning block or None)."""
    mods = dict(model.named_modules())
    if where is None:
        out = []
        for name, m in mods.items():
            norm = _last_norm_of_block(m)
            if norm is not None:
                out.append((f"{name}.{norm}" if name else norm, getattr(m, norm), m))
        if not out:
            raise ValueError("no residual blocks found (modules with conv1/bn1/conv2/bn2 and downsample); "
                             "pass where=[module names] or where=predicate(name, module)")
        return out
    if callable(where):
        return [(n, m, None) for n, m in mods.items() if n and where(n, m)]
    names = list(where)
    missing = [n for n in names if n not in mods]
    if missing:
        raise ValueError(f"where= names not in the model: {missing}; e.g. {list(mods)[1:6]}")
    return [(n, mods[n], None) for n in names]


def _existing_attention(target: nn.Module, block: Optional[nn.Module]) -> Optional[str]:
    """What attention already acts at this place: the block's ``attn`` / timm's ``se`` slot, or an
    earlier insertion after ``target``."""
    if hasattr(target, "inserted_attention"):
        return type(target.inserted_attention).__name__
    for slot in ("attn", "se"):
        m = getattr(block, slot, None) if block is not None else None
        if isinstance(m, nn.Module) and not isinstance(m, nn.Identity):
            return f"{slot} = {type(m).__name__}"
    return None


def _check_free(name: str, target: nn.Module, block: Optional[nn.Module]) -> None:
    existing = _existing_attention(target, block)
    if existing:
        raise ValueError(f"{name}: the network already has attention here ({existing}); pass replace=True to "
                         "swap it, or call remove_attention first")


def _place(target: nn.Module, block: Optional[nn.Module], att: nn.Module) -> None:
    if hasattr(target, "inserted_attention"):
        target.inserted_attention = att  # replacing: the hook is registered already
        return
    for slot in ("attn", "se"):
        if block is not None and isinstance(getattr(block, slot, None), nn.Module):
            setattr(block, slot, att)  # the block's own slot (an empty nn.Identity, or replaced)
            return
    target.inserted_attention = att
    target.register_forward_hook(_apply_inserted)


def insert_attention(model: nn.Module, attention: AttentionSpec = "cbam", where: Where = None,
                     identity_init: bool = True, replace: bool = False,
                     **attention_kwargs: Any) -> Tuple[nn.Module, InsertionReport]:
    """Insert an attention module after the last norm of every residual branch (default) or
    after the modules named in / selected by ``where``. Modifies ``model`` in place.

    A place that already has attention (a block's ``attn``/``se`` module or an earlier
    insertion) is an error, since stacking a second module is rarely meant; ``replace=True``
    swaps the existing one for the new one.

    Returns ``(model, report)``; ``report`` lists each insertion and the parameters added.
    Existing keys of the state dict are unchanged, so a pretrained checkpoint still loads
    (before insertion, or with ``strict=False`` after it).
    """
    report = InsertionReport()
    targets = _targets(model, where)
    if not replace:  # check every place before changing any, so an error leaves the model as it was
        for name, target, block in targets:
            _check_free(name, target, block)
    for name, target, block in targets:
        kwargs = dict(attention_kwargs)
        channels = kwargs.pop("channels", None) or _channels_of(target)
        att = create_attention(attention, channels, **kwargs)
        p = next(iter(target.parameters()), None)
        if p is not None:
            att = att.to(device=p.device, dtype=p.dtype)
        if identity_init:
            att = IdentityInitAttention(att, channels).to(device=p.device if p is not None else None)
        kind = type(att.attn if identity_init else att).__name__
        _place(target, block, att)
        report.entries.append((name, kind, channels, sum(q.numel() for q in att.parameters())))
    return model, report


def remove_attention(model: nn.Module) -> int:
    """Strip attention inserted by :func:`insert_attention` and empty the ``attn`` slots of
    cbam ResNet blocks. Returns how many modules were removed."""
    removed = 0
    for m in list(model.modules()):
        if hasattr(m, "inserted_attention"):
            for key, hook in list(m._forward_hooks.items()):
                if hook is _apply_inserted:
                    del m._forward_hooks[key]
            del m.inserted_attention
            removed += 1
        slot = getattr(m, "attn", None)
        if isinstance(slot, nn.Module) and not isinstance(slot, nn.Identity) and _last_norm_of_block(m):
            m.attn = nn.Identity()
            removed += 1
    return removed
