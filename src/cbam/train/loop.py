"""The training loop: read top to bottom, no framework.

``train(cfg)`` builds data, model and optimiser from a :class:`TrainConfig`, runs
``cfg.epochs`` epochs with evaluation after each, writes ``metrics.csv``,
``curves.png`` and an atomic checkpoint every epoch, and resumes from the last
checkpoint with ``cfg.resume``. Under torchrun it uses DDP (gloo on CPU, nccl on
CUDA); rank 0 alone logs and writes.
"""
import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._io import write_json
from ..attention import CBAM
from ..data import BatchLoader, EvalTransform, TrainTransform, load_dataset
from ..data.datasets import Dataset
from ..models import create_model
from ..models.registry import parse_model_name
from ..ops import kernels_for
from ..ops._cpuinfo import native_bf16
from . import distributed as D
from .checkpoint import (TrainingDiverged, check_run_folder, latest_checkpoint, load_state, load_weights,
                         nonfinite_tensors, prepare_run_folder, save_checkpoint)
from .config import TrainConfig
from .metrics import TensorBoard, confusion_matrix, plot_curves, write_csv

__all__ = ["RunResult", "TrainingDiverged", "build_model", "evaluate", "load_data", "lr_at", "train"]


@dataclass
class RunResult:
    out: str
    history: List[Dict]
    params: int
    model: nn.Module


def train(cfg: TrainConfig, data: Optional[Tuple[Dataset, Dataset]] = None) -> RunResult:
    """Train ``cfg`` into ``cfg.out``; ``data`` = (train, test) skips loading (the demo shares it)."""
    cfg.validate()
    check_run_folder(cfg.out, cfg.resume, cfg.overwrite)
    rank, world, device = D.setup()
    main, tb = rank == 0, None
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        train_set, test_set = data if data is not None else load_data(cfg)
        size = cfg.image_size or train_set.image_size
        model = build_model(cfg, train_set.num_classes, train_set.in_chans)
        params = sum(p.numel() for p in model.parameters())
        model = place_model(cfg, model, device, world)
        opt = build_optimizer(cfg, model)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        loader, steps = make_loader(cfg, train_set, size, rank, world)
        if main:  # only now: a bad model or data argument leaves the folder (and an --overwrite'd run) alone
            prepare_run_folder(cfg.out, cfg.overwrite)
        start_epoch, history = resume_from(cfg, model, opt, scaler)
        net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        if main:
            write_json(os.path.join(cfg.out, "config.json"), {**cfg.to_dict(), "params": params, "world": world,
                                                              "data_source": train_set.source})
        tb = TensorBoard(cfg.out, cfg.tensorboard and main)
        for epoch in range(start_epoch, cfg.epochs):
            row = train_one_epoch(cfg, net, opt, scaler, loader, epoch, steps, device, show_bar=main)
            check_weights(model, epoch, cfg.out, device)
            if main:
                ev = evaluate(model, test_set, image_size=size, device=device, channels_last=cfg.channels_last)
                row.update({k: ev[k] for k in ("test_loss", "test_acc", "test_top5")})
            history.append(row)
            if main:
                write_epoch(cfg, model, opt, scaler, history, tb)
            if world > 1:
                torch.distributed.barrier()
        return RunResult(cfg.out, history, params, model)
    finally:
        if tb is not None:
            tb.close()
        D.cleanup()


def load_data(cfg: TrainConfig) -> Tuple[Dataset, Dataset]:
    train = load_dataset(cfg.data, "train", cfg.data_root).subset(cfg.train_subset, cfg.seed)
    test = load_dataset(cfg.data, "test", cfg.data_root).subset(cfg.test_subset, cfg.seed)
    return train, test


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    arch, att = parse_model_name(cfg.model)
    attention = cfg.attention if cfg.attention is not None else att
    kwargs = dict(cfg.attention_kwargs)
    if kwargs and attention in (None, "none"):
        raise ValueError(f"--attention-kwargs {json.dumps(kwargs)} given, but {cfg.model} has no attention; "
                         "add --attention NAME or a model suffix such as _cbam")
    if attention is not None and attention.startswith("cbam") and "impl" not in kwargs:
        kwargs["impl"] = cfg.impl
    try:
        return create_model(arch, num_classes=num_classes, in_chans=in_chans, attention=attention,
                             attention_kwargs=kwargs or None)
    except TypeError as e:  # an unknown keyword or a value of the wrong type, reported by the module
        raise ValueError(f"--attention-kwargs {json.dumps(cfg.attention_kwargs)} do not fit attention "
                         f"'{attention}': {e}") from None


def place_model(cfg: TrainConfig, model: nn.Module, device: torch.device, world: int) -> nn.Module:
    if world > 1 and cfg.sync_bn:
        model = D.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if any(isinstance(m, CBAM) and m.impl != "reference" for m in model.modules()):
        # compile the fused kernels (once per machine, about a minute on 2 cores) before the clock
        # starts, so epoch 1's time and images/s measure training, not gcc
        kernels_for(torch.empty(1, 1, 1, 1, device=device))
    _autocast(cfg, device)  # an impossible amp setting fails here, before any epoch
    return model


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # no weight decay on BN / biases
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_loader(cfg: TrainConfig, train_set: Dataset, size: int, rank: int, world: int
                ) -> Tuple[BatchLoader, int]:
    tf = TrainTransform(train_set.mean, train_set.std, size, cfg.crop_padding, cfg.hflip)
    loader = BatchLoader(train_set, cfg.batch_size, tf, seed=cfg.seed, rank=rank, world=world)
    if len(loader) == 0:
        raise ValueError(f"training set of {len(train_set)} images is smaller than one batch of {cfg.batch_size}")
    return loader, min(len(loader), cfg.max_steps_per_epoch or len(loader))


def resume_from(cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler) -> Tuple[int, List[Dict]]:
    """(epochs already done, their history): from the last checkpoint with ``cfg.resume``, else (0, [])."""
    ck = latest_checkpoint(cfg.out) if cfg.resume else None
    if ck is None:
        return 0, []
    epoch_done, wpath, spath = ck
    load_weights(model, wpath)  # names the first mismatching key for another model's checkpoint
    state = load_state(spath)
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return epoch_done, state["history"]


def train_one_epoch(cfg: TrainConfig, net: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    loader: BatchLoader, epoch: int, steps: int, device: torch.device, show_bar: bool) -> Dict:
    loader.set_epoch(epoch)
    net.train()
    t0 = time.perf_counter()
    # loss sum, correct, count: kept on the device and read only every log_interval steps, since
    # each read waits for the device to finish
    stats = torch.zeros(3, dtype=torch.float64, device=device)
    bar = _progress(cfg, epoch, steps) if show_bar else None
    it = loader.batches()
    for i in range(steps):
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lr = lr_at(cfg, epoch * steps + i, steps)
        loss, out = train_step(cfg, net, opt, scaler, x, y, lr, device)
        with torch.no_grad():
            stats[0] += loss.detach() * len(y)
            stats[1] += (out.argmax(1) == y).sum()
            stats[2] += len(y)
        if bar is not None:
            bar.update(1)
        if (i + 1) % cfg.log_interval == 0 or i + 1 == steps:
            _log_step(stats, bar, epoch, i, lr, t0, cfg.out)
    if bar is not None:
        bar.close()
    total = D.all_reduce_sum(stats).tolist()
    epoch_time = time.perf_counter() - t0
    return {"epoch": epoch + 1, "train_loss": total[0] / total[2], "train_acc": total[1] / total[2], "lr": lr,
            "epoch_time_s": epoch_time, "images_per_s": total[2] / epoch_time}


def train_step(cfg: TrainConfig, net: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, lr: float, device: torch.device
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on the batch (x, y) at learning rate ``lr``; returns (loss, logits)."""
    if cfg.channels_last:
        x = x.to(memory_format=torch.channels_last)
    for g in opt.param_groups:
        g["lr"] = lr
    with _autocast(cfg, device):
        out = net(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss, out


def _progress(cfg: TrainConfig, epoch: int, steps: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=True, dynamic_ncols=True)


def _log_step(stats: torch.Tensor, bar, epoch: int, i: int, lr: float, t0: float, out: str) -> None:
    """The host sync of a log interval: stop on a non-finite loss (every rank together), update the bar."""
    loss_sum, correct, n = stats.tolist()
    bad = torch.tensor([0.0 if math.isfinite(loss_sum) else 1.0], device=stats.device)
    if D.all_reduce_sum(bad).item():
        what = f"{loss_sum}" if not math.isfinite(loss_sum) else "non-finite on another process"
        raise TrainingDiverged(f"loss became {what} at epoch {epoch + 1}, by step {i + 1}; stopped. "
                               f"{_last_good(out)}. Try a lower --lr, --grad-clip 1.0 or --amp none.")
    if bar is not None:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{correct / n:.3f}",
                        img_s=f"{n * world / (time.perf_counter() - t0):.0f}", lr=f"{lr:.3g}")


def _last_good(out: str) -> str:
    ck = latest_checkpoint(out)
    return f"Last good checkpoint: {ck[1] if ck else 'none yet'}"


def check_weights(model: nn.Module, epoch: int, out: str, device: torch.device) -> None:
    """Stop before a checkpoint or an evaluation when a step made a weight or BN statistic non-finite
    (a finite loss does not prove finite weights: BN running variances overflow first)."""
    bad = nonfinite_tensors(model)
    flag = torch.tensor([float(len(bad))], device=device)
    if D.all_reduce_sum(flag).item():
        what = f"{len(bad)} tensors, first {bad[0]}" if bad else "on another process"
        raise TrainingDiverged(f"weights became non-finite in epoch {epoch + 1} ({what}); not saved. "
                               f"{_last_good(out)}. Try a lower --lr, --grad-clip 1.0 or --amp none.")


def write_epoch(cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                history: List[Dict], tb: TensorBoard) -> None:
    """Checkpoint, metrics.csv, curves.png and TensorBoard for the epoch ending ``history``."""
    epoch = history[-1]["epoch"]
    state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "history": history, "epoch": epoch}
    save_checkpoint(cfg.out, epoch, model, state, cfg.keep_checkpoints)
    write_csv(os.path.join(cfg.out, "metrics.csv"), history)
    plot_curves(os.path.join(cfg.out, "curves.png"), {cfg.model: history}, title=cfg.out)
    tb.log(history[-1], epoch)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs CUDA; use amp=bf16 on CPU")
    if cfg.amp == "bf16" and device.type == "cpu" and not native_bf16():
        warnings.warn("amp=bf16 on a CPU without bfloat16 arithmetic (no avx512_bf16 / amx_bf16): torch converts "
                      "through float32 and training runs several times slower than amp=none (cbam bench "
                      "measures it); use amp=none here", RuntimeWarning, stacklevel=2)
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up for ``warmup_epochs``, then cosine decay to 0 (or constant)."""
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 512, image_size: Optional[int] = None,
             device: torch.device = torch.device("cpu"), channels_last: bool = False) -> Dict:
    """Top-1, top-5, loss, per-class accuracy and the confusion matrix on ``data``."""
    if len(data) == 0:
        raise ValueError(f"{data.source}: no images to evaluate")
    model.eval()
    tf = EvalTransform(data.mean, data.std, image_size or data.image_size)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits
    preds = []
    for i in range(0, len(data), batch_size):
        x = tf(data.images[i:i + batch_size]).to(device)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        y = data.labels[i:i + batch_size].to(device)
        out = model(x).float()
        top = out.topk(min(5, out.shape[1]), 1).indices
        sums[0] += F.cross_entropy(out, y, reduction="sum")
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(1).sum()
        preds.append(top[:, 0])
    loss_sum, correct1, correct5 = sums.tolist()
    cm = confusion_matrix(torch.cat(preds).cpu(), data.labels, data.num_classes)
    per_class = (cm.diagonal() / cm.sum(1).clip(min=1)).tolist()
    n = len(data)
    return {"test_loss": loss_sum / n, "test_acc": correct1 / n, "test_top5": correct5 / n,
            "per_class_acc": per_class, "confusion": cm}
