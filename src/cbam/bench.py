"""Benchmarks of CBAM's cost, run as commands (``cbam bench``), never as timed tests.

Every ratio is measured in one run on one machine: eager reference vs fused,
forward and forward+backward; both against the memory-traffic bound measured
here (read and copy bandwidth of the same tensor); bytes saved for backward;
and ResNet-50 with vs without CBAM (inference and a training step).
"""
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .attention import CBAM
from .models import create_model
from .ops import backend_name

STAGES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]


def _timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    def run(fn: Callable[[], object], reps: int) -> float:
        fn()  # warm-up (and compilation / kernel caches)
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]  # median
    return run


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Activation bytes autograd keeps for backward (distinct storages), measured with saved-tensor
    hooks. The module's own parameters and buffers are left out: they live in the module whether or
    not a graph holds them (at 2048 channels the MLP's 2 MB of weights would add 0.16x of x)."""
    own = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
           for t in list(module.parameters()) + list(module.buffers())}
    seen, total = set(own), 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        s = t.untyped_storage()
        key = (s.data_ptr(), s.nbytes())
        if key not in seen:
            seen.add(key)
            total += s.nbytes()
        return t
    xr = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(xr)
    del y
    return total


def bandwidth(x: torch.Tensor, timer, reps: int) -> Dict[str, float]:
    """Seconds to read x once and to write a same-size tensor once, measured here."""
    y = torch.empty_like(x)
    t_read = timer(lambda: x.sum(), reps)
    t_copy = timer(lambda: y.copy_(x), reps)
    return {"read": t_read, "write": max(t_copy - t_read, t_read * 0.5)}


def stage_rows(n: int, device: torch.device, dtype: torch.dtype, reps: int, timm_col: bool,
               log: Callable[[str], None], shapes: Sequence[Tuple[int, int]] = STAGES) -> List[Dict]:
    timer = _timer(device)
    rows = []
    for c, s in shapes:
        x = torch.randn(n, c, s, s, device=device, dtype=dtype)
        ref = CBAM(c, impl="reference").to(device, dtype)
        fus = CBAM(c, impl="fused").to(device, dtype)
        fus.load_state_dict(ref.state_dict())
        bw = bandwidth(x, timer, reps)
        bound_f = 3 * bw["read"] + bw["write"]
        bound_fb = bound_f + 5 * bw["read"] + bw["write"]
        with torch.no_grad():
            t_ref = timer(lambda: ref(x), reps)
            t_fus = timer(lambda: fus(x), reps)
        xr = x.detach().requires_grad_()
        gy = torch.ones_like(x)  # made once: a fresh full-size tensor per call would time the allocator

        def fb(m):
            m(xr).backward(gy)
            xr.grad = None
        t_fus_g = timer(lambda: fus(xr), reps)  # forward that keeps the argmax routes for backward
        t_ref_b = timer(lambda: fb(ref), max(2, reps // 2))
        t_fus_b = timer(lambda: fb(fus), max(2, reps // 2))
        xb = x.numel() * x.element_size()
        row = {"shape": f"{n}x{c}x{s}x{s}", "backend": backend_name(x), "ref_fwd_ms": 1e3 * t_ref,
               "fused_fwd_ms": 1e3 * t_fus, "fused_fwd_grad_ms": 1e3 * t_fus_g, "fwd_speedup": t_ref / t_fus,
               "bound_fwd_ms": 1e3 * bound_f,
               "fused_fwd_vs_bound": t_fus / bound_f, "ref_fb_ms": 1e3 * t_ref_b, "fused_fb_ms": 1e3 * t_fus_b,
               "fb_speedup": t_ref_b / t_fus_b, "bound_fb_ms": 1e3 * bound_fb,
               "saved_ref_x": saved_bytes(ref, x) / xb, "saved_fused_x": saved_bytes(fus, x) / xb,
               "fused_fwd_GBps": 4 * xb / t_fus / 1e9, "copy_GBps": 2 * xb / (bw["read"] + bw["write"]) / 1e9}
        if timm_col:
            try:
                from timm.layers import CbamModule
                tm = CbamModule(c).to(device, dtype).eval()
                with torch.no_grad():
                    row["timm_fwd_ms"] = 1e3 * timer(lambda: tm(x), reps)
            except Exception as e:  # timm needs torchvision, absent on CPU-only machines
                log(f"timm column skipped: {type(e).__name__}: {e}")
                timm_col = False
        rows.append(row)
        log(f"  {row['shape']}: fwd {row['ref_fwd_ms']:.1f} -> {row['fused_fwd_ms']:.1f} ms "
            f"({row['fwd_speedup']:.2f}x, {row['fused_fwd_vs_bound']:.2f}x bound), fwd+bwd {row['ref_fb_ms']:.1f} -> "
            f"{row['fused_fb_ms']:.1f} ms ({row['fb_speedup']:.2f}x)")
        del x, xr
    return rows


def network_rows(batch: int, size: int, device: torch.device, reps: int, log: Callable[[str], None]) -> List[Dict]:
    timer = _timer(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    out = {}
    for name, kw in [("resnet50", {}), ("resnet50 + CBAM (reference)", dict(attention="cbam",
                                                                             attention_kwargs={"impl": "reference"})),
                     ("resnet50 + CBAM (fused)", dict(attention="cbam", attention_kwargs={"impl": "fused"}))]:
        m = create_model("resnet50", **kw).to(device)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        m.eval()
        with torch.no_grad():
            t_inf = timer(lambda: m(x), reps)
        m.train()

        def step():
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        t_train = timer(step, reps)
        out[name] = (t_inf, t_train)
        log(f"  {name}: inference {1e3 * t_inf:.0f} ms, training step {1e3 * t_train:.0f} ms")
        del m, opt
    base = out["resnet50"]
    return [{"network": k, "infer_ms": 1e3 * v[0], "train_ms": 1e3 * v[1],
             "infer_overhead_pct": 100 * (v[0] / base[0] - 1), "train_overhead_pct": 100 * (v[1] / base[1] - 1)}
            for k, v in out.items()]


def markdown(stages: List[Dict], nets: List[Dict], header: str) -> str:
    lines = [header, "", "| shape | kernels | eager fwd ms | fused fwd ms | fwd speed-up | bound fwd ms | fused/bound | "
             "fused fwd, grad mode ms | eager fwd+bwd ms | fused fwd+bwd ms | fwd+bwd speed-up | "
             "activations saved for bwd (x bytes) eager / fused |"
             + (" timm fwd ms |" if stages and "timm_fwd_ms" in stages[0] else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if stages and "timm_fwd_ms" in
                                                                           stages[0] else "")]
    for r in stages:
        lines.append(f"| {r['shape']} | {r['backend']} | {r['ref_fwd_ms']:.2f} | {r['fused_fwd_ms']:.2f} | "
                     f"{r['fwd_speedup']:.2f}x | {r['bound_fwd_ms']:.2f} | {r['fused_fwd_vs_bound']:.2f}x | "
                     f"{r['fused_fwd_grad_ms']:.2f} | {r['ref_fb_ms']:.2f} | {r['fused_fb_ms']:.2f} | {r['fb_speedup']:.2f}x | "
                     f"{r['saved_ref_x']:.2f} / {r['saved_fused_x']:.2f} |"
                     + (f" {r['timm_fwd_ms']:.2f} |" if "timm_fwd_ms" in r else ""))
    if stages:
        lines += ["", "Forward columns run under `torch.no_grad()` (inference: the fused op keeps no argmax "
                  "routes); 'grad mode' is the fused forward that keeps them for backward.",
                  "", "Memory bound = 3 reads + 1 write of x (forward) and + 5 reads + 1 write (backward), from the "
                  "read and copy bandwidth measured on the same tensor in this run; copy bandwidth "
                  + ", ".join(f"{r['copy_GBps']:.0f}" for r in stages) + " GB/s; fused forward moved "
                  + ", ".join(f"{r['fused_fwd_GBps']:.0f}" for r in stages) + " GB/s."]
    if nets:
        lines += ["", "| network | inference ms | overhead | training step ms | overhead |", "|---|---:|---:|---:|---:|"]
        for r in nets:
            lines.append(f"| {r['network']} | {r['infer_ms']:.1f} | {r['infer_overhead_pct']:+.1f} % | "
                         f"{r['train_ms']:.1f} | {r['train_overhead_pct']:+.1f} % |")
    return "\n".join(lines)


def run_bench(device: str = "cpu", n: int = 32, dtype: str = "float32", reps: int = 5, network: bool = True,
              net_batch: int = 8, net_size: int = 224, stages: bool = True, timm_col: bool = True,
              out: Optional[str] = None, log: Callable[[str], None] = print,
              shapes: Sequence[Tuple[int, int]] = STAGES) -> str:
    """Prints and returns the markdown report; ``shapes`` are (C, H=W) stage shapes."""
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    header = (f"## CBAM benchmark: {device} ({torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}), "
              f"{torch.get_num_threads()} threads, {dtype}, N={n}, torch {torch.__version__}")
    log(header)
    st = stage_rows(n, dev, dt, reps, timm_col, log, shapes) if stages else []
    nets = network_rows(net_batch, net_size, dev, reps, log) if network else []
    md = markdown(st, nets, header)
    if out:
        from ._io import write_text
        write_text(out, md + "\n")
    return md
