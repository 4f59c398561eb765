"""insert_attention / remove_attention: structural detection, exact identity at insertion, learning."""
import copy
import pickle

import pytest
import torch
from torch import nn

import cbam
from cbam.models import IdentityInitAttention, create_model, insert_attention, remove_attention
from tests.helpers import randomize_


class TVBasicBlock(nn.Module):
    """A torchvision-style block (not imported from anywhere): found by structure."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu, self.downsample = nn.ReLU(), None

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + x)


def _foreign_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), TVBasicBlock(8), TVBasicBlock(8), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4))
    return randomize_(net).eval()


@pytest.mark.parametrize("attention", ["cbam", "cbam_official", "se", "eca", "coord", "simam", "bam"])
def test_identity_at_insertion_foreign_blocks(attention):
    net = _foreign_net()
    x = torch.randn(3, 3, 10, 10)
    before = net(x)
    net, report = insert_attention(net, attention)
    assert [e[0] for e in report.entries] == ["1.bn2", "2.bn2"]
    assert report.added_parameters == sum(p.numel() for n, p in net.named_parameters() if "inserted" in n)
    torch.testing.assert_close(net(x), before, atol=1e-6, rtol=0)


def test_identity_on_pretrained_style_resnet_and_gradients_flow():
    net = randomize_(create_model("resnet20", in_chans=1), scale=0.2).eval()
    x = torch.randn(4, 1, 28, 28)
    before = net(x)
    net, report = insert_attention(net, "cbam")
    assert len(report) == 9 and all(isinstance(b.attn, IdentityInitAttention) for s in net.stages() for b in s)
    torch.testing.assert_close(net(x), before, atol=1e-6, rtol=0)
    # gamma gets a gradient at once; after one step the attention's own weights do too
    att_params = [p for n, p in net.named_parameters() if ".attn." in n]
    opt = torch.optim.SGD(att_params, lr=0.1)
    target = torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(net(x), target).backward()
    gammas = [p for n, p in net.named_parameters() if n.endswith("gamma")]
    assert all(g.grad.abs().sum() > 0 for g in gammas)
    opt.step()
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), target).backward()
    # the spatial convs always get a gradient; MLP weights can sit behind a dead ReLU (hidden width 1)
    convs = [p for n, p in net.named_parameters() if n.endswith(".attn.attn.spatial.conv.weight")]
    assert len(convs) == 9 and all(p.grad.abs().sum() > 0 for p in convs)
    mlps = [p for n, p in net.named_parameters() if n.endswith(".attn.attn.channel.fc2.weight")]
    assert sum(bool(p.grad.abs().sum() > 0) for p in mlps) >= 5


def test_without_identity_init_output_changes():
    net = _foreign_net()
    x = torch.randn(2, 3, 10, 10)
    before = net(x)
    insert_attention(net, "cbam", identity_init=False)
    assert (net(x) - before).abs().max() > 1e-3


def test_where_names_predicate_and_remove():
    net = _foreign_net()
    x = torch.randn(2, 3, 10, 10)
    before = net(x)
    _, rep = insert_attention(net, "se", where=["0"], identity_init=False, reduction=2)
    assert rep.entries[0][:3] == ("0", "SqueezeExcite", 8)
    _, rep2 = insert_attention(net, "eca", where=lambda n, m: isinstance(m, nn.BatchNorm2d) and n.endswith("bn1"))
    assert [e[0] for e in rep2.entries] == ["1.bn1", "2.bn1"]
    copy.deepcopy(net)
    pickle.loads(pickle.dumps(net))
    assert remove_attention(net) == 3
    torch.testing.assert_close(net(x), before)
    with pytest.raises(ValueError, match="not in the model"):
        insert_attention(net, "se", where=["nope"])
    with pytest.raises(ValueError, match="no residual blocks"):
        insert_attention(nn.Sequential(nn.Conv2d(3, 3, 1)), "cbam")


def test_state_dict_keys_kept():
    net = _foreign_net()
    keys = set(net.state_dict())
    insert_attention(net, "cbam")
    assert keys <= set(net.state_dict())
