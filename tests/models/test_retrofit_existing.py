"""insert_attention on a network that already has attention: refused unless replace=True."""
import pytest
import torch
from torch import nn

from cbam.attention import CBAM
from cbam.models import create_model, insert_attention, remove_attention


def test_refuses_to_stack_on_a_model_with_attention():
    net = create_model("resnet20_se", in_chans=1).eval()
    x = torch.randn(2, 1, 16, 16)
    before = net(x)
    with pytest.raises(ValueError, match=r"layer1\.0\.bn2: the network already has attention here "
                                         r"\(attn = SqueezeExcite\); pass replace=True"):
        insert_attention(net, "cbam")
    assert all(type(b.attn).__name__ == "SqueezeExcite" for s in net.stages() for b in s)  # untouched
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)


def test_replace_swaps_the_slot_instead_of_stacking():
    net = create_model("resnet20_se", in_chans=1)
    _, rep = insert_attention(net, "cbam", replace=True, identity_init=False)
    assert len(rep) == 9
    blocks = [b for s in net.stages() for b in s]
    assert all(isinstance(b.attn, CBAM) for b in blocks)
    assert not any(hasattr(b.bn2, "inserted_attention") for b in blocks)  # no second module behind a hook
    assert not any(type(m).__name__ == "SqueezeExcite" for m in net.modules())


def test_second_insertion_after_a_hook_is_refused_then_replaced():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    insert_attention(net, "se", where=["1"], reduction=2)
    with pytest.raises(ValueError, match=r"1: the network already has attention here \(IdentityInitAttention\)"):
        insert_attention(net, "eca", where=["1"])
    insert_attention(net, "eca", where=["1"], replace=True, identity_init=False)
    assert type(net[1].inserted_attention).__name__ == "EfficientChannelAttention"
    assert len(net[1]._forward_hooks) == 1  # replaced, not hooked twice
    assert remove_attention(net) == 1
