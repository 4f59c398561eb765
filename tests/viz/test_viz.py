"""Visualisation on synthetic images whose answer is known: one bright object on a dark background."""
import numpy as np
import pytest
import torch
from torch import nn

import cbam
from cbam.models import create_model
from cbam.viz import GradCAM, stage_attention

pytest.importorskip("matplotlib")


def _scene(n=2, size=32, box=(8, 18, 12, 22)):
    x = torch.full((n, 1, size, size), -1.0)
    y0, y1, x0, x1 = box
    x[:, :, y0:y1, x0:x1] = 3.0
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return x, mask


class Brightness(nn.Module):
    """Known answer: the class-1 score is the mean of relu(conv(x)), so Grad-CAM = relu(x)."""

    def __init__(self):
        super().__init__()
        self.layer3 = nn.Conv2d(1, 4, 3, padding=1)
        with torch.no_grad():
            self.layer3.weight.zero_()
            self.layer3.weight[:, 0, 1, 1] = 1.0
            self.layer3.bias.zero_()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.relu(self.layer3(x)).mean((2, 3)))


def _iou(hot, mask):
    return (hot & mask).sum().item() / (hot | mask).sum().item()


def test_gradcam_hot_region_covers_object():
    x, mask = _scene()
    with GradCAM(Brightness()) as cam:
        maps = cam(x, target=torch.tensor([1, 1]))
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    for m in maps:
        assert _iou(m > 0.5, mask) > 0.8


def test_spatial_attention_with_known_weights_highlights_object():
    """A CBAM whose spatial conv reads only the max-map centre tap: M_s = sigmoid(max_c x)."""
    net = create_model("resnet20_cbam", in_chans=1, num_classes=2).eval()
    for m in net.modules():
        if isinstance(m, cbam.CBAM):
            with torch.no_grad():
                m.spatial.conv.weight.zero_()
                m.spatial.conv.weight[0, 1, 3, 3] = 4.0
    x, mask = _scene()
    maps = stage_attention(net, x)
    assert set(maps) == {"layer1", "layer2", "layer3"}
    s = maps["layer1"]["spatial"]
    assert s.shape == (2, 32, 32) and maps["layer3"]["channel"].shape == (2, 64)
    inside, outside = s[:, mask].mean(), s[:, ~mask].mean()
    assert inside > outside + 0.05


def test_visualize_writes_nonblank_pngs(tmp_path):
    from PIL import Image
    from cbam.viz.report import visualize
    x, _ = _scene(3)
    models = {"baseline": create_model("resnet20", in_chans=1).eval(),
              "cbam": create_model("resnet20_cbam", in_chans=1).eval()}
    md = visualize(models, x, ["a", "b", "c"], str(tmp_path))
    for f in ("gradcam.png", "cbam_spatial.png", "cbam_channel.png", "index.md"):
        assert (tmp_path / f).exists(), f
    assert not (tmp_path / "baseline_spatial.png").exists()  # no attention, no maps
    im = np.asarray(Image.open(tmp_path / "gradcam.png").convert("L"), dtype=np.float32)
    assert im.shape[0] > 200 and im.shape[1] > 300 and im.std() > 10
    assert any("gradcam.png" in line for line in md)
