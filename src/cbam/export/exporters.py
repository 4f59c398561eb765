"""Exporters with dynamic shapes, atomic writes and an onnxruntime check.

PyTorch's own exporters work on our modules as they are: while ``torch.export``,
``torch.onnx.export`` (either exporter) or ``torch.jit.trace`` records a graph, CBAM takes
the reference math of :mod:`cbam.functional` (standard ops: ReduceMean/ReduceMax, Conv,
MatMul, Sigmoid) instead of the fused custom op, which tests prove equal to it.
``reference_impl`` switches a model's CBAMs to the reference outside exporters too.
"""
import contextlib
from typing import Iterator, Sequence, Set

import torch
from torch import Tensor, nn

from .._io import atomic_write
from ..attention import CBAM


@contextlib.contextmanager
def reference_impl(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily switch every CBAM module to ``impl="reference"``."""
    changed = [(m, m.impl) for m in model.modules() if isinstance(m, CBAM)]
    for m, _ in changed:
        m.impl = "reference"
    try:
        yield model
    finally:
        for m, impl in changed:
            m.impl = impl


def _dims(dynamic: bool, min_size: int):
    if not dynamic:
        return None
    return ({0: torch.export.Dim("batch", min=1, max=4096), 2: torch.export.Dim("height", min=min_size, max=4096),
             3: torch.export.Dim("width", min=min_size, max=4096)},)


def export_onnx(model: nn.Module, path: str, example: Tensor, opset: int = 18, dynamic: bool = True,
                min_size: int = 2) -> str:
    """Export to ONNX (dynamo exporter) with dynamic batch and H x W >= ``min_size`` (for a ResNet
    choose it so the last feature map stays larger than 1x1, e.g. 8 for CIFAR-style, 64 for
    ImageNet-style nets); written atomically."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    model = model.eval()
    dims = _dims(dynamic, min_size)
    with reference_impl(model), torch.no_grad():
        prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, dynamic_shapes=dims,
                                 input_names=["x"], output_names=["y"], verbose=False)
    atomic_write(path, lambda p: prog.save(p))
    return path


def onnx_op_types(path: str) -> Set[str]:
    import onnx
    m = onnx.load(path)
    ops = {n.op_type for n in m.graph.node}
    for f in m.functions:
        ops |= {n.op_type for n in f.node}
    return ops


def check_onnx(path: str, model: nn.Module, inputs: Sequence[Tensor]) -> float:
    """Largest absolute difference between onnxruntime and PyTorch over ``inputs``."""
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    worst = 0.0
    model.eval()
    with torch.no_grad(), reference_impl(model):
        for x in inputs:
            got = sess.run(None, {name: x.numpy()})[0]
            worst = max(worst, float((torch.from_numpy(got) - model(x)).abs().max()))
    return worst


def export_torchscript(model: nn.Module, path: str, mode: str = "script", example: Tensor = None) -> str:
    """TorchScript by ``script`` (control flow kept) or ``trace`` (needs ``example``)."""
    model = model.eval()
    with reference_impl(model):
        if mode == "script":
            sm = torch.jit.script(model)
        elif mode == "trace":
            if example is None:
                raise ValueError("mode='trace' needs an example input")
            sm = torch.jit.trace(model, (example,), check_trace=False)
        else:
            raise ValueError(f"mode must be 'script' or 'trace', got '{mode}'")
    atomic_write(path, lambda p: torch.jit.save(sm, p))
    return path


def export_program(model: nn.Module, example: Tensor, dynamic: bool = True,
                   min_size: int = 2) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` decomposed to core ATen ops (CBAM records its reference
    math while exporting), so the program runs anywhere torch runs."""
    model = model.eval()
    dims = _dims(dynamic, min_size)
    return torch.export.export(model, (example,), dynamic_shapes=dims).run_decompositions()
