"""Training configuration: one dataclass; CLI flags and YAML/JSON files map onto its fields."""
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


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
    channels_last: bool = False
    sync_bn: bool = True                    # under torchrun: batch statistics over all processes
    # run
    seed: int = 0
    out: str = "runs/default"
    resume: bool = False
    threads: Optional[int] = None
    progress: bool = True
    tensorboard: bool = True
    keep_checkpoints: int = 2
    max_steps_per_epoch: Optional[int] = None  # for smoke tests

    def validate(self) -> "TrainConfig":
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got '{self.optimizer}'")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got '{self.schedule}'")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got '{self.amp}'")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
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
        with open(path, encoding="utf-8") as f:
            if path.endswith((".yaml", ".yml")):
                import yaml
                d = yaml.safe_load(f) or {}
            else:
                d = json.load(f)
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        return cls.from_dict(d)
