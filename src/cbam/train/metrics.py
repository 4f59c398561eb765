"""Run history -> CSV, loss/accuracy curves (PNG), optional TensorBoard; classification metrics."""
import csv
import io
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .._io import atomic_write, write_text

COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_top5", "lr", "epoch_time_s",
           "images_per_s"]


def write_csv(path: str, history: List[Dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def plot_curves(path: str, runs: Dict[str, List[Dict]], title: str = "") -> Optional[str]:
    """Loss and accuracy per epoch for one or several runs (overlaid); None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, hist in runs.items():
        ep = [r["epoch"] for r in hist]
        axes[0].plot(ep, [r["train_loss"] for r in hist], "-o", ms=3, label=f"{name} train")
        if any("test_loss" in r for r in hist):
            axes[0].plot(ep, [r.get("test_loss", np.nan) for r in hist], "--", label=f"{name} test")
        axes[1].plot(ep, [100 * r.get("test_acc", np.nan) for r in hist], "-o", ms=3, label=name)
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="test accuracy")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> np.ndarray:
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes).numpy()


def plot_confusion(path: str, cm: np.ndarray, classes: Sequence[str], title: str = "") -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.55 * k))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path


class TensorBoard:
    """Thin optional wrapper: does nothing when tensorboard is not installed."""

    def __init__(self, logdir: str, enabled: bool = True) -> None:
        self.w = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.w = SummaryWriter(os.path.join(logdir, "tb"))
            except Exception:  # ImportError, or tensorboard's own import errors
                self.w = None

    def log(self, row: Dict, step: int) -> None:
        if self.w is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.w.add_scalar(k, v, step)
            self.w.flush()

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
