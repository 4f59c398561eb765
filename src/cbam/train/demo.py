"""`cbam demo`: ResNet-20 without attention, with SE and with CBAM on the default data, in a
bounded CPU budget, then a table and a report folder."""
import os
import time
from typing import Callable, Dict, List, Optional

import torch

from .config import TrainConfig
from .loop import load_data, train
from .report import load_run, runs_table, shipped_comparison, write_demo_report

VARIANTS = [("baseline", None), ("se", "se"), ("cbam", "cbam")]


def demo_config(out: str, quick: bool = False, **overrides) -> TrainConfig:
    """The demo recipe. Full: 12,000 training images, 3 epochs each (fits ~10 minutes for the
    three networks on 2 CPU cores); quick: a smoke run of the same machinery."""
    base = dict(model="resnet20", data="fashion-mnist", epochs=3, batch_size=128, lr=0.1, warmup_epochs=0.3,
                train_subset=12_000, test_subset=5_000, weight_decay=5e-4, seed=0, out=out, threads=None)
    if quick:
        base.update(epochs=1, train_subset=512, test_subset=256, batch_size=64)
    base.update(overrides)
    return TrainConfig(**base)


def run_demo(out: str = "runs/demo", quick: bool = False, progress: bool = True, resume: bool = True,
             after_training: Optional[Callable[[str, List[Dict], List[str]], List[str]]] = None,
             log: Callable[[str], None] = print, **overrides) -> str:
    """Train the three variants into ``out/<variant>`` and write ``out/report.md``; returns its path.

    Finished variants are skipped (``resume``), so an interrupted demo continues; without
    ``resume`` earlier runs in ``out`` are replaced.
    ``after_training`` may add report sections (e.g. attention maps).
    """
    t0 = time.perf_counter()
    cfg0 = demo_config(os.path.join(out, "x"), quick, **overrides)
    data = load_data(cfg0)
    log(f"data: {cfg0.data} from {data[0].source}; {len(data[0])} train / {len(data[1])} test images; "
        f"{torch.get_num_threads()} CPU threads")
    runs, names = [], []
    for name, att in VARIANTS:
        cfg = demo_config(os.path.join(out, name), quick, attention=att, progress=progress, resume=resume,
                          overwrite=not resume, **overrides)
        log(f"== {name}: {cfg.model} attention={att or 'none'} ==")
        train(cfg, data=data)
        runs.append(load_run(cfg.out))
        names.append(name)
    shipped = shipped_comparison(runs, names)  # "" when no converged networks ship
    extra = ([shipped, ""] if shipped else []) + (after_training(out, runs, names) if after_training else [])
    report = write_demo_report(out, runs, names, data[0].source, time.perf_counter() - t0, extra, len(data[1]))
    log("\n" + runs_table(runs, names))
    if shipped:
        log("\n" + shipped)
    log(f"\nreport: {report}  (whole demo {time.perf_counter() - t0:.0f} s)")
    return report
