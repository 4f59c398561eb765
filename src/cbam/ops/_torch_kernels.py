"""The memory passes of fused CBAM written with torch ops: any device, any layout.

The same six functions as the C++ and Triton kernels (see csrc/cbam_cpu.cpp); used
where no compiled kernel applies (channels_last on CUDA, other strides, no compiler). They
materialise temporaries, so they are correct but not memory-lean.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def channel_pool(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    a = acc_dtype(x)
    xf = x.flatten(2)
    mx, idx = xf.max(2)
    return xf.mean(2, dtype=a), mx.to(a), idx.to(torch.int32)


def spatial_pool(x: Tensor, mc: Tensor, need_idx: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """need_idx is accepted for the common signature; the index is always computed here."""
    x1 = (x.to(mc.dtype) * mc[:, :, None, None]).flatten(2)
    mx, idx = x1.max(1)
    return x1.mean(1), mx, idx.to(torch.int32)


def apply(x: Tensor, mc: Tensor, ms: Tensor, identity: Optional[Tensor] = None) -> Tensor:
    """``x * mc * ms``, or ``relu(x * mc * ms + identity)`` (the block tail), rounded once to x's dtype."""
    n, c, h, w = x.shape
    y = x.to(mc.dtype) * mc[:, :, None, None] * ms.view(n, 1, h, w)
    if identity is not None:
        y = torch.relu_(y.add_(identity))
    return y.to(x.dtype)


def bwd_reduce(g: Tensor, x: Tensor, mc: Tensor, ms: Tensor) -> Tuple[Tensor, Tensor]:
    n, c, h, w = x.shape
    gx = g.to(mc.dtype) * x.to(mc.dtype)
    return (gx * ms.view(n, 1, h, w)).sum((2, 3)), (gx * mc[:, :, None, None]).sum(1).flatten(1)


def row_dot(x: Tensor, a: Tensor) -> Tensor:
    n, c, h, w = x.shape
    return (x.to(a.dtype) * a.view(n, 1, h, w)).sum((2, 3))


def input_grad(g: Tensor, mc: Tensor, ms: Tensor, a: Tensor, b: Tensor, idx_s: Tensor, vs: Tensor,
               idx_c: Tensor, vc: Tensor) -> Tensor:
    n, c, h, w = g.shape
    dx = (g.to(mc.dtype) * mc[:, :, None, None] * ms.view(n, 1, h, w) + mc[:, :, None, None] * a.view(n, 1, h, w)
          + b[:, :, None, None])
    flat = dx.view(n, c, h * w) if dx.is_contiguous() else dx.reshape(n, c, h * w)
    flat = flat.scatter_add(2, idx_c.long()[:, :, None], vc[:, :, None])
    route = torch.gather(mc, 1, idx_s.long()) * vs                       # (N, HW)
    flat = flat.scatter_add(1, idx_s.long()[:, None, :], route[:, None, :])
    out = flat.view(n, c, h, w).to(g.dtype)
    return out.contiguous(memory_format=torch.channels_last) if g.is_contiguous(
        memory_format=torch.channels_last) and not g.is_contiguous() else out
