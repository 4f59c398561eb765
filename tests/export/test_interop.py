"""Models holding our modules through PyTorch's own export paths, as users call them: the default
CBAM ResNet-18 (impl="auto") and a ResNet with the official and timm presets. Each result runs in
onnxruntime or reloads, at 3 input sizes x 2 batch sizes, within 1e-4 relative of eager."""
import io
import warnings

import pytest
import torch

import cbam
from cbam.models import BasicBlock, ResNet, create_model
from tests.helpers import randomize_

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

INPUTS = [(n, h, w) for n in (1, 3) for h, w in ((64, 64), (72, 96), (96, 80))]
EXAMPLE = torch.randn(2, 3, 64, 64)


def _presets_net() -> ResNet:
    """Two stages of one block: the official preset, then timm's (small, so that it exports fast)."""
    presets = iter(["official", "timm"])
    return ResNet(BasicBlock, [1, 1], num_classes=10, widths=(16, 32),
                  attention=lambda c, **kw: cbam.CBAM.from_preset(next(presets), c))


MODELS = {"resnet18_cbam": lambda: create_model("resnet18_cbam", num_classes=10), "presets": _presets_net}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    m = randomize_(MODELS[request.param](), scale=0.1).eval()
    attn = m.layer1[0].attn
    x = torch.randn(2, attn.channels, 16, 16)
    assert all(a.impl == "auto" for a in m.modules() if isinstance(a, cbam.CBAM))
    assert cbam.ops.backend_name(x) != "cpp" or attn.uses_fused(x)  # eager runs the fused kernels
    return m


def _agree(run, model):
    for n, h, w in INPUTS:
        x = torch.randn(n, 3, h, w)
        with torch.no_grad():
            want = model(x)
            got = run(x)
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-4, (n, h, w)


def _dims():
    d = torch.export.Dim
    return ({0: d("batch", min=1, max=64), 2: d("height", min=64, max=1024), 3: d("width", min=64, max=1024)},)


def _check_onnx_graph(path, model):
    g = onnx.load(path)
    nodes = list(g.graph.node) + [n for f in g.functions for n in f.node]
    assert {n.domain for n in nodes} <= {"", "ai.onnx"}  # no custom domain
    ops = [n.op_type for n in nodes]
    n_cbam = sum(isinstance(m, cbam.CBAM) for m in model.modules())
    assert ops.count("ReduceMax") + ops.count("GlobalMaxPool") == 2 * n_cbam  # channel and spatial maxima
    assert ops.count("ReduceMean") + ops.count("GlobalAveragePool") >= 2 * n_cbam
    pools = [n for n in nodes if n.op_type == "MaxPool"]  # the stem's 3x3/2, nothing standing in for a global max
    assert len(pools) == 1 and [list(a.ints) for a in pools[0].attribute if a.name == "kernel_shape"] == [[3, 3]]
    assert not any("Adaptive" in o or "cbam" in o.lower() for o in ops)
    dims = g.graph.input[0].type.tensor_type.shape.dim
    assert all(dims[i].dim_param for i in (0, 2, 3)), "batch, H and W must be dynamic"


def _ort(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])


def test_onnx_dynamo(model, tmp_path):
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (EXAMPLE,), path, dynamo=True, dynamic_shapes=_dims(), input_names=["x"],
                          verbose=False)
    _check_onnx_graph(path, model)
    _agree(_ort(path), model)


def test_onnx_torchscript_exporter(model, tmp_path):
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (EXAMPLE,), path, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}})
    _check_onnx_graph(path, model)
    _agree(_ort(path), model)


def test_torch_export_core_aten(model):
    ep = torch.export.export(model, (EXAMPLE,), dynamic_shapes=_dims()).run_decompositions()
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    aten = {t for t in targets if isinstance(t, torch._ops.OpOverload)}
    assert aten and all(torch.Tag.core in t.tags for t in aten), [t for t in aten if torch.Tag.core not in t.tags]
    assert all(t.__module__ in ("_operator", "operator") for t in targets - aten)  # getitem and shape arithmetic
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    _agree(torch.export.load(buf).module(), model)


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_torchscript(model, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = torch.jit.trace(model, (EXAMPLE,)) if mode == "trace" else torch.jit.script(model)
    buf = io.BytesIO()
    torch.jit.save(sm, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    assert "cbam::" not in str(loaded.inlined_graph)
    _agree(loaded, model)


def test_exporters_record_reference_math_compile_keeps_the_fused_op():
    m = randomize_(cbam.CBAM.from_preset("official", 16, impl="fused")).eval()
    x = torch.randn(2, 16, 7, 6)
    assert m.uses_fused(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, (x,))
    assert "cbam::" not in str(traced.graph) and "aten::max" in str(traced.graph)
    ep = torch.export.export(m, (x,))
    assert not any("cbam" in str(n.target) for n in ep.graph.nodes)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, fullgraph=True, backend=backend)(x), m(x))
    assert any("cbam.fused_cbam_fwd" in str(n.target) for n in graphs[0].graph.nodes)
