"""Min-K% Prob (Shi et al. 2024): mean of the k lowest token log-probabilities."""

from dataclasses import dataclass

import numpy as np

from tuneguard.attacks.base import ROUNDING, Attack, AttackContext, AttackOutput, lowest_k_mean
from tuneguard.params import Params, param

# The levels Min-K% feeds the ensemble (SOFT's), free: they come from the same token scores.
ENSEMBLE_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@dataclass
class MinKParams(Params):
    k: float = param(0.2, "fraction of the scored tokens averaged (the lowest log-probs)", gt=0, le=1)
    rounding: str = param("ceil", "how k·n becomes a token count: ceil (canonical) or floor (MIMIR's int(k·n))",
                          choices=ROUNDING)


class MinKAttack(Attack):
    """``rounding="ceil"`` takes ⌈k·n⌉ tokens (canonical); ``"floor"`` takes ⌊k·n⌋ as MIMIR does. In the ensemble
    it enters as Min-K% at SOFT's seven levels of k instead of its own single k."""

    name = "min-k"
    summary = "mean of the lowest k% token log-probs"
    ensemble = "soft"
    Params = MinKParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        scores = np.array([lowest_k_mean(s.logprobs, self.params.k, rounding=self.params.rounding)
                           for s in ctx.target_scores()])
        return AttackOutput(scores=scores, raw=-scores, raw_name="-mean lowest-k log-prob")

    @classmethod
    def ensemble_columns(cls, ctx: AttackContext, out: AttackOutput) -> dict[str, np.ndarray]:
        token_scores = ctx.target_scores()
        return {f"min-k@{k}": np.array([lowest_k_mean(s.logprobs, k) for s in token_scores]) for k in ENSEMBLE_LEVELS}
