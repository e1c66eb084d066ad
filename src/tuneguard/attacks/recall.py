"""ReCall (Xie et al. 2024): how much a non-member prefix changes the text's log-likelihood."""

from __future__ import annotations

import numpy as np

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.scoring import ScoringEngine

SEPARATOR = "\n\n"


def conditional_ll(engine: ScoringEngine, texts: list[str], shots: list[str], *, desc: str) -> tuple[np.ndarray, int]:
    """``LL(x | P)`` with P the concatenated shots, only x's tokens scored.

    For each text, P keeps the most recent whole shots that fit the context beside it; a text beside which not even
    one shot fits gets NaN. Returns the values and how many texts had to drop at least one shot.
    """
    sizes = [len(engine.tokenize(s + SEPARATOR)) for s in shots]
    prefixes, dropped, valid = [], 0, []
    for text in texts:
        room = engine.prefix_room(text)
        kept, used = [], 0
        for shot, size in zip(reversed(shots), reversed(sizes)):
            if used + size > room:
                break
            kept.insert(0, shot)
            used += size
        dropped += len(kept) < len(shots)
        valid.append(bool(kept))
        prefixes.append("".join(s + SEPARATOR for s in kept))
    ll = np.array([s.ll for s in engine.score(texts, prefixes, desc=desc)])
    ll[~np.array(valid)] = np.nan
    return ll, dropped


def shots_note(n_texts: int, dropped: int, nan: int) -> str | None:
    """A note for the report when shots did not fit."""
    if not dropped:
        return None
    return (f"{dropped} of {n_texts} texts used fewer shots than asked (context too short)"
            + (f"; {nan} could not fit even one and are not scored" if nan else ""))


class RecallAttack(Attack):
    name = "recall"
    needs = frozenset({"nonmember_shots"})
    summary = "LL(x | non-member prefix) / LL(x)"

    def run(self, ctx: AttackContext) -> AttackOutput:
        cond, dropped = conditional_ll(ctx.target, ctx.texts, ctx.nonmember_shots, desc="recall prefix")
        scores = cond / ctx.target_ll()
        return AttackOutput(scores=scores, raw=scores, raw_name="LL(x|P) / LL(x)",
                            note=shots_note(len(ctx.texts), dropped, int(np.isnan(cond).sum())),
                            extra={"n_shots": len(ctx.nonmember_shots)})


ATTACK = RecallAttack
