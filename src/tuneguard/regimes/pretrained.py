"""The pretrained regime: the base model itself, never fine-tuned on the members (every attack's chance level)."""

from __future__ import annotations

from tuneguard.regimes.base import Regime


class Pretrained(Regime):
    name = "pretrained"
    summary = "the base model as it is (not fine-tuned): the chance-level baseline"
    trains = False
    reference_point = True  # the frontier's chance-level end

    def build(self, base, members, cell_dir, train, *, progress=True):
        return base, {"train_size": 0}
