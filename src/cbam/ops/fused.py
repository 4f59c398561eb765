"""Fused CBAM (channel-first, avg+max pooling, ReLU MLP, sigmoid gates) as one custom op.

Forward: three passes over x -- channel pooling (read x), channel-wise pooling of ``x * M_c``
(read x), ``y = x * M_c * M_s`` (read x, write y) -- with the MLP and the k x k conv (+BN) on the
small pooled tensors in between; ``x * M_c`` is never materialised. On the CPU the passes run per
sample while the sample is in cache, in NCHW or channels_last, and in the input's dtype (float16
and bfloat16 are read and written as such, accumulated in float32). Optionally the last pass forms
the residual block's tail, ``relu(y + identity)`` (:func:`fused_cbam_tail`), so a network pays one
extra read of the identity instead of writing y and reading it back.

Backward: saves only x, the two gates, the pooled descriptors and the argmax routes (and the
block output with the tail); see :mod:`._backward`.

Both directions are ``torch.library`` custom ops (``cbam::fused_cbam_fwd`` / ``cbam::fused_cbam_bwd``)
with fake implementations, so ``torch.compile`` and ``torch.export`` see one op;
:func:`decomposition` writes the forward in plain torch ops for export.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _backward as B
from . import _cpu
from . import _forward as F
from . import _torch_kernels as TK
from ._forward import backend_name, kernels_for

__all__ = ["backend_name", "decomposition", "fused_available", "fused_cbam", "fused_cbam_tail",
           "fused_cbam_tail_with_gates", "fused_cbam_with_gates", "kernels_for"]

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@torch.library.custom_op("cbam::fused_cbam_fwd", mutates_args=())
def _fwd(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], wc: Tensor,
         bc: Optional[Tensor], bn_w: Optional[Tensor], bn_b: Optional[Tensor], rm: Optional[Tensor],
         rv: Optional[Tensor], use_bn: bool, training: bool, eps: float, max_first: bool,
         need_idx: bool, identity: Optional[Tensor]) -> List[Tensor]:
    return F.forward(kernels_for(x), x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps,
                     max_first, need_idx, identity)


def decomposition(*args, **kwargs) -> List[Tensor]:
    """``cbam::fused_cbam_fwd`` written with plain torch ops (the torch kernels): what
    ``ExportedProgram.run_decompositions`` replaces the op with for export."""
    return F.forward(TK, *args, **kwargs)


@_fwd.register_fake
def _fwd_fake(x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps, max_first, need_idx, identity):
    n, c, h, w = x.shape
    f = dict(device=x.device, dtype=TK.acc_dtype(x))
    i32 = dict(dtype=torch.int32)
    idx_c, idx_s = (x.new_empty((n, c), **i32), x.new_empty((n, h * w), **i32)) if need_idx else \
        (F.no_idx(x), F.no_idx(x))
    pre = x.new_empty((2, n, w1.shape[0]), **f) if need_idx else x.new_empty(0, **f)
    return [torch.empty_like(x), x.new_empty((n, c), **f), x.new_empty((n, 1, h, w), **f),
            x.new_empty((n, c), **f), x.new_empty((n, c), **f), idx_c, x.new_empty((n, 2, h, w), **f), idx_s,
            x.new_empty(1, **f), x.new_empty(1, **f), pre]


@torch.library.custom_op("cbam::fused_cbam_bwd", mutates_args=())
def _bwd(gy: Tensor, gmc: Tensor, gms: Tensor, x: Tensor, out: Optional[Tensor], mc: Tensor, ms: Tensor,
         p_avg: Tensor, p_max: Tensor, idx_c: Tensor, sd: Tensor, idx_s: Tensor, bmean: Tensor, bvar: Tensor,
         pre: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], wc: Tensor,
         bc: Optional[Tensor], bn_w: Optional[Tensor], use_bn: bool, training: bool, eps: float,
         max_first: bool) -> List[Tensor]:
    saved = B.Saved(x, out, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre, w1, b1, w2, b2, wc, bc, bn_w)
    return B.backward(gy, gmc, gms, saved, use_bn, training, eps, max_first)


@_bwd.register_fake
def _bwd_fake(gy, gmc, gms, x, out, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre, w1, b1, w2, b2, wc,
              bc, bn_w, use_bn, training, eps, max_first):
    # as the real op: a fresh empty for each absent gradient (outputs must not alias), and contiguous weight
    # gradients whatever the weights' layout (channels_last conv weights; inductor asserts the strides)
    e = lambda: wc.new_empty(0)  # noqa: E731
    like = lambda t: e() if t is None else t.new_empty(t.shape)  # noqa: E731
    bn = use_bn and bn_w is not None
    return [torch.empty_like(x), like(w1), like(b1), like(w2), like(b2), like(wc), like(bc),
            like(bn_w) if bn else e(), like(bn_w) if bn else e(),
            x.new_empty(0) if out is None else torch.empty_like(x)]


def _setup(ctx, inputs, output):
    # need_idx and identity have no defaults: the dispatcher drops trailing default arguments, which
    # would change how many gradients the backward must return
    x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps, max_first, need_idx, identity = inputs
    y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre = output
    out = y if identity is not None else None  # relu's mask; the next layer keeps this tensor anyway
    ctx.save_for_backward(x, out, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre, w1, b1, w2, b2, wc, bc,
                          bn_w)
    ctx.flags = (use_bn, training, eps, max_first)
    ctx.need_idx = need_idx


def _no_double_backward() -> None:
    # the backward is not itself differentiable: fail here, naming the fix, rather than at the second
    # backward with autograd's "no autograd formula"
    if torch.is_grad_enabled():
        raise RuntimeError("the fused CBAM op has no double backward (backward with create_graph=True); use "
                           "impl=\"reference\" (modules) or cbam.functional for higher-order gradients")


def _backward(ctx, *grads):
    if len(grads) == 1 and isinstance(grads[0], (list, tuple)):  # a List[Tensor] output gets one list
        grads = tuple(grads[0])
    if not ctx.need_idx:
        raise RuntimeError("cbam::fused_cbam_fwd ran with need_idx=False (no argmax routes kept), so it has no "
                           "backward; call it with need_idx=True when gradients are needed")
    return _input_grads(ctx.saved_tensors, ctx.flags, *grads[:3])


def _input_grads(saved: Tuple[Tensor, ...], flags: Tuple, gy: Optional[Tensor], gmc: Optional[Tensor],
                 gms: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """The op's 17 inputs' gradients from the forward's saved tensors (in ``B.Saved`` order)."""
    _no_double_backward()
    x, out, mc, ms = saved[:4]
    use_bn, training, eps, max_first = flags
    gy = torch.zeros_like(x) if gy is None else gy
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        gmc = torch.zeros_like(mc) if gmc is None else gmc
        gms = torch.zeros_like(ms) if gms is None else gms
        grads_in = _bwd(gy, gmc, gms, *saved, use_bn, training, eps, max_first)
    else:  # eager: the implementation itself, without the dispatcher's round trip (as the eager forward);
        # the gates' gradients stay None when the gates themselves were not used (the usual case)
        grads_in = B.backward(gy, gmc, gms, B.Saved(*saved), use_bn, training, eps, max_first, fill=False)
    dx, dw1, db1, dw2, db2, dwc, dbc, dbn_w, dbn_b, d_id = grads_in
    b1, b2, bc, bn_w = saved[13], saved[15], saved[17], saved[18]
    none_if = lambda t, ref: None if ref is None else t  # noqa: E731
    bn = use_bn and bn_w is not None
    return (dx, dw1, none_if(db1, b1), dw2, none_if(db2, b2), dwc, none_if(dbc, bc), dbn_w if bn else None,
            dbn_b if bn else None, None, None, None, None, None, None, None, none_if(d_id, out))


_fwd.register_autograd(_backward, setup_context=_setup)


class _EagerFused(torch.autograd.Function):
    """The registered op's forward and backward as a plain autograd.Function, for eager training:
    the custom op's autograd wrapper costs more than a small layer's kernels. Its outputs are only
    ``(y, mc, ms, bn mean, bn var)``: the pooled descriptors and argmax routes are saved, not returned
    (each output of a Function costs autograd bookkeeping per call)."""

    @staticmethod
    def forward(ctx, *inputs):
        outs = F.forward(kernels_for(inputs[0]), *inputs)
        # the custom op's bookkeeping: everything through save_for_backward, intermediates included
        # (saved-tensor hooks see them all; the op has no double backward anyway)
        _setup(ctx, inputs, outs)
        y, mc, ms, *_, bmean, bvar, _ = outs
        ctx.set_materialize_grads(False)  # the unused outputs' gradients stay None, not zero tensors
        ctx.mark_non_differentiable(bmean, bvar)
        return y, mc, ms, bmean, bvar

    @staticmethod
    def backward(ctx, gy, gmc, gms, _gmean, _gvar):
        return _input_grads(ctx.saved_tensors, ctx.flags, gy, gmc, gms)


class _EagerFusedY(torch.autograd.Function):
    """:class:`_EagerFused` for :func:`run_eager`: no BatchNorm, and only ``y`` as output, from nine
    inputs. Autograd's bookkeeping per input and output of a Function call is a large part of a
    small layer's training step."""

    @staticmethod
    def forward(ctx, K, x, w1, b1, w2, b2, wc, bc, max_first, identity):
        inputs = _no_bn_args(x, w1, b1, w2, b2, wc, bc, max_first, True, identity)
        outs = F.forward(K, *inputs)
        _setup(ctx, inputs, outs)
        return outs[0]

    @staticmethod
    def backward(ctx, gy):
        g = _input_grads(ctx.saved_tensors, ctx.flags, gy, None, None)
        return None, g[0], g[1], g[2], g[3], g[4], g[5], g[6], None, g[16]


def _no_bn_args(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], wc: Tensor,
                bc: Optional[Tensor], max_first: bool, need_idx: bool, identity: Optional[Tensor]) -> Tuple:
    """The op's 17 arguments for a spatial gate without BatchNorm."""
    return x, w1, b1, w2, b2, wc, bc, None, None, None, None, False, False, 1e-5, max_first, need_idx, identity


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
    # slower than eager (docs/PERFORMANCE.md), so there it is opt-in (impl="fused")
    return ok and backend_name(x) == "cpp"


def _check_config(x: Tensor, pool_types: Optional[List[str]], order: str, arrangement: str, act: str, gate: str,
                  pool_weight: Optional[Tensor], use_bn: bool, bn_weight: Optional[Tensor],
                  bn_bias: Optional[Tensor], bn_training: bool, bn_running_var: Optional[Tensor]) -> None:
    if arrangement != "channel_first" or act != "relu" or gate != "sigmoid" or pool_weight is not None or \
            sorted(pool_types or ["avg", "max"]) != ["avg", "max"] or order not in ("avg_max", "max_avg"):
        raise ValueError("the fused CBAM op covers arrangement='channel_first', pool_types avg+max, act='relu', "
                         "gate='sigmoid' and avg/max spatial pooling; use cbam.functional for other forms")
    fused_available(x, require=True)
    if use_bn and (bn_weight is None or bn_bias is None or (not bn_training and bn_running_var is None)):
        raise ValueError("use_bn=True needs bn_weight and bn_bias (and running statistics in eval mode)")


def fused_cbam_tail_with_gates(
    x: Tensor, identity: Optional[Tensor], fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor,
    fc2_bias: Optional[Tensor], conv_weight: Tensor, conv_bias: Optional[Tensor] = None,
    bn_weight: Optional[Tensor] = None, bn_bias: Optional[Tensor] = None, bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None, bn_training: bool = False, bn_momentum: Optional[float] = 0.1,
    bn_eps: float = 1e-5, use_bn: bool = False, pool_types: Optional[List[str]] = None, order: str = "avg_max",
    arrangement: str = "channel_first", act: str = "relu", gate: str = "sigmoid",
    pool_weight: Optional[Tensor] = None, num_batches_tracked: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`fused_cbam_with_gates` followed by the residual block's tail ``relu(y + identity)``
    (``identity`` None: no tail), in the op's last pass. ``identity``: ``x``'s shape and dtype."""
    _check_config(x, pool_types, order, arrangement, act, gate, pool_weight, use_bn, bn_weight, bn_bias, bn_training,
                  bn_running_var)
    if identity is not None and (identity.shape != x.shape or identity.dtype != x.dtype or
                                 identity.device != x.device):
        raise ValueError(f"the block tail's identity must match x: got {tuple(identity.shape)} {identity.dtype} on "
                         f"{identity.device} for x {tuple(x.shape)} {x.dtype} on {x.device}")
    return run_checked(x, identity, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, bn_weight,
                       bn_bias, bn_running_mean, bn_running_var, bn_training, bn_momentum, bn_eps, use_bn,
                       order == "max_avg", num_batches_tracked)


def run_checked(x: Tensor, identity: Optional[Tensor], w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                b2: Optional[Tensor], wc: Tensor, bc: Optional[Tensor], bn_w: Optional[Tensor],
                bn_b: Optional[Tensor], rm: Optional[Tensor], rv: Optional[Tensor], bn_training: bool,
                bn_momentum: Optional[float], bn_eps: float, use_bn: bool, max_first: bool,
                num_batches_tracked: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`fused_cbam_tail_with_gates` after its checks, for callers that have made them: a module
    whose configuration the op covers by construction (:class:`cbam.CBAM` with ``uses_fused``), with
    ``identity`` None or matching ``x``. Skipping them saves microseconds per call on small layers."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    n, c, h, w = x.shape
    # the argmax routes are needed only when a gradient will flow back
    need_idx = torch.is_grad_enabled() and (
        x.requires_grad or w1.requires_grad or w2.requires_grad or wc.requires_grad or
        any(t is not None and t.requires_grad for t in (identity, b1, b2, bc, bn_w, bn_b)))
    args = (x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, bn_training, float(bn_eps), max_first, need_idx,
            identity)
    # eager calls run the implementation without the custom op's dispatch round trip, which costs several
    # times the kernels of a small layer (inference records no autograd node at all). Compilers,
    # exporters and dispatch modes (FLOP counting, fake tensors) still see the registered op.
    eager = not torch.compiler.is_compiling() and not torch.jit.is_tracing() and torch._C._len_torch_dispatch_stack() == 0
    if eager and need_idx:
        y, mc, ms, bmean, bvar = _EagerFused.apply(*args)
    else:
        y, mc, ms, *_, bmean, bvar, _ = F.forward(kernels_for(x), *args) if eager else _fwd(*args)
    if use_bn and bn_training and rm is not None and rv is not None:
        _update_running_stats(bmean, bvar, n * h * w, rm, rv, bn_momentum, num_batches_tracked)
    mc = mc.view(n, c, 1, 1)
    return y, (mc if mc.dtype == x.dtype else mc.to(x.dtype)), (ms if ms.dtype == x.dtype else ms.to(x.dtype))


def run_eager(x: Tensor, identity: Optional[Tensor], w1: Tensor, b1: Optional[Tensor], w2: Tensor,
              b2: Optional[Tensor], wc: Tensor, bc: Optional[Tensor], max_first: bool,
              inplace: bool = False, bn: Optional[Tuple[Tensor, Tensor, Tensor, Tensor, float]] = None
              ) -> Optional[Tensor]:
    """:func:`run_checked`'s ``y`` for the common eager call (no BatchNorm in the spatial gate, or an
    eval-mode one in inference), in fewer Python steps; None where the call needs :func:`run_checked`
    (C++ kernels not loaded yet, a compiler, exporter, tracer or dispatch mode active, a dtype, device
    or layout the kernels do not take directly, an ``identity`` unlike ``x``, autocast where the
    kernels would not run per sample). Inside a network every Python step meets caches that the
    layers before it have flushed and costs several times its warm time: the checks here are
    C-level calls where one exists. ``inplace``: where no gradient is recorded, ``y`` is written over
    ``x`` (a block's own temporary: no fresh output to bring into cache), as ``nn.ReLU(inplace=True)``.
    ``bn``: an eval-mode BatchNorm of the spatial gate, ``(weight, bias, running_mean, running_var,
    eps)``, folded into the gate; inference per sample only (else None)."""
    K = _cpu.loaded()
    if (K is None or not x.is_cpu or x.dtype not in _FLOAT or torch.compiler.is_compiling()
            or torch._C._is_tracing() or torch._C._len_torch_dispatch_stack()):
        return None
    if not (x.is_contiguous() or F.per_sample_nhwc(x)):
        return None
    if identity is not None:
        if identity.shape != x.shape or identity.dtype != x.dtype or not identity.is_cpu:
            return None
        fmt = F.memory_format(x)  # the kernels read the identity in x's layout
        if not identity.is_contiguous(memory_format=fmt):
            identity = identity.contiguous(memory_format=fmt)
    if torch.is_grad_enabled() and (x.requires_grad or w1.requires_grad or w2.requires_grad or wc.requires_grad or
                                    any(t is not None and t.requires_grad for t in (identity, b1, b2, bc))):
        # per sample (and an MLP small enough for group 1 and the per-sample backward): a C++ autograd
        # node, no Python between autograd and the kernels
        if bn is not None:
            return None
        if w1.numel() < F.GROUP_MIN_WEIGHTS and F.per_sample(K, x):
            return K.train_forward(x, w1, b1, w2, b2, wc, bc, identity, max_first)
        return None if torch._C._is_any_autocast_enabled() else \
            _EagerFusedY.apply(K, x, w1, b1, w2, b2, wc, bc, max_first, identity)
    if F.per_sample(K, x):  # one C++ call; its kernels keep their small math in float32 and call no op
        # that autocast would route (the batch-wide passes' MLP does: F.forward's autocast guard)
        return K.infer_forward(x, w1, b1, w2, b2, wc, bc, identity, max_first, inplace,
                               1 if w1.numel() < F.GROUP_MIN_WEIGHTS else F.mlp_group(x, w1), *(bn or _NO_BN))
    if bn is not None or torch._C._is_any_autocast_enabled():
        return None
    return F.forward(K, *_no_bn_args(x, w1, b1, w2, b2, wc, bc, max_first, False, identity), inplace)[0]


_NO_BN = (None, None, None, None, 1e-5)


def _update_running_stats(bmean: Tensor, bvar: Tensor, m: int, rm: Tensor, rv: Tensor, momentum: Optional[float],
                          num_batches_tracked: Optional[Tensor]) -> None:
    """As ``F.batch_norm`` in training: unbiased variance; ``momentum=None`` is the cumulative
    average over the batches seen (``num_batches_tracked``, already counting this one)."""
    if momentum is None:
        momentum = 1.0 / float(num_batches_tracked) if num_batches_tracked is not None and \
            int(num_batches_tracked) > 0 else 1.0
    with torch.no_grad():
        rm.lerp_(bmean.to(rm.dtype), momentum)
        rv.lerp_((bvar * m / max(m - 1, 1)).to(rv.dtype), momentum)


def fused_cbam_with_gates(x: Tensor, *args, **kwargs) -> Tuple[Tensor, Tensor, Tensor]:
    """Same signature and result as :func:`cbam.functional.cbam_with_gates`, for the configuration the
    fused op covers; updates BN running statistics like ``F.batch_norm``."""
    return fused_cbam_tail_with_gates(x, None, *args, **kwargs)


def fused_cbam(x: Tensor, *args, **kwargs) -> Tensor:
    """Same signature and result as :func:`cbam.functional.cbam` (fused configurations only)."""
    return fused_cbam_tail_with_gates(x, None, *args, **kwargs)[0]


def fused_cbam_tail(x: Tensor, identity: Tensor, *args, **kwargs) -> Tensor:
    """``relu(cbam(x) + identity)``: :func:`cbam.functional.cbam_tail`'s twin."""
    return fused_cbam_tail_with_gates(x, identity, *args, **kwargs)[0]
