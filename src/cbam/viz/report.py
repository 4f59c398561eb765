"""PNG figures and an index page: spatial maps over images, channel-gate distributions, Grad-CAM
of a baseline next to an attention network (the paper's figure 4, on our data)."""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._io import atomic_write, write_text
from .gradcam import GradCAM
from .maps import stage_attention


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _show(img: Tensor) -> np.ndarray:
    """(C, H, W) float image, any range -> (H, W[, 3]) in [0, 1] for imshow."""
    a = img.detach().float().cpu()
    a = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-12)
    return a[0].numpy() if a.shape[0] == 1 else a.permute(1, 2, 0).numpy()


def _save(fig, path: str) -> str:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    _plt().close(fig)
    return path


def _overlay_grid(path: str, images: Tensor, columns: Dict[str, Tensor], titles: Sequence[str],
                  fixed_range: bool) -> str:
    """Rows: images; columns: the image, then each named map ``(N, H, W)`` overlaid on it."""
    plt = _plt()
    n = images.shape[0]
    fig, axes = plt.subplots(n, 1 + len(columns), figsize=(1.9 * (1 + len(columns)), 1.9 * n), squeeze=False)
    rng = dict(vmin=0, vmax=1) if fixed_range else {}
    for i in range(n):
        axes[i, 0].imshow(_show(images[i]), cmap="gray")
        axes[i, 0].set_title(titles[i], fontsize=7)
        for j, (name, maps) in enumerate(columns.items()):
            axes[i, j + 1].imshow(_show(images[i]), cmap="gray")
            axes[i, j + 1].imshow(maps[i].cpu().numpy(), cmap="jet", alpha=0.5, **rng)
            if i == 0:
                axes[i, j + 1].set_title(name, fontsize=8)
    for a in axes.flat:
        a.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_spatial_maps(path: str, images: Tensor, maps: Dict[str, Dict[str, Tensor]], titles: Sequence[str]) -> str:
    """One row per image: the image, then each stage's spatial attention overlaid on it."""
    cols = {f"{s} M_s": maps[s]["spatial"] for s in maps if "spatial" in maps[s]}
    return _overlay_grid(path, images, cols, titles, fixed_range=False)


def plot_channel_distribution(path: str, maps: Dict[str, Dict[str, Tensor]]) -> Optional[str]:
    """Box plots of the channel gate values per stage (how selective each stage's M_c is)."""
    stages = [s for s in maps if "channel" in maps[s]]
    if not stages:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(stages), 3.2))
    ax.boxplot([maps[s]["channel"].flatten().cpu().numpy() for s in stages], showfliers=False)
    ax.set_xticks(range(1, len(stages) + 1), stages)
    ax.set(ylabel="channel gate M_c", title="channel attention per stage", ylim=(0, 1))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_gradcam(path: str, images: Tensor, cams: Dict[str, Tensor], titles: Sequence[str]) -> str:
    """Rows: images; columns: the image, then Grad-CAM of each network."""
    return _overlay_grid(path, images, {f"Grad-CAM {k}": v for k, v in cams.items()}, titles, fixed_range=True)


def visualize(models: Dict[str, nn.Module], images: Tensor, titles: Sequence[str], out: str) -> List[str]:
    """Write the figures for ``models`` (name -> network) on normalised ``images`` into ``out``;
    returns markdown lines for an index page (also written as ``out/index.md``)."""
    os.makedirs(out, exist_ok=True)
    md = ["# Attention visualisation", ""]
    cams = {}
    for name, m in models.items():
        maps = stage_attention(m, images)
        if maps:
            p = plot_spatial_maps(os.path.join(out, f"{name}_spatial.png"), images, maps, titles)
            md += [f"## {name}: spatial attention per stage", "", f"![{name} spatial]({os.path.basename(p)})", ""]
            q = plot_channel_distribution(os.path.join(out, f"{name}_channel.png"), maps)
            if q:
                md += [f"![{name} channel]({os.path.basename(q)})", ""]
        with GradCAM(m) as cam:
            cams[name] = cam(images)
    p = plot_gradcam(os.path.join(out, "gradcam.png"), images, cams, titles)
    md += ["## Grad-CAM of each network (predicted class)", "", f"![gradcam]({os.path.basename(p)})", ""]
    write_text(os.path.join(out, "index.md"), "\n".join(md) + "\n")
    return md
