"""Forward and explicit backward of CBAM's small sub-graphs: the channel MLP on the pooled
``(N, C)`` descriptors, and conv(+BN)+sigmoid on the ``(N, 2, H, W)`` descriptor maps.

A custom op cannot run autograd inside its kernel, so these gradients are written
out by hand; tests check them against autograd on :mod:`cbam.functional`.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _c(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def mlp_forward(p_avg: Tensor, p_max: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                b2: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """``mc = sigmoid(MLP(p_avg) + MLP(p_max))``, ``(N, C)`` in the accumulation dtype, and the hidden
    pre-activations ``(2, N, hid)`` (avg branch first) that the backward needs."""
    a = F.linear(torch.stack([p_avg, p_max]), _c(w1, p_avg.dtype), _c(b1, p_avg.dtype))
    return torch.sigmoid(F.linear(F.relu(a), _c(w2, p_avg.dtype), _c(b2, p_avg.dtype)).sum(0)), a


def mlp_backward(dmc: Tensor, mc: Tensor, p_avg: Tensor, p_max: Tensor, w1: Tensor, b1: Optional[Tensor],
                 w2: Tensor, a: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor],
                                                                  Tensor]:
    """-> (d p_avg, d p_max, d w1, d w2, d b1 or None, d b2-sum-per-branch); ``a``: the forward's
    pre-activations ``(2, N, hid)`` if it kept them (else recomputed)."""
    dt = p_avg.dtype
    w1c, w2c = w1.to(dt), w2.to(dt)
    p = torch.stack([p_avg, p_max])                         # (2, N, C)
    if a is None or a.numel() == 0:
        a = F.linear(p, w1c, _c(b1, dt))                    # (2, N, hid)
    h = F.relu(a)
    dz = dmc * mc * (1 - mc)                                # (N, C)
    dw2 = dz.t() @ (h[0] + h[1])                            # (C, hid)
    db2 = 2 * dz.sum(0)                                     # the bias is added once per branch
    da = (dz @ w2c)[None] * (a > 0)                         # (2, N, hid)
    dw1 = da.flatten(0, 1).t() @ p.flatten(0, 1)            # (hid, C): both branches in one matmul
    db1 = da.sum((0, 1)) if b1 is not None else None
    dp = da @ w1c                                           # (2, N, C)
    return dp[0], dp[1], dw1, dw2, db1, db2


def spatial_forward(sd: Tensor, wc: Tensor, bc: Optional[Tensor], bn_w: Optional[Tensor], bn_b: Optional[Tensor],
                    rm: Optional[Tensor], rv: Optional[Tensor], use_bn: bool, training: bool, eps: float
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    """``ms = sigmoid(BN?(conv(sd)))`` -> (ms (N, 1, H, W), batch mean, batch biased var)."""
    dt = sd.dtype
    u = F.conv2d(sd, wc.to(dt), _c(bc, dt), padding=wc.shape[-1] // 2)
    mean, var = u.new_zeros(1), u.new_zeros(1)  # distinct: op outputs may not alias each other
    if use_bn:
        if training:
            mean, var = u.mean(), u.var(unbiased=False)
        else:
            mean, var = rm.to(dt).reshape(1).clone(), rv.to(dt).reshape(1).clone()  # outputs must not alias
        u = (u - mean) * torch.rsqrt(var + eps) * bn_w.to(dt) + bn_b.to(dt)
    return torch.sigmoid(u), mean.reshape(1), var.reshape(1)


def conv_output_grad(dms: Tensor, ms: Tensor, sd: Tensor, wc: Tensor, bc: Optional[Tensor], bn_w: Optional[Tensor],
                     use_bn: bool, training: bool, mean: Tensor, var: Tensor, eps: float
                     ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """d ms -> (d u, d bn_w, d bn_b) with u the conv's output: through the sigmoid and the BN
    (training-mode BN couples every pixel of the batch through its statistics)."""
    dt = sd.dtype
    dv = dms * ms * (1 - ms)
    if not use_bn:
        return dv, None, None
    u = F.conv2d(sd, wc.to(dt), _c(bc, dt), padding=wc.shape[-1] // 2)
    invstd = torch.rsqrt(var + eps)
    uhat = (u - mean) * invstd
    dgamma, dbeta = (dv * uhat).sum().reshape(1), dv.sum().reshape(1)
    duhat = dv * bn_w.to(dt)
    if not training:
        return duhat * invstd, dgamma, dbeta
    m = u.numel()
    return invstd / m * (m * duhat - duhat.sum() - uhat * (duhat * uhat).sum()), dgamma, dbeta


def spatial_backward(dms: Tensor, ms: Tensor, sd: Tensor, wc: Tensor, bc: Optional[Tensor], bn_w: Optional[Tensor],
                     use_bn: bool, training: bool, mean: Tensor, var: Tensor, eps: float,
                     need_input: bool = True, need_weight: bool = True,
                     conv_grad: Optional[Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]] = None
                     ) -> Tuple[Optional[Tensor], ...]:
    """-> (d sd, d wc, d bc, d bn_w, d bn_b); ``mean``/``var`` are what the forward normalised with.
    ``need_input`` / ``need_weight`` False skip d sd / d wc (None), for callers that form them.
    ``conv_grad(du (N, H, W), sd, wc (2, k, k)) -> (d sd, d wc (2, k, k))`` replaces the two torch
    convs when given (the C++ kernels: the same sums, without mkldnn's per-call overhead)."""
    dt = sd.dtype
    pad = wc.shape[-1] // 2
    wcc = wc.to(dt)
    du, dgamma, dbeta = conv_output_grad(dms, ms, sd, wc, bc, bn_w, use_bn, training, mean, var, eps)
    dsd = None
    if conv_grad is not None and need_input and need_weight:
        k = wc.shape[-1]
        dsd, dwc = conv_grad(du.reshape(du.shape[0], du.shape[-2], du.shape[-1]).contiguous(), sd.contiguous(),
                             wcc.reshape(2, wc.shape[-2], k).contiguous())
        return dsd, dwc.reshape(wc.shape), du.sum().reshape(1) if bc is not None else None, dgamma, dbeta
    if need_input:
        # the transposed conv as a conv with the flipped, transposed kernel: the same numbers, but
        # CPU conv_transpose2d took 15 ms at (32, 1, 56, 56) with a 7x7 kernel and this 0.8 ms
        flipped = wcc.flip(-2, -1).transpose(0, 1)
        dsd = F.conv2d(du, flipped, padding=(wc.shape[-2] - 1 - pad, wc.shape[-1] - 1 - pad))
    dwc = torch.nn.grad.conv2d_weight(sd, wc.shape, du, padding=pad) if need_weight else None
    dbc = du.sum().reshape(1) if bc is not None else None
    return dsd, dwc, dbc, dgamma, dbeta
