"""ResNets with an attention slot in every residual block (ImageNet and CIFAR-style).

Placement follows the paper and the authors' code: on the residual branch,
after the last BatchNorm, before the addition. Key names match torchvision's
ResNets (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``); the attention
module of a block is ``attn``.
"""
import functools
import inspect
from typing import Any, Dict, List, Optional, Sequence, Type, Union

import torch
from torch import Tensor, nn

from ..attention.registry import AttentionSpec, create_attention


def _attn(spec: AttentionSpec, channels: int, kwargs: Optional[Dict[str, Any]]) -> nn.Module:
    return create_attention(spec, channels, **(kwargs or {}))


@functools.lru_cache(maxsize=None)
def _tail_takes_inplace(cls: type) -> bool:
    """Whether ``cls.forward_tail`` accepts ``inplace`` (a subclass or another module may keep the
    two-argument form)."""
    try:
        params = inspect.signature(cls.forward_tail).parameters
    except (TypeError, ValueError):
        return False
    return "inplace" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class _Tail:
    """A residual block's tail ``relu(attn(out) + identity)``, formed by the attention module's
    ``forward_tail(out, identity, inplace=True)`` where it has one (CBAM's fused path does it in its
    last pass, and in inference over ``out``, as torchvision's ``out += identity`` does; a
    ``forward_tail(out, identity)`` without ``inplace`` is called as such)."""

    @torch.jit.unused
    def _fused_tail(self, out: Tensor, identity: Tensor) -> Tensor:
        attn = self.attn
        if _tail_takes_inplace(type(attn)):
            return attn.forward_tail(out, identity, inplace=True)  # `out`: this block's own temporary
        return attn.forward_tail(out, identity)

    @torch.jit.unused
    def _attention_tail(self) -> bool:
        # only for an unhooked nn.ReLU: a swapped activation or a hook on it keeps the block's own call
        r = self.relu
        return type(r) is nn.ReLU and not (r._forward_hooks or r._forward_pre_hooks or r._backward_hooks
                                           or r._backward_pre_hooks)


class BasicBlock(_Tail, nn.Module):
    """3x3 -> 3x3 residual block; ``attn`` after ``bn2``. ``(N, Cin, H, W) -> (N, C, H/s, W/s)``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 attention: AttentionSpec = None, attention_kwargs: Optional[Dict[str, Any]] = None,
                 groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = _attn(attention, planes, attention_kwargs)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if hasattr(self.attn, "forward_tail") and not torch.jit.is_scripting() and self._attention_tail():
            return self._fused_tail(out, identity)  # relu(attn(out) + identity) in the attention's last pass
        return self.relu(self.attn(out) + identity)


class Bottleneck(_Tail, nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block (stride on the 3x3, as torchvision); ``attn`` after ``bn3``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 attention: AttentionSpec = None, attention_kwargs: Optional[Dict[str, Any]] = None,
                 groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.attn = _attn(attention, planes * self.expansion, attention_kwargs)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if hasattr(self.attn, "forward_tail") and not torch.jit.is_scripting() and self._attention_tail():
            return self._fused_tail(out, identity)
        return self.relu(self.attn(out) + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


def _init_tree(module: nn.Module) -> None:
    """Convs Kaiming-normal (fan_out, ReLU), BNs weight 1 / bias 0; any other module with a
    ``reset_parameters`` (the attention modules, e.g. the authors' zero BN weight in CBAM's
    spatial gate, and the classifier) owns its init and is reset, not entered."""
    for m in module.children():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif hasattr(m, "reset_parameters"):
            m.reset_parameters()
        else:
            _init_tree(m)


class ResNet(nn.Module):
    """ResNet (He et al., 2016) with an attention module in every residual block.

    Args:
        block, layers: block type and blocks per stage.
        num_classes: classifier outputs; ``0`` gives features ``(N, C_last)``.
        attention: registry name (``"cbam"``, ``"se"``, ...), class or callable, or
            ``None``; ``attention_kwargs`` go to its constructor.
        in_chans: input channels (1 for grey-scale data).
        widths: channels of each stage before expansion (ImageNet: 64/128/256/512,
            CIFAR-style: 16/32/64).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv),
            the latter for 28-32 px inputs.
        zero_init_residual: start the last BN of each residual branch at 0 (each
            block starts as the identity; Goyal et al., 2017).
        groups, width_per_group: ResNeXt cardinality and width.

    Weight init: convs Kaiming-normal (fan_out, ReLU), BN weight 1 / bias 0,
    the classifier PyTorch's default; attention modules keep their own init.
    Global average pooling makes any input size work.
    ``(N, in_chans, H, W) -> (N, num_classes)``.
    """

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 1000, *,
                 attention: AttentionSpec = None, attention_kwargs: Optional[Dict[str, Any]] = None,
                 in_chans: int = 3, widths: Sequence[int] = (64, 128, 256, 512), stem: str = "imagenet",
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 stem_width: Optional[int] = None, drop_rate: float = 0.0) -> None:
        super().__init__()
        if len(widths) != len(layers):
            raise ValueError(f"widths {tuple(widths)} and layers {tuple(layers)} must have the same length")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got '{stem}'")
        self.groups, self.base_width = groups, width_per_group
        self.attention, self.attention_kwargs = attention, attention_kwargs
        self.inplanes = stem_width or widths[0]
        self.in_chans, self.num_classes = in_chans, num_classes
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        stages: List[nn.Module] = []
        for i, (w, n) in enumerate(zip(widths, layers)):
            stages.append(self._make_layer(block, w, n, stride=1 if i == 0 else 2))
        if not 1 <= len(stages) <= 4:
            raise ValueError(f"1 to 4 stages are supported, got {len(stages)}")
        # named layer1..layer4 like torchvision so checkpoints and converters line up; absent
        # stages (3-stage CIFAR nets) are parameter-free identities
        self.num_stages = len(stages)
        stages += [nn.Identity() for _ in range(4 - len(stages))]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = widths[-1] * block.expansion
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.attention, self.attention_kwargs,
                        self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, None, self.attention, self.attention_kwargs,
                                self.groups, self.base_width))
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        _init_tree(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def stages(self) -> List[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, in_chans, H, W) -> (N, C_last, H', W')``, the last stage's map."""
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != self.in_chans):  # a trace fixes shapes
            raise ValueError("ResNet(in_chans=" + str(self.in_chans) + ") expects (N, " + str(self.in_chans)
                             + ", H, W), got shape " + str(list(x.shape)))
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        x = self.global_pool(self.forward_features(x)).flatten(1)
        return self.fc(self.drop(x))


_IMAGENET = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}),
    "resnet34": (BasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}),
    "resnet101": (Bottleneck, [3, 4, 23, 3], {}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], dict(groups=32, width_per_group=4)),
    # the paper's WRN-18 (widen 2.0): stage widths doubled, stem kept at 64
    "wide_resnet18_2": (BasicBlock, [2, 2, 2, 2], dict(widths=(128, 256, 512, 1024), stem_width=64)),
}
_CIFAR = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


def build_resnet(name: str, **kwargs: Any) -> ResNet:
    """Build a base architecture by name (see :data:`ARCHITECTURES`)."""
    if name in _IMAGENET:
        block, layers, extra = _IMAGENET[name]
        return ResNet(block, layers, **{**extra, **kwargs})
    if name in _CIFAR:
        n = _CIFAR[name]
        kwargs.setdefault("num_classes", 10)
        return ResNet(BasicBlock, [n, n, n], widths=(16, 32, 64), stem="cifar", **kwargs)
    raise ValueError(f"unknown architecture '{name}'; valid: {', '.join(ARCHITECTURES)}")


ARCHITECTURES = tuple(_IMAGENET) + tuple(_CIFAR)


def _factory(name: str):
    def f(num_classes: int = 1000 if name in _IMAGENET else 10, attention: AttentionSpec = None,
          attention_kwargs: Optional[Dict[str, Any]] = None, in_chans: int = 3, **kwargs: Any) -> ResNet:
        return build_resnet(name, num_classes=num_classes, attention=attention, attention_kwargs=attention_kwargs,
                            in_chans=in_chans, **kwargs)
    f.__name__ = name
    f.__doc__ = f"{name} with an optional attention module in every residual block (see :class:`ResNet`)."
    return f


resnet18, resnet34, resnet50, resnet101, resnet152 = (_factory(n) for n in
                                                      ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"))
resnext50_32x4d, wide_resnet18_2 = _factory("resnext50_32x4d"), _factory("wide_resnet18_2")
resnet20, resnet32, resnet44, resnet56, resnet110 = (_factory(n) for n in _CIFAR)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

