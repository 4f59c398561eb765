"""cbam.export's helpers: ONNX (onnxruntime-checked, dynamic batch and H x W), TorchScript and
torch.export for every registry module and the ResNets; the CLI's export."""
import pytest
import torch

import cbam
from cbam.export import check_onnx, export_onnx, export_program, export_torchscript, onnx_op_types
from cbam.models import create_model
from tests.helpers import randomize_

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
SIZES = [(1, 7, 9), (3, 12, 5), (2, 16, 16)]


@pytest.mark.parametrize("name", cbam.list_attention())
def test_onnx_every_registry_module(tmp_path, name):
    m = randomize_(cbam.create_attention(name, 16)).eval()
    p = export_onnx(m, str(tmp_path / f"{name}.onnx"), torch.randn(2, 16, 8, 8))
    inputs = [torch.randn(n, 16, h, w) for n, h, w in SIZES]
    assert check_onnx(p, m, inputs) < 1e-4
    ops = onnx_op_types(p)
    assert not any("Adaptive" in o for o in ops)
    if name.startswith("cbam") or name == "channel":
        assert ops & {"ReduceMax", "GlobalMaxPool"} and ops & {"ReduceMean", "GlobalAveragePool"}


@pytest.mark.parametrize("name", ["resnet20_cbam", "resnet18_se"])  # presets: test_interop.py
def test_onnx_resnets(tmp_path, name):
    in_chans = 1 if name.startswith("resnet20") else 3
    m = randomize_(create_model(name, in_chans=in_chans, num_classes=10), scale=0.1).eval()
    s0 = 32 if in_chans == 1 else 64
    p = export_onnx(m, str(tmp_path / "m.onnx"), torch.randn(2, in_chans, s0, s0), min_size=8 if in_chans == 1 else 64)
    sizes = ((1, 28), (4, 32), (2, 40)) if in_chans == 1 else ((1, 64), (3, 96))
    inputs = [torch.randn(n, in_chans, s, s) for n, s in sizes]
    assert check_onnx(p, m, inputs) < 1e-4


def test_torchscript_script_and_trace(tmp_path):
    m = randomize_(create_model("resnet20_cbam", in_chans=1), scale=0.1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = m(x)
    for mode in ("script", "trace"):
        p = export_torchscript(m, str(tmp_path / f"{mode}.pt"), mode, x)
        loaded = torch.jit.load(p)
        torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-5)
    assert m.layer1[0].attn.impl == "auto"  # restored after export


def test_export_program_is_core_aten_for_impl_fused():
    m = randomize_(create_model("resnet20_cbam_official", in_chans=1, attention_kwargs={"impl": "fused"}),
                   scale=0.1).eval()
    x = torch.randn(2, 1, 28, 28)
    dec = export_program(m, x, min_size=8)
    assert all(torch.Tag.core in n.target.tags for n in dec.graph.nodes if isinstance(n.target, torch._ops.OpOverload))
    with torch.no_grad():
        for n, s in ((2, 28), (5, 20)):
            xx = torch.randn(n, 1, s, s)
            torch.testing.assert_close(dec.module()(xx), m(xx), rtol=1e-4, atol=1e-5)  # eager: the fused op


def test_cli_export_and_viz(tmp_path):
    from cbam.cli import main
    run = str(tmp_path / "run")
    assert main(["train", "--data", "digits", "--model", "resnet20_cbam", "--epochs", "1", "--batch-size", "64",
                 "--train-subset", "256", "--test-subset", "64", "--no-progress", "--no-tensorboard",
                 "--out", run]) == 0
    assert main(["export", run, "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--min-size", "4"]) == 0
    assert main(["export", run, "--format", "script", "--out", str(tmp_path / "m.pt")]) == 0
    assert main(["viz", run, "--n", "3", "--out", str(tmp_path / "viz")]) == 0
    assert (tmp_path / "viz" / "gradcam.png").exists() and (tmp_path / "viz" / "run_spatial.png").exists()
