"""Comparing runs and writing the demo report (markdown + PNG)."""
import json
import math
import os
from typing import Dict, List, Optional, Sequence

from .._io import write_text
from .checkpoint import latest_checkpoint, load_state
from .metrics import plot_curves


def load_run(path: str) -> Dict:
    """Config and history of a finished or interrupted run folder."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path} is not a run folder (no config.json); runs are made by `cbam train`")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    ck = latest_checkpoint(path)
    history = load_state(ck[2])["history"] if ck else []
    return {"path": path, "config": cfg, "history": history}


def runs_table(runs: Sequence[Dict], names: Optional[Sequence[str]] = None) -> str:
    """A markdown table: params, final/best accuracy, train time and throughput."""
    lines = ["| run | model | attention | params | epochs | test top-1 | best top-1 | test top-5 | train time | "
             "images/s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(runs):
        h, c = r["history"], r["config"]
        name = names[i] if names else os.path.basename(os.path.normpath(r["path"]))
        if not h:
            lines.append(f"| {name} | {c['model']} | {c.get('attention') or '-'} | {c['params']:,} | 0 | - | - | - | "
                         f"- | - |")
            continue
        last = h[-1]
        t = sum(x["epoch_time_s"] for x in h)
        ips = sum(x["images_per_s"] for x in h) / len(h)
        lines.append(f"| {name} | {c['model']} | {c.get('attention') or '-'} | {c['params']:,} | {len(h)} | "
                     f"{100 * last['test_acc']:.2f} % | {100 * max(x['test_acc'] for x in h):.2f} % | "
                     f"{100 * last['test_top5']:.2f} % | {t:.0f} s | {ips:.0f} |")
    return "\n".join(lines)


def compare_runs(paths: Sequence[str], out: Optional[str] = None) -> str:
    runs = [load_run(p) for p in paths]
    table = runs_table(runs)
    if out:
        os.makedirs(out, exist_ok=True)
        plot_curves(os.path.join(out, "compare_curves.png"),
                    {os.path.basename(os.path.normpath(r["path"])): r["history"] for r in runs if r["history"]},
                    title="comparison")
        write_text(os.path.join(out, "compare.md"),
                   "# Run comparison\n\n" + table + "\n\n![curves](compare_curves.png)\n")
    return table


def demo_verdict(runs: Sequence[Dict], names: Sequence[str], n_test: int) -> str:
    """Each variant's final top-1 against the first run's, next to what the test set alone can resolve:
    the 95 % half-width of a difference of two accuracies measured on ``n_test`` images (binomial,
    unpaired: 1.96 * sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n)). One seed says nothing of the
    seed-to-seed spread, which comes on top."""
    accs = [r["history"][-1]["test_acc"] for r in runs if r["history"]]
    if len(accs) != len(runs) or len(runs) < 2 or n_test < 1:
        return ""
    base = accs[0]
    parts = []
    for name, a in zip(names[1:], accs[1:]):
        half = 196 * math.sqrt(a * (1 - a) / n_test + base * (1 - base) / n_test)
        diff = 100 * (a - base)
        parts.append(f"{name} {diff:+.2f} pt vs {names[0]}: " + (
            f"within what {n_test:,} test images can resolve (+-{half:.2f} pt at 95 %), so this run does not "
            "separate them" if abs(diff) <= half else
            f"beyond the test set's sampling error (+-{half:.2f} pt at 95 %), but from one seed"))
    return ("Verdict (computed from the table): " + "; ".join(parts) + ". Seed-to-seed spread adds to the "
            "test set's error; docs/RESULTS.md in the repository measures it over seeds.")


def shipped_comparison(runs: Sequence[Dict], names: Sequence[str], tag: str = "fashion-mnist") -> str:
    """Each demo variant's top-1 beside the shipped converged network of the same model (its model
    card's figure, measured by ``cbam eval`` on the full test set), when one ships; "" when none does."""
    from ..models.pretrained import canonical_name, find
    rows = []
    for name, r in zip(names, runs):
        c = r["config"]
        try:
            _, card = find(canonical_name(c["model"], c.get("attention")), tag)
        except ValueError:
            continue
        live = f"{100 * r['history'][-1]['test_acc']:.2f} %" if r["history"] else "-"
        rows.append(f"| {name} | {live} | {card['test_top1']:.2f} % | {card['epochs']} | "
                    f"{card['eval']['images']:,} | `{card['train_command']}` |")
    if not rows:
        return ""
    return "\n".join([f"Converged networks shipped with the package (`pretrained='{tag}'`), beside this short run:",
                      "", "| variant | this demo | shipped, converged | epochs | test images | trained with |",
                      "|---|---:|---:|---:|---:|---|", *rows])


def write_demo_report(out: str, runs: List[Dict], names: List[str], data_source: str, wall_s: float,
                      extra_sections: Sequence[str] = (), n_test: int = 0) -> str:
    plot_curves(os.path.join(out, "curves.png"), {n: r["history"] for n, r in zip(names, runs)},
                title="ResNet-20 on " + runs[0]["config"]["data"])
    table = runs_table(runs, names)
    c = runs[0]["config"]
    md = [
        "# cbam demo report", "",
        f"Data: **{c['data']}** from {data_source}; train subset {c.get('train_subset') or 'all'}, "
        f"test subset {c.get('test_subset') or 'all'}; {c['epochs']} epochs, batch {c['batch_size']}, "
        f"{c['optimizer']} lr {c['lr']} ({c['schedule']}, warm-up {c['warmup_epochs']} epochs), seed {c['seed']}.",
        f"Configuration: {'channels_last' if c.get('channels_last') else 'NCHW'} memory format, "
        f"{'fp32' if c.get('amp', 'none') == 'none' else c['amp'] + ' autocast'} (`cbam bench` times the "
        "formats; bf16 autocast is opt-in with `--amp bf16`).",
        f"Whole demo wall-clock: {wall_s:.0f} s.", "", table, "", "![curves](curves.png)", "",
        demo_verdict(runs, names, n_test), "",
    ]
    md += list(extra_sections)
    path = os.path.join(out, "report.md")
    write_text(path, "\n".join(md) + "\n")
    return path
