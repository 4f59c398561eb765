"""Networks: attention ResNets, retrofitting attention into any model, checkpoint converters."""
from .convert import convert_state_dict, load_checkpoint
from .registry import create_model, list_models, parse_model_name
from .resnet import (ARCHITECTURES, BasicBlock, Bottleneck, ResNet, count_parameters, resnet18, resnet20, resnet32,
                     resnet34, resnet44, resnet50, resnet56, resnet101, resnet110, resnet152, resnext50_32x4d,
                     wide_resnet18_2)
from .retrofit import IdentityInitAttention, InsertionReport, insert_attention, remove_attention

__all__ = [
    "ARCHITECTURES", "BasicBlock", "Bottleneck", "ResNet", "count_parameters", "create_model", "list_models",
    "parse_model_name", "resnet18", "resnet20", "resnet32", "resnet34", "resnet44", "resnet50", "resnet56",
    "resnet101", "resnet110", "resnet152", "resnext50_32x4d", "wide_resnet18_2", "convert_state_dict",
    "load_checkpoint", "IdentityInitAttention", "InsertionReport", "insert_attention", "remove_attention",
]
