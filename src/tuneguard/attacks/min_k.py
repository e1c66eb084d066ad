"""Min-K% Prob (Shi et al. 2024): mean of the k lowest token log-probabilities."""

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput, lowest_k_mean


class MinKAttack(Attack):
    """``rounding="ceil"`` takes ⌈k·n⌉ tokens (canonical); ``"floor"`` takes int(k·n) as MIMIR does."""

    name = "min-k"
    defaults = {"k": 0.2, "rounding": "ceil"}
    summary = "mean of the lowest k% token log-probs"

    def run(self, ctx: AttackContext) -> AttackOutput:
        scores = np.array([lowest_k_mean(s.logprobs, self.params["k"], rounding=self.params["rounding"])
                           for s in ctx.target_scores()])
        return AttackOutput(scores=scores, raw=-scores, raw_name="-mean lowest-k log-prob")


ATTACK = MinKAttack
