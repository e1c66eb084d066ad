"""CON-ReCall (Wang et al. 2024): contrast the shift under non-member and member prefixes."""

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.attacks.recall import conditional_ll, shots_note


class ConRecallAttack(Attack):
    """``(LL(x | P_non) - gamma · LL(x | P_mem)) / LL(x)``; member shots are known members removed from evaluation."""

    name = "con-recall"
    needs = frozenset({"nonmember_shots", "member_shots"})
    defaults = {"gamma": 1.0}
    summary = "(LL(x|P_non) - γ LL(x|P_mem)) / LL(x)"

    def run(self, ctx: AttackContext) -> AttackOutput:
        non, d1 = conditional_ll(ctx.target, ctx.texts, ctx.nonmember_shots, desc="recall prefix")
        mem, d2 = conditional_ll(ctx.target, ctx.texts, ctx.member_shots, desc="member prefix")
        scores = (non - self.params["gamma"] * mem) / ctx.target_ll()
        nan = int(np.isnan(scores).sum())
        return AttackOutput(scores=scores, raw=scores, raw_name="(LL(x|P_non) - γ LL(x|P_mem)) / LL(x)",
                            note=shots_note(len(ctx.texts), max(d1, d2), nan))


ATTACK = ConRecallAttack
