"""EZ-MIA (Ilić, Stanojević, Cvejoski 2026, arXiv 2601.12104): the target's error positions against its base.

Where the fine-tuned target still gets the top-1 token wrong, a member's true token was nevertheless pushed up
relative to the reference. With ``d_j = lpT_j - lpR_j`` and ``E = {j : lpT_j < max_v log pT_j(v)}`` (the target's
errors: a position where the true token ties with the top one counts as correct, so E does not depend on how an
argmax breaks ties, which bf16 logits make common), ``P = Σ_{j∈E, d_j>0} d_j``, ``N = Σ_{j∈E, d_j<0} -d_j``, the
score is ``P / N``. Edge cases: ``edge="code"`` (default, the authors' code, JetBrains-Research/ez-mia @ aa0b6b7,
which also drops the first scored position) scores |E| < 2 or N = 0 as 0, the least member-like; ``edge="paper"``
(the paper's appendix) keeps every position and scores only |E| = 0 or N = 0 as the strongest member evidence: one
error position with d < 0 is an ordinary score of 0. The scores are heavy-tailed: fine for a ROC, never to be
averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.params import Params, param

if TYPE_CHECKING:  # the scoring engine imports torch: not needed to import the attack
    from tuneguard.scoring import TokenScores

EDGE = ("code", "paper")
# "Strongest member evidence" as a finite score: the metrics leave non-finite scores out.
EDGE_HIGH = float(np.finfo(np.float64).max)


def ez_score(d: np.ndarray, wrong: np.ndarray, edge: str = "code") -> tuple[float, bool]:
    """(P / N over the positions ``wrong`` marks, whether the text is an edge case) for differences ``d``."""
    if edge == "code":
        d, wrong = d[1:], wrong[1:]
    errors = d[wrong]
    negative = -errors[errors < 0].sum()
    if edge == "code" and (len(errors) < 2 or negative == 0):
        return 0.0, True
    if edge == "paper" and negative == 0:  # no error position at all, or none where the target fell below its base
        return EDGE_HIGH, True
    return float(errors[errors > 0].sum() / negative), False


@dataclass
class EZMIAParams(Params):
    edge: str = param("code", "edge cases: code: fewer than 2 error positions or no negative difference score 0, "
                              "the first scored position dropped (the authors' code); paper: no error position or no "
                              "negative difference is the strongest member evidence, every position kept (the "
                              "paper's appendix)", choices=EDGE)


class EZMIAAttack(Attack):
    """Target and reference must score the same token ids (refused otherwise); the reference defaults to the base
    model the target was fine-tuned from, and any model with the target's tokenizer may be named instead."""

    name = "ez-mia"
    summary = "P / N of the target-vs-reference log-prob differences where the target's top-1 is wrong"
    needs = frozenset({"reference", "same_tokens"})
    ensemble = "extended"
    Params = EZMIAParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        edge = self.params.edge
        results = [self.score(t, r, edge) for t, r in ctx.token_pairs(self.label())]
        scores = np.array([s for s, _ in results])
        n_edge = sum(e for _, e in results)
        if edge == "code":
            what = "fewer than 2 error positions, or no negative difference), scored 0 (the authors' code)"
        else:
            what = "no error position, or no negative difference), scored as the strongest member evidence"
        note = f"{n_edge} of {len(scores)} texts are edge cases ({what}"
        return AttackOutput(scores=scores, raw=scores, raw_name="P / N over the target's error positions",
                            note=note, extra={"edge_cases": n_edge})

    @staticmethod
    def score(target: TokenScores, reference: TokenScores, edge: str = "code") -> tuple[float, bool]:
        """One text's (score, edge case?) from its target and reference token scores."""
        return ez_score(target.logprobs - reference.logprobs, target.logprobs < target.max_logprob, edge)

    @classmethod
    def ensemble_columns(cls, ctx: AttackContext, out: AttackOutput) -> dict[str, np.ndarray]:
        # log(1 + P/N): the ratio is heavy-tailed, and a linear model on it would be driven by a few texts (the sign
        # kept, so the column is monotone in the score whatever it holds).
        return {cls.name: np.sign(out.scores) * np.log1p(np.abs(out.scores))}
