"""The DP-SGD regime: LoRA fine-tuning with per-sample clipping and Gaussian noise (Opacus) at a target epsilon."""

from __future__ import annotations

from dataclasses import dataclass

from tuneguard.params import Params, param
from tuneguard.regimes.base import Regime
from tuneguard.train import TrainConfig


@dataclass
class DPOptions(Params):
    epsilon: float = param(8.0, "target epsilon (inf: clipping only, no noise)", gt=0)
    delta: float | None = param(None, "target delta (default 1/(10·n), n = member texts)", gt=0, lt=1)
    max_grad_norm: float = param(1.0, "per-sample gradient clipping bound", gt=0)


class DPSGD(Regime):
    name = "dp"
    summary = "DP-SGD LoRA fine-tuning (same schedule and accumulation as the other runs)"
    Params = DPOptions

    def train_config(self, train: TrainConfig) -> TrainConfig:
        return train.replace(method="lora")  # Opacus has per-sample gradients for LoRA layers only

    def build(self, base, members, cell_dir, train, *, progress=True):
        from tuneguard.defenses.dp_sgd import DPConfig, dp_finetune

        dp = DPConfig(target_epsilon=self.params.epsilon, delta=self.params.delta,
                      max_grad_norm=self.params.max_grad_norm)
        run = dp_finetune(base, members, cell_dir / "model", train, dp, progress=progress)
        return run.model, {"epsilon_spent": run.record.dp["epsilon_spent"], "train_size": len(members)}
