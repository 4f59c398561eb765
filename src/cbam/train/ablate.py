"""`cbam ablate`: the paper's comparisons and ablations under one recipe, several seeds, resumable.

Each (variant, seed) trains into ``out/<variant>/seed<k>``; finished runs are skipped,
so the command can be stopped and started again. The summary is a table (mean +- std
over seeds, params, MACs, images/s) in markdown and CSV, a plot, and one paired
comparison per claim of the paper with its number beside ours and a verdict.
"""
import csv
import io
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .._io import atomic_write, write_text
from . import distributed as D
from .checkpoint import latest_checkpoint, load_state
from .config import TrainConfig
from .loop import build_model, load_data, train


@dataclass
class Variant:
    name: str
    attention: Optional[str]
    kwargs: Dict[str, Any] = field(default_factory=dict)
    label: str = ""


# The paper's grid (sections 4.1-4.2, table 1-3; ResNet-50 on ImageNet there, ResNet-20 here).
PAPER_SUITE: List[Variant] = [
    Variant("baseline", None, {}, "ResNet (no attention)"),
    Variant("se", "se", {}, "+ SE"),
    Variant("cbam", "cbam", {}, "+ CBAM (channel avg&max, spatial avg&max k=7, channel-first)"),
    Variant("ch_avg", "channel", {"pool_types": ["avg"]}, "channel only, avg pool"),
    Variant("ch_max", "channel", {"pool_types": ["max"]}, "channel only, max pool"),
    Variant("ch_avgmax", "channel", {"pool_types": ["avg", "max"]}, "channel only, avg&max (spatial: none)"),
    Variant("sp_conv_k7", "cbam", {"spatial_pool": "conv"}, "spatial 1x1-conv pooling, k=7"),
    Variant("sp_avgmax_k3", "cbam", {"kernel_size": 3}, "spatial avg&max, k=3"),
    Variant("spatial_first", "cbam", {"arrangement": "spatial_first"}, "spatial -> channel"),
    Variant("parallel", "cbam", {"arrangement": "parallel"}, "channel & spatial in parallel"),
]
SMOKE_SUITE = [PAPER_SUITE[0], PAPER_SUITE[2]]

# (claim, better variant, worse variant, the paper's top-1 errors of the two on ImageNet ResNet-50)
CLAIMS: List[Tuple[str, str, str, str]] = [
    ("SE beats the baseline", "se", "baseline", "23.14 vs 24.56"),
    ("CBAM beats SE", "cbam", "se", "22.66 vs 23.14"),
    ("avg&max channel pooling beats avg", "ch_avgmax", "ch_avg", "22.80 vs 23.14"),
    ("avg&max channel pooling beats max", "ch_avgmax", "ch_max", "22.80 vs 23.20"),
    ("adding the spatial branch (avg&max, k=7) helps", "cbam", "ch_avgmax", "22.66 vs 22.80"),
    ("avg&max spatial pooling beats 1x1-conv pooling", "cbam", "sp_conv_k7", "22.66 vs 22.90"),
    ("k=7 beats k=3", "cbam", "sp_avgmax_k3", "22.66 vs 22.68"),
    ("channel-first beats spatial-first", "cbam", "spatial_first", "22.66 vs 22.78"),
    ("channel-first beats parallel", "cbam", "parallel", "22.66 vs 22.95"),
]


def suite(name: str) -> List[Variant]:
    if name == "paper":
        return PAPER_SUITE
    if name == "smoke":
        return SMOKE_SUITE
    raise ValueError(f"unknown suite '{name}'; valid: paper, smoke")


def _finished(path: str, epochs: int) -> bool:
    ck = latest_checkpoint(path)
    return ck is not None and ck[0] >= epochs


def macs_of(cfg: TrainConfig, in_chans: int, size: int, num_classes: int) -> int:
    """Multiply-accumulates of one forward pass at the training resolution."""
    from torch.utils.flop_counter import FlopCounterMode
    m = build_model(cfg, num_classes, in_chans).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(torch.randn(1, in_chans, size, size))
    return fc.get_total_flops() // 2


def run_ablation(base: TrainConfig, suite_name: str = "paper", seeds: int = 3, out: str = "runs/ablate",
                 log: Callable[[str], None] = print) -> str:
    """Train every (variant, seed) not yet finished, then write the summary; returns the markdown path."""
    variants = suite(suite_name)
    rank, world, _ = D.setup()
    data = load_data(base)
    total = len(variants) * seeds
    done = 0
    for v in variants:
        for s in range(seeds):
            done += 1
            cfg = TrainConfig(**{**base.to_dict(), "attention": v.attention, "attention_kwargs": dict(v.kwargs),
                                 "seed": base.seed + s, "out": os.path.join(out, v.name, f"seed{s}"),
                                 "resume": True})
            if _finished(cfg.out, cfg.epochs):
                log(f"[{done}/{total}] {v.name} seed {s}: finished, skipped")
                continue
            log(f"[{done}/{total}] {v.name} seed {s}: training ({v.label})")
            train(cfg, data=data)
    if rank != 0:
        return ""
    return summarize(base, variants, seeds, out, data, log)


def _load(path: str) -> Optional[Dict]:
    ck = latest_checkpoint(path)
    return load_state(ck[2])["history"] if ck else None


def summarize(base: TrainConfig, variants: List[Variant], seeds: int, out: str, data, log=print) -> str:
    train_set = data[0]
    rows, accs = [], {}
    for v in variants:
        hs = [h for h in (_load(os.path.join(out, v.name, f"seed{s}")) for s in range(seeds)) if h]
        if not hs:
            continue
        acc = [100 * h[-1]["test_acc"] for h in hs]
        accs[v.name] = acc
        cfg = TrainConfig(**{**base.to_dict(), "attention": v.attention, "attention_kwargs": dict(v.kwargs)})
        model = build_model(cfg, train_set.num_classes, train_set.in_chans)
        size = base.image_size or train_set.image_size
        rows.append({"variant": v.name, "description": v.label, "seeds": len(acc),
                     "top1_mean": statistics.mean(acc), "top1_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "params": sum(p.numel() for p in model.parameters()),
                     "macs": macs_of(cfg, train_set.in_chans, size, train_set.num_classes),
                     "images_per_s": statistics.mean(statistics.mean(r["images_per_s"] for r in h) for h in hs),
                     "train_s": statistics.mean(sum(r["epoch_time_s"] for r in h) for h in hs)})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(os.path.join(out, "summary.csv"), buf.getvalue())
    md = [f"# Ablation: suite of {len(rows)} variants x {seeds} seeds", "",
          f"Recipe: {base.model} on {base.data} ({train_set.source}), train subset {base.train_subset or 'all'}, "
          f"test subset {base.test_subset or 'all'}, {base.epochs} epochs, batch {base.batch_size}, "
          f"{base.optimizer} lr {base.lr} cosine, seeds {base.seed}..{base.seed + seeds - 1}.", "",
          "| variant | description | seeds | top-1 (%) mean +- std | params | MACs | images/s | train s |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['variant']} | {r['description']} | {r['seeds']} | {r['top1_mean']:.2f} +- {r['top1_std']:.2f} "
                  f"| {r['params']:,} | {r['macs'] / 1e6:.2f} M | {r['images_per_s']:.0f} | {r['train_s']:.0f} |")
    md += ["", "## The paper's claims, paired by seed", "",
           "| claim | paper top-1 error (ResNet-50, ImageNet) | ours: mean difference in top-1 (pp) +- std over seeds "
           "| verdict |", "|---|---|---:|---|"]
    for claim, better, worse, paper in CLAIMS:
        if better not in accs or worse not in accs:
            continue
        diffs = [a - b for a, b in zip(accs[better], accs[worse])]
        md.append(f"| {claim} | {paper} | {_fmt(diffs)} | {verdict(diffs)} |")
    md += ["", "Verdicts: *confirmed* when the paired difference is positive and at least twice its standard "
           "error; *contradicted* when negative by as much; otherwise *inconclusive given the spread* (or *not "
           "confirmed at this scale* when the mean goes the wrong way). One seed gives no spread: inconclusive.",
           "", "![accuracy](summary.png)"]
    _plot(os.path.join(out, "summary.png"), rows)
    path = os.path.join(out, "summary.md")
    write_text(path, "\n".join(md) + "\n")
    log("\n".join(md))
    return path


def _fmt(d: List[float]) -> str:
    return f"{statistics.mean(d):+.2f} +- {statistics.stdev(d):.2f}" if len(d) > 1 else f"{d[0]:+.2f}"


def verdict(diffs: List[float]) -> str:
    """Paired verdict from per-seed differences (better - worse, in points)."""
    if len(diffs) < 2:
        return "inconclusive (one seed)"
    m, sd = statistics.mean(diffs), statistics.stdev(diffs)
    se = sd / math.sqrt(len(diffs))
    if m > 0 and m >= 2 * se:
        return "confirmed"
    if m < 0 and -m >= 2 * se:
        return "contradicted"
    return "inconclusive given the spread" if m > 0 else "not confirmed at this scale"


def _plot(path: str, rows: List[Dict]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(rows), 3.6))
    ax.bar(range(len(rows)), [r["top1_mean"] for r in rows], yerr=[r["top1_std"] for r in rows], capsize=3,
           color=["#888" if r["variant"] == "baseline" else "#3a7" for r in rows])
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=40, ha="right", fontsize=8)
    lo = min(r["top1_mean"] - r["top1_std"] for r in rows)
    hi = max(r["top1_mean"] + r["top1_std"] for r in rows)
    ax.set_ylim(lo - 0.5 * (hi - lo + 0.1), hi + 0.3 * (hi - lo + 0.1))
    ax.set(ylabel="test top-1 (%)", title="mean +- std over seeds")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
