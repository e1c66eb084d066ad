"""Reference-model attack (LiRA-Base / "ratio"): the target's likelihood against a reference model's."""

from dataclasses import dataclass

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.params import Params, param


@dataclass
class RatioParams(Params):
    form: str = param("difference", "difference: LL_target - LL_ref; ratio: -NLL_target / NLL_ref",
                      choices=("difference", "ratio"))


class RatioAttack(Attack):
    """``form="difference"``: LL_target - LL_ref (default). ``form="ratio"``: -NLL_target / NLL_ref. Each model scores
    with its own tokenizer; the default reference is the base model the target was fine-tuned from."""

    name = "ratio"
    summary = "LL_target(x) - LL_ref(x)"
    needs = frozenset({"reference"})
    ensemble = "soft"
    Params = RatioParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        ll_t = ctx.target_ll()
        ll_r = ctx.reference.ll(ctx.texts, desc="reference")
        if self.params.form == "difference":
            return AttackOutput(scores=ll_t - ll_r, raw=ll_r - ll_t, raw_name="NLL_target - NLL_ref",
                                extra={"ll_reference": ll_r})
        scores = -(-ll_t) / (-ll_r)
        return AttackOutput(scores=scores, raw=-scores, raw_name="NLL_target / NLL_ref", extra={"ll_reference": ll_r})
