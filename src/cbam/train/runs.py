"""A trained network back from disk: a run folder's last checkpoint or a shipped network, with the
config it was trained with and the dataset split to evaluate it on."""
import dataclasses
from typing import Any, Optional, Tuple

from ..data import load_dataset
from ..models import create_model
from .checkpoint import latest_checkpoint, load_weights
from .config import TrainConfig
from .loop import build_model
from .report import load_run

CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_run_model(path: str, split: str = "test", data: Optional[str] = None,
                   data_root: Optional[str] = None) -> Tuple[Any, TrainConfig, Any]:
    """(model in eval mode, config, dataset ``split``) of a run folder's last checkpoint."""
    run = load_run(path)
    cfg = TrainConfig.from_dict({k: v for k, v in run["config"].items() if k in CONFIG_FIELDS})
    ck = latest_checkpoint(path)
    if ck is None:
        raise FileNotFoundError(f"{path} has no checkpoint yet")
    ds = load_dataset(data or cfg.data, split, data_root or cfg.data_root)
    return load_weights(build_model(cfg, ds.num_classes, ds.in_chans), ck[1]).eval(), cfg, ds


def load_pretrained_model(name: str, tag: str, split: str = "test", data: Optional[str] = None,
                          data_root: Optional[str] = None) -> Tuple[Any, TrainConfig, Any]:
    """(shipped network in eval mode, the config it was trained with, dataset ``split``)."""
    model = create_model(name, pretrained=tag).eval()
    card = model.pretrained_card
    cfg = TrainConfig.from_dict({k: v for k, v in card["config"].items() if k in CONFIG_FIELDS})
    return model, cfg, load_dataset(data or cfg.data, split, data_root or cfg.data_root)
