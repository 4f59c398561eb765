"""`cbam ablate`: the paper's comparisons and ablations under one recipe, several seeds,
resumable, and shardable over machines that share only a folder.

A suite is a list of variants and the recipe they all train with. The grid is every
(variant, seed) of a suite, in a fixed order; shard K of N (0 <= K < N) takes the
entries K, K + N, K + 2N, ..., so N processes (machines, a SLURM array, torchrun ranks)
split one grid with no coordination beyond the file system. Each run trains into
``out/<variant>/seed<k>`` and, when it is done, writes ``result.json`` there in one
atomic rename: a finished run is one with that file, and is skipped on the next start.
``grid.json`` records the suite and recipe, so a shard with another recipe is refused.

The summary (:func:`summarize`, also ``cbam ablate --summary-only``) merges whatever
``result.json`` files the folder holds: a table (mean +- std over seeds, per-seed
values, params, MACs, throughput) and one paired test per claim of the paper
(:mod:`cbam.train.stats`), in markdown, CSV and JSON, and a plot.
"""
import csv
import io
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from .._io import atomic_write, write_json, write_text
from . import distributed as D
from .checkpoint import latest_checkpoint, load_state
from .config import RUNTIME_FIELDS, TrainConfig
from .loop import build_model, load_data, train
from .stats import compare, seeds_needed


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
_V = {v.name: v for v in PAPER_SUITE}

# (claim, better variant, worse variant, the paper's top-1 errors of the two on ImageNet ResNet-50)
CLAIMS: List[Tuple[str, str, str, str]] = [
    ("SE beats the baseline", "se", "baseline", "23.14 vs 24.56"),
    ("CBAM beats SE", "cbam", "se", "22.66 vs 23.14"),
    ("CBAM beats the baseline", "cbam", "baseline", "22.66 vs 24.56"),
    ("the channel gate (avg&max) beats the baseline", "ch_avgmax", "baseline", "22.80 vs 24.56"),
    ("avg&max channel pooling beats avg", "ch_avgmax", "ch_avg", "22.80 vs 23.14"),
    ("avg&max channel pooling beats max", "ch_avgmax", "ch_max", "22.80 vs 23.20"),
    ("adding the spatial branch (avg&max, k=7) helps", "cbam", "ch_avgmax", "22.66 vs 22.80"),
    ("avg&max spatial pooling beats 1x1-conv pooling", "cbam", "sp_conv_k7", "22.66 vs 22.90"),
    ("k=7 beats k=3", "cbam", "sp_avgmax_k3", "22.66 vs 22.68"),
    ("channel-first beats spatial-first", "cbam", "spatial_first", "22.66 vs 22.78"),
    ("channel-first beats parallel", "cbam", "parallel", "22.66 vs 22.95"),
]

# The short budget of docs/RESULTS.md's first table: fits 2 CPU cores, cannot separate sub-point effects.
SHORT_RECIPE: Dict[str, Any] = dict(model="resnet20", data="fashion-mnist", epochs=3, batch_size=128, lr=0.1,
                                    warmup_epochs=0.3, train_subset=6000, test_subset=2000, progress=False)
SMOKE_RECIPE: Dict[str, Any] = {**SHORT_RECIPE, "epochs": 1, "train_subset": 256, "test_subset": 128,
                                "batch_size": 64}
# Trained to convergence on the full 60k/10k: SGD + Nesterov, cosine from 0.1, random crop and flip. 15 epochs
# reach the 93-94 % of published small ResNets (docs/RESULTS.md; the shipped weights use this recipe).
CONVERGED_RECIPE: Dict[str, Any] = dict(model="resnet20", data="fashion-mnist", epochs=15, batch_size=128,
                                        optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, warmup_epochs=1.0,
                                        schedule="cosine", crop_padding=4, hflip=True, train_subset=None,
                                        test_subset=None, progress=False)
# The 48 x 48 canvas costs 2.9x the pixels of 28 x 28 (60 x 60, the papers' size: 4.6x; --data cluttered-fashion-mnist)
CLUTTERED_RECIPE: Dict[str, Any] = {**CONVERGED_RECIPE, "data": "cluttered-fashion-mnist-48"}


@dataclass(frozen=True)
class Suite:
    variants: List[Variant]
    recipe: Dict[str, Any]
    about: str


SUITES: Dict[str, Suite] = {
    "paper": Suite(PAPER_SUITE, SHORT_RECIPE, "the paper's 10 variants at the short 3-epoch budget"),
    "smoke": Suite([_V["baseline"], _V["cbam"]], SMOKE_RECIPE, "two variants, tiny subset: the machinery only"),
    "converged": Suite([_V[n] for n in ("baseline", "se", "cbam")], CONVERGED_RECIPE,
                       "baseline vs SE vs CBAM on the full data, trained to convergence"),
    "converged-paper": Suite(PAPER_SUITE, CONVERGED_RECIPE, "the paper's 10 variants at the converged recipe"),
    "cluttered": Suite([_V[n] for n in ("baseline", "ch_avgmax", "cbam")], CLUTTERED_RECIPE,
                       "baseline vs channel-only vs CBAM on cluttered translated Fashion-MNIST"),
}


def suite(name: str) -> List[Variant]:
    if name not in SUITES:
        raise ValueError(f"unknown suite '{name}'; valid: {', '.join(SUITES)}")
    return SUITES[name].variants


def _read_mapping(path: str) -> Dict[str, Any]:
    """The keys a YAML/JSON recipe file sets (validated as TrainConfig fields)."""
    TrainConfig.from_file(path)
    with open(path, encoding="utf-8") as f:
        if path.endswith((".yaml", ".yml")):
            import yaml
            return yaml.safe_load(f) or {}
        return json.load(f)


def build_recipe(suite_name: str, config_file: Optional[str] = None,
                 overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """The suite's recipe, then the keys a ``--config`` file sets, then explicit flags."""
    suite(suite_name)
    base = {**TrainConfig().to_dict(), **SUITES[suite_name].recipe}
    if config_file:
        base.update(_read_mapping(config_file))
    base.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(base)


def parse_shard(spec: Optional[str]) -> Tuple[int, int]:
    """``"K/N"`` (0 <= K < N) -> ``(K, N)``; ``"auto"`` reads a SLURM array or torchrun's ranks.

    Under ``auto`` with torchrun, each rank is a shard of its own and trains alone, so
    ``WORLD_SIZE`` is reset here to keep the training loop from starting DDP.
    """
    if spec in (None, "", "0/1"):
        return 0, 1
    env = os.environ
    if spec == "auto":
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            k = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return k, int(env["SLURM_ARRAY_TASK_COUNT"])
        if "RANK" in env and "WORLD_SIZE" in env:
            k, n = int(env["RANK"]), int(env["WORLD_SIZE"])
            env["WORLD_SIZE"] = "1"
            return k, n
        return 0, 1
    try:
        k, n = (int(p) for p in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be K/N with 0 <= K < N (e.g. 0/3, 1/3, 2/3) or 'auto', got '{spec}'") \
            from None
    if not 0 <= k < n:
        raise ValueError(f"--shard {spec}: need 0 <= K < N (shards are numbered from 0)")
    return k, n


def grid(variants: List[Variant], seeds: int) -> List[Tuple[Variant, int]]:
    """Every (variant, seed index), in the order that shards index into."""
    return [(v, s) for v in variants for s in range(seeds)]


def shard_entries(entries: List[Any], k: int, n: int) -> List[Any]:
    """Round-robin: each shard gets a mix of variants, and the shards' sizes differ by at most one."""
    return entries[k::n]


def run_config(base: TrainConfig, v: Variant, s: int, out: str) -> TrainConfig:
    return TrainConfig(**{**base.to_dict(), "attention": v.attention, "attention_kwargs": dict(v.kwargs),
                          "seed": base.seed + s, "out": os.path.join(out, v.name, f"seed{s}"), "resume": True})


def macs_of(cfg: TrainConfig, in_chans: int, size: int, num_classes: int) -> int:
    """Multiply-accumulates of one forward pass at the training resolution."""
    from torch.utils.flop_counter import FlopCounterMode
    # the reference kernels are plain convs and matmuls that the counter sees; a fused op is opaque to it
    m = build_model(TrainConfig(**{**cfg.to_dict(), "impl": "reference"}), num_classes, in_chans).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(torch.randn(1, in_chans, size, size))
    return fc.get_total_flops() // 2


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_result(cfg: TrainConfig, v: Variant, s: int, history: List[Dict], data) -> Dict[str, Any]:
    """``result.json`` of a finished run: what the summary needs, so it never loads data or weights."""
    train_set = data[0]
    size = cfg.image_size or train_set.image_size
    model = build_model(cfg, train_set.num_classes, train_set.in_chans)
    res = {"variant": v.name, "seed_index": s, "seed": cfg.seed, "epochs": len(history),
           "top1": 100 * history[-1]["test_acc"], "best_top1": 100 * max(h["test_acc"] for h in history),
           "test_loss": history[-1]["test_loss"], "params": sum(p.numel() for p in model.parameters()),
           "macs": macs_of(cfg, train_set.in_chans, size, train_set.num_classes),
           "images_per_s": sum(h["images_per_s"] for h in history) / len(history),
           "train_s": sum(h["epoch_time_s"] for h in history), "device": _device_name(),
           "data_source": train_set.source, "train_images": len(train_set), "test_images": len(data[1]),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(os.path.join(cfg.out, "result.json"), res)
    return res


def _check_grid(out: str, suite_name: str, seeds: int, base: TrainConfig) -> None:
    """Write ``grid.json``, or refuse when the folder already holds another grid."""
    recipe = {k: v for k, v in base.to_dict().items() if k not in RUNTIME_FIELDS}
    want = json.loads(json.dumps({"suite": suite_name, "seeds": seeds, "recipe": recipe}, default=str))
    path = os.path.join(out, "grid.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            have = json.load(f)
        diff = sorted(k for k in set(have["recipe"]) | set(want["recipe"])
                      if have["recipe"].get(k) != want["recipe"].get(k))
        if have["suite"] != suite_name or diff:
            raise ValueError(f"{out} holds grid '{have['suite']}' with another recipe (differs in: "
                             f"{', '.join(diff) or 'suite'}); use another --out or the same settings")
        if have["seeds"] >= seeds:
            return
    write_json(path, want)


def run_ablation(base: TrainConfig, suite_name: str = "paper", seeds: int = 3, out: str = "runs/ablate",
                 log: Callable[[str], None] = print, shard: Tuple[int, int] = (0, 1)) -> str:
    """Train this shard's unfinished (variant, seed) runs, then summarise the folder; returns the
    markdown path (empty on a non-zero torchrun rank)."""
    rank, world, _ = D.setup()
    if rank == 0:
        _check_grid(out, suite_name, seeds, base)
    entries = grid(suite(suite_name), seeds)
    mine = shard_entries(entries, *shard)
    if not mine:  # more shards than runs (JOBS=P on one machine, a large SLURM array): nothing to do here
        log(f"[shard {shard[0]}/{shard[1]}] no runs: the grid has {len(entries)}")
        return ""
    data = None
    for i, (v, s) in enumerate(mine, 1):
        cfg = run_config(base, v, s, out)
        tag = f"[shard {shard[0]}/{shard[1]}: {i}/{len(mine)}] {v.name} seed {s}"
        if os.path.exists(os.path.join(cfg.out, "result.json")):
            log(f"{tag}: finished, skipped")
            continue
        data = data or load_data(base)
        ck = latest_checkpoint(cfg.out)
        if ck is not None and ck[0] >= cfg.epochs:  # trained before result.json existed, or killed in between
            history = load_state(ck[2])["history"]
            log(f"{tag}: finished, result recorded")
        else:
            log(f"{tag}: training ({v.label})")
            history = train(cfg, data=data).history
        if rank == 0:
            r = write_result(cfg, v, s, history, data)
            log(f"{tag}: top-1 {r['top1']:.2f} % in {r['train_s']:.0f} s")
    return summarize(out, log=log) if rank == 0 else ""


def ablate(suite_name: str = "paper", seeds: int = 3, out: Optional[str] = None, config_file: Optional[str] = None,
           overrides: Optional[Mapping[str, Any]] = None, shard: Optional[str] = None,
           summary_only: bool = False, log: Callable[[str], None] = print) -> str:
    """What ``cbam ablate`` does: build the recipe, run this shard, merge the folder's summary."""
    out = out or "runs/ablate"
    if summary_only:
        return summarize(out, log=log)
    k, n = parse_shard(shard)
    try:
        return run_ablation(build_recipe(suite_name, config_file, overrides), suite_name, seeds, out, log, (k, n))
    finally:
        D.cleanup()


def load_results(out: str) -> Tuple[Dict[str, Any], Dict[str, Dict[int, Dict]], List[str]]:
    """``grid.json``, the finished runs' results by variant and seed, and the missing runs."""
    path = os.path.join(out, "grid.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{out} holds no ablation grid (no grid.json); run `cbam ablate --out {out}` first")
    with open(path, encoding="utf-8") as f:
        g = json.load(f)
    results: Dict[str, Dict[int, Dict]] = {}
    missing = []
    for v, s in grid(suite(g["suite"]), g["seeds"]):
        p = os.path.join(out, v.name, f"seed{s}", "result.json")
        if not os.path.exists(p):
            missing.append(f"{v.name} seed {s}")
            continue
        with open(p, encoding="utf-8") as f:
            r = json.load(f)
        results.setdefault(v.name, {})[r["seed"]] = r
    return g, results, missing


def _rows(variants: List[Variant], results: Dict[str, Dict[int, Dict]]) -> List[Dict[str, Any]]:
    rows = []
    for v in variants:
        rs = results.get(v.name)
        if not rs:
            continue
        acc = [rs[s]["top1"] for s in sorted(rs)]
        rows.append({"variant": v.name, "description": v.label, "seeds": len(acc), "top1_mean": statistics.mean(acc),
                     "top1_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "per_seed": {str(s): rs[s]["top1"] for s in sorted(rs)},
                     "params": rs[min(rs)]["params"], "macs": rs[min(rs)]["macs"],
                     "images_per_s": statistics.mean(r["images_per_s"] for r in rs.values()),
                     "train_s": statistics.mean(r["train_s"] for r in rs.values())})
    return rows


def _claims(results: Dict[str, Dict[int, Dict]]) -> List[Dict[str, Any]]:
    out = []
    for claim, better, worse, paper in CLAIMS:
        if better not in results or worse not in results:
            continue
        p = compare({s: r["top1"] for s, r in results[better].items()},
                    {s: r["top1"] for s, r in results[worse].items()})
        if p.n == 0:
            continue
        need = seeds_needed(p.sd, abs(p.mean)) if p.n >= 2 and p.mean != 0 and p.verdict.startswith("below") else None
        out.append({"claim": claim, "better": better, "worse": worse, "paper": paper, "n": p.n, "mean": p.mean,
                    "se": p.se, "ci": list(p.ci), "mde": p.mde, "verdict": p.verdict, "seeds_to_detect_mean": need})
    return out


def _markdown(g: Dict[str, Any], rows: List[Dict], claims: List[Dict], missing: List[str], devices: List[str]) -> str:
    r = g["recipe"]
    md = [f"# Ablation: suite '{g['suite']}', {len(rows)} variants x {g['seeds']} seeds", "",
          f"Recipe: {r['model']} on {r['data']}, train subset {r['train_subset'] or 'all'}, test subset "
          f"{r['test_subset'] or 'all'}, {r['epochs']} epochs, batch {r['batch_size']}, {r['optimizer']} lr {r['lr']} "
          f"{r['schedule']}, weight decay {r['weight_decay']}, seeds {r['seed']}..{r['seed'] + g['seeds'] - 1}. "
          f"Hardware: {'; '.join(devices)}.", ""]
    if missing:
        md += [f"**Incomplete: {len(missing)} run(s) not finished** ({', '.join(missing)}); the tables cover the "
               "finished ones.", ""]
    md += ["| variant | description | seeds | top-1 (%) mean +- std | per seed | params | MACs | images/s | train s |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for x in rows:
        md.append(f"| {x['variant']} | {x['description']} | {x['seeds']} | {x['top1_mean']:.2f} +- {x['top1_std']:.2f} "
                  f"| {', '.join(f'{a:.2f}' for a in x['per_seed'].values())} | {x['params']:,} "
                  f"| {x['macs'] / 1e6:.2f} M | {x['images_per_s']:.0f} | {x['train_s']:.0f} |")
    md += ["", "## The paper's claims, paired by seed", "",
           "| claim | paper top-1 error (ResNet-50, ImageNet) | ours: mean difference (pt) +- s.e. | 95 % CI | "
           "MDE (pt) | verdict |", "|---|---|---:|---:|---:|---|"]
    for c in claims:
        ci = f"{c['ci'][0]:+.2f} .. {c['ci'][1]:+.2f}" if c["n"] > 1 else "-"
        se = f" +- {c['se']:.2f}" if c["n"] > 1 else ""
        need = c["seeds_to_detect_mean"]
        more = "" if not need else f"; {need} seeds would detect {abs(c['mean']):.2f} pt" if need <= 1000 else \
            f"; over 1000 seeds would be needed to detect {abs(c['mean']):.2f} pt"
        md.append(f"| {c['claim']} | {c['paper']} | {c['mean']:+.2f}{se} | {ci} | {c['mde']:.2f} "
                  f"| {c['verdict']}{more} |")
    md += ["", "Difference = claimed-better minus claimed-worse top-1 of the same seed. *Confirmed*: the 95 % "
           "confidence interval of the paired t-test lies above 0; *contradicted*: below 0; otherwise the effect is "
           "below what this many seeds can detect: the minimal detectable effect (MDE) is the true difference the "
           "run would detect with 80 % power, (t_0.975,n-1 + t_0.8,n-1) x sd / sqrt(n).", "",
           "![accuracy](summary.png)"]
    return "\n".join(md) + "\n"


def summarize(out: str, log: Callable[[str], None] = print) -> str:
    """Merge the finished runs in ``out`` into summary.md/.csv/.json/.png; returns the markdown path."""
    g, results, missing = load_results(out)
    if not results:
        raise FileNotFoundError(f"{out}: no finished run yet ({len(missing)} to go)")
    rows, claims = _rows(suite(g["suite"]), results), _claims(results)
    devices = sorted({r["device"] for rs in results.values() for r in rs.values()})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows([{**x, "per_seed": " ".join(f"{a:.2f}" for a in x["per_seed"].values())} for x in rows])
    write_text(os.path.join(out, "summary.csv"), buf.getvalue())
    timed = ("images_per_s", "train_s")  # kept apart: they vary between machines, the results do not
    write_json(os.path.join(out, "summary.json"), {
        "suite": g["suite"], "seeds": g["seeds"], "recipe": g["recipe"], "missing": missing,
        "variants": [{k: v for k, v in x.items() if k not in timed} for x in rows], "claims": claims,
        "timing": {x["variant"]: {k: x[k] for k in timed} for x in rows}, "devices": devices})
    md = _markdown(g, rows, claims, missing, devices)
    _plot(os.path.join(out, "summary.png"), rows)
    path = os.path.join(out, "summary.md")
    write_text(path, md)
    log(md)
    return path


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
