"""The training stage: one loop (`Trainer`) with pluggable batches, loss and evaluation, and pretraining on it.

Post-training (SFT, DPO) reuses `Trainer` with its own `BatchSource`, loss function and evaluation hook;
see docs/training.md.
"""

from llmlab.train.config import TrainConfig, load_config
from llmlab.train.data import BatchSource, WindowBatches
from llmlab.train.loop import TrainingDiverged, Trainer, TrainResult, lm_loss
from llmlab.train.optim import build_optimizer, lr_at, param_groups
from llmlab.train.pretrain import pretrain

__all__ = [
    "BatchSource", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "WindowBatches",
    "build_optimizer", "load_config", "lm_loss", "lr_at", "param_groups", "pretrain",
]
