"""Small helpers shared by the tests."""
import torch


def randomize_(module: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    """Give every parameter and BN statistic non-trivial random values."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64).to(b.dtype) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=torch.float64).to(b.dtype) + 0.5)
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (the tolerance measure of the fused-op tests)."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()
