"""The fused op's backward over the kernels of :mod:`._forward`.

Saved from the forward: x, the two gates, the pooled descriptors (small), the argmax routes and,
with the fused block tail, the output ``out = relu(y + identity)`` (the next layer keeps it
anyway), whose sign masks the incoming gradient. Per sample on the CPU (C++), g and x come from
DRAM once; elsewhere three passes: ``bwd_reduce`` (read g, x), ``row_dot`` (read x) and
``input_grad`` (read g, write dx).
"""
from types import ModuleType
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import _forward as F
from ._forward import acc_arg, conv_arg, empty_arg, kernels_for, memory_format
from ._small import conv_output_grad, mlp_backward, spatial_backward


class Saved(NamedTuple):
    """What the forward keeps for the backward (``out`` is None without the block tail)."""
    x: Tensor
    out: Optional[Tensor]
    mc: Tensor
    ms: Tensor
    p_avg: Tensor
    p_max: Tensor
    idx_c: Tensor
    sd: Tensor
    idx_s: Tensor
    bmean: Tensor
    bvar: Tensor
    pre: Tensor
    w1: Tensor
    b1: Optional[Tensor]
    w2: Tensor
    b2: Optional[Tensor]
    wc: Tensor
    bc: Optional[Tensor]
    bn_w: Optional[Tensor]


def backward(gy: Tensor, gmc: Optional[Tensor], gms: Optional[Tensor], s: Saved, use_bn: bool, training: bool,
             eps: float, max_first: bool, fill: bool = True) -> List[Optional[Tensor]]:
    """-> [dx, dw1, db1, dw2, db2, dwc, dbc, dbn_w, dbn_b, d identity]; where an input is absent, an empty
    tensor (``fill``: a custom op returns tensors only) or None.
    ``gmc`` / ``gms`` None: the gates' own gradients are zero."""
    x = s.x
    # a backward called inside autocast: float32 math, as the forward (the C-level test first: it is cheaper)
    if torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return backward(gy, gmc, gms, s, use_bn, training, eps, max_first, fill)
    g = gy.contiguous(memory_format=memory_format(x))
    K = kernels_for(x)
    # per sample, the MLP's input gradient is three mat-vecs per sample, which stream the weights (2 MB
    # at C = 2048) once per sample; still faster than the three batch-wide passes over short rows there
    # (8x2048x7x7 bf16 tail: 0.91 against 1.26 ms; 32 samples: 3.2 against 4.6 ms)
    if F.per_sample(K, x):
        return _backward_samples(K, g, gmc, gms, s, use_bn, training, eps, max_first, fill)
    return _backward_passes(K, g, gmc, gms, s, use_bn, training, eps, max_first, fill)


def _backward_passes(K: ModuleType, g: Tensor, gmc: Optional[Tensor], gms: Optional[Tensor], s: Saved,
                     use_bn: bool, training: bool, eps: float, max_first: bool, fill: bool) -> List[Optional[Tensor]]:
    x, mc, ms = s.x, s.mc, s.ms
    n, c, h, w = x.shape
    hw = h * w
    d_id = None
    if s.out is not None:  # relu's backward: the gradient where the block output is > 0, else 0 (as the
        # per-sample kernels: a masked inf or NaN gradient gives 0, not inf * 0)
        fast = hasattr(K, "relu_grad") and g.stride() == s.out.stride()  # torch.where: ~30x slower on CPU
        g = d_id = K.relu_grad(g, s.out) if fast else torch.where(s.out > 0, g, 0)
    r_c, r_s = K.bwd_reduce(g, x, mc, ms.view(n, hw))              # read g, x
    dmc = r_c if gmc is None else r_c + gmc
    dms = r_s.view(n, 1, h, w) if gms is None else r_s.view(n, 1, h, w) + gms
    dsd, dwc, dbc, dbn_w, dbn_b = spatial_backward(dms, ms, s.sd, s.wc, s.bc, s.bn_w, use_bn, training, s.bmean,
                                                   s.bvar, eps, conv_grad=getattr(K, "conv_backward", None))
    d_avg, d_max = (dsd[:, 1], dsd[:, 0]) if max_first else (dsd[:, 0], dsd[:, 1])
    a = (d_avg / c).reshape(n, hw).contiguous()
    d_max = d_max.reshape(n, hw).contiguous()
    dmc = dmc + K.row_dot(x, a)                                      # read x
    idx = s.idx_s.long()
    x_at = x.flatten(2).gather(1, idx[:, None, :])[:, 0].to(dmc.dtype)  # N*HW elements, not a pass
    dmc = dmc.scatter_add(1, idx, x_at * d_max)
    d_avg_c, d_max_c, dw1, dw2, db1, db2 = _mlp_backward(K, dmc, s)
    dx = K.input_grad(g, mc, ms.view(n, hw), a, (d_avg_c / hw).contiguous(), s.idx_s, d_max,
                      s.idx_c, d_max_c.contiguous())                 # read g, write dx
    return _grads_out(dx, dw1, db1, dw2, db2, dwc, dbc, dbn_w, dbn_b, d_id, s, use_bn, fill)


def _backward_samples(K: ModuleType, g: Tensor, gmc: Optional[Tensor], gms: Optional[Tensor], s: Saved,
                      use_bn: bool, training: bool, eps: float, max_first: bool, fill: bool) -> List[Optional[Tensor]]:
    """The input gradient per sample in C++ (g and x read from DRAM once; twice with training-mode BN);
    the weight gradients from the returned gate gradients with small batched ops. Training-mode BN
    couples the samples through its statistics: pass A runs first over all samples, then the rest per
    sample with the BN's du."""
    x, mc = s.x, s.mc
    n, c, h, w = x.shape
    acc = mc.dtype
    d = lambda t: acc_arg(t, x, acc)  # noqa: E731
    ms2, out = d(s.ms).view(n, h * w), (empty_arg(x) if s.out is None else s.out)
    none = empty_arg(x, acc)  # the C++ kernels read an empty gate gradient as zero
    gmc, gms2 = (none if gmc is None else d(gmc)), (none if gms is None else d(gms).view(n, h * w))
    weights = (d(s.w1), d(s.b1), d(s.w2), conv_arg(s.wc, acc), d(s.sd))
    saved = (d(s.p_avg), d(s.p_max), s.idx_c, s.idx_s)
    pre = none if s.pre is None else d(s.pre)  # the hidden ReLUs' masks, as the weight gradients see them
    if use_bn and training:
        dmc, dms = K.backward_reduce_samples(g, out, x, d(mc), ms2, gmc, gms2)
        du, dbn_w, dbn_b = conv_output_grad(dms.view(n, 1, h, w), s.ms, s.sd, s.wc, s.bc, s.bn_w, use_bn, training,
                                            s.bmean, s.bvar, eps)
        dx, d_id, dmc, _, dwc = K.backward_samples(g, out, x, d(mc), ms2, *saved, dmc, gms2, *weights, 1.0,
                                                   max_first, d(du).view(n, h * w), pre)
        dbc = du.sum().reshape(1) if s.bc is not None else None
    else:
        scale = float((s.bvar.double() + eps).rsqrt() * s.bn_w.double()) if use_bn else 1.0
        dx, d_id, dmc, dms, dwc = K.backward_samples(g, out, x, d(mc), ms2, *saved, gmc, gms2, *weights, scale,
                                                     max_first, none, pre)
        # the conv's gradients were formed in C++; the bias and BN ones are elementwise on (N, 1, H, W)
        dbc = dbn_w = dbn_b = None
        if use_bn or s.bc is not None:
            _, _, dbc, dbn_w, dbn_b = spatial_backward(dms.view(n, 1, h, w), s.ms, s.sd, s.wc, s.bc, s.bn_w, use_bn,
                                                       training, s.bmean, s.bvar, eps, need_input=False,
                                                       need_weight=False)
    _, _, dw1, dw2, db1, db2 = _mlp_backward(K, dmc, s, input_grad=False)  # the samples formed dp already
    return _grads_out(dx, dw1, db1, dw2, db2, dwc, dbc, dbn_w, dbn_b,
                      None if s.out is None else d_id, s, use_bn, fill)


def _mlp_backward(K: ModuleType, dmc: Tensor, s: Saved, input_grad: bool = True
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor], Tensor]:
    """:func:`._small.mlp_backward`, in one C++ parallel region where the kernels have it (as separate
    torch calls, each of the five matmuls woke the thread pool again). ``input_grad=False``: the C++
    path leaves the first two (d p_avg, d p_max) empty and skips their product."""
    if not hasattr(K, "mlp_backward"):
        return mlp_backward(dmc, s.mc, s.p_avg, s.p_max, s.w1, s.b1, s.w2, s.pre)
    acc = s.mc.dtype
    d = lambda t: acc_arg(t, s.mc, acc)  # noqa: E731
    d_avg, d_max, dw1, dw2, db1, db2 = K.mlp_backward(d(dmc), d(s.mc), d(s.p_avg), d(s.p_max), d(s.w1), d(s.b1),
                                                      d(s.w2), d(s.pre), input_grad)
    return d_avg, d_max, dw1, dw2, (None if s.b1 is None else db1), db2


def _grads_out(dx: Tensor, dw1: Tensor, db1: Optional[Tensor], dw2: Tensor, db2: Tensor, dwc: Tensor,
               dbc: Optional[Tensor], dbn_w: Optional[Tensor], dbn_b: Optional[Tensor], d_id: Optional[Tensor],
               s: Saved, use_bn: bool, fill: bool) -> List[Optional[Tensor]]:
    if not fill and s.b1 is None and s.b2 is None and s.bc is None and not use_bn and \
            dw1.dtype == s.w1.dtype == s.w2.dtype == s.wc.dtype and dwc.is_contiguous():
        # the usual eager call: the kernels' weight gradients are contiguous already, in the weights' dtype
        # (each no-op cast below costs microseconds with the cold caches of a network's backward)
        return [dx, dw1, None, dw2, None, dwc, None, None, None, d_id]
    # fill: a fresh empty each, as a custom op's outputs may not alias
    e = (lambda: s.wc.new_empty(0)) if fill else (lambda: None)  # noqa: E731
    # contiguous weight gradients, as the op's fake promises (AccumulateGrad lays .grad out like the weight)
    cast = lambda t, ref: e() if ref is None else t.to(ref.dtype).contiguous()  # noqa: E731
    bn = use_bn and s.bn_w is not None
    return [dx, cast(dw1, s.w1), cast(db1, s.b1), cast(dw2, s.w2), cast(db2, s.b2), cast(dwc, s.wc),
            cast(dbc, s.bc), cast(dbn_w, s.bn_w) if bn else e(), cast(dbn_b, s.bn_w) if bn else e(),
            d_id if d_id is not None or not fill else s.x.new_empty(0)]
