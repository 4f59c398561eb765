"""FLOP formula of the fused CBAM op for ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode counts matmuls and convolutions only (2 FLOPs per multiply-add;
reductions, elementwise ops and BatchNorm are free). The fused op is opaque to it,
so without a formula a fused CBAM network would report the baseline's FLOPs. The
formula counts what the reference path's counted ops do: the shared MLP applied to
the two pooled descriptors (two ``(2N, C) x (C, C/r)``-sized matmuls) and the
spatial ``k x k`` conv over the two channel-pooled maps. Only the forward op has a
formula; a backward through the fused op is not counted.
"""
from math import prod
from typing import Any, Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from . import fused  # noqa: F401  (defines torch.ops.cbam.fused_cbam_fwd)

__all__ = ["fused_cbam_flops"]


def fused_cbam_flops(x_shape: Sequence[int], w1_shape: Sequence[int], wc_shape: Sequence[int]) -> int:
    """FLOPs of one CBAM forward on ``x`` ``(N, C, *S)`` with MLP weight ``w1`` ``(C/r, C)`` and
    spatial conv weight ``wc`` ``(1, 2, k, k)``, counted as FlopCounterMode counts the reference."""
    n, c, spatial = x_shape[0], x_shape[1], prod(x_shape[2:])
    hidden = w1_shape[0]
    mlp = 2 * (2 * n * c * hidden) * 2          # two descriptors through two layers, 2 FLOPs a multiply-add
    conv = 2 * n * spatial * prod(wc_shape)      # one output map, C_in * k * k taps per output
    return mlp + conv


@register_flop_formula(torch.ops.cbam.fused_cbam_fwd)
def _fused_cbam_fwd_flop(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    # the op's signature may grow at the end; x, w1 and wc keep their leading positions
    x = args[0] if len(args) > 0 else kwargs["x"]
    w1 = args[1] if len(args) > 1 else kwargs["w1"]
    wc = args[5] if len(args) > 5 else kwargs["wc"]
    return fused_cbam_flops(x, w1, wc)
