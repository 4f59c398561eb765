"""Attention ResNets: exact parameter counts and FLOPs (the paper's table), placement, init, any input size,
registry, timm."""
import functools
import subprocess
import sys

import pytest
import torch

import cbam
from cbam.models import count_parameters, create_model, list_models, parse_model_name


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


def _timm():
    try:  # timm imports torchvision, which can fail with other errors than ImportError
        import timm
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"timm not importable: {type(e).__name__}: {e}")
    return timm


def _train_step(net, x, classes):
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(net(x), torch.arange(x.shape[0]) % classes)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_timm_resnet50_with_partial_cbam_trains_a_step():
    timm = _timm()
    layer = functools.partial(cbam.CBAM, rd_ratio=1 / 8)
    net = timm.create_model("resnet50", num_classes=3, block_args=dict(attn_layer=layer))
    attns = [m for m in net.modules() if isinstance(m, cbam.CBAM)]
    assert len(attns) == 16 and attns[0].channel.hidden_channels == 256 // 8
    _train_step(net, torch.randn(2, 3, 64, 64), 3)


def test_partial_attention_factory_trains_a_step():
    """The contract timm's ResNet uses, ``attn_layer(channels)``, in our ResNet."""
    net = create_model("resnet20", in_chans=1, attention=functools.partial(cbam.CBAM, rd_ratio=1 / 8))
    assert net.layer3[0].attn.channel.hidden_channels == 8
    _train_step(net, torch.randn(4, 1, 28, 28), 10)


def test_init_lets_attention_modules_reset_themselves():
    calls = []

    class Plain(torch.nn.Module):  # no reset_parameters: initialised like the rest of the network
        def __init__(self, channels, **kw):
            super().__init__()
            self.conv = torch.nn.Conv2d(channels, channels, 1)

        def forward(self, x):
            return self.conv(x)

    class Own(Plain):  # has reset_parameters: owns its init
        def reset_parameters(self):
            calls.append(self)
            torch.nn.init.constant_(self.conv.weight, 0.5)

    own = create_model("resnet20", attention=Own)
    assert len(calls) == 9 and torch.all(own.layer1[0].attn.conv.weight == 0.5)
    w = create_model("resnet20", attention=Plain).layer3[0].attn.conv.weight
    assert abs(w.std().item() - (2 / 64) ** 0.5) < 0.03  # kaiming_normal_, fan_out = 64
    off = create_model("resnet18_cbam_official")
    for a in (m for m in off.modules() if isinstance(m, cbam.CBAM)):
        assert torch.all(a.spatial.bn.weight == 0)  # the authors' init survives the network's
        assert a.channel.fc1.weight.abs().max() <= a.channels ** -0.5  # PyTorch's default, not Kaiming


def _flops(model):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(torch.randn(1, 3, 224, 224))
    return fc.get_total_flops()


def test_cbam_resnet50_flops_fused_equal_reference_and_the_paper_increment():
    ref = _flops(create_model("resnet50_cbam", attention_kwargs={"impl": "reference"}))
    fused = _flops(create_model("resnet50_cbam", attention_kwargs={"impl": "fused"}))
    base = _flops(create_model("resnet50"))
    assert fused == ref
    # per block: the MLP on two descriptors, 2 * 2 * C * C/16, and the 7x7 conv on 2 maps, 2 * 49 * H * W
    stages = [(256, 56, 3), (512, 28, 4), (1024, 14, 6), (2048, 7, 3)]
    macs = sum(n * (4 * c * (c // 16) + 98 * s * s) for c, s, n in stages)
    assert (ref - base) // 2 == macs == 6_388_854
    assert round(macs / 1e9, 3) == round(3.864 - 3.858, 3)  # the paper's increment, in GFLOPs (multiply-adds)


def test_import_cbam_gives_the_subpackages():
    code = ("import cbam; import sys; assert 'cbam.train' not in sys.modules; "
            "print(cbam.models.resnet18.__name__, cbam.functional.cbam.__name__, cbam.ops.fused_cbam.__name__, "
            "cbam.export.export_onnx.__name__, cbam.train.train.__name__, cbam.data.__name__, cbam.viz.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["resnet18", "cbam", "fused_cbam", "export_onnx", "train", "cbam.data", "cbam.viz"]
