"""finetune: adapt a pretrained model to downstream data (one run)."""

from finetune.config import DataConfig, FinetuneConfig, MethodConfig, ModelConfig, TrainingConfig
from finetune.errors import ConfigError, DataError, ModelError, TrainingError, TunelabError
from finetune.evaluate import evaluate, evaluate_untrained, load_trained
from finetune.train import RunResult, train

__all__ = [
    "ConfigError",
    "DataConfig",
    "DataError",
    "FinetuneConfig",
    "MethodConfig",
    "ModelConfig",
    "ModelError",
    "RunResult",
    "TrainingConfig",
    "TrainingError",
    "TunelabError",
    "evaluate",
    "evaluate_untrained",
    "load_trained",
    "train",
]
