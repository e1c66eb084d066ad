"""LOSS (Yeom et al. 2018): the target's mean token log-likelihood."""

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput


class LossAttack(Attack):
    name = "loss"
    summary = "LL(x): mean token log-likelihood under the target"
    ensemble = "soft"

    def run(self, ctx: AttackContext) -> AttackOutput:
        ll = ctx.target_ll()
        return AttackOutput(scores=ll, raw=-ll, raw_name="NLL")
