"""Which kernels run the fused op for a tensor, and its forward written over them.

Kernels: C++ (CPU, contiguous NCHW or channels_last), Triton (CUDA, contiguous NCHW) and torch
ops for everything else. On the CPU the whole forward runs per sample while the sample is in
cache, or is small (:func:`per_sample`), and without a pending gradient (``need_idx=False``) no argmax routes
are tracked. With an ``identity`` the last pass also forms the residual block's tail,
``relu(y + identity)``.
"""
import math
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _cpu, _cpuinfo
from . import _torch_kernels as TK
from ._small import mlp_forward, spatial_forward


_LLC: Dict[int, int] = {}


def _llc_bytes(threads: int) -> int:
    """The last-level cache that ``threads`` threads can count on (their share of it, see
    :func:`._cpuinfo.llc_bytes`): decides whether a sample stays cached between passes. Read once per
    thread count (``CBAM_LLC_BYTES`` included): reading the environment took about 7 us a call with
    the cold caches a layer meets inside a network."""
    b = _LLC.get(threads)
    if b is None:
        b = _LLC[threads] = _cpuinfo.llc_bytes(threads)
    return b


def memory_format(x: Tensor) -> torch.memory_format:
    """The layout the kernels read ``x`` in: NCHW when contiguous, else channels_last."""
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


def _triton():
    if not torch.cuda.is_available():
        return None
    try:
        from . import _triton_kernels
        return _triton_kernels if _triton_kernels.AVAILABLE else None
    except ImportError:
        return None


# Samples up to this many elements run per sample with fewer samples than threads: there the ~20 torch
# ops and kernel calls of the batch-wide passes cost more than the threads that find no sample (batch 1
# on 2 threads: a ResNet-20 layer 2.9-3.4x faster per sample, ResNet-50's layers below it 1.8-2.3x).
SMALL_SAMPLE = 1 << 19


def kernels_for(x: Tensor) -> ModuleType:
    """The kernel set that runs for ``x``: C++ (CPU, NCHW or channels_last), Triton (CUDA NCHW, up to
    float32) or torch."""
    if x.device.type == "cpu" and (x.is_contiguous() or per_sample_nhwc(x)):
        # while torch.compile traces a module, only kernels built already count (a build is no graph op)
        mod = _cpu.loaded() if torch.compiler.is_compiling() else _cpu.load()
        if mod is not None:
            return mod
    if x.device.type == "cuda" and x.is_contiguous() and x.dtype != torch.float64:  # Triton's math is float32
        tri = _triton()
        if tri is not None:
            return tri
    return TK


def per_sample_nhwc(x: Tensor) -> bool:
    """channels_last has only per-sample C++ kernels, whose threads take whole samples: with fewer
    samples than threads only a small sample (:data:`SMALL_SAMPLE`) is left to them."""
    return x.is_contiguous(memory_format=torch.channels_last) and (
        x.shape[0] >= torch.get_num_threads() or x.numel() // max(x.shape[0], 1) <= SMALL_SAMPLE)


def backend_name(x: Tensor) -> str:
    k = kernels_for(x)
    return "torch" if k is TK else ("triton" if x.device.type == "cuda" else "cpp")


def per_sample(K: ModuleType, x: Tensor) -> bool:
    """Whether the C++ per-sample kernels run: always for channels_last (they are its only C++
    kernels: a pass over a sample's pixel rows is as cheap cached or not). For NCHW when a sample
    stays in the last-level cache between the passes and every thread gets the same number of
    samples (or at least four); with fewer samples than threads, or an uneven split below four per
    thread, only when the sample is small (:data:`SMALL_SAMPLE`) as well."""
    if not hasattr(K, "forward_samples"):
        return False
    if not x.is_contiguous():
        return True
    n, threads = x.shape[0], torch.get_num_threads()
    per = x.numel() // max(n, 1)
    if n < threads:
        return per <= SMALL_SAMPLE
    fits = per * x.element_size() * threads <= _llc_bytes(threads) // 2
    return fits and (per <= SMALL_SAMPLE or n % threads == 0 or n >= 4 * threads)


# Below this many MLP weights (w1) the per-sample forward runs the MLP per sample (group 1), and the
# per-sample backward handles it (see mlp_group, _backward.backward).
GROUP_MIN_WEIGHTS = 1 << 17


def mlp_group(x: Tensor, w1: Tensor) -> int:
    """How many samples the per-sample forward pools before one batched MLP call (1: per sample).
    With ~2 MB of MLP weights (C = 2048) a (G, C) x (C, hid) matmul beats G mat-vecs once G >= 8
    (below that BLAS is slower); the G samples (a thread's share, in equal groups that fit half
    the last-level cache across threads) wait in cache for the rest of the forward."""
    if w1.numel() < GROUP_MIN_WEIGHTS:
        return 1
    n, threads = x.shape[0], torch.get_num_threads()
    share = -(-n // threads)
    fit = max(1, _llc_bytes(threads) // (2 * threads) // max(1, x[0].numel() * x.element_size()))
    g = -(-share // -(-share // fit))  # equal groups of at most `fit`
    return g if g >= 8 else 1


_EMPTY: Dict[Tuple[torch.device, torch.dtype], Tensor] = {}


def empty_arg(x: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """An empty tensor on ``x``'s device, for a kernel argument that is absent (the C++ kernels read
    it as "none"). Shared: kernels never write their inputs, and a fresh one per argument cost a few
    microseconds each, several per call of a small layer."""
    key = (x.device, x.dtype if dtype is None else dtype)
    t = _EMPTY.get(key)
    if t is None:
        with torch.inference_mode(False):  # usable whatever mode the first call ran in
            t = _EMPTY[key] = torch.empty(0, dtype=key[1], device=key[0])
    return t


def acc_arg(t: Optional[Tensor], x: Tensor, acc: torch.dtype) -> Tensor:
    """A weight as the C++ kernels take it: contiguous, in the accumulation dtype; None -> empty.
    The tensor itself where it already is (the kernels only read it, and run under no-grad: no
    detach needed; each conversion call costs microseconds, which add up on small layers)."""
    if t is None:
        return empty_arg(x, acc)
    return t if t.dtype == acc and t.is_contiguous() else t.to(acc).contiguous()


def conv_arg(t: Tensor, acc: torch.dtype) -> Tensor:
    """The spatial conv's weight for the C++ kernels: in the accumulation dtype, any layout (they copy a
    channels_last one themselves, for less than a copy from Python costs)."""
    return t if t.dtype == acc else t.to(acc)


def no_idx(x: Tensor) -> Tensor:
    return x.new_empty(0, dtype=torch.int32)


def forward(K: ModuleType, x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
            wc: Tensor, bc: Optional[Tensor], bn_w: Optional[Tensor], bn_b: Optional[Tensor], rm: Optional[Tensor],
            rv: Optional[Tensor], use_bn: bool, training: bool, eps: float, max_first: bool, need_idx: bool = True,
            identity: Optional[Tensor] = None, inplace: bool = False) -> List[Tensor]:
    """-> [y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bn mean, bn var, MLP pre-activations].
    ``inplace`` (C++ kernels, ``need_idx=False`` only): y may be written over x."""
    if torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled(x.device.type):
        # the op reads x in its own dtype and keeps its small math in float32; under autocast the torch
        # kernels' matmuls would round the MLP to bf16/fp16, and the backward would meet mixed dtypes
        with torch.autocast(x.device.type, enabled=False):
            return forward(K, x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps, max_first,
                           need_idx, identity, inplace)
    n, c, h, w = x.shape
    if identity is not None:
        identity = identity.contiguous(memory_format=memory_format(x))
    if per_sample(K, x):
        return _forward_samples(K, x, w1, b1, w2, b2, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps, max_first,
                                need_idx, identity, inplace)
    p_avg, p_max, idx_c = K.channel_pool(x)
    mc, pre = mlp_forward(p_avg, p_max, w1, b1, w2, b2)
    s_avg, s_max, idx_s = K.spatial_pool(x, mc, need_idx)
    sd = torch.stack([s_max, s_avg] if max_first else [s_avg, s_max], 1).view(n, 2, h, w)
    ms, bmean, bvar = spatial_forward(sd, wc, bc, bn_w, bn_b, rm, rv, use_bn, training, eps)
    # with the block tail in the same pass; over x only where nothing needs x afterwards
    y = K.apply(x, mc, ms.view(n, h * w), identity, True) if inplace and not need_idx and hasattr(K, "forward_samples") else \
        K.apply(x, mc, ms.view(n, h * w), identity)
    if not need_idx:  # inference: the argmax routes and pre-activations are only for backward
        idx_c, idx_s, pre = no_idx(x), no_idx(x), pre.new_empty(0)
    return [y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre]


def _forward_samples(K: ModuleType, x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                     wc: Tensor, bc: Optional[Tensor], bn_w: Optional[Tensor], bn_b: Optional[Tensor],
                     rm: Optional[Tensor], rv: Optional[Tensor], use_bn: bool, training: bool, eps: float,
                     max_first: bool, need_idx: bool, identity: Optional[Tensor], inplace: bool = False) -> List[Tensor]:
    """The whole forward per sample in C++ (cbam_sample.cpp); eval-mode BN is folded into the
    conv's output affine, training-mode BN needs the batch statistics before the gate is applied."""
    n, c, h, w = x.shape
    acc = TK.acc_dtype(x)
    cast = lambda t: acc_arg(t, x, acc)  # noqa: E731
    scale, shift, bn_train = 1.0, 0.0, use_bn and training
    if use_bn and not training:  # one channel: fold in Python floats (double), no tensor ops per call
        inv = float(bn_w) / math.sqrt(float(rv) + eps)
        scale, shift = inv, float(bn_b) - float(rm) * inv
    ident = empty_arg(x) if identity is None else identity
    # the kernel returns ms as (N, 1, H, W), and zeros for the BN statistics (tensor calls cost
    # microseconds each from Python, which a small layer's kernels do not)
    y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, pre, bmean, bvar = K.forward_samples(
        x, cast(w1), cast(b1), cast(w2), cast(b2), conv_arg(wc, acc), 0.0 if bc is None else float(bc), scale, shift,
        max_first, need_idx, not bn_train, mlp_group(x, w1), ident, inplace)
    if use_bn and not training:
        bmean, bvar = rm.to(acc).reshape(1).clone(), rv.to(acc).reshape(1).clone()
    if bn_train:  # the ms slot holds the conv output u
        bmean, bvar = ms.mean().reshape(1), ms.var(unbiased=False).reshape(1)
        ms = torch.sigmoid((ms - bmean) * torch.rsqrt(bvar + eps) * bn_w.to(acc) + bn_b.to(acc))
        y = K.apply_samples(x, mc, ms.view(n, h * w), ident)
    return [y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, bmean, bvar, pre]
