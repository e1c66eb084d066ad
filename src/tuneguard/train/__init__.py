"""Fine-tuning: full, LoRA, prefix tuning and (IA)^3, resumable per epoch, Accelerate-ready."""

from tuneguard.train.config import METHODS, TrainConfig
from tuneguard.train.loop import TrainResult, finetune

__all__ = ["METHODS", "TrainConfig", "TrainResult", "finetune"]
