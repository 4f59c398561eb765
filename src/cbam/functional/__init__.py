"""The math of CBAM and its family, as plain functions on tensors and weights.

This is the one readable definition: every module in :mod:`cbam.attention`
calls these functions, and every fast path in :mod:`cbam.ops` is tested
against them. All functions are TorchScript-compatible, so non-linearities
are passed by name (see :data:`ACTIVATIONS`); in eager mode, torch.compile and
export a callable (e.g. an ``nn.Module`` instance) is accepted as well.

Shapes: ``x`` is ``(N, C, *S)``. The CBAM functions (``channel_*``,
``spatial_*``, ``cbam*``) take any number of spatial dimensions: ``(N, C, L)``,
``(N, C, H, W)`` or ``(N, C, D, H, W)``, with a conv weight of the same rank
(``(1, 2, k)``, ``(1, 2, k, k)``, ``(1, 2, k, k, k)``); the other functions are
2-D. Every ``*_attention`` function returns a tensor of the shape of ``x``,
every ``*_gate`` function the weights that multiply ``x`` (broadcastable to it).

Pooling uses reductions (``mean``/``max``), never adaptive pooling: adaptive
pooling produced NaN under AMP with channels_last in other projects, and
exports to ONNX less cleanly (as ``MaxPool`` with a fixed window, or not at all).
Max pooling is ``max(dim)`` rather than ``amax``: equal values, but the gradient
goes to the first maximal element only, as with the authors' max pooling
(``amax`` splits it among ties); the fused kernels route it the same way.

Determinism: ``max(dim)``'s backward writes each output's gradient to its one
argmax (a scatter without collisions), and mean's backward is a broadcast, so
forward and backward are deterministic on CPU and CUDA under
``torch.use_deterministic_algorithms(True)``. ``adaptive_max_pool2d``, whose
CUDA backward has no deterministic kernel and raises in that mode, is never used.
"""
from ._core import (ACTIVATIONS, POOL_TYPES, activation, cbam, cbam1d, cbam3d, cbam_tail, cbam_with_gates,
                    channel_attention,
                    channel_descriptors, channel_gate, spatial_attention, spatial_descriptors, spatial_gate,
                    spatial_logits)
from ._family import (bam, bam_gate, coord_attention, coord_pool, coord_split_gates, eca, eca_kernel_size,
                      efficient_channel_attention, efficient_channel_gate, se, simam, simam_gate, squeeze_excite)

__all__ = [
    "ACTIVATIONS", "POOL_TYPES", "activation",
    "channel_descriptors", "channel_gate", "channel_attention",
    "spatial_descriptors", "spatial_logits", "spatial_gate", "spatial_attention",
    "cbam", "cbam_with_gates", "cbam_tail", "cbam1d", "cbam3d",
    "squeeze_excite", "se",
    "eca_kernel_size", "efficient_channel_gate", "efficient_channel_attention", "eca",
    "simam_gate", "simam",
    "coord_pool", "coord_split_gates", "coord_attention",
    "bam_gate", "bam",
]
