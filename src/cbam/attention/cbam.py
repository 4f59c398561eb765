"""CBAM: channel then spatial attention, with the paper's, the authors' and timm's forms."""

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules import module as M

from .. import ops
from ._base import LayerSpec, check_channels, check_dims, check_input, either, exporting, module_attr
from .channel import ChannelAttention
from .spatial import SpatialAttention

#: Named presets. ``paper`` follows the equations of the paper; ``official`` the
#: authors' code (Linear MLP with bias; conv 7x7 + BatchNorm(momentum 0.01) with
#: the BN weight initialised to 0; spatial descriptors concatenated [max, mean]);
#: ``timm`` follows timm's ``CbamModule`` (1x1-conv MLP without bias, conv + BN,
#: [mean, max]).
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(mlp_bias=False, spatial_bias=False, spatial_norm=False, pool_order="avg_max"),
    "official": dict(mlp_bias=True, spatial_bias=False, spatial_norm=True, bn_zero_init=True,
                     bn_momentum=0.01, pool_order="max_avg"),
    "timm": dict(mlp_bias=False, spatial_bias=False, spatial_norm=True, bn_zero_init=False,
                 bn_momentum=0.1, pool_order="avg_max"),
}

ARRANGEMENTS = ("channel_first", "spatial_first", "parallel")
IMPLS = ("auto", "reference", "fused")


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo, Park, Lee, Kweon, ECCV 2018).

    ``x' = M_c(x) * x``, ``y = M_s(x') * x'`` (paper eq. 1) with the channel gate
    of :class:`ChannelAttention` and the spatial gate of :class:`SpatialAttention`.
    Returns the attended feature map, not the gate.

    Args:
        channels: C of the input.
        reduction: MLP ratio r (default 16, the paper's); hidden width ``max(min_channels, C // r)``.
        kernel_size: spatial conv size, any odd k >= 1 (default 7, the paper's).
        pool_types: channel descriptors (paper: avg and max; also lp, lse).
        arrangement: ``channel_first`` (paper), ``spatial_first`` or ``parallel``.
        mlp_bias, spatial_bias, spatial_norm, pool_order, bn_zero_init, bn_momentum:
            the switches in which the paper, the authors' code and timm differ;
            see :data:`PRESETS` and :meth:`from_preset`. ``bn_momentum=None`` is a
            cumulative moving average, as in ``nn.BatchNorm2d``.
        spatial_pool: ``avgmax`` (paper) or ``conv`` (1x1-conv pooling, ablation).
        act_layer, gate_layer: name, ``nn.Module`` class, ``functools.partial`` or callable
            (default ReLU / sigmoid); only names run the fused kernels and TorchScript.
        rd_ratio, rd_channels, rd_divisor, spatial_kernel_size: timm's ``CbamModule`` names
            (``rd_ratio`` = 1 / reduction), so ``partial(CBAM, rd_ratio=1/8)`` is a timm ``attn_layer``.
        impl: ``auto`` uses the fused kernels of :mod:`cbam.ops` where they apply
            (2-D, channel-first, avg+max, ReLU/sigmoid, a plain BatchNorm2d) and the
            reference otherwise; ``reference`` always uses :mod:`cbam.functional`;
            ``fused`` insists. While exporting or tracing (``torch.export``,
            ``torch.onnx.export``, ``torch.jit.trace``) every impl records the reference
            math, made of standard ops; ``torch.compile`` keeps the fused op. The fused
            op has no double backward: use ``reference`` for ``create_graph=True``.
        dims: 1 ``(N, C, L)``, 2 ``(N, C, H, W)`` or 3 ``(N, C, D, H, W)``; see :class:`CBAM1d`, :class:`CBAM3d`.

    Shape: ``(N, C, *S) -> (N, C, *S)``. With ``record_maps = True`` the last
    gates are kept (detached) in ``last_channel_map`` ``(N, C, 1, ...)`` and
    ``last_spatial_map`` ``(N, 1, *S)``.
    """

    record_maps: bool
    last_channel_map: Optional[Tensor]
    last_spatial_map: Optional[Tensor]

    def __init__(
        self,
        channels: int,
        reduction: Optional[float] = None,
        kernel_size: Optional[int] = None,
        *,
        pool_types: Sequence[str] = ("avg", "max"),
        arrangement: str = "channel_first",
        mlp_bias: bool = False,
        spatial_bias: bool = False,
        spatial_norm: bool = False,
        pool_order: str = "avg_max",
        bn_zero_init: bool = False,
        bn_momentum: Optional[float] = 0.1,
        spatial_pool: str = "avgmax",
        hidden_channels: Optional[int] = None,
        min_channels: int = 1,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        impl: str = "auto",
        rd_ratio: Optional[float] = None,
        rd_channels: Optional[int] = None,
        rd_divisor: Optional[int] = None,
        spatial_kernel_size: Optional[int] = None,
        dims: int = 2,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.label = type(self).__name__
        self.channels = check_channels(channels, self.label)
        self.dims = check_dims(dims, self.label)
        if arrangement not in ARRANGEMENTS:
            raise ValueError(f"{self.label}: unknown arrangement '{arrangement}'; valid: {', '.join(ARRANGEMENTS)}")
        if impl not in IMPLS:
            raise ValueError(f"{self.label}: unknown impl '{impl}'; valid: {', '.join(IMPLS)}")
        self.arrangement = arrangement
        fk = {"device": device, "dtype": dtype}
        self.channel = ChannelAttention(channels, reduction, pool_types, hidden_channels=hidden_channels,
                                        min_channels=min_channels, mlp_bias=mlp_bias, act_layer=act_layer,
                                        gate_layer=gate_layer, rd_ratio=rd_ratio, rd_channels=rd_channels,
                                        rd_divisor=rd_divisor, dims=dims, **fk)
        k = either("kernel_size", kernel_size, "spatial_kernel_size", spatial_kernel_size, 7)
        self.spatial = SpatialAttention(k, channels=channels, pool=spatial_pool, pool_order=pool_order,
                                        norm=spatial_norm, bn_zero_init=bn_zero_init, bn_momentum=bn_momentum,
                                        bias=spatial_bias, gate_layer=gate_layer, dims=dims, **fk)
        self.impl = impl
        self.fusable = (dims == 2 and arrangement == "channel_first" and len(self.channel.pool_types) == 2
                        and sorted(self.channel.pool_types) == ["avg", "max"] and self.channel.act == "relu"
                        and self.channel.gate == "sigmoid" and self.spatial.gate == "sigmoid"
                        and spatial_pool == "avgmax")
        if impl == "fused" and not self.fusable:
            raise ValueError(f"{self.label}(impl='fused') covers 2-D inputs, channel_first, pool_types=('avg', "
                             f"'max'), ReLU and sigmoid (by name) with avg/max spatial pooling; use impl='auto' or "
                             f"'reference' for this configuration")
        self.record_maps = False
        self.last_channel_map = None
        self.last_spatial_map = None

    @classmethod
    def from_preset(cls, preset: str, channels: int, **overrides: Any) -> "CBAM":
        """Build the ``paper``, ``official`` (authors' code) or ``timm`` form; keyword
        arguments override single switches."""
        if preset not in PRESETS:
            raise ValueError(f"unknown CBAM preset '{preset}'; valid: {', '.join(PRESETS)}")
        return cls(channels, **{**PRESETS[preset], **overrides})

    def reset_parameters(self) -> None:
        """Re-initialise both gates (PyTorch defaults; the authors' zero BN weight with ``bn_zero_init``)."""
        self.channel.reset_parameters()
        self.spatial.reset_parameters()

    @torch.jit.unused
    def uses_fused(self, x: Tensor) -> bool:
        """Whether ``forward(x)`` takes the fused path of :mod:`cbam.ops`."""
        if self.impl == "reference" or not self.fusable or not module_attr(self, "spatial").plain_bn() or exporting():
            return False  # a converted BN (SyncBatchNorm) must run itself; exporters get standard ops
        return ops.fused_available(x, require=self.impl == "fused")

    @torch.jit.unused
    def _fused(self, x: Tensor, bn_args: Tuple, identity: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        A = module_attr  # plain getattr costs more than a small layer's kernels (see module_attr)
        fc1, fc2, conv = A(A(self, "channel"), "fc1"), A(A(self, "channel"), "fc2"), A(A(self, "spatial"), "conv")
        # uses_fused has checked what fused_cbam_tail_with_gates would (the configuration holds by
        # construction), and forward_tail the identity: the op runs without repeating the checks
        y, mc, ms = ops.fused.run_checked(x, identity, A(fc1, "weight"), A(fc1, "bias"), A(fc2, "weight"),
                                          A(fc2, "bias"), A(conv, "weight"), A(conv, "bias"), *bn_args,
                                          A(self, "spatial").pool_order == "max_avg")
        return y, mc, ms  # the op's backward refuses create_graph=True, naming impl="reference"

    def _reference(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """:func:`cbam.functional.cbam_with_gates`, with each gate from its submodule (so a
        converted BN runs itself)."""
        ch, sp = self.channel, self.spatial
        if self.arrangement == "spatial_first":
            ms = sp.compute_gate(x)
            x1 = x * ms
            mc = ch.compute_gate(x1)
            return x1 * mc, mc, ms
        if self.arrangement == "parallel":
            mc, ms = ch.compute_gate(x), sp.compute_gate(x)
            return x * mc * ms, mc, ms
        mc = ch.compute_gate(x)
        x1 = x * mc
        ms = sp.compute_gate(x1)
        return x1 * ms, mc, ms

    @torch.jit.unused
    def _eager_fused(self, x: Tensor, identity: Optional[Tensor], inplace: bool = False) -> Optional[Tensor]:
        """The fused op's ``y`` (or block tail) for the common eager call, through
        :func:`cbam.ops.fused.run_eager`; None where :meth:`uses_fused` and the general path decide
        (a reference impl, recorded maps, BatchNorm in the spatial gate in training mode or while a
        gradient is recorded, a parametrized weight, hooks on a tail call, an input that the checks
        would reject). Each attribute is read from the
        module dicts directly: inside a network these lookups meet cold caches."""
        if torch.compiler.is_compiling() or torch._C._is_tracing():  # before any test that a tracer would record
            return None
        d = self.__dict__
        if d["impl"] == "reference" or not d["fusable"] or d["record_maps"]:
            return None
        mods = d["_modules"]
        sp = mods["spatial"]
        if x.dim() != 4 or x.shape[1] != d["channels"] or x.numel() == 0:
            return None
        bn = module_attr(sp, "bn")
        if bn is not None:  # eval mode with running statistics: folded into the gate (inference only)
            bn = _eval_bn(bn)
            if bn is None:
                return None
        ch = mods["channel"]._modules
        p1, p2, pc = ch["fc1"]._parameters, ch["fc2"]._parameters, sp._modules["conv"]._parameters
        w1, w2, wc = p1.get("weight"), p2.get("weight"), pc.get("weight")
        if w1 is None or w2 is None or wc is None or (identity is not None and _has_hooks(self)):
            return None
        return ops.fused.run_eager(x, identity, w1, p1.get("bias"), w2, p2.get("bias"), wc, pc.get("bias"),
                                   sp.pool_order == "max_avg", inplace, bn)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            y = self._eager_fused(x, None)
            if y is not None:
                return y
        check_input(x, self.channels, self.label, self.dims)
        if not torch.jit.is_scripting() and self.uses_fused(x):
            y, mc, ms = self._fused(x, module_attr(self, "spatial").bn_args(x))
        else:
            y, mc, ms = self._reference(x)
        if self.record_maps:
            self.last_channel_map = mc.detach()
            self.last_spatial_map = ms.detach()
        return y

    def forward_tail(self, x: Tensor, identity: Tensor, inplace: bool = False) -> Tensor:
        """``relu(self(x) + identity)``, the tail of a residual block whose branch ends in this module:
        on the fused path the op's last pass forms it, so the network reads ``identity`` once instead
        of writing ``self(x)`` and reading it back. Residual blocks call this when the module has it.
        ``inplace=True`` lets the fused path write the result over ``x`` where no gradient is recorded
        (inference), as ``nn.ReLU(inplace=True)`` does: for a block's own temporary, whose fresh output
        would otherwise have to be brought into cache. ``(N, C, H, W), (N, C, H, W) -> (N, C, H, W)``."""
        if not torch.jit.is_scripting():
            y = self._eager_fused(x, identity, inplace)
            if y is not None:
                return y
        if not torch.jit.is_scripting() and self._tail_fusable(x, identity):
            check_input(x, self.channels, self.label, self.dims)
            y, mc, ms = self._fused(x, module_attr(self, "spatial").bn_args(x), identity)
            if self.record_maps:
                self.last_channel_map = mc.detach()
                self.last_spatial_map = ms.detach()
            return y
        return torch.relu(self(x) + identity)

    @torch.jit.unused
    def _tail_fusable(self, x: Tensor, identity: Tensor) -> bool:
        # hooks (the module's own or global ones) expect a call of the module: then it runs as self(x)
        return (self.uses_fused(x) and not _has_hooks(self) and identity.shape == x.shape
                and identity.dtype == x.dtype and identity.device == x.device)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, arrangement={self.arrangement}, impl={self.impl}"
                + ("" if self.fusable else " (reference only)") + (f", dims={self.dims}" if self.dims != 2 else ""))


def _eval_bn(bn: nn.Module) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor, float]]:
    """``(weight, bias, running_mean, running_var, eps)`` of a plain ``nn.BatchNorm2d`` in eval mode with
    running statistics (what the short path folds into the gate); None for anything else."""
    d = bn.__dict__
    if type(bn) is not nn.BatchNorm2d or d["training"]:
        return None
    p, b = d["_parameters"], d["_buffers"]
    w, bias, rm, rv = p.get("weight"), p.get("bias"), b.get("running_mean"), b.get("running_var")
    if w is None or bias is None or rm is None or rv is None:
        return None
    return w, bias, rm, rv, d["eps"]


def _has_hooks(m: nn.Module) -> bool:
    """Whether calling ``m`` would run hooks: its own forward/backward hooks or global module hooks."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or M._global_forward_hooks or M._global_forward_pre_hooks or M._global_backward_hooks
                or M._global_backward_pre_hooks)


class CBAM1d(CBAM):
    """CBAM for sequences and audio: ``(N, C, L) -> (N, C, L)``, the spatial gate a 1-D conv
    over L. Arguments as :class:`CBAM`; always the reference math."""

    def __init__(self, channels: int, reduction: Optional[float] = None, kernel_size: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(channels, reduction, kernel_size, dims=1, **kwargs)


class CBAM3d(CBAM):
    """CBAM for volumes and video: ``(N, C, D, H, W) -> (N, C, D, H, W)``, the spatial gate a
    k x k x k conv. Arguments as :class:`CBAM`; always the reference math."""

    def __init__(self, channels: int, reduction: Optional[float] = None, kernel_size: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(channels, reduction, kernel_size, dims=3, **kwargs)
