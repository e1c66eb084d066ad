"""The Goldfish regime: fine-tuning with the Goldfish loss (``train.goldfish``: a hashed 1/k of the tokens left out
of the loss, so no member is learnt verbatim in full). An experiment's column fine-tunes every weight (beside the
full column it protects); `defend goldfish` trains with whatever --method it is given (LoRA by default)."""

from __future__ import annotations

from tuneguard.regimes.base import Regime
from tuneguard.train import TrainConfig
from tuneguard.train.goldfish import GoldfishConfig


class Goldfish(Regime):
    name = "goldfish"
    # The first clause (before " (") is `defend goldfish`'s help, which trains with any --method: no "full" there.
    summary = "fine-tuning with the Goldfish loss (Hans et al. 2024): 1 token in k, chosen by a hash of the h " \
              "before it, left out of the loss; an experiment's column fine-tunes every weight, `defend goldfish` " \
              "trains with its --method"
    Params = GoldfishConfig
    knob = ("k", "k")
    command = "tuneguard defend goldfish"

    def command_options(self):
        return {"k": self.params.k, "h": self.params.h}, []

    def train_config(self, train: TrainConfig) -> TrainConfig:
        return train.replace(method="full")  # the run it protects, with the same hyperparameters

    def build(self, base, members, cell_dir, train, *, progress=True):
        from tuneguard.train import finetune

        return finetune(base, members, cell_dir / "model", train, goldfish=self.params, progress=progress).model, \
            {"train_size": len(members)}
