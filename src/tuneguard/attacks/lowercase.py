"""Lowercase (Carlini et al. 2021): NLL of the lower-cased text over NLL of the text (one extra pass)."""

from tuneguard.attacks.base import TARGET_TEXTS, Attack, AttackContext, AttackOutput, Pass


class LowercaseAttack(Attack):
    name = "lowercase"
    summary = "NLL(lower(x)) / NLL(x)"
    ensemble = "soft"

    def run(self, ctx: AttackContext) -> AttackOutput:
        nll = -ctx.target_ll()
        nll_lower = -ctx.target.ll([t.lower() for t in ctx.texts], desc="lower-cased")
        ratio = nll_lower / nll
        return AttackOutput(scores=ratio, raw=ratio, raw_name="NLL(lower) / NLL", extra={"nll_lower": nll_lower})

    def passes(self, n_texts: int) -> dict[Pass, int]:
        # At most: a text already in lower case is its own cached pass.
        return {TARGET_TEXTS: n_texts, Pass("target", "lower-cased texts"): n_texts}
