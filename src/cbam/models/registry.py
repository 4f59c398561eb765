"""``create_model("resnet50_cbam")``: architecture name, optionally suffixed by an attention name."""
from typing import Any, List, Optional, Tuple

from ..attention.registry import list_attention
from .resnet import ARCHITECTURES, ResNet, build_resnet


def parse_model_name(name: str) -> Tuple[str, Optional[str]]:
    """``"resnet50_cbam_official"`` -> ``("resnet50", "cbam_official")``; ``"resnet20"`` -> ``("resnet20", None)``."""
    key = name.lower().replace("-", "_")
    if key in ARCHITECTURES:
        return key, None
    for arch in sorted(ARCHITECTURES, key=len, reverse=True):
        if key.startswith(arch + "_"):
            att = key[len(arch) + 1:]
            if att in list_attention():
                return arch, att
    raise ValueError(f"unknown model '{name}'; valid: an architecture ({', '.join(ARCHITECTURES)}) optionally "
                     f"followed by _<attention> ({', '.join(list_attention())}), e.g. resnet50_cbam, resnet20_se")


def create_model(name: str, pretrained: Optional[str] = None, **kwargs: Any) -> ResNet:
    """Build a model by name; an attention suffix sets ``attention=`` (an explicit
    ``attention=`` keyword wins). ``pretrained="fashion-mnist"`` loads shipped weights
    (offline, sha256-checked; :mod:`cbam.models.pretrained`)."""
    if pretrained is not None:
        from .pretrained import create_pretrained
        return create_pretrained(name, pretrained, **kwargs)
    arch, att = parse_model_name(name)
    if att is not None:
        kwargs.setdefault("attention", att)
    if arch in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110"):
        kwargs.setdefault("num_classes", 10)
    return build_resnet(arch, **kwargs)


def list_models() -> List[str]:
    """Every valid name: each architecture alone and with each attention suffix."""
    names = list(ARCHITECTURES)
    names += [f"{a}_{t}" for a in ARCHITECTURES for t in list_attention() if t != "none"]
    return sorted(names)
