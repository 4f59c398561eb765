"""Fast paths for the math of :mod:`cbam.functional` (filled in by ops/fused.py)."""
from __future__ import annotations

from torch import Tensor


def fused_available(x: Tensor, require: bool = False) -> bool:
    if require:
        raise RuntimeError("the fused CBAM kernels are not built into this version")
    return False
