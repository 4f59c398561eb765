"""Grad-CAM (Selvaraju et al., ICCV 2017) with forward/backward hooks, no extra dependency."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GradCAM:
    """``cam = ReLU(sum_k alpha_k A^k)`` with ``alpha_k`` the spatial mean of d score / d A^k.

    ``target_layer`` defaults to the model's last stage (``layer4``, or ``layer3`` for
    3-stage CIFAR ResNets). ``__call__(x, target=None)`` returns maps ``(N, H, W)`` in
    [0, 1] at the input's resolution, for the predicted class unless ``target`` is given.
    """

    def __init__(self, model: nn.Module, target_layer: Optional[nn.Module] = None) -> None:
        self.model = model
        if target_layer is None:
            target_layer = getattr(model, "layer4", None)
            if isinstance(target_layer, nn.Identity) or target_layer is None:
                target_layer = getattr(model, "layer3")
        self._acts: Optional[Tensor] = None
        self._grads: Optional[Tensor] = None
        self._h = target_layer.register_forward_hook(self._save)

    def _save(self, module: nn.Module, inputs, output: Tensor) -> None:
        self._acts = output
        if output.requires_grad:
            output.register_hook(lambda g: setattr(self, "_grads", g))

    def __call__(self, x: Tensor, target: Optional[Tensor] = None) -> Tensor:
        was = self.model.training
        self.model.eval()
        x = x.detach().requires_grad_(True)  # makes the graph exist even with frozen weights
        with torch.enable_grad():
            logits = self.model(x)
            if target is None:
                target = logits.argmax(1)
            score = logits.gather(1, target.view(-1, 1)).sum()
            self.model.zero_grad(set_to_none=True)
            score.backward()
        self.model.train(was)
        acts, grads = self._acts.detach(), self._grads.detach()
        cam = F.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.flatten(1).min(1).values.view(-1, 1, 1)
        hi = cam.flatten(1).max(1).values.view(-1, 1, 1)
        return (cam - lo) / (hi - lo).clamp_min(1e-12)

    def close(self) -> None:
        self._h.remove()

    def __enter__(self) -> "GradCAM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
