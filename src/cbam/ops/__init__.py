"""Fast paths for the math of :mod:`cbam.functional`, with the same signatures.

:func:`fused_cbam` / :func:`fused_cbam_with_gates` mirror :func:`cbam.functional.cbam`
/ :func:`cbam.functional.cbam_with_gates` for the configuration they cover
(channel-first, avg+max, ReLU, sigmoid; with or without the spatial BN);
:func:`fused_cbam_tail` mirrors :func:`cbam.functional.cbam_tail`, CBAM followed by the
residual block's ``relu(y + identity)``.
"""
from . import flops  # noqa: F401  (registers the fused op's FLOP formula with torch.utils.flop_counter)
from ._cpu import empty_output_cache, output_cache_bytes, set_output_cache_limit
from .fused import (backend_name, fused_available, fused_cbam, fused_cbam_tail, fused_cbam_tail_with_gates,
                    fused_cbam_with_gates, kernels_for)

__all__ = ["backend_name", "empty_output_cache", "fused_available", "fused_cbam", "fused_cbam_tail",
           "fused_cbam_tail_with_gates", "fused_cbam_with_gates",
           "kernels_for", "output_cache_bytes", "set_output_cache_limit"]
