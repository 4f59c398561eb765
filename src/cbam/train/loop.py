"""The training loop: read top to bottom, no framework.

``train(cfg)`` builds data, model and optimiser from a :class:`TrainConfig`, runs
``cfg.epochs`` epochs with evaluation after each, writes ``metrics.csv``,
``curves.png`` and an atomic checkpoint every epoch, and resumes from the last
checkpoint with ``cfg.resume``. Under torchrun it uses DDP (gloo on CPU, nccl on
CUDA); rank 0 alone logs and writes.
"""
import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._io import write_json
from ..data import BatchLoader, EvalTransform, TrainTransform, load_dataset
from ..data.datasets import Dataset
from ..attention import CBAM
from ..models import create_model, load_checkpoint
from ..ops import kernels_for
from ..models.registry import parse_model_name
from . import distributed as D
from .checkpoint import latest_checkpoint, load_state, save_checkpoint
from .config import TrainConfig
from .metrics import TensorBoard, confusion_matrix, plot_curves, write_csv


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    out: str
    history: List[Dict]
    params: int
    model: nn.Module


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    arch, att = parse_model_name(cfg.model)
    attention = cfg.attention if cfg.attention is not None else att
    kwargs = dict(cfg.attention_kwargs)
    if attention is not None and attention.startswith("cbam") and "impl" not in kwargs:
        kwargs["impl"] = cfg.impl
    return create_model(arch, num_classes=num_classes, in_chans=in_chans, attention=attention,
                        attention_kwargs=kwargs or None)


def load_data(cfg: TrainConfig):
    train = load_dataset(cfg.data, "train", cfg.data_root).subset(cfg.train_subset, cfg.seed)
    test = load_dataset(cfg.data, "test", cfg.data_root).subset(cfg.test_subset, cfg.seed)
    return train, test


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs CUDA; use amp=bf16 on CPU")
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
    model.eval()
    tf = EvalTransform(data.mean, data.std, image_size or data.image_size)
    loss_sum, correct1, correct5, preds = 0.0, 0, 0, []
    for i in range(0, len(data), batch_size):
        x = tf(data.images[i:i + batch_size]).to(device)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        y = data.labels[i:i + batch_size].to(device)
        out = model(x).float()
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        top = out.topk(min(5, out.shape[1]), 1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        preds.append(top[:, 0].cpu())
    pred = torch.cat(preds)
    cm = confusion_matrix(pred, data.labels, data.num_classes)
    per_class = (cm.diagonal() / cm.sum(1).clip(min=1)).tolist()
    n = len(data)
    return {"test_loss": loss_sum / n, "test_acc": correct1 / n, "test_top5": correct5 / n,
            "per_class_acc": per_class, "confusion": cm}


def train(cfg: TrainConfig, data: Optional[tuple] = None) -> RunResult:
    cfg.validate()
    rank, world, device = D.setup()
    main = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_set, test_set = data if data is not None else load_data(cfg)
    size = cfg.image_size or train_set.image_size

    model = build_model(cfg, train_set.num_classes, train_set.in_chans)
    params = sum(p.numel() for p in model.parameters())
    if world > 1 and cfg.sync_bn:
        model = D.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if any(isinstance(m, CBAM) and m.impl != "reference" for m in model.modules()):
        # compile the fused kernels (once per machine, about a minute on 2 cores) before the clock
        # starts, so epoch 1's time and images/s measure training, not gcc
        kernels_for(torch.empty(1, 1, 1, 1, device=device))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # no weight decay on BN / biases
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    loader = BatchLoader(train_set, cfg.batch_size, TrainTransform(train_set.mean, train_set.std, size,
                                                                   cfg.crop_padding, cfg.hflip),
                         seed=cfg.seed, rank=rank, world=world)
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(f"training set of {len(train_set)} images is smaller than one batch of {cfg.batch_size}")

    history: List[Dict] = []
    start_epoch = 0
    if cfg.resume and (ck := latest_checkpoint(cfg.out)) is not None:
        epoch_done, wpath, spath = ck
        load_checkpoint(model, wpath)  # names the first mismatching key for another model's checkpoint
        state = load_state(spath)
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        history = state["history"]
        start_epoch = epoch_done
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    if main:
        os.makedirs(cfg.out, exist_ok=True)
        write_json(os.path.join(cfg.out, "config.json"), {**cfg.to_dict(), "params": params, "world": world,
                                                          "data_source": train_set.source})
    tb = TensorBoard(cfg.out, cfg.tensorboard and main)
    bar_ctx = None
    for epoch in range(start_epoch, cfg.epochs):
        loader.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        stats = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count (this rank)
        it = loader.batches()
        if main and cfg.progress:
            from tqdm import tqdm
            bar_ctx = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=True,
                           dynamic_ncols=True)
        for i in range(steps):
            x, y = next(it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.to(memory_format=torch.channels_last)
            lr = lr_at(cfg, epoch * steps + i, steps)
            for g in opt.param_groups:
                g["lr"] = lr
            with _autocast(cfg, device):
                out = net(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                ck = latest_checkpoint(cfg.out)
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; stopped. Last good checkpoint: "
                    f"{ck[1] if ck else 'none yet'}. Try a lower --lr, --grad-clip 1.0 or --amp none.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            with torch.no_grad():
                stats += torch.tensor([loss.item() * len(y), (out.argmax(1) == y).sum().item(), len(y)],
                                      dtype=torch.float64)
            if bar_ctx is not None:
                el = time.perf_counter() - t0
                bar_ctx.set_postfix(loss=f"{stats[0] / stats[2]:.3f}", acc=f"{stats[1] / stats[2]:.3f}",
                                    img_s=f"{stats[2] * world / el:.0f}", lr=f"{lr:.3g}")
                bar_ctx.update(1)
        if bar_ctx is not None:
            bar_ctx.close()
            bar_ctx = None
        D.all_reduce_sum(stats)
        epoch_time = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": float(stats[0] / stats[2]), "train_acc": float(stats[1] / stats[2]),
               "lr": lr, "epoch_time_s": epoch_time, "images_per_s": float(stats[2]) / epoch_time}
        if main:
            ev = evaluate(model, test_set, image_size=size, device=device, channels_last=cfg.channels_last)
            row.update({k: ev[k] for k in ("test_loss", "test_acc", "test_top5")})
            history.append(row)
            state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "history": history,
                     "epoch": epoch + 1}
            save_checkpoint(cfg.out, epoch + 1, model, state, cfg.keep_checkpoints)
            write_csv(os.path.join(cfg.out, "metrics.csv"), history)
            plot_curves(os.path.join(cfg.out, "curves.png"), {cfg.model: history}, title=cfg.out)
            tb.log(row, epoch + 1)
        else:
            history.append(row)
        if world > 1:
            torch.distributed.barrier()
    tb.close()
    D.cleanup()
    return RunResult(cfg.out, history, params, model)
