"""Min-K%++ (Zhang et al. 2025): token log-probs standardised by the model's own next-token distribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tuneguard.attacks.base import ROUNDING, Attack, AttackContext, AttackOutput, lowest_k_mean
from tuneguard.params import Params, param

if TYPE_CHECKING:  # the scoring engine imports torch: not needed to import the attack
    from tuneguard.scoring import TokenScores

# Below this sigma (nats) the distribution is flat or one-hot and sigma is float64 rounding noise, not a spread.
SIGMA_FLOOR = 1e-8


def z_scores(s: TokenScores, *, normalise: bool = True) -> np.ndarray:
    """``(lp_t - mu_t) / sigma_t``; a position with sigma ~ 0 (a uniform or one-hot distribution) gets 0."""
    centred = s.logprobs - s.mu
    if not normalise:
        return centred
    return np.divide(centred, s.sigma, out=np.zeros_like(centred), where=s.sigma > SIGMA_FLOOR)


@dataclass
class MinKPlusPlusParams(Params):
    k: float = param(0.2, "fraction of the scored tokens averaged (the lowest z)", gt=0, le=1)
    rounding: str = param("ceil", "how k·n becomes a token count: ceil (canonical) or floor (MIMIR's int(k·n))",
                          choices=ROUNDING)
    normalise: bool = param(True, "divide by sigma_t (false: SOFT's code, lp - mu only)")


class MinKPlusPlusAttack(Attack):
    """``normalise=False`` drops the division by sigma (SOFT's code), a named variant."""

    name = "min-k++"
    summary = "mean of the lowest k% of (lp - mu) / sigma"
    ensemble = "extended"
    Params = MinKPlusPlusParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        p = self.params
        scores = np.array([lowest_k_mean(z_scores(s, normalise=p.normalise), p.k, rounding=p.rounding)
                           for s in ctx.target_scores()])
        note = None if p.normalise else "without normalisation by sigma (SOFT's code)"
        return AttackOutput(scores=scores, raw=-scores, raw_name="-mean lowest-k z", note=note)
