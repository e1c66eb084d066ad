"""Hard-token comparison (after Jawad, Xiao, Wu 2026, arXiv 2601.20885; no official code): target against
reference on the positions the target finds hardest.

tuneguard's own definition, documented as such: H = the ⌈k·n⌉ scored positions with the lowest target log-prob of
the true token ``lpT_j`` (``by="confidence"``: the lowest max log-prob ``max_v log pT_j(v)``, the target's own
confidence whatever the true token); the score is the mean of ``d_j = lpT_j - lpR_j`` over H
(``statistic="fraction"``: the share of H with ``d_j > 0``). Ties in the ranking keep the earlier position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput, token_count
from tuneguard.params import Params, param

if TYPE_CHECKING:  # the scoring engine imports torch: not needed to import the attack
    from tuneguard.scoring import TokenScores

BY = ("logprob", "confidence")
STATISTICS = ("mean", "fraction")


def hard_positions(values: np.ndarray, k: float) -> np.ndarray:
    """Indices of the ⌈k·n⌉ lowest ``values`` (a stable sort: among ties, the earlier positions)."""
    return np.argsort(values, kind="stable")[:token_count(k, len(values))]


def ht_score(target: TokenScores, reference: TokenScores, k: float, by: str = "logprob") -> tuple[float, float]:
    """(mean d over H, share of H with d > 0) for one text; NaN for a text with no scored token."""
    if target.n == 0:
        return float("nan"), float("nan")
    d = target.logprobs - reference.logprobs
    hard = d[hard_positions(target.logprobs if by == "logprob" else target.max_logprob, k)]
    return float(hard.mean()), float(np.mean(hard > 0))


@dataclass
class HTMIAParams(Params):
    k: float = param(0.2, "fraction of the scored positions that are hard (tuneguard's sweep: 0.1, 0.2, 0.3; the "
                          "paper publishes no code)", gt=0, le=1)
    by: str = param("logprob", "hard = lowest target log-prob of the true token (logprob) or lowest target max "
                               "log-prob (confidence)", choices=BY)
    statistic: str = param("mean", "mean: mean of lpT - lpR over the hard positions; fraction: share of them where "
                                   "the target is above the reference", choices=STATISTICS)


class HTMIAAttack(Attack):
    """Target and reference must score the same token ids (refused otherwise). The extra holds the other
    statistic's values, so both are reported from one run."""

    name = "ht-mia"
    summary = "mean of lpT - lpR over the target's hardest k% of tokens (tuneguard's definition)"
    needs = frozenset({"reference", "same_tokens"})
    ensemble = "extended"
    Params = HTMIAParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        p = self.params
        values = np.array([ht_score(t, r, p.k, p.by) for t, r in ctx.token_pairs(self.label())]).reshape(-1, 2)
        mean, fraction = values[:, 0], values[:, 1]
        if p.statistic == "mean":
            return AttackOutput(scores=mean, raw=mean, raw_name="mean of lpT - lpR over the hard positions",
                                extra={"fraction_positive": fraction})
        return AttackOutput(scores=fraction, raw=fraction, raw_name="share of hard positions with lpT > lpR",
                            extra={"mean_difference": mean})
