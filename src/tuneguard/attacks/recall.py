"""ReCall (Xie et al. 2024): how much a non-member prefix changes the text's log-likelihood."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tuneguard.attacks.base import TARGET_TEXTS, Attack, AttackContext, AttackOutput, Pass
from tuneguard.params import Params, param

if TYPE_CHECKING:  # the scoring engine imports torch: not needed to import the attack
    from tuneguard.scoring import ScoringEngine

SEPARATOR = "\n\n"
FIRST_TOKEN = ("match", "keep")  # over the positions LL(x) scores (canonical) / also x's first token
# The pass of every evaluated text behind the non-member / member shots (ReCall and CON-ReCall read the same
# non-member one). The prefix itself is read once and its key/value cache continued by every text: a model call, not
# a text forwarded.
NONMEMBER_PREFIXED = Pass("target", "texts behind the non-member shots")
MEMBER_PREFIXED = Pass("target", "texts behind the member shots")
FIRST_TOKEN_HELP = ("match: LL(x|P) over the positions LL(x) scores (without a BOS, x's first token is left out); "
                    "keep: x's first token too (tuneguard before issue 9)")


def conditional_ll(engine: ScoringEngine, texts: list[str], shots: list[str], *, desc: str,
                   first_token: str = "match") -> tuple[np.ndarray, int, int]:
    """``LL(x | P)`` with P the concatenated shots, only x's tokens scored.

    Every text gets the same prefix: the most recent whole shots that fit the model's context beside every text
    that can hold one; a text beside which not even one shot fits gets NaN. ``first_token="match"`` (canonical)
    averages over the positions ``LL(x)`` scores: without a BOS token ``LL(x)`` cannot score x's first token, so
    it is left out of ``LL(x | P)`` too; ``"keep"`` also averages it (predicted from the prefix's last token).
    Returns the values, how many shots the prefix holds, and how many texts could not fit one.
    """
    sizes = [len(engine.tokenize(s + SEPARATOR)) for s in shots]
    rooms = [engine.prefix_room(text) for text in texts]
    fits = [_shots_that_fit(sizes, room) for room in rooms]
    valid = np.array([n > 0 for n in fits])
    kept = min((n for n in fits if n > 0), default=0)
    prefix = "".join(s + SEPARATOR for s in shots[len(shots) - kept:])
    conditioned = engine.score(texts, [prefix] * len(texts), desc=desc)
    if first_token == "match":
        plain = engine.score(texts, desc="target")
        ll = np.array([float(c.logprobs[c.n - p.n:].mean()) if p.n else float("nan")
                       for c, p in zip(conditioned, plain)])
    else:
        ll = np.array([c.ll for c in conditioned])
    ll[~valid] = np.nan
    return ll, kept, int((~valid).sum())


def _shots_that_fit(sizes: list[int], room: int) -> int:
    """How many of the most recent whole shots fit in ``room`` tokens."""
    used = 0
    for n, size in enumerate(reversed(sizes)):
        used += size
        if used > room:
            return n
    return len(sizes)


def shots_note(n_shots: int, kept: int, n_texts: int, unfit: int) -> str | None:
    """A note for the report when not every shot fitted."""
    if kept == n_shots and not unfit:
        return None
    note = f"the {kept} most recent of {n_shots} shots fit beside every text (context too short)" \
        if kept < n_shots else ""
    if unfit:
        note += ("; " if note else "") + f"{unfit} of {n_texts} texts could not fit even one shot and are not scored"
    return note


@dataclass
class RecallParams(Params):
    first_token: str = param("match", FIRST_TOKEN_HELP, choices=FIRST_TOKEN)


class RecallAttack(Attack):
    """``first_token="keep"`` averages ``LL(x|P)`` over one more token than ``LL(x)`` when the tokenizer adds no BOS
    (tuneguard before issue 9), a named variant."""

    name = "recall"
    summary = "LL(x | non-member prefix) / LL(x)"
    needs = frozenset({"nonmember_shots"})
    ensemble = "soft"
    Params = RecallParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        cond, kept, unfit = conditional_ll(ctx.target, ctx.texts, ctx.nonmember_shots, desc="recall prefix",
                                           first_token=self.params.first_token)
        scores = cond / ctx.target_ll()
        return AttackOutput(scores=scores, raw=scores, raw_name="LL(x|P) / LL(x)",
                            note=shots_note(len(ctx.nonmember_shots), kept, len(ctx.texts), unfit),
                            extra={"n_shots": kept})

    def passes(self, n_texts: int) -> dict[Pass, int]:
        return {TARGET_TEXTS: n_texts, NONMEMBER_PREFIXED: n_texts}
