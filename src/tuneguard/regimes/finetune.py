"""Plain fine-tuning regimes: the unprotected runs the defences are compared with."""

from __future__ import annotations

from tuneguard.regimes.base import Regime
from tuneguard.train import TrainConfig


class FineTuning(Regime):
    """Fine-tune the base model on the members with the training method the regime is named after."""

    command = "tuneguard finetune"

    def train_config(self, train: TrainConfig) -> TrainConfig:
        return train.replace(method=self.name)

    def build(self, base, members, cell_dir, train, *, progress=True):
        from tuneguard.train import finetune

        return finetune(base, members, cell_dir / "model", train, progress=progress).model, \
            {"train_size": len(members)}


class FullFineTuning(FineTuning):
    name = "full"
    summary = "full fine-tuning on the members (every weight)"
    reference_point = True  # the unprotected run: the frontier's most useful, least private end


class LoRAFineTuning(FineTuning):
    name = "lora"
    summary = "LoRA fine-tuning on the members"
