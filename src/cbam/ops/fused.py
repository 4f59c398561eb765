"""Fused CBAM (channel-first, avg+max pooling, ReLU MLP, sigmoid gates) as one custom op.

Forward: three passes over x -- channel pooling (read x), channel-wise pooling of
``x * M_c`` (read x), ``y = x * M_c * M_s`` (read x, write y) -- with the MLP and
the k x k conv (+BN) on the small pooled tensors in between. ``x * M_c`` is never
materialised. On the CPU (C++) the passes run per sample while the sample is in
cache (:func:`_per_sample`), and without a pending gradient (``need_idx=False``)
no argmax routes are tracked.

Backward: saves only x, the two gates, the pooled descriptors (small) and the
argmax indices, then ``bwd_reduce`` (read g and x: dM_c and dM_s together),
``row_dot`` (read x: the channel-mean route into dM_c) and ``input_grad`` (read g,
write dx) -- 4 reads and 1 write of the full tensor; per sample on the CPU (no
training-mode BN), g and x come from DRAM once and the rest from cache.

Both directions are ``torch.library`` custom ops (``cbam::fused_cbam_fwd`` /
``cbam::fused_cbam_bwd``) with fake implementations, so ``torch.compile`` and
``torch.export`` see one op. Kernels: C++ (contiguous CPU), Triton (CUDA), and
torch ops for everything else (channels_last on CPU, or when no compiler).
"""
from types import ModuleType
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _cpu, _cpuinfo
from . import _torch_kernels as TK
from ._small import mlp_backward, mlp_forward, spatial_backward, spatial_forward

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _llc_bytes(threads: int) -> int:
    """The last-level cache that ``threads`` threads can count on (their share of it, see
    :func:`._cpuinfo.llc_bytes`): decides whether a sample stays cached between passes."""
    return _cpuinfo.llc_bytes(threads)


def _triton():
    if not torch.cuda.is_available():
        return None
    try:
        from . import _triton_kernels
        return _triton_kernels if _triton_kernels.AVAILABLE else None
    except ImportError:
        return None


def kernels_for(x: Tensor) -> ModuleType:
    """The kernel set that runs for ``x``: C++ (contiguous CPU), Triton (CUDA) or torch."""
    if x.device.type == "cpu" and x.is_contiguous():
        mod = _cpu.load()
        if mod is not None:
            return mod
    if x.device.type == "cuda" and x.is_contiguous():
        tri = _triton()
        if tri is not None:
            return tri
    return TK


def backend_name(x: Tensor) -> str:
    k = kernels_for(x)
    return "torch" if k is TK else ("triton" if x.device.type == "cuda" else "cpp")


def _empty(x: Tensor) -> Tensor:
    return x.new_empty(0)


def _per_sample(K: ModuleType, x: Tensor) -> bool:
    """Whether to run the C++ per-sample forward: enough samples to keep every thread busy, and
    a sample small enough to stay in the last-level cache between the three passes."""
    if not hasattr(K, "forward_samples"):
        return False
    n, threads = x.shape[0], torch.get_num_threads()
    sample_bytes = x[0].numel() * x.element_size()
    return (n % threads == 0 or n >= 4 * threads) and n >= threads and \
        sample_bytes * threads <= _llc_bytes(threads) // 2


def _forward_body(K: ModuleType, x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                  wc: Tensor, bc: Optional[Tensor], bn_w: Optional[Tensor], bn_b: Optional[Tensor],
                  rm: Optional[Tensor], rv: Optional[Tensor], use_bn: bool, training: bool, eps: float,
                  max_first: bool, need_idx: bool = True) -> List[Tensor]:
    n, c, h, w = x.shape
    if _per_sample(K, x):
        return _forward_samples(K, x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps, max_first,
                                need_idx)
    p_avg, p_max, idx_c = K.channel_pool(x)
    mc, pre = mlp_forward(p_avg, p_max, w1, b1, w2, b2)
    s_avg, s_max, idx_s = K.spatial_pool(x, mc, need_idx)
    sd = torch.stack([s_max, s_avg] if max_first else [s_avg, s_max], 1).view(n, 2, h, w)
    ms, bmean, bvar = spatial_forward(sd, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps)
    y = K.apply(x, mc, ms.view(n, h * w))
    if not need_idx:  # inference: the argmax routes and pre-activations are only for backward
        idx_c, idx_s, pre = _no_idx(x), _no_idx(x), pre.new_empty(0)
    return [y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre]


def _forward_samples(K: ModuleType, x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                     wc: Tensor, bc: Optional[Tensor], bn_w: Optional[Tensor], bn_b: Optional[Tensor],
                     rm: Optional[Tensor], rv: Optional[Tensor], use_bn: bool, training: bool, eps: float,
                     max_first: bool, need_idx: bool) -> List[Tensor]:
    """The whole forward per sample in C++ (cbam_sample.cpp); eval-mode BN is folded into the
    conv's output affine, training-mode BN needs the batch statistics before the gate is applied."""
    n, c, h, w = x.shape
    acc = TK.acc_dtype(x)
    cast = lambda t: _acc_arg(t, x, acc)  # noqa: E731
    scale, shift, bn_train = 1.0, 0.0, use_bn and training
    if use_bn and not training:
        inv = (rv.double() + eps).rsqrt() * bn_w.double()
        scale, shift = float(inv), float(bn_b.double() - rm.double() * inv)
    y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, pre = K.forward_samples(
        x, cast(w1), cast(b1), cast(w2), cast(b2), cast(wc).view(2, wc.shape[-2], wc.shape[-1]),
        0.0 if bc is None else float(bc), scale, shift, max_first, need_idx, not bn_train, _mlp_group(x, w1))
    ms = ms.view(n, 1, h, w)
    bmean, bvar = ms.new_zeros(1), ms.new_zeros(1)
    if use_bn and not training:
        bmean, bvar = rm.to(acc).reshape(1).clone(), rv.to(acc).reshape(1).clone()
    if bn_train:  # the ms slot holds the conv output u
        bmean, bvar = ms.mean().reshape(1), ms.var(unbiased=False).reshape(1)
        ms = torch.sigmoid((ms - bmean) * torch.rsqrt(bvar + eps) * bn_w.to(acc) + bn_b.to(acc))
        y = K.apply(x, mc, ms.view(n, h * w))
    return [y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre]


def _mlp_group(x: Tensor, w1: Tensor) -> int:
    """How many samples the per-sample forward pools before one batched MLP call (1: per sample).
    With ~2 MB of MLP weights (C = 2048) a (G, C) x (C, hid) matmul beats G mat-vecs once G >= 8
    (below that BLAS is slower); the G samples (a thread's share, in equal groups that fit half
    the last-level cache across threads) wait in cache for the rest of the forward."""
    n, threads = x.shape[0], torch.get_num_threads()
    share = -(-n // threads)
    fit = max(1, _llc_bytes(threads) // (2 * threads) // max(1, x[0].numel() * x.element_size()))
    g = -(-share // -(-share // fit))  # equal groups of at most `fit`
    return g if g >= 8 and w1.numel() >= 1 << 17 else 1


def _acc_arg(t: Optional[Tensor], x: Tensor, acc: torch.dtype) -> Tensor:
    """A weight as the C++ kernels take it: contiguous, in the accumulation dtype; None -> empty."""
    return x.new_empty(0, dtype=acc) if t is None else t.detach().to(acc).contiguous()


def _no_idx(x: Tensor) -> Tensor:
    return x.new_empty(0, dtype=torch.int32)


@torch.library.custom_op("cbam::fused_cbam_fwd", mutates_args=())
def _fwd(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], wc: Tensor,
         bc: Optional[Tensor], bn_w: Optional[Tensor], bn_b: Optional[Tensor], rm: Optional[Tensor],
         rv: Optional[Tensor], use_bn: bool, training: bool, eps: float, max_first: bool,
         need_idx: bool) -> List[Tensor]:
    return _forward_body(kernels_for(x), x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps,
                         max_first, need_idx)


def decomposition(*args, **kwargs) -> List[Tensor]:
    """``cbam::fused_cbam_fwd`` written with plain torch ops (the torch kernels): what
    ``ExportedProgram.run_decompositions`` replaces the op with for export."""
    return _forward_body(TK, *args, **kwargs)


@_fwd.register_fake
def _fwd_fake(x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps, max_first, need_idx):
    n, c, h, w = x.shape
    acc = TK.acc_dtype(x)
    f = dict(device=x.device, dtype=acc)
    i32 = dict(dtype=torch.int32)
    idx_c, idx_s = (x.new_empty((n, c), **i32), x.new_empty((n, h * w), **i32)) if need_idx else \
        (_no_idx(x), _no_idx(x))
    pre = x.new_empty((2, n, w1.shape[0]), **f) if need_idx else x.new_empty(0, **f)
    return [torch.empty_like(x), x.new_empty((n, c), **f), x.new_empty((n, 1, h, w), **f),
            x.new_empty((n, c), **f), x.new_empty((n, c), **f), idx_c, x.new_empty((n, 2, h, w), **f), idx_s,
            x.new_empty(1, **f), x.new_empty(1, **f), pre]


@torch.library.custom_op("cbam::fused_cbam_bwd", mutates_args=())
def _bwd(gy: Tensor, gmc: Tensor, gms: Tensor, x: Tensor, mc: Tensor, ms: Tensor, p_avg: Tensor, p_max: Tensor,
         idx_c: Tensor, sd: Tensor, idx_s: Tensor, bmean: Tensor, bvar: Tensor, pre: Tensor, w1: Tensor,
         b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], wc: Tensor, bc: Optional[Tensor],
         bn_w: Optional[Tensor], use_bn: bool, training: bool, eps: float, max_first: bool) -> List[Tensor]:
    n, c, h, w = x.shape
    hw = h * w
    g = gy.contiguous() if x.is_contiguous() else gy.contiguous(memory_format=torch.channels_last)
    K = kernels_for(x)
    # per sample, the MLP's input gradient is three mat-vecs per sample: past ~1 MB of MLP weights
    # (C = 2048) the batched matmuls of the three-pass path win (measured: 2048x7x7 10.4 vs 11.6 ms)
    if _per_sample(K, x) and not (use_bn and training) and 2 * w1.numel() * 4 <= 1 << 20:
        return _backward_samples(K, g, gmc, gms, x, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre, w1, b1,
                                 w2, b2, wc, bc, bn_w, use_bn, training, eps, max_first)
    r_c, r_s = K.bwd_reduce(g, x, mc, ms.view(n, hw))              # read g, x
    dmc = r_c + gmc
    dms = r_s.view(n, 1, h, w) + gms
    dsd, dwc, dbc, dbn_w, dbn_b = spatial_backward(dms, ms, sd, wc, bc, bn_w, use_bn, training, bmean, bvar, eps,
                                                   conv_grad=getattr(K, "conv_backward", None))
    d_avg, d_max = (dsd[:, 1], dsd[:, 0]) if max_first else (dsd[:, 0], dsd[:, 1])
    a = (d_avg / c).reshape(n, hw).contiguous()
    d_max = d_max.reshape(n, hw).contiguous()
    dmc = dmc + K.row_dot(x, a)                                      # read x
    idx = idx_s.long()
    x_at = x.flatten(2).gather(1, idx[:, None, :])[:, 0].to(dmc.dtype)  # N*HW elements, not a pass
    dmc = dmc.scatter_add(1, idx, x_at * d_max)
    d_avg_c, d_max_c, dw1, dw2, db1, db2 = _mlp_backward(K, dmc, mc, p_avg, p_max, w1, b1, w2, pre)
    dx = K.input_grad(g, mc, ms.view(n, hw), a, (d_avg_c / hw).contiguous(), idx_s, d_max,
                      idx_c, d_max_c.contiguous())                   # read g, write dx
    return _grads_out(dx, dw1, db1, dw2, db2, dwc, dbc, dbn_w, dbn_b, w1, b1, w2, b2, wc, bc, bn_w, use_bn)


def _backward_samples(K: ModuleType, g: Tensor, gmc: Tensor, gms: Tensor, x: Tensor, mc: Tensor, ms: Tensor,
                      p_avg: Tensor, p_max: Tensor, idx_c: Tensor, sd: Tensor, idx_s: Tensor, bmean: Tensor,
                      bvar: Tensor, pre: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                      wc: Tensor, bc: Optional[Tensor], bn_w: Optional[Tensor], use_bn: bool, training: bool,
                      eps: float, max_first: bool) -> List[Tensor]:
    """The input gradient per sample in C++ (g and x read from DRAM once); the weight gradients
    from the returned gate gradients with the same small batched ops as the three-pass path."""
    n, c, h, w = x.shape
    acc = mc.dtype
    cast = lambda t: _acc_arg(t, x, acc)  # noqa: E731
    scale = float((bvar.double() + eps).rsqrt() * bn_w.double()) if use_bn else 1.0
    dx, dmc, dms, dwc = K.backward_samples(g, x, mc, ms.view(n, h * w), p_avg, p_max, idx_c, idx_s,
                                           gmc.contiguous(), gms.reshape(n, h * w).contiguous(), cast(w1), cast(b1),
                                           cast(w2), cast(wc).view(2, wc.shape[-2], wc.shape[-1]),
                                           sd.to(acc).contiguous(), scale, max_first)
    # d sd and d wc (per sample, summed here) were formed in C++; the rest is elementwise on (N, 1, H, W)
    _, _, dbc, dbn_w, dbn_b = spatial_backward(dms.view(n, 1, h, w), ms, sd, wc, bc, bn_w, use_bn, training, bmean,
                                               bvar, eps, need_input=False, need_weight=False)
    dwc = dwc.sum(0, keepdim=True)
    _, _, dw1, dw2, db1, db2 = _mlp_backward(K, dmc, mc, p_avg, p_max, w1, b1, w2, pre)
    return _grads_out(dx, dw1, db1, dw2, db2, dwc, dbc, dbn_w, dbn_b, w1, b1, w2, b2, wc, bc, bn_w, use_bn)


def _mlp_backward(K: ModuleType, dmc: Tensor, mc: Tensor, p_avg: Tensor, p_max: Tensor, w1: Tensor,
                  b1: Optional[Tensor], w2: Tensor, pre: Tensor
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor], Tensor]:
    """:func:`._small.mlp_backward`, in one C++ parallel region where the kernels have it (the five
    matmuls as separate torch calls each woke the thread pool: 32x2048, hid 128: 2.1 -> 1.2-1.4 ms)."""
    if not hasattr(K, "mlp_backward"):
        return mlp_backward(dmc, mc, p_avg, p_max, w1, b1, w2, pre)
    acc = mc.dtype
    cast = lambda t: _acc_arg(t, mc, acc)  # noqa: E731
    d = lambda t: t.detach().to(acc).contiguous()  # noqa: E731  (saved outputs come back with a grad_fn)
    d_avg, d_max, dw1, dw2, db1, db2 = K.mlp_backward(d(dmc), d(mc), d(p_avg), d(p_max), cast(w1), cast(b1),
                                                      cast(w2), d(pre))
    return d_avg, d_max, dw1, dw2, (None if b1 is None else db1), db2


def _grads_out(dx: Tensor, dw1: Tensor, db1: Optional[Tensor], dw2: Tensor, db2: Tensor, dwc: Tensor,
               dbc: Optional[Tensor], dbn_w: Optional[Tensor], dbn_b: Optional[Tensor], w1: Tensor,
               b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], wc: Tensor, bc: Optional[Tensor],
               bn_w: Optional[Tensor], use_bn: bool) -> List[Tensor]:
    out = [dx, dw1.to(w1.dtype), _empty(w1) if b1 is None else db1.to(b1.dtype), dw2.to(w2.dtype),
           _empty(w2) if b2 is None else db2.to(b2.dtype), dwc.to(wc.dtype),
           _empty(wc) if bc is None else dbc.to(bc.dtype)]
    out += [dbn_w.to(bn_w.dtype), dbn_b.to(bn_w.dtype)] if use_bn and bn_w is not None else [_empty(wc), _empty(wc)]
    return out


@_bwd.register_fake
def _bwd_fake(gy, gmc, gms, x, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre, w1, b1, w2, b2, wc, bc, bn_w,
              use_bn, training, eps, max_first):
    e = wc.new_empty(0)
    return [torch.empty_like(x), torch.empty_like(w1), e if b1 is None else torch.empty_like(b1),
            torch.empty_like(w2), e if b2 is None else torch.empty_like(b2), torch.empty_like(wc),
            e if bc is None else torch.empty_like(bc)] + (
        [torch.empty_like(bn_w), torch.empty_like(bn_w)] if use_bn and bn_w is not None else [e, e])


def _setup(ctx, inputs, output):
    # need_idx has no default: the dispatcher drops trailing default arguments, which would change
    # how many gradients the backward must return
    x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps, max_first, need_idx = inputs
    y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre = output
    ctx.save_for_backward(x, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre, w1, b1, w2, b2, wc, bc, bn_w)
    ctx.flags = (use_bn, training, eps, max_first)
    ctx.need_idx = need_idx


def _backward(ctx, *grads):
    if len(grads) == 1 and isinstance(grads[0], (list, tuple)):  # a List[Tensor] output gets one list
        grads = tuple(grads[0])
    gy, gmc, gms = grads[:3]
    if not ctx.need_idx:
        raise RuntimeError("cbam::fused_cbam_fwd ran with need_idx=False (no argmax routes kept), so it has no "
                           "backward; call it with need_idx=True when gradients are needed")
    x, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre, w1, b1, w2, b2, wc, bc, bn_w = ctx.saved_tensors
    use_bn, training, eps, max_first = ctx.flags
    gy = torch.zeros_like(x) if gy is None else gy
    gmc = torch.zeros_like(mc) if gmc is None else gmc
    gms = torch.zeros_like(ms) if gms is None else gms
    g = _bwd(gy, gmc, gms, x, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre, w1, b1, w2, b2, wc, bc, bn_w,
             use_bn, training, eps, max_first)
    dx, dw1, db1, dw2, db2, dwc, dbc, dbn_w, dbn_b = g
    none_if = lambda t, ref: None if ref is None else t  # noqa: E731
    return (dx, dw1, none_if(db1, b1), dw2, none_if(db2, b2), dwc, none_if(dbc, bc),
            dbn_w if use_bn and bn_w is not None else None, dbn_b if use_bn and bn_w is not None else None,
            None, None, None, None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup)


def fused_available(x: Tensor, require: bool = False) -> bool:
    """Whether the fused op runs on compiled kernels for ``x`` (what ``impl="auto"`` asks);
    with ``require`` (``impl="fused"``) it only needs a supported dtype/device, and raises otherwise."""
    ok = x.dtype in _FLOAT and x.device.type in ("cpu", "cuda") and x.dim() == 4
    if require:
        if not ok:
            raise ValueError(f"the fused CBAM op needs a 4-D float16/bfloat16/float32/float64 tensor on CPU or CUDA, "
                             f"got {x.dtype} on {x.device}; use impl='reference'")
        return True
    # "auto" takes the C++ CPU kernels only: on CUDA the fused op is launch-bound at ResNet shapes and
    # measured slower than eager (docs/PERFORMANCE.md), so there it is opt-in (impl="fused")
    return ok and backend_name(x) == "cpp"


def fused_cbam_with_gates(
    x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor],
    conv_weight: Tensor, conv_bias: Optional[Tensor] = None, bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None, bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None, bn_training: bool = False, bn_momentum: float = 0.1,
    bn_eps: float = 1e-5, use_bn: bool = False, pool_types: Optional[List[str]] = None, order: str = "avg_max",
    arrangement: str = "channel_first", act: str = "relu", gate: str = "sigmoid",
    pool_weight: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Same signature and result as :func:`cbam.functional.cbam_with_gates`, for the
    configuration the fused op covers; updates BN running statistics like ``F.batch_norm``."""
    if arrangement != "channel_first" or act != "relu" or gate != "sigmoid" or pool_weight is not None or \
            sorted(pool_types or ["avg", "max"]) != ["avg", "max"] or order not in ("avg_max", "max_avg"):
        raise ValueError("the fused CBAM op covers arrangement='channel_first', pool_types avg+max, act='relu', "
                         "gate='sigmoid' and avg/max spatial pooling; use cbam.functional for other forms")
    fused_available(x, require=True)
    if use_bn and (bn_weight is None or bn_bias is None or (not bn_training and bn_running_var is None)):
        raise ValueError("use_bn=True needs bn_weight and bn_bias (and running statistics in eval mode)")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    n, c, h, w = x.shape
    # the argmax routes are needed only when a gradient will flow back
    params = (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, bn_weight, bn_bias)
    need_idx = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)
    y, mc, ms, *_, bmean, bvar, _ = _fwd(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                                      bn_weight, bn_bias, bn_running_mean, bn_running_var, use_bn, bn_training,
                                      float(bn_eps), order == "max_avg", need_idx)
    if use_bn and bn_training and bn_running_mean is not None and bn_running_var is not None:
        with torch.no_grad():
            m = n * h * w
            bn_running_mean.lerp_(bmean.to(bn_running_mean.dtype), bn_momentum)
            bn_running_var.lerp_((bvar * m / max(m - 1, 1)).to(bn_running_var.dtype), bn_momentum)
    return y, mc.view(n, c, 1, 1).to(x.dtype), ms.to(x.dtype)


def fused_cbam(*args, **kwargs) -> Tensor:
    """Same signature and result as :func:`cbam.functional.cbam` (fused configurations only)."""
    return fused_cbam_with_gates(*args, **kwargs)[0]
