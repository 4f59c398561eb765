"""`cbam demo`: ResNet-20 without attention, with SE and with CBAM on the default data, in a
bounded CPU budget, then a table and a report folder."""
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .checkpoint import check_run_folder
from .budget import fit_train_subset, measure_rates, predicted_seconds
from .config import TrainConfig
from .loop import load_data, train
from .report import load_run, runs_table, shipped_comparison, write_demo_report

VARIANTS = [("baseline", None), ("se", "se"), ("cbam", "cbam")]
BUDGET_S = 540.0     # the whole demo; with set-up on a prepared machine it stays within 10 minutes
REPORT_RESERVE_S = 20.0  # attention maps, Grad-CAM and the report after training
SAFETY = 0.85        # sustained throughput falls below a few measured steps (VM noise, a slow first epoch)


def demo_config(out: str, quick: bool = False, **overrides) -> TrainConfig:
    """The demo recipe. Full: up to 12,000 training images, 3 epochs each (``run_demo`` shrinks the
    subset on CPUs too slow for its time budget); quick: a smoke run of the same machinery."""
    base = dict(model="resnet20", data="fashion-mnist", epochs=3, batch_size=128, lr=0.1, warmup_epochs=0.3,
                train_subset=12_000, test_subset=5_000, weight_decay=5e-4, seed=0, out=out, threads=None)
    if quick:
        base.update(epochs=1, train_subset=512, test_subset=256, batch_size=64)
    base.update(overrides)
    return TrainConfig(**base)


def run_demo(out: str = "runs/demo", quick: bool = False, progress: bool = True, resume: bool = True,
             after_training: Optional[Callable[[str, List[Dict], List[str]], List[str]]] = None,
             log: Callable[[str], None] = print, budget_s: Optional[float] = BUDGET_S, **overrides) -> str:
    """Train the three variants into ``out/<variant>`` and write ``out/report.md``; returns its path.

    Finished variants are skipped (``resume``), so an interrupted demo continues; without
    ``resume`` earlier runs in ``out`` are replaced.
    ``after_training`` may add report sections (e.g. attention maps). With ``budget_s`` and no
    ``train_subset`` override, the training subset is sized so the whole demo takes about
    ``budget_s`` seconds on this machine (:func:`size_to_budget`); ``budget_s=None`` keeps the recipe.
    A resumed demo trains with the subset and memory format of the runs already in ``out`` and
    refuses overrides that differ from them.
    """
    t0 = time.perf_counter()
    for name, _ in VARIANTS:  # an unusable --out fails now, not after the throughput measurement
        check_run_folder(os.path.join(out, name), resume, not resume)
    sizing = ""
    prior = _choices_in(out) if resume else None
    if prior is not None:  # a resumed demo trains what its finished runs were trained with
        clash = [f"{k}={v}" for k, v in prior.items() if k in overrides and overrides[k] != v]
        if clash:
            raise ValueError(f"{out} holds demo runs made with {', '.join(clash)}; rerun with --fresh to replace "
                             "them, or choose another --out")
        overrides.update(prior)
        sizing = (f"Training subset {prior['train_subset'] or 'all'}, "
                  f"{'channels_last' if prior['channels_last'] else 'NCHW'}: kept from the runs already in {out}.")
    elif budget_s and "train_subset" not in overrides:
        chosen, sizing = size_to_budget(out, quick, budget_s - (time.perf_counter() - t0), log, **overrides)
        overrides.update(chosen)
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
    extra = [*([sizing, ""] if sizing else []), *([shipped, ""] if shipped else []),
             *(after_training(out, runs, names) if after_training else [])]
    report = write_demo_report(out, runs, names, data[0].source, time.perf_counter() - t0, extra, len(data[1]))
    log("\n" + runs_table(runs, names))
    if shipped:
        log("\n" + shipped)
    log(f"\nreport: {report}  (whole demo {time.perf_counter() - t0:.0f} s)")
    return report


def size_to_budget(out: str, quick: bool, seconds: float, log: Callable[[str], None],
                   **overrides) -> Tuple[Dict[str, Any], str]:
    """(the overrides it chose, a report sentence saying how). The memory format is the faster here
    (channels_last or NCHW: which one wins depends on the CPU), unless ``overrides`` fixes it; the
    training subset is the largest that lets every variant's epochs and evaluations end within
    ``seconds`` at the throughput measured here."""
    full_cfg = demo_config(os.path.join(out, "x"), quick, **overrides)
    t0 = time.perf_counter()
    data = load_data(full_cfg)
    log(f"measuring throughput to fit the {seconds:.0f} s time budget (the first CBAM network compiles the "
        "C++ kernels once per machine and checkout: minutes on 2 cores) ...")
    n_train, n_test, epochs = len(data[0]), len(data[1]), full_cfg.epochs
    layouts = [overrides["channels_last"]] if "channels_last" in overrides else [True, False]
    rates = {cl: [measure_rates(demo_config(full_cfg.out, quick, **{**overrides, "attention": att,
                                                                     "channels_last": cl}), data)
                  for _, att in VARIANTS] for cl in layouts}
    cl = min(layouts, key=lambda c: predicted_seconds(rates[c], n_train, n_test, epochs))
    left = (seconds - (time.perf_counter() - t0) - REPORT_RESERVE_S) * SAFETY
    n = fit_train_subset(rates[cl], left, n_test, epochs, n_train, step=500 if n_train >= 4000 else 1,
                         minimum=min(2000, n_train // 4))
    need = predicted_seconds(rates[cl], n, n_test, epochs)
    fmt = {True: "channels_last", False: "NCHW"}
    measured = "; ".join(fmt[c] + ": " + ", ".join(f"{name} {r.train:.0f} / {r.eval:.0f}"
                                                   for (name, _), r in zip(VARIANTS, rates[c])) for c in layouts)
    what = f"all {n_train:,}" if n == n_train else f"{n:,} of the recipe's {n_train:,}"
    log(f"images/s (train / eval): {measured}")
    log(f"memory format {fmt[cl]}; training images: {what}; about {need:.0f} s of training and evaluation")
    over = ""
    if need > left:
        over = f" Even {n:,} training images need about {need:.0f} s here, more than the {left:.0f} s left."
        log("warning:" + over)
    layout = f"{fmt[cl]} memory format, the faster here, and " if len(layouts) > 1 else ""
    sentence = (f"Chosen from images/s measured on this machine before training (train / eval, {measured}): "
                f"{layout}{what} training images, so that the whole demo ends within about {seconds:.0f} s."
                f"{over} `cbam demo --train-subset N` fixes the size; `--budget 0` runs the full recipe.")
    return {"train_subset": n, "channels_last": cl}, sentence


def _choices_in(out: str) -> Optional[Dict[str, Any]]:
    """The training subset and memory format of the variant runs already started in ``out`` (None
    when there is none); runs made with different ones (an interrupted --fresh) are refused."""
    seen = {}
    for name, _ in VARIANTS:
        path = os.path.join(out, name, "config.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                c = json.load(f)
            seen[name] = {"train_subset": c.get("train_subset"), "channels_last": c.get("channels_last", True)}
    if len({json.dumps(v, sort_keys=True) for v in seen.values()}) > 1:
        detail = "; ".join(f"{k}: {v}" for k, v in seen.items())
        raise ValueError(f"the demo runs in {out} were made with different settings ({detail}); rerun with --fresh")
    return next(iter(seen.values()), None)
