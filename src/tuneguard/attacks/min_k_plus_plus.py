"""Min-K%++ (Zhang et al. 2025): token log-probs standardised by the model's own next-token distribution."""

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput, lowest_k_mean
from tuneguard.scoring import TokenScores


# Below this sigma (nats) the distribution is flat or one-hot and sigma is float64 rounding noise, not a spread.
SIGMA_FLOOR = 1e-8


def z_scores(s: TokenScores, *, normalise: bool = True) -> np.ndarray:
    """``(lp_t - mu_t) / sigma_t``; a position with sigma ~ 0 (a uniform or one-hot distribution) gets 0."""
    centred = s.logprobs - s.mu
    if not normalise:
        return centred
    return np.divide(centred, s.sigma, out=np.zeros_like(centred), where=s.sigma > SIGMA_FLOOR)


class MinKPlusPlusAttack(Attack):
    """``normalise=False`` drops the division by sigma (SOFT's code), a named variant."""

    name = "min-k++"
    defaults = {"k": 0.2, "rounding": "ceil", "normalise": True}
    summary = "mean of the lowest k% of (lp - mu) / sigma"

    def run(self, ctx: AttackContext) -> AttackOutput:
        scores = np.array([lowest_k_mean(z_scores(s, normalise=self.params["normalise"]), self.params["k"],
                                         rounding=self.params["rounding"]) for s in ctx.target_scores()])
        note = None if self.params["normalise"] else "without normalisation by sigma (SOFT's code)"
        return AttackOutput(scores=scores, raw=-scores, raw_name="-mean lowest-k z", note=note)


ATTACK = MinKPlusPlusAttack
