"""The memory passes of fused CBAM as Triton kernels (contiguous NCHW on CUDA).

Same six functions and semantics as csrc/cbam_cpu.cpp and _torch_kernels.py;
accumulation in float32, first-occurrence argmax. With ``TRITON_INTERPRET=1``
they also run on CPU tensors: CI checks them that way against the torch kernels
(tests/ops/test_triton_interp.py).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where triton is absent
    AVAILABLE = False

if AVAILABLE:
    @triton.jit
    def _channel_pool_k(x_ptr, avg_ptr, max_ptr, idx_ptr, HW, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        base = x_ptr + row.to(tl.int64) * HW
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        best_i = tl.zeros([BLOCK], dtype=tl.int32)
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < HW
            v = tl.load(base + offs, mask=m, other=float("-inf")).to(tl.float32)
            acc += tl.where(m, v, 0.0)
            gt = v > best
            best = tl.where(gt, v, best)
            best_i = tl.where(gt, offs, best_i)
        mx = tl.max(best, 0)
        # first occurrence: the smallest index among lanes holding the maximum
        cand = tl.where(best == mx, best_i, 2147483647)
        tl.store(avg_ptr + row, tl.sum(acc, 0) / HW)
        tl.store(max_ptr + row, mx)
        tl.store(idx_ptr + row, tl.min(cand, 0))

    @triton.jit
    def _spatial_pool_k(x_ptr, mc_ptr, avg_ptr, max_ptr, idx_ptr, C, HW, BLOCK: tl.constexpr):
        n = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < HW
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        best_i = tl.zeros([BLOCK], dtype=tl.int32)
        base = x_ptr + n.to(tl.int64) * C * HW
        for c in range(0, C):
            w = tl.load(mc_ptr + n * C + c)
            v = tl.load(base + c * HW + offs, mask=m, other=0.0).to(tl.float32) * w
            acc += v
            gt = v > best
            best = tl.where(gt, v, best)
            best_i = tl.where(gt, c, best_i)
        tl.store(avg_ptr + n * HW + offs, acc / C, mask=m)
        tl.store(max_ptr + n * HW + offs, best, mask=m)
        tl.store(idx_ptr + n * HW + offs, best_i, mask=m)

    @triton.jit
    def _apply_k(x_ptr, mc_ptr, ms_ptr, id_ptr, y_ptr, C, HW, BLOCK: tl.constexpr, TAIL: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < HW
        n = row // C
        w = tl.load(mc_ptr + row)
        s = tl.load(ms_ptr + n * HW + offs, mask=m, other=0.0)
        base = row.to(tl.int64) * HW
        v = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32) * w * s
        if TAIL:  # relu(y + identity); a NaN stays NaN, as torch.relu keeps it
            v += tl.load(id_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
            v = tl.where(v < 0, 0.0, v)
        tl.store(y_ptr + base + offs, v.to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _bwd_reduce_k(g_ptr, x_ptr, mc_ptr, ms_ptr, part_ptr, rs_ptr, C, HW, NB, BLOCK: tl.constexpr):
        n = tl.program_id(0)
        blk = tl.program_id(1)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        m = offs < HW
        s = tl.load(ms_ptr + n * HW + offs, mask=m, other=0.0)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        base = n.to(tl.int64) * C * HW
        for c in range(0, C):
            w = tl.load(mc_ptr + n * C + c)
            gv = tl.load(g_ptr + base + c * HW + offs, mask=m, other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + base + c * HW + offs, mask=m, other=0.0).to(tl.float32)
            v = gv * xv
            acc += v * w
            tl.store(part_ptr + (n * NB + blk) * C + c, tl.sum(v * s, 0))
        tl.store(rs_ptr + n * HW + offs, acc, mask=m)

    @triton.jit
    def _row_dot_k(x_ptr, a_ptr, out_ptr, C, HW, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        n = row // C
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        base = row.to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < HW
            v = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + n * HW + offs, mask=m, other=0.0)
            acc += v * a
        tl.store(out_ptr + row, tl.sum(acc, 0))

    @triton.jit
    def _input_grad_k(g_ptr, mc_ptr, ms_ptr, a_ptr, b_ptr, dx_ptr, C, HW, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < HW
        n = row // C
        w = tl.load(mc_ptr + row)
        off = tl.load(b_ptr + row)
        s = tl.load(ms_ptr + n * HW + offs, mask=m, other=0.0)
        a = tl.load(a_ptr + n * HW + offs, mask=m, other=0.0)
        base = row.to(tl.int64) * HW
        gv = tl.load(g_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(dx_ptr + base + offs, (gv * w * s + w * a + off).to(dx_ptr.dtype.element_ty), mask=m)


def _block(hw: int, cap: int = 1024) -> int:
    return max(16, min(cap, triton.next_power_of_2(hw)))


def channel_pool(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    n, c, h, w = x.shape
    hw = h * w
    avg = torch.empty((n, c), device=x.device, dtype=torch.float32)
    mx, idx = torch.empty_like(avg), torch.empty((n, c), device=x.device, dtype=torch.int32)
    _channel_pool_k[(n * c,)](x, avg, mx, idx, hw, BLOCK=_block(hw))
    return avg, mx, idx


def spatial_pool(x: Tensor, mc: Tensor, need_idx: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """need_idx is accepted for the common signature; the index is always computed here."""
    n, c, h, w = x.shape
    hw = h * w
    avg = torch.empty((n, hw), device=x.device, dtype=torch.float32)
    mx, idx = torch.empty_like(avg), torch.empty((n, hw), device=x.device, dtype=torch.int32)
    b = _block(hw, 256)
    _spatial_pool_k[(n, triton.cdiv(hw, b))](x, mc.contiguous(), avg, mx, idx, c, hw, BLOCK=b)
    return avg, mx, idx


def apply(x: Tensor, mc: Tensor, ms: Tensor, identity: Optional[Tensor] = None) -> Tensor:
    n, c, h, w = x.shape
    hw = h * w
    y = torch.empty_like(x)
    b = _block(hw)
    tail = identity is not None
    _apply_k[(n * c, triton.cdiv(hw, b))](x, mc.contiguous(), ms.contiguous(), identity.contiguous() if tail else x,
                                          y, c, hw, BLOCK=b, TAIL=tail)
    return y


def bwd_reduce(g: Tensor, x: Tensor, mc: Tensor, ms: Tensor) -> Tuple[Tensor, Tensor]:
    n, c, h, w = x.shape
    hw = h * w
    b = _block(hw, 256)
    nb = triton.cdiv(hw, b)
    part = torch.empty((n, nb, c), device=x.device, dtype=torch.float32)
    r_s = torch.empty((n, hw), device=x.device, dtype=torch.float32)
    _bwd_reduce_k[(n, nb)](g, x, mc.contiguous(), ms.contiguous(), part, r_s, c, hw, nb, BLOCK=b)
    return part.sum(1), r_s


def row_dot(x: Tensor, a: Tensor) -> Tensor:
    n, c, h, w = x.shape
    out = torch.empty((n, c), device=x.device, dtype=torch.float32)
    _row_dot_k[(n * c,)](x, a.contiguous(), out, c, h * w, BLOCK=_block(h * w))
    return out


def input_grad(g: Tensor, mc: Tensor, ms: Tensor, a: Tensor, b: Tensor, idx_s: Tensor, vs: Tensor,
               idx_c: Tensor, vc: Tensor) -> Tensor:
    n, c, h, w = g.shape
    hw = h * w
    dx = torch.empty_like(g)
    blk = _block(hw)
    _input_grad_k[(n * c, triton.cdiv(hw, blk))](g, mc.contiguous(), ms.contiguous(), a.contiguous(),
                                                   b.contiguous(), dx, c, hw, BLOCK=blk)
    # the max-pool routes: N*C + N*HW distinct elements, a scatter rather than a pass
    flat = dx.view(n, c, hw)
    flat.scatter_add_(2, idx_c.long()[:, :, None], vc[:, :, None].to(dx.dtype))
    route = (torch.gather(mc, 1, idx_s.long()) * vs).to(dx.dtype)
    flat.scatter_add_(1, idx_s.long()[:, None, :], route[:, None, :])
    return dx
