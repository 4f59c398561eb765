"""CBAM's cost inside whole networks, in the configurations users pick for speed: a matrix of
{fp32, bf16 autocast} x {NCHW, channels_last} over ResNet-50 (batch 8 at 224 px) and ResNet-20
(batch 128 and batch 1 at 28 px), inference and a training step, for the plain network, SE, CBAM on the
reference path and CBAM on the fused path. Every cell is an overhead against the plain network in
the same configuration, timed in the same interleaved rounds (:func:`cbam.bench.timed_rounds`).

Each cell is held against CBAM's added memory-traffic bound, measured in the same run: one extra
read of every CBAM input (inference; a training step adds a read and a write more in the backward)
plus the channel MLP's compute, over the plain network's time. That is the physical floor of the
overhead; the target is ``max(5 %, 1.5 x bound)``.
"""
import contextlib
import platform
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .attention import CBAM
from .bench import mlp_alone, bandwidth, round_times, timed_rounds
from .models import create_model
from .ops._cpuinfo import native_bf16


@dataclass(frozen=True)
class Net:
    model: str
    batch: int
    size: int
    in_chans: int
    classes: int


# resnet20-b1: batch-1 inference (deployment), where per-call costs, not data, decide the overhead
NETS: Dict[str, Net] = {"resnet50": Net("resnet50", 8, 224, 3, 1000), "resnet20": Net("resnet20", 128, 28, 1, 10),
                        "resnet20-b1": Net("resnet20", 1, 28, 1, 10)}
# a GPU trains ResNet-50 at batch 64 and up: at 8 it measures kernel launches, not the network
CUDA_NETS: Dict[str, Net] = {**NETS, "resnet50": Net("resnet50", 64, 224, 3, 1000)}
SMOKE_NETS: Dict[str, Net] = {"resnet50": Net("resnet50", 2, 64, 3, 1000), "resnet20": Net("resnet20", 4, 16, 1, 10),
                              "resnet20-b1": Net("resnet20", 1, 16, 1, 10)}
CONFIGS: Dict[str, Tuple[torch.dtype, torch.memory_format]] = {
    "fp32 NCHW": (torch.float32, torch.contiguous_format), "fp32 channels_last": (torch.float32, torch.channels_last),
    "bf16 NCHW": (torch.bfloat16, torch.contiguous_format), "bf16 channels_last": (torch.bfloat16, torch.channels_last)}
VARIANTS: Dict[str, dict] = {"plain": {}, "SE": dict(attention="se"),
                             "CBAM reference": dict(attention="cbam", attention_kwargs={"impl": "reference"}),
                             "CBAM fused": dict(attention="cbam")}
# on CUDA impl="auto" is the reference, so the fused row asks for the Triton kernels by name
CUDA_VARIANTS: Dict[str, dict] = {**VARIANTS, "CBAM fused": dict(attention="cbam", attention_kwargs={"impl": "fused"})}


def default_configs(device: str = "cpu", flags: Optional[str] = None) -> str:
    """The matrix's configurations when none are named: all of them, but only the fp32 ones on a CPU
    without bfloat16 arithmetic (``flags``: its ISA flags, the host's by default), where a bf16 cell
    would take minutes to time a configuration no one would pick."""
    names = [c for c, (dt, _) in CONFIGS.items()
             if dt != torch.bfloat16 or not device.startswith("cpu") or native_bf16(flags)]
    return ",".join(names)


def cpu_name() -> str:
    """The CPU model and the ISA flags that decide the kernels' speed (AVX-512, bf16, AMX)."""
    model, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            text = f.read()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = m.group(1).strip() if m else model
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        have = set(m.group(1).split()) if m else set()
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have)
    return f"{model} ({flags or 'flags unknown'})"


def variants(device: torch.device) -> Dict[str, dict]:
    return CUDA_VARIANTS if device.type == "cuda" else VARIANTS


def _autocast(dtype: torch.dtype, device: torch.device = torch.device("cpu")):
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def _steps(net: Net, dtype: torch.dtype, fmt: torch.memory_format, device: torch.device = torch.device("cpu")
           ) -> Tuple[Dict[str, Callable], Dict[str, Callable], nn.Module, torch.Tensor]:
    """An inference and a training-step closure per variant, all on one input."""
    x = torch.randn(net.batch, net.in_chans, net.size, net.size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, net.classes, (net.batch,), device=device)
    infer, train, cbam_net = {}, {}, None
    for name, kw in variants(device).items():
        torch.manual_seed(0)
        m = create_model(net.model, in_chans=net.in_chans, num_classes=net.classes, **kw).to(device,
                                                                                            memory_format=fmt)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        cbam_net = m if name == "CBAM fused" else cbam_net

        def inference(m=m):
            m.eval()
            with torch.no_grad(), _autocast(dtype, device):
                return m(x)

        def step(m=m, opt=opt):
            m.train()
            opt.zero_grad(set_to_none=True)
            with _autocast(dtype, device):
                loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        infer[name], train[name] = inference, step
    return infer, train, cbam_net, x


def added_bound(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, reps: int) -> Tuple[float, float]:
    """CBAM's added memory-traffic bound in seconds, (inference, training step): every CBAM input
    read once more (training: plus one read and one write in the backward), at the read/copy
    bandwidth measured here on a tensor of that size, plus the channel MLP's compute."""
    shapes: List[Tuple[torch.Size, torch.dtype, nn.Module]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: shapes.append((inp[0].shape, inp[0].dtype, mod)))
             for m in model.modules() if isinstance(m, CBAM)]
    try:
        model.eval()
        with torch.no_grad(), _autocast(dtype, x.device):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    inf = trn = 0.0
    seen: Dict[Tuple, Tuple[float, float]] = {}
    for shape, dt, mod in shapes:
        key = (tuple(shape), dt, mod.channel.fc1.weight.shape)
        if key not in seen:
            # the same bytes as float32: torch's bf16 reductions on the CPU are compute-bound, not a read
            t = torch.randn(max(1, shape.numel() * torch.finfo(dt).bits // 32), device=x.device)
            bw = bandwidth(t, reps)
            mlp = timed_rounds({"mlp": mlp_alone(torch.empty(shape[:2], device=x.device), mod)}, reps,
                               x.device)["mlp"]
            seen[key] = (bw["read"] + mlp, 2 * bw["read"] + bw["write"] + 3 * mlp)
        inf, trn = inf + seen[key][0], trn + seen[key][1]
    return inf, trn


def matrix_rows(nets: Sequence[Net], configs: Sequence[str], reps: int, log: Callable[[str], None],
                device: torch.device = torch.device("cpu")) -> List[Dict]:
    """One row per (network, mode, configuration): times per variant and the bound."""
    rows = []
    for net in nets:
        for cfg in configs:
            dtype, fmt = CONFIGS[cfg]
            infer, train, cbam_net, x = _steps(net, dtype, fmt, device)
            with torch.no_grad():
                b_inf, b_trn = added_bound(cbam_net, x, dtype, reps)
            # a network's working set is far larger than any cache: no warm call before each timed one
            r_inf = round_times(infer, reps, device, warm_each=False)
            r_trn = round_times(train, reps, device, warm_each=False)
            for mode, r, bound in (("inference", r_inf, b_inf), ("training step", r_trn, b_trn)):
                t = {k: _median(v) for k, v in r.items()}
                row = {"net": f"{net.model}, {net.batch} @ {net.size}", "mode": mode, "config": cfg,
                       "plain_ms": 1e3 * t["plain"], "bound_pct": 100 * bound / t["plain"],
                       "fused_spread": spread(r["CBAM fused"], r["plain"])}
                # per-round ratios (variant and plain timed back to back), then their median: paired by round
                row.update({k: _median([100 * (a / b - 1) for a, b in zip(v, r["plain"])])
                            for k, v in r.items() if k != "plain"})
                rows.append(row)
                log(f"  {row['net']} {mode} {cfg}: plain {row['plain_ms']:.1f} ms; "
                    + ", ".join(f"{k} {row[k]:+.1f} %" for k in r if k != "plain")
                    + f"; bound {row['bound_pct']:.1f} %")
    return rows


def _median(v: Sequence[float]) -> float:
    return sorted(v)[len(v) // 2]


def spread(variant: Sequence[float], plain: Sequence[float]) -> Tuple[float, float]:
    """The middle half (quartiles) of the per-round overheads, in %: each round times the variant and
    the plain network back to back, so a round's ratio carries that moment's speed of the machine."""
    r = sorted(100 * (a / b - 1) for a, b in zip(variant, plain))
    return r[(len(r) - 1) // 4], r[(3 * (len(r) - 1) + 3) // 4]


def verdict(row: Dict) -> str:
    """'yes' / 'no' from the median overhead against the target; '(noisy)' when the middle half of the
    rounds straddles the target, so another run may well land on the other side."""
    t, v = target_pct(row), row["CBAM fused"]
    lo, hi = row.get("fused_spread", (v, v))
    return ("yes" if v <= t else "no") + (" (noisy)" if lo <= t < hi else "")


def target_pct(row: Dict) -> float:
    """The overhead CBAM fused should stay within: max(5 %, 1.5 x its added bound), tighter for
    ResNet-50 fp32 NCHW (3 % inference, 5 % training) and at most SE's for ResNet-20 training."""
    t = max(5.0, 1.5 * row["bound_pct"])
    if row["net"].startswith("resnet50") and row["config"] == "fp32 NCHW":
        t = min(t, 3.0 if row["mode"] == "inference" else 5.0)
    if row["net"].startswith("resnet20") and row["mode"] == "training step":
        t = min(t, max(row["SE"], 0.0)) if row["SE"] > 0 else t
    return t


def matrix_markdown(rows: List[Dict], configs: Sequence[str], targets: bool = True) -> str:
    """One table per (network, mode): a row per variant, a column per configuration; the verdict
    row is computed from the numbers (``targets``: the CPU targets' rows, which a GPU has none of)."""
    lines: List[str] = []
    for key in dict.fromkeys((r["net"], r["mode"]) for r in rows):
        sel = {r["config"]: r for r in rows if (r["net"], r["mode"]) == key}
        cols = [c for c in configs if c in sel]
        lines += ["", f"**{key[0]}, {key[1]}** (overhead vs plain in the same configuration)", "",
                  "| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols),
                  "| plain (ms) | " + " | ".join(f"{sel[c]['plain_ms']:.1f}" for c in cols) + " |"]
        for v in VARIANTS:
            if v != "plain":
                lines.append(f"| {v} | " + " | ".join(f"{sel[c][v]:+.1f} %" for c in cols) + " |")
        mid = [sel[c].get("fused_spread", (sel[c]["CBAM fused"],) * 2) for c in cols]
        lines.append("| CBAM fused, middle half of rounds | " + " | ".join(f"{a:+.1f} .. {b:+.1f} %" for a, b in mid)
                     + " |")
        lines.append("| CBAM added bound | " + " | ".join(f"{sel[c]['bound_pct']:.1f} %" for c in cols) + " |")
        if targets:
            lines.append("| target for CBAM fused | " + " | ".join(f"<= {target_pct(sel[c]):.1f} %" for c in cols)
                         + " |")
            lines.append("| met | " + " | ".join(verdict(sel[c]) for c in cols) + " |")
    return "\n".join(lines)
