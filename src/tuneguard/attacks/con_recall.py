"""CON-ReCall (Wang et al. 2024): contrast the shift under non-member and member prefixes."""

from dataclasses import dataclass

from tuneguard.attacks.base import TARGET_TEXTS, Attack, AttackContext, AttackOutput, Pass
from tuneguard.attacks.recall import (FIRST_TOKEN, FIRST_TOKEN_HELP, MEMBER_PREFIXED, NONMEMBER_PREFIXED,
                                      conditional_ll, shots_note)
from tuneguard.params import Params, param


@dataclass
class ConRecallParams(Params):
    gamma: float = param(1.0, "weight of the member-prefix term")
    first_token: str = param("match", FIRST_TOKEN_HELP, choices=FIRST_TOKEN)


class ConRecallAttack(Attack):
    """``(LL(x | P_non) - gamma · LL(x | P_mem)) / LL(x)``; member shots are known members removed from evaluation."""

    name = "con-recall"
    summary = "(LL(x|P_non) - γ LL(x|P_mem)) / LL(x)"
    needs = frozenset({"nonmember_shots", "member_shots"})
    ensemble = "extended"
    Params = ConRecallParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        first = self.params.first_token
        non, kept_non, unfit_non = conditional_ll(ctx.target, ctx.texts, ctx.nonmember_shots, desc="recall prefix",
                                                  first_token=first)
        mem, kept_mem, unfit_mem = conditional_ll(ctx.target, ctx.texts, ctx.member_shots, desc="member prefix",
                                                  first_token=first)
        scores = (non - self.params.gamma * mem) / ctx.target_ll()
        notes = [shots_note(len(ctx.nonmember_shots), kept_non, len(ctx.texts), unfit_non),
                 shots_note(len(ctx.member_shots), kept_mem, len(ctx.texts), unfit_mem)]
        note = "; ".join(f"{kind} shots: {n}" for kind, n in zip(("non-member", "member"), notes) if n) or None
        return AttackOutput(scores=scores, raw=scores, raw_name="(LL(x|P_non) - γ LL(x|P_mem)) / LL(x)", note=note)

    def passes(self, n_texts: int) -> dict[Pass, int]:
        return {TARGET_TEXTS: n_texts, NONMEMBER_PREFIXED: n_texts, MEMBER_PREFIXED: n_texts}
