"""Attention ResNets: exact parameter counts (the paper's table), placement, any input size, registry."""
import pytest
import torch

import cbam
from cbam.models import ResNet, count_parameters, create_model, list_models, parse_model_name


@pytest.mark.parametrize("name,params", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("resnet101", 44_549_160), ("resnet152", 60_192_808),
    ("resnet50_cbam_official", 28_089_624),             # the authors' layout: the paper's 28.09M exactly
])
def test_exact_parameter_counts(name, params):
    assert count_parameters(create_model(name)) == params


@pytest.mark.parametrize("name,millions", [
    # the paper's table 4 (params in M, printed to 2 decimals)
    ("resnet50_se", 28.09), ("resnet50_cbam_official", 28.09),
    ("resnet101", 44.55), ("resnet101_se", 49.33), ("resnet101_cbam_official", 49.33),
    ("wide_resnet18_2", 45.62), ("wide_resnet18_2_cbam_official", 45.97),
    ("resnext50_32x4d", 25.03), ("resnext50_32x4d_cbam_official", 27.56),
])
def test_paper_table_params(name, millions):
    assert round(count_parameters(create_model(name)) / 1e6, 2) == millions


def test_cifar_resnet20_counts_match_reference_calibration():
    assert count_parameters(create_model("resnet20", in_chans=1)) == 272_186
    assert count_parameters(create_model("resnet20_cbam", in_chans=1)) == 275_084


def test_attention_placement_after_last_bn_before_addition():
    """Replace the attention by a recorder; it must see exactly bn3's output and its output
    must be what is added to the shortcut."""
    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self, channels, **kw):
            super().__init__()

        def forward(self, x):
            seen["in"] = x.clone()
            return torch.zeros_like(x)  # kills the residual branch

    m = cbam.models.resnet50(attention=Probe, num_classes=5).eval()
    blk = m.layer1[1]
    x = torch.randn(2, 256, 8, 8)
    out = blk(x)
    bn3_out = blk.bn3(blk.conv3(blk.relu(blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x))))))))
    torch.testing.assert_close(seen["in"], bn3_out)
    torch.testing.assert_close(out, torch.relu(x))  # zero branch + identity shortcut, then ReLU


@pytest.mark.parametrize("size", [28, 32, 45, 64])
def test_any_input_size(size):
    m = create_model("resnet18_cbam", num_classes=7).eval()
    assert m(torch.randn(1, 3, size, size)).shape == (1, 7)


def test_small_image_resnets_and_in_chans():
    m = create_model("resnet20_se", in_chans=1).eval()
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert isinstance(m.layer3[2].attn, cbam.SqueezeExcite) and m.layer3[2].attn.channels == 64
    assert [len(s) for s in m.stages()] == [3, 3, 3]
    assert len(create_model("resnet56").layer1) == 9
    with pytest.raises(ValueError, match="in_chans=1"):
        m(torch.randn(1, 3, 28, 28))


def test_zero_init_residual_makes_blocks_identity():
    m = create_model("resnet20_cbam", zero_init_residual=True).eval()
    blk = m.layer1[1]
    assert torch.all(blk.bn2.weight == 0)
    x = torch.relu(torch.randn(2, 16, 8, 8))
    torch.testing.assert_close(blk(x), x)


def test_attention_kwargs_and_class():
    m = create_model("resnet20", attention="cbam", attention_kwargs=dict(reduction=4, kernel_size=3))
    a = m.layer3[0].attn
    assert a.channel.hidden_channels == 16 and a.spatial.kernel_size == 3
    m = create_model("resnet20", attention=cbam.EfficientChannelAttention)
    assert isinstance(m.layer1[0].attn, cbam.EfficientChannelAttention)


def test_model_registry():
    names = list_models()
    assert "resnet50_cbam" in names and "resnet20_se" in names and "resnet18" in names
    assert parse_model_name("resnet50_cbam_official") == ("resnet50", "cbam_official")
    with pytest.raises(ValueError, match="unknown model 'resnet51'.*resnet50"):
        create_model("resnet51")
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet50_cbma")


def test_training_step_and_scripting():
    m = create_model("resnet20_cbam_official", in_chans=1)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    torch.testing.assert_close(torch.jit.script(m)(x), m(x))


def test_timm_attn_layer_integration():
    timm = pytest.importorskip("timm")  # timm imports torchvision; absent on CPU-only CI
    from timm.models.resnet import BasicBlock as TimmBasic, ResNet as TimmResNet
    net = TimmResNet(TimmBasic, [1, 1, 1, 1], num_classes=3, block_args=dict(attn_layer=cbam.CBAM))
    assert any(isinstance(mod, cbam.CBAM) for mod in net.modules())
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3)
