"""Checkpoint converters (authors' code, timm) and safe loading."""
import os
import pickle

import pytest
import torch

from cbam.models import convert_state_dict, create_model, load_checkpoint
from tests.helpers import randomize_


def _ours(name="resnet20_cbam_official"):
    return randomize_(create_model(name, in_chans=1), scale=0.3).eval()


def _official_fixture(model):
    """Build the authors' layout by hand from key/shape rules (module. prefix, mlp.1/mlp.3,
    SpatialGate.spatial.conv/bn), independently of the converter."""
    out = {}
    for k, v in model.state_dict().items():
        k2 = (k.replace("attn.channel.fc1.", "cbam.ChannelGate.mlp.1.")
              .replace("attn.channel.fc2.", "cbam.ChannelGate.mlp.3.")
              .replace("attn.spatial.conv.", "cbam.SpatialGate.spatial.conv.")
              .replace("attn.spatial.bn.", "cbam.SpatialGate.spatial.bn."))
        out["module." + k2] = v.clone()
    return out


def test_official_roundtrip_exact_and_same_outputs():
    m = _ours()
    sd = m.state_dict()
    back = convert_state_dict(convert_state_dict(sd, "cbam", "official"), "official", "cbam")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    fixture = _official_fixture(m)
    assert any(k.startswith("module.layer1.0.cbam.ChannelGate.mlp.1.") for k in fixture)
    m2 = load_checkpoint(create_model("resnet20_cbam_official", in_chans=1).eval(), fixture, source="official")
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(m2(x), m(x))


def test_official_into_paper_order_swaps_conv_channels():
    """Authors' [max, mean] weights into an [avg, max] model give the same function."""
    m = _ours()
    fixture = _official_fixture(m)
    paper_like = create_model("resnet20", in_chans=1, attention="cbam_official",
                              attention_kwargs=dict(pool_order="avg_max")).eval()
    load_checkpoint(paper_like, fixture, source="official", pool_order="avg_max")
    w_off = fixture["module.layer2.1.cbam.SpatialGate.spatial.conv.weight"]
    torch.testing.assert_close(paper_like.layer2[1].attn.spatial.conv.weight[0, 0], w_off[0, 1])
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(paper_like(x), m(x))


def test_timm_roundtrip_and_shapes():
    m = _ours("resnet20_cbam_timm")
    sd = m.state_dict()
    t = convert_state_dict(sd, "cbam", "timm")
    assert t["layer1.0.se.channel.fc1.weight"].shape == (1, 16, 1, 1)
    assert "layer1.0.se.spatial.conv.conv.weight" in t and "layer1.0.se.spatial.conv.bn.running_var" in t
    back = convert_state_dict(t, "timm", "cbam")
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    se = _ours("resnet20_se")
    t = convert_state_dict(se.state_dict(), "cbam", "timm")
    assert t["layer3.0.se.fc1.weight"].shape == (4, 64, 1, 1) and "layer3.0.se.fc1.bias" in t
    m2 = load_checkpoint(create_model("resnet20_se", in_chans=1).eval(), t, source="timm")
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(m2(x), se(x))


def test_official_to_timm_goes_through_ours():
    m = _ours()
    t = convert_state_dict(_official_fixture(m), "official", "timm")
    w = t["layer1.0.se.spatial.conv.conv.weight"]
    torch.testing.assert_close(w[0, 0], m.layer1[0].attn.spatial.conv.weight[0, 1])  # order swapped to [mean, max]


def test_wrong_architecture_names_first_mismatch():
    sd = create_model("resnet20_cbam_official", in_chans=1).state_dict()
    with pytest.raises(ValueError, match="missing key 'layer1.0.attn.fc1.weight'"):
        load_checkpoint(create_model("resnet20_se", in_chans=1), sd)
    with pytest.raises(ValueError, match="key 'conv1.weight' has shape"):
        load_checkpoint(create_model("resnet20_cbam_official", in_chans=3), sd)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the hostile file's own protocol
def test_safe_loading(tmp_path):
    from safetensors.torch import save_file
    m = _ours()
    p = tmp_path / "w.safetensors"
    save_file(m.state_dict(), str(p))
    m2 = load_checkpoint(create_model("resnet20_cbam_official", in_chans=1).eval(), p)
    x = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(m2(x), m(x))
    pt = tmp_path / "w.pth"
    torch.save({"epoch": 3, "state_dict": m.state_dict()}, pt)  # the authors' checkpoint wrapper
    load_checkpoint(create_model("resnet20_cbam_official", in_chans=1), pt)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(create_model("resnet20", in_chans=1), evil)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(create_model("resnet20"), tmp_path / "missing.pth")
