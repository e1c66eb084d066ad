"""Member / non-member splits: seeded random, or given by the user; never overlapping."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tuneguard.errors import TuneguardError


@dataclass
class Split:
    """Texts the target was trained on (members) and texts it was not (non-members)."""

    members: list[str]
    nonmembers: list[str]

    def labelled(self) -> tuple[list[str], list[int]]:
        """All texts with labels (member = 1), members first."""
        return self.members + self.nonmembers, [1] * len(self.members) + [0] * len(self.nonmembers)


def make_split(members: list[str], nonmembers: list[str]) -> Split:
    """A user-provided split, refused when a text (after stripping) is both a member and a non-member."""
    overlap = {t.strip() for t in members} & {t.strip() for t in nonmembers}
    if overlap:
        example = min(overlap)
        raise TuneguardError(f"{len(overlap)} texts are both members and non-members, e.g. {example[:60]!r}: "
                             "remove them from one side")
    return Split(list(members), list(nonmembers))


def split_members(texts: list[str], *, member_fraction: float = 0.5, seed: int = 0) -> Split:
    """Shuffle with ``seed`` and cut: the first ``round(member_fraction * n)`` texts become members."""
    if not 0 < member_fraction < 1:
        raise TuneguardError(f"member fraction must be between 0 and 1 (exclusive), got {member_fraction}")
    unique = list(dict.fromkeys(t.strip() for t in texts))
    if len(unique) < len(texts):
        raise TuneguardError(f"{len(texts) - len(unique)} duplicate texts would land on both sides of the split: "
                             "clean the data first (tuneguard.data.clean_texts)")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    cut = round(member_fraction * len(texts))
    if cut == 0 or cut == len(texts):
        raise TuneguardError(f"{len(texts)} texts are too few to split with member fraction {member_fraction}")
    return Split([texts[i] for i in order[:cut]], [texts[i] for i in order[cut:]])
