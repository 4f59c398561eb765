"""Training configuration: one dataclass; CLI flags and YAML/JSON files map onto its fields.

Every field is coerced to its type and range-checked in :meth:`TrainConfig.validate`,
whatever the source: a flag arrives as a string, YAML reads ``1e-3`` as a string and
``no`` in quotes as a string, JSON has no integers distinct from floats. Each error is
one sentence naming the field and its flag.
"""
import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


# Fields that say where and how a run executes, not what it computes (ablation shards may differ in them).
RUNTIME_FIELDS: Tuple[str, ...] = ("out", "resume", "progress", "threads", "tensorboard", "keep_checkpoints")


@dataclass
class TrainConfig:
    # model
    model: str = "resnet20"                 # an architecture or a create_model name such as resnet20_cbam
    attention: Optional[str] = None         # registry name; overrides a suffix in `model`
    attention_kwargs: Dict[str, Any] = field(default_factory=dict)
    impl: str = "auto"                      # CBAM kernels: auto | reference | fused
    # data
    data: str = "fashion-mnist"
    data_root: Optional[str] = None
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    image_size: Optional[int] = None        # default: the dataset's own size
    crop_padding: int = 4
    hflip: bool = True
    # optimisation
    epochs: int = 10
    batch_size: int = 128                   # the global batch (split across processes under torchrun)
    optimizer: str = "sgd"                  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    schedule: str = "cosine"                # cosine | constant
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None       # max global grad norm
    amp: str = "none"                       # none | bf16 | fp16 (fp16 on CUDA only)
    channels_last: bool = True              # faster for plain and CBAM ResNets alike (cbam bench)
    sync_bn: bool = True                    # under torchrun: batch statistics over all processes
    # run
    seed: int = 0
    out: str = "runs/default"
    resume: bool = False                    # continue the run in `out`
    overwrite: bool = False                 # replace the run in `out` (its checkpoints and logs)
    threads: Optional[int] = None
    progress: bool = True
    tensorboard: bool = True
    keep_checkpoints: int = 2               # newest epochs kept; the one last.json names is never removed
    log_interval: int = 20                  # steps between host syncs of loss/accuracy (bar, divergence check)
    max_steps_per_epoch: Optional[int] = None  # for smoke tests

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TrainConfig":
        """Coerce every field to its type and check its range, in place; raises ``ValueError``."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            v = _coerce(f.name, getattr(self, f.name), hints[f.name])
            if v is not None and f.name in _CHECKS:
                ok, what = _CHECKS[f.name]
                if not ok(v):
                    raise ValueError(f"{_label(f.name)} must be {what}, got {v!r}")
            setattr(self, f.name, v)
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid: {', '.join(sorted(names))}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str) -> "TrainConfig":
        if not os.path.exists(path):
            raise FileNotFoundError(f"config file not found: {path}")
        yaml_file = path.endswith((".yaml", ".yml"))
        with open(path, encoding="utf-8") as f:
            try:
                if yaml_file:
                    import yaml
                    d = yaml.safe_load(f) or {}
                else:
                    d = json.load(f)
            except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: both say where the syntax breaks
                raise ValueError(f"{path}: not valid {'YAML' if yaml_file else 'JSON'}: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        return cls.from_dict(d)


def _label(name: str) -> str:
    return f"{name} (--{name.replace('_', '-')})"


_Check = Tuple[Callable[[Any], bool], str]
_CHECKS: Dict[str, _Check] = {
    "impl": (lambda v: v in ("auto", "reference", "fused"), "one of auto, reference, fused"),
    "optimizer": (lambda v: v in ("sgd", "adamw"), "'sgd' or 'adamw'"),
    "schedule": (lambda v: v in ("cosine", "constant"), "'cosine' or 'constant'"),
    "amp": (lambda v: v in ("none", "bf16", "fp16"), "'none', 'bf16' or 'fp16'"),
    "model": (lambda v: v != "", "a model name such as resnet20_cbam"),
    "out": (lambda v: v != "", "a folder path"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "train_subset": (lambda v: v >= 1, ">= 1 (or none for all)"),
    "test_subset": (lambda v: v >= 1, ">= 1 (or none for all)"),
    "image_size": (lambda v: v >= 1, ">= 1 pixels (or none for the dataset's size)"),
    "crop_padding": (lambda v: v >= 0, ">= 0"),
    "lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "grad_clip": (lambda v: v > 0, "> 0 (or none)"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "threads": (lambda v: v >= 1, ">= 1 (or none for PyTorch's default)"),
    "keep_checkpoints": (lambda v: v >= 1, ">= 1: the newest checkpoint is always kept"),
    "log_interval": (lambda v: v >= 1, ">= 1"),
    "max_steps_per_epoch": (lambda v: v >= 1, ">= 1 (or none for whole epochs)"),
}


def _coerce(name: str, v: Any, typ: Any) -> Any:
    """``v`` as ``typ`` (``int``, ``float``, ``bool``, ``str``, a dict, or ``Optional`` of one)."""
    args = typing.get_args(typ)
    if type(None) in args:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", "")):
            return None
        typ = next(a for a in args if a is not type(None))
    base = typing.get_origin(typ) or typ
    try:
        return _CONVERT[base](v)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{_label(name)}: expected {_EXPECT[base]}, got {v!r}{f' ({e})' if str(e) else ''}") from None


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError("")


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError("")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("")
        return int(v)
    return int(v.strip()) if isinstance(v, str) else int(v)


def _to_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise TypeError("")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError("")
    return x


def _to_str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError("")
    return v


def _to_dict(v: Any) -> Dict[str, Any]:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            raise ValueError("not valid JSON") from None
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise TypeError("")
    return dict(v)


_CONVERT: Dict[Any, Callable[[Any], Any]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str,
                                              dict: _to_dict}
_EXPECT = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
           dict: "a JSON object such as '{\"reduction\": 8}'"}
