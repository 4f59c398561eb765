"""Deployment: ONNX (checked in onnxruntime), TorchScript (script / trace) and torch.export."""
from .exporters import (check_onnx, export_onnx, export_program, export_torchscript, onnx_op_types,
                        reference_impl)

__all__ = ["check_onnx", "export_onnx", "export_program", "export_torchscript", "onnx_op_types", "reference_impl"]
