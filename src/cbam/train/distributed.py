"""torchrun support: process-group set-up and a CPU-capable synchronised BatchNorm.

``torch.nn.SyncBatchNorm`` only runs on GPUs; :class:`SyncBatchNorm2d` (and its 1-D/3-D
twins) all-reduces the per-channel sums with a differentiable collective, so K gloo
processes with global batch B compute the same BN statistics, running statistics
included, and the same gradients, as one process with batch B; this holds for the BNs
inside attention modules too.
"""
import os
from typing import Tuple

import torch
import torch.distributed as dist
from torch import nn


_depth = 0  # nested setup() calls (ablate -> train): only the outermost tears the group down


def setup() -> Tuple[int, int, torch.device]:
    """Initialise the process group when launched by torchrun; returns (rank, world, device)."""
    global _depth
    world = int(os.environ.get("WORLD_SIZE", "1"))
    _depth += 1
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def cleanup() -> None:
    global _depth
    _depth = max(0, _depth - 1)
    if _depth == 0 and dist.is_initialized():
        dist.destroy_process_group()


class _SyncStats:
    """``forward`` of a BatchNorm whose training statistics span all processes; the class it is
    mixed into (``nn.BatchNorm1d/2d/3d``) supplies the parameters and runs alone otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        from torch.distributed.nn.functional import all_reduce
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # low precision: statistics in fp32
        # two passes (mean, then centred squares) to avoid E[x^2] - E[x]^2 cancellation
        local = torch.cat([xf.sum(dims), torch.full((1,), float(x.numel() // c), device=x.device)])
        tot = all_reduce(local)
        n = tot[-1]
        mean = tot[:c] / n
        var = all_reduce((xf - mean.view(shape)).square().sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean.detach(), var.detach(), n)
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        # as nn.BatchNorm: unbiased variance; momentum None = cumulative average over the batches seen
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), m)


class SyncBatchNorm1d(_SyncStats, nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span all processes (works with gloo on CPU)."""


class SyncBatchNorm2d(_SyncStats, nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all processes (works with gloo on CPU)."""


class SyncBatchNorm3d(_SyncStats, nn.BatchNorm3d):
    """BatchNorm3d whose training statistics span all processes (works with gloo on CPU)."""


_SYNC = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d, nn.BatchNorm3d: SyncBatchNorm3d}


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every plain ``BatchNorm1d/2d/3d`` for its synchronised twin, keeping its state.

    Attention modules call their BNs as modules (and CBAM leaves its fused path for the
    reference while its BN is converted), so the BNs inside attention synchronise too.
    """
    for name, child in module.named_children():
        sync = _SYNC.get(type(child))
        if sync is not None:
            ref = child.weight if child.affine else child.running_mean
            like = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
            new = sync(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                       **like)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t
