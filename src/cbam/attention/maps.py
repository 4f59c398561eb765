"""Reading the attention maps of the last forward without changing what forward returns."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator

from torch import Tensor, nn

# module attribute -> key in the returned dicts
_KEYS = {"last_channel_map": "channel", "last_spatial_map": "spatial", "last_map": "map", "last_h_map": "h",
         "last_w_map": "w"}
_MAP_ATTRS = tuple(_KEYS)


def _recorders(model: nn.Module) -> Iterator[tuple]:
    for name, m in model.named_modules():
        if hasattr(m, "record_maps") and any(hasattr(m, a) for a in _MAP_ATTRS):
            yield name, m


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[Dict[str, Dict[str, Tensor]]]:
    """Context manager: while active, attention modules keep their last gates.

    ``with record_attention(net) as maps: net(x)`` leaves ``maps`` as
    ``{module_name: {"channel": (N, C, 1, 1), "spatial": (N, 1, H, W)}}`` (the
    keys a module has: ``channel``/``spatial`` for CBAM, ``h``/``w`` for coordinate
    attention, ``map`` for the single gate of the others). Recording is switched off and
    buffers cleared afterwards.
    """
    mods = list(_recorders(model))
    for _, m in mods:
        m.record_maps = True
    out: Dict[str, Dict[str, Tensor]] = {}
    try:
        yield out
        out.update(attention_maps(model))
    finally:
        for _, m in mods:
            m.record_maps = False
            for a in _MAP_ATTRS:
                if hasattr(m, a):
                    setattr(m, a, None)


def attention_maps(model: nn.Module) -> Dict[str, Dict[str, Tensor]]:
    """The maps recorded by modules with ``record_maps = True``, by module name."""
    res: Dict[str, Dict[str, Tensor]] = {}
    for name, m in _recorders(model):
        got = {}
        for attr, key in _KEYS.items():
            v = getattr(m, attr, None)
            if v is not None:
                got[key] = v
        if got:
            res[name] = got
    return res
