"""Benchmarks of CBAM's cost, run as commands (``cbam bench``), never as timed tests.

Every ratio is measured in one run on one machine: eager reference vs fused, forward and
forward+backward, at ResNet stage shapes; both against the memory-traffic bound measured here
(read and copy bandwidth of the same tensor); bytes saved for backward; then whole networks with
and without attention in each configuration (:mod:`cbam.bench_matrix`). Variants are timed in
interleaved rounds (:func:`timed_rounds`).
"""
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .attention import CBAM
from .ops import backend_name

STAGES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_rounds(fns: Dict[str, Callable[[], object]], reps: int, device: torch.device,
                 warm_each: bool = True) -> Dict[str, float]:
    """Median seconds of each function over :func:`round_times`."""
    return {k: sorted(v)[len(v) // 2] for k, v in round_times(fns, reps, device, warm_each).items()}


def round_times(fns: Dict[str, Callable[[], object]], reps: int, device: torch.device,
                warm_each: bool = True) -> Dict[str, List[float]]:
    """Seconds of each function per round, in ``reps`` rounds that run every function once, in an
    order rotated per round: a slow phase of a shared machine (page reclaim, a neighbour's burst) lands
    on all of them alike instead of on whichever was timed then, so ratios between them are fair.
    ``warm_each`` runs each function once untimed just before its timed call, so it finds its own
    data in cache as when it runs back to back (and as a layer finds its input, just written)."""
    for fn in fns.values():
        fn()  # warm-up (and compilation / kernel caches)
    keys, times = list(fns), {k: [] for k in fns}
    for r in range(reps):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            if warm_each:
                fns[k]()
            _sync(device)
            t0 = time.perf_counter()
            fns[k]()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


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


def bandwidth(x: torch.Tensor, reps: int) -> Dict[str, float]:
    """Seconds to read x once and to write a same-size tensor once, measured here."""
    y = torch.empty_like(x)
    t = timed_rounds({"read": lambda: x.sum(), "copy": lambda: y.copy_(x)}, reps, x.device)
    return {"read": t["read"], "write": max(t["copy"] - t["read"], t["read"] * 0.5)}


def mlp_alone(x: torch.Tensor, m: CBAM) -> Callable[[], object]:
    """The channel MLP by itself on (2, N, C) pooled descriptors, in its fewest multiply-adds (the second
    layer applied once to the sum of both branches' hidden units): the compute any implementation
    must do besides moving x. It outweighs x's memory traffic when x is small and C is 2048."""
    fc1, fc2 = m.channel.fc1, m.channel.fc2
    p = torch.randn(2, x.shape[0], x.shape[1], device=x.device, dtype=x.dtype)
    b2 = None if fc2.bias is None else 2 * fc2.bias.detach()
    return lambda: torch.sigmoid(nn.functional.linear(nn.functional.relu(fc1(p)).sum(0), fc2.weight, b2))


def stage_rows(n: int, device: torch.device, dtype: torch.dtype, reps: int, timm_col: bool,
               log: Callable[[str], None], shapes: Sequence[Tuple[int, int]] = STAGES) -> List[Dict]:
    rows = []
    for c, s in shapes:
        x = torch.randn(n, c, s, s, device=device, dtype=dtype)
        ref = CBAM(c, impl="reference").to(device, dtype)
        fus = CBAM(c, impl="fused").to(device, dtype)
        fus.load_state_dict(ref.state_dict())
        bw = bandwidth(x, reps)
        bound_f = 3 * bw["read"] + bw["write"]
        bound_fb = bound_f + 5 * bw["read"] + bw["write"]
        xr = x.detach().requires_grad_()
        gy = torch.ones_like(x)  # made once: a fresh full-size tensor per call would time the allocator

        def no_grad(m):
            def run():
                with torch.no_grad():
                    return m(x)
            return run

        def fb(m):
            def run():
                m(xr).backward(gy)
                xr.grad = None
            return run
        mlp = mlp_alone(x, ref)
        with torch.no_grad():
            t_mlp = timed_rounds({"mlp": mlp}, reps, device)["mlp"]
        t = timed_rounds({"ref": no_grad(ref), "fus": no_grad(fus), "fus_g": lambda: fus(xr),  # fus_g keeps
                          "ref_b": fb(ref), "fus_b": fb(fus)}, reps, device)                    # the argmax routes
        t_ref, t_fus, t_fus_g, t_ref_b, t_fus_b = (t[k] for k in ("ref", "fus", "fus_g", "ref_b", "fus_b"))
        xb = x.numel() * x.element_size()
        row = {"shape": f"{n}x{c}x{s}x{s}", "backend": backend_name(x), "ref_fwd_ms": 1e3 * t_ref,
               "fused_fwd_ms": 1e3 * t_fus, "fused_fwd_grad_ms": 1e3 * t_fus_g, "fwd_speedup": t_ref / t_fus,
               "bound_fwd_ms": 1e3 * bound_f,
               "fused_fwd_vs_bound": t_fus / bound_f, "ref_fb_ms": 1e3 * t_ref_b, "fused_fb_ms": 1e3 * t_fus_b,
               "fb_speedup": t_ref_b / t_fus_b, "bound_fb_ms": 1e3 * bound_fb,
               "saved_ref_x": saved_bytes(ref, x) / xb, "saved_fused_x": saved_bytes(fus, x) / xb,
               "mlp_ms": 1e3 * t_mlp, "fused_fwd_GBps": 4 * xb / t_fus / 1e9,
               "copy_GBps": 2 * xb / (bw["read"] + bw["write"]) / 1e9}
        if timm_col:
            try:
                from timm.layers import CbamModule
                tm = CbamModule(c).to(device, dtype).eval()
                row["timm_fwd_ms"] = 1e3 * timed_rounds({"timm": no_grad(tm)}, reps, device)["timm"]
            except Exception as e:  # timm needs torchvision, absent on CPU-only machines
                log(f"timm column skipped: {type(e).__name__}: {e}")
                timm_col = False
        rows.append(row)
        log(f"  {row['shape']}: fwd {row['ref_fwd_ms']:.1f} -> {row['fused_fwd_ms']:.1f} ms "
            f"({row['fwd_speedup']:.2f}x, {row['fused_fwd_vs_bound']:.2f}x bound), fwd+bwd {row['ref_fb_ms']:.1f} -> "
            f"{row['fused_fb_ms']:.1f} ms ({row['fb_speedup']:.2f}x)")
        del x, xr
    return rows


def kernels_note() -> str:
    """Which C++ kernels run: the compile target and its vector family (``CBAM_CPU_MARCH`` can build
    another family than the CPU's own), or why the torch kernels run instead."""
    from .ops import _cpu
    mod = _cpu.load()
    if mod is None:
        return f"kernels: torch (C++ unavailable: {_cpu.error()})"
    return f"kernels: -march={_cpu.target_march()} ({mod.vector_isa()})"


def allocator_note() -> str:
    """Which CPU allocator settings this process runs with (they change eager and network times)."""
    import os
    env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k in ("LD_PRELOAD",
                                                                                  "THP_MEM_ALLOC_ENABLE")}
    return "allocator: " + (", ".join(f"{k}={os.path.basename(v) if k == 'LD_PRELOAD' else v}"
                                      for k, v in sorted(env.items())) or "glibc defaults")


_STAGE_COLS = ["shape", "kernels", "eager fwd ms", "fused fwd ms", "fwd speed-up", "bound fwd ms", "fused/bound",
               "MLP alone ms", "fused fwd, grad mode ms", "eager fwd+bwd ms", "fused fwd+bwd ms", "fwd+bwd speed-up",
               "activations saved for bwd (x bytes) eager / fused"]


def _stage_cells(r: Dict) -> List[str]:
    return [r["shape"], r["backend"], f"{r['ref_fwd_ms']:.2f}", f"{r['fused_fwd_ms']:.2f}", f"{r['fwd_speedup']:.2f}x",
            f"{r['bound_fwd_ms']:.2f}", f"{r['fused_fwd_vs_bound']:.2f}x", f"{r['mlp_ms']:.2f}",
            f"{r['fused_fwd_grad_ms']:.2f}", f"{r['ref_fb_ms']:.2f}", f"{r['fused_fb_ms']:.2f}",
            f"{r['fb_speedup']:.2f}x", f"{r['saved_ref_x']:.2f} / {r['saved_fused_x']:.2f}"] + (
        [f"{r['timm_fwd_ms']:.2f}"] if "timm_fwd_ms" in r else [])


def markdown(stages: List[Dict], header: str) -> str:
    cols = _STAGE_COLS + (["timm fwd ms"] if stages and "timm_fwd_ms" in stages[0] else [])
    lines = [header]
    if stages:
        lines += ["", "| " + " | ".join(cols) + " |", "|---|---|" + "---:|" * (len(cols) - 2)]
        lines += ["| " + " | ".join(_stage_cells(r)) + " |" for r in stages]
        lines += ["", "Forward columns run under `torch.no_grad()` (inference: the fused op keeps no argmax "
                  "routes); 'grad mode' is the fused forward that keeps them for backward.",
                  "", "Memory bound = 3 reads + 1 write of x (forward) and + 5 reads + 1 write (backward), from the "
                  "read and copy bandwidth measured on the same tensor in this run; copy bandwidth "
                  + ", ".join(f"{r['copy_GBps']:.0f}" for r in stages) + " GB/s; fused forward moved "
                  + ", ".join(f"{r['fused_fwd_GBps']:.0f}" for r in stages) + " GB/s. 'MLP alone' is the channel "
                  "MLP by itself on the pooled descriptors (compute, not traffic; outside the bound).",
                  "", "Times are medians of rounds that run every variant once in rotated order (each after an "
                  "untimed call), so a slow phase of the machine hits all variants alike."]
    return "\n".join(lines)


def run_bench(device: str = "cpu", n: int = 32, dtype: str = "float32", reps: int = 5, network: bool = True,
              nets: Sequence[str] = ("resnet50", "resnet20", "resnet20-b1"), configs: Optional[Sequence[str]] = None,
              smoke: bool = False,
              stages: bool = True, timm_col: bool = True, out: Optional[str] = None,
              log: Callable[[str], None] = print, shapes: Sequence[Tuple[int, int]] = STAGES) -> str:
    """Prints and returns the markdown report: fused vs eager CBAM at stage shapes (``shapes``: (C, H=W)),
    then the network matrix of :mod:`cbam.bench_matrix` (on CUDA without the CPU targets' rows)."""
    from . import bench_matrix as BM
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    machine = torch.cuda.get_device_name() if dev.type == "cuda" else BM.cpu_name()
    header = (f"## CBAM benchmark: {device} ({machine}), {torch.get_num_threads()} threads, {dtype}, N={n}, "
              f"torch {torch.__version__}" + (f"; {kernels_note()}; {allocator_note()}" if dev.type == "cpu" else ""))
    log(header)
    st = stage_rows(n, dev, dt, reps, timm_col, log, shapes) if stages else []
    md = markdown(st, header)
    if network:
        cfgs = list(configs or BM.CONFIGS)
        cuda = dev.type == "cuda"
        specs = [BM.SMOKE_NETS[k] if smoke else (BM.CUDA_NETS if cuda else BM.NETS)[k] for k in nets]
        tuned = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = tuned or cuda  # what a GPU user sets; every variant gets it alike
        try:
            rows = BM.matrix_rows(specs, cfgs, reps, log, dev)
        finally:
            torch.backends.cudnn.benchmark = tuned
        md += "\n\n### Networks: CBAM's overhead by configuration\n" + BM.matrix_markdown(rows, cfgs, not cuda) + (
            "\n\nEach cell: the median over interleaved rounds of the variant's time over plain's in the same "
            f"round and configuration; bf16 is {dev.type.upper()} autocast. "
            + ("On CUDA 'CBAM fused' is impl='fused' (Triton kernels for NCHW; channels_last runs the fused op's "
               "torch kernels) and impl='auto' is the reference. " if cuda else "")
            + "'CBAM added bound': one more read of every CBAM "
            "input (training: plus a read and a write in the backward) at the bandwidth measured here on "
            "tensors of those sizes, plus the channel MLP's compute, over plain's time. 'Middle half of "
            "rounds': the quartiles of the per-round overheads"
            + ("." if cuda else "; 'met' is decided by the median and marked '(noisy)' when that middle half "
               "straddles the target."))
    if out:
        from ._io import write_text
        write_text(out, md + "\n")
    return md
