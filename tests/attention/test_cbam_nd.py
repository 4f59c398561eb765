"""CBAM1d / CBAM3d: a NumPy oracle, float64 gradcheck, the functional twins, and the 2-D math
when the extra dimension is 1."""
import numpy as np
import pytest
import torch

import cbam
from cbam import functional as Fn
from tests.attention._oracle import cbam_oracle
from tests.helpers import randomize_

CASES = [(cbam.CBAM1d, (2, 12, 9)), (cbam.CBAM3d, (2, 12, 3, 4, 5))]
ARRANGEMENTS = ["channel_first", "spatial_first", "parallel"]


def _build(cls, preset, c, **kw):
    return randomize_(cls.from_preset(preset, c, reduction=4, kernel_size=3, dtype=torch.float64, **kw)).eval()


@pytest.mark.parametrize("cls,shape", CASES)
@pytest.mark.parametrize("preset", ["paper", "official", "timm"])
@pytest.mark.parametrize("arrangement", ARRANGEMENTS)
def test_matches_numpy_oracle(cls, shape, preset, arrangement):
    m = _build(cls, preset, shape[1], arrangement=arrangement)
    x = torch.randn(*shape, dtype=torch.float64)
    np.testing.assert_allclose(m(x).detach().numpy(), cbam_oracle(m, x.numpy()), rtol=1e-10, atol=1e-12)
    assert m.spatial.conv.weight.dim() == len(shape) and not m.fusable


@pytest.mark.parametrize("cls,shape", CASES)
def test_functional_twin_and_gate_shapes(cls, shape):
    m = _build(cls, "official", shape[1])
    x = torch.randn(*shape, dtype=torch.float64)
    ch, sp, bn = m.channel, m.spatial, m.spatial.bn
    twin = Fn.cbam1d if cls is cbam.CBAM1d else Fn.cbam3d
    y = twin(x, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight, sp.conv.bias, bn.weight,
             bn.bias, bn.running_mean, bn.running_var, False, 0.01, bn.eps, True, ["avg", "max"], "max_avg")
    with cbam.record_attention(m) as maps:
        torch.testing.assert_close(m(x), y, rtol=0, atol=0)
    ones = (1,) * (len(shape) - 2)
    assert maps[""]["channel"].shape == (shape[0], shape[1], *ones)
    assert maps[""]["spatial"].shape == (shape[0], 1, *shape[2:])


@pytest.mark.parametrize("cls,shape", [(cbam.CBAM1d, (2, 8, 7)), (cbam.CBAM3d, (2, 8, 2, 3, 4))])
@pytest.mark.parametrize("train", [False, True])
def test_gradcheck_float64(cls, shape, train):
    m = _build(cls, "official", shape[1]).train(train)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *ps: m(x), (x, *m.parameters()), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_3d_with_depth_1_is_the_2d_math(preset):
    m3 = _build(cbam.CBAM3d, preset, 12).train()
    m2 = cbam.CBAM.from_preset(preset, 12, reduction=4, kernel_size=3, impl="reference", dtype=torch.float64).train()
    sd = m3.state_dict()
    sd["spatial.conv.weight"] = sd["spatial.conv.weight"][:, :, 1]  # only the middle depth tap sees a D=1 input
    m2.load_state_dict(sd)
    x = torch.randn(3, 12, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(m3(x[:, :, None]), m2(x)[:, :, None], rtol=1e-12, atol=1e-12)
    if preset == "official":  # training-mode BN: the same batch statistics
        torch.testing.assert_close(m3.spatial.bn.running_var, m2.spatial.bn.running_var, rtol=1e-12, atol=0)


def test_1d_is_the_2d_math_on_a_single_row():
    m1 = _build(cbam.CBAM1d, "timm", 12)
    m2 = cbam.CBAM.from_preset("timm", 12, reduction=4, kernel_size=3, impl="reference", dtype=torch.float64).eval()
    sd = m1.state_dict()
    w2 = torch.randn(1, 2, 3, 3, dtype=torch.float64)  # rows above/below only see zero padding
    w2[:, :, 1] = sd["spatial.conv.weight"]
    sd["spatial.conv.weight"] = w2
    m2.load_state_dict(sd)
    x = torch.randn(2, 12, 11, dtype=torch.float64)
    torch.testing.assert_close(m1(x), m2(x[:, :, None])[:, :, 0], rtol=1e-12, atol=1e-12)


def test_nd_errors():
    with pytest.raises(ValueError, match=r"CBAM1d expects a 3-D input \(N, C, L\)"):
        cbam.CBAM1d(8)(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r"CBAM3d expects a 5-D input \(N, C, D, H, W\)"):
        cbam.CBAM3d(8)(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r"CBAM3d\(impl='fused'\) covers 2-D"):
        cbam.CBAM3d(8, impl="fused")
    with pytest.raises(ValueError, match="dims must be 1"):
        cbam.CBAM(8, dims=4)
