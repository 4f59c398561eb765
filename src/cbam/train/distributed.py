"""torchrun support: process-group set-up and a CPU-capable synchronised BatchNorm.

``torch.nn.SyncBatchNorm`` only runs on GPUs; :class:`SyncBatchNorm2d` all-reduces
the per-channel sums with a differentiable collective, so K gloo processes with
global batch B compute the same BN statistics, and the same gradients, as one
process with batch B.
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


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all processes (works with gloo on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        c = x.shape[1]
        xf = x.float()
        # two passes (mean, then centred squares) to avoid E[x^2] - E[x]^2 cancellation
        local = torch.cat([xf.sum((0, 2, 3)), torch.full((1,), float(x.numel() // c), device=x.device)])
        tot = all_reduce(local)
        n = tot[-1]
        mean = tot[:c] / n
        var = all_reduce((xf - mean.view(1, -1, 1, 1)).square().sum((0, 2, 3))) / n
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
            self.running_var.lerp_((var.detach() * n / (n - 1)).to(self.running_var.dtype), m)
            self.num_batches_tracked.add_(1)
        y = (xf - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every plain ``BatchNorm2d`` for :class:`SyncBatchNorm2d`, keeping its state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t
