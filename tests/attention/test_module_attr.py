"""module_attr, the fused path's fast attribute lookup, returns what getattr returns: parameters,
buffers, submodules, plain attributes, and a parametrized weight's property; the fused CBAM path
then runs on the parametrized weight."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import cbam
from cbam.attention._base import module_attr


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


def test_same_as_getattr():
    m = nn.BatchNorm2d(4)
    m.note = "plain"
    for name in ("weight", "bias", "running_mean", "num_batches_tracked", "note", "training", "forward"):
        a, b = module_attr(m, name), getattr(m, name)
        assert a is b or a == b, name
    seq = nn.Sequential(nn.Linear(2, 3))
    assert module_attr(seq, "0") is seq[0]
    with pytest.raises(AttributeError):
        module_attr(m, "no_such_attribute")


def test_parametrized_weight_reaches_the_fused_path():
    torch.manual_seed(0)
    m = cbam.CBAM(16, reduction=4).eval()
    parametrize.register_parametrization(m.channel.fc1, "weight", _Double())
    assert torch.equal(module_attr(m.channel.fc1, "weight"), m.channel.fc1.weight)
    ref = cbam.CBAM(16, reduction=4, impl="reference").eval()
    ref.load_state_dict({k.replace("parametrizations.weight.original", "weight"): v for k, v in m.state_dict().items()})
    with torch.no_grad():
        ref.channel.fc1.weight.mul_(2)
        x = torch.randn(4, 16, 8, 8)
        assert m.uses_fused(x)
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)
