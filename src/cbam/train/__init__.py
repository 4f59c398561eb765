"""Training, evaluation and the demo: a readable loop with a dataclass config."""
from .config import TrainConfig
from .loop import RunResult, TrainingDiverged, build_model, evaluate, load_data, lr_at, train

__all__ = ["TrainConfig", "RunResult", "TrainingDiverged", "build_model", "evaluate", "load_data", "lr_at", "train"]
