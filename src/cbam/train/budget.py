"""Sizing a fixed recipe to a wall-clock budget from throughput measured on this machine.

The demo promises minutes, not a number of images: a CPU that runs torch's convolutions three times
slower than another would otherwise take three times as long. Before training, each variant runs a
few real training steps and one evaluation batch; the training subset is then the largest that fits
what is left of the budget, and the report says so.
"""
import math
import time
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch

from ..data.datasets import Dataset
from .config import TrainConfig
from .loop import build_model, build_optimizer, evaluate, make_loader, place_model, train_step


@dataclass(frozen=True)
class Rates:
    """Images per second on this machine: training (forward, backward, optimiser step, data
    augmentation) and evaluation."""

    train: float
    eval: float


def measure_rates(cfg: TrainConfig, data: Tuple[Dataset, Dataset], steps: int = 4, eval_images: int = 512
                  ) -> Rates:
    """Times ``steps`` training steps of ``cfg`` (after one untimed warm-up step) and one evaluation
    of ``eval_images`` test images (after an untimed one), on a throw-away model, on the device
    ``train`` uses. The global random state is left as it was, so the runs that follow are unchanged
    by the measurement."""
    train_set, test_set = data
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where train() will run
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.random.fork_rng(devices=[]):
        model = place_model(cfg, build_model(cfg, train_set.num_classes, train_set.in_chans), device, 1)
        opt = build_optimizer(cfg, model)
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        size = cfg.image_size or train_set.image_size
        loader, _ = make_loader(cfg, train_set, size, 0, 1)
        it, n, t0 = loader.batches(), 0, 0.0
        model.train()
        for i in range(steps + 1):
            if i == 1:
                sync()
                t0 = time.perf_counter()
            x, y = next(it, (None, None))
            if x is None:  # a training set of a few batches: start it again
                it = loader.batches()
                x, y = next(it)
            train_step(cfg, model, opt, scaler, x.to(device), y.to(device), 0.0, device)  # lr 0: weights stay
            n += len(y) if i else 0
        sync()
        train_rate = n / (time.perf_counter() - t0)
        probe = test_set.subset(min(eval_images, len(test_set)), cfg.seed)
        evaluate(model, probe, image_size=size, device=device, channels_last=cfg.channels_last)
        t1 = time.perf_counter()
        evaluate(model, probe, image_size=size, device=device, channels_last=cfg.channels_last)
        eval_rate = len(probe) / (time.perf_counter() - t1)
    return Rates(train_rate, eval_rate)


def predicted_seconds(rates: Sequence[Rates], n_train: int, n_test: int, epochs: int) -> float:
    """Training ``n_train`` and evaluating ``n_test`` images per epoch, ``epochs`` times, for every variant."""
    return epochs * sum(n_train / r.train + n_test / r.eval for r in rates)


def fit_train_subset(rates: Sequence[Rates], seconds: float, n_test: int, epochs: int, full: int,
                     step: int = 500, minimum: int = 2000) -> int:
    """The largest training subset, a multiple of ``step`` between ``minimum`` and ``full`` (``full``
    itself when it fits), whose training and per-epoch evaluation over all variants take at most
    ``seconds`` at ``rates``. Returns ``minimum`` when not even that fits: the caller warns."""
    if predicted_seconds(rates, full, n_test, epochs) <= seconds:
        return full
    per_image = epochs * sum(1.0 / r.train for r in rates)
    fixed = predicted_seconds(rates, 0, n_test, epochs)
    n = math.floor(max(0.0, seconds - fixed) / per_image / step) * step
    return max(min(minimum, full), min(n, full))
