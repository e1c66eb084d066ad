"""The DP-SGD regime: LoRA fine-tuning with per-sample clipping and Gaussian noise (Opacus) at a target epsilon.

It trains for the same epochs as the runs it is compared with, but not with their step size and batch: clipping
caps each text's gradient at ``max_grad_norm`` and the noise added to every step has a standard deviation of
σ·max_grad_norm / B on the mean gradient (B = expected texts per noisy step), far above the signal of a batch of 8.
So the learning rate is ``lr_factor`` × the run's (DP fine-tuning recipes use about 10× the non-private one: Li et
al. 2022, Yu et al. 2022) and B is ``batch_factor`` × the run's batch, reached by gradient accumulation (the physical
batches, and so the memory, stay the same). At a fixed number of epochs a larger B means fewer steps but less noise
per step; at ε = 8 on 64 texts, B = 8 → 32 lowers σ/B from 0.083 to 0.027 (Opacus' RDP accountant). Both factors
are recorded in the column's TrainConfig (lr, grad_accum), so the table's settings show what the run used.

The defaults are the best setting measured (bench/results/dp_sweep_pubmed.md: SmolLM2-135M, 256 + 256 PubMed
abstracts, 96 tokens, LoRA at lr 1e-3, batch 8, 3 epochs; each setting changed alone at ε 8, 4 and 1): they reach
held-out perplexity 29.39, 30.24 and 32.71 (pretrained 35.42, LoRA 24.39). 4x the batch (batch_factor 16) is 0.2-0.5
worse at each ε, lr x30 diverges at each ε (83-217; with batch_factor 16 at ε 8 it learns, to 31.48), and 10 epochs
do worse than 3 at each ε (30.49, 31.89, 37.27). The other cells that change two or three settings are not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneguard.defenses.dp_sgd import DPConfig, dp_config_of, dp_setting
from tuneguard.params import Params, param
from tuneguard.regimes.base import Regime
from tuneguard.train import TrainConfig


@dataclass
class DPOptions(Params):
    """DP-SGD's settings, declared once by :class:`DPConfig` (the experiment file names its ``target_epsilon``
    ``epsilon``), and the regime's scaling of the compared run's learning rate and batch."""

    epsilon: float = dp_setting("target_epsilon")
    delta: float | None = dp_setting("delta")
    max_grad_norm: float = dp_setting("max_grad_norm")
    lr_factor: float = param(10.0, "learning rate = this × the run's lr (clipped, noisy steps need a larger one)",
                             gt=0)
    batch_factor: int = param(4, "expected texts per noisy step = this × the run's batch (gradient accumulation): "
                                 "the noise on the mean gradient shrinks as 1/batch", ge=1)

    def dp_config(self) -> DPConfig:
        """The DPConfig these options set."""
        return dp_config_of(self)


class DPSGD(Regime):
    name = "dp"
    summary = "DP-SGD LoRA fine-tuning (same epochs and schedule as the other runs; lr and batch scaled for DP)"
    Params = DPOptions
    knob = ("epsilon", "ε")
    per_sample_gradients = True
    command = "tuneguard defend dp"

    def command_options(self):
        p = self.params
        return {"epsilon": f"{p.epsilon:g}", "delta": p.delta, "max_grad_norm": f"{p.max_grad_norm:g}"}, []

    def train_config(self, train: TrainConfig) -> TrainConfig:
        from tuneguard.defenses.dp_sgd import check_method

        # Opacus has per-sample gradients for LoRA layers only: another method is refused, as `defend dp` refuses
        # it, rather than silently replaced by LoRA.
        check_method(train)
        return train.replace(lr=train.lr * self.params.lr_factor,
                             grad_accum=train.grad_accum * self.params.batch_factor)

    def build(self, base, members, cell_dir, train, *, progress=True):
        from tuneguard.defenses.dp_sgd import dp_finetune

        run = dp_finetune(base, members, cell_dir / "model", train, self.params.dp_config(), progress=progress)
        return run.model, {"epsilon_spent": run.record.dp["epsilon_spent"], "train_size": len(members)}
