"""Texts the attacker brings (SPV-MIA's prompt pool and reference data, DC-PDD's corpus) checked against the
evaluated texts: a member or non-member inside the attacker's own data inflates the AUC.

Exact overlap (the same text, leading and trailing whitespace aside) is refused. Near duplicates give a warning:
texts equal once lower-cased with whitespace collapsed, or sharing at least half of the shorter text's word
5-grams (shingles) with an evaluated text.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Sequence

from tuneguard.errors import TuneguardError

SHINGLE = 5  # words per shingle
NEAR = 0.5  # share of the shorter text's shingles found in the other text


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def check_attacker_data(source: str, texts: Sequence[str], members: Sequence[str],
                        nonmembers: Sequence[str]) -> str | None:
    """Refuse attacker data holding an evaluated text; return a warning naming near duplicates, else None.

    ``source`` names the data in the messages, e.g. ``"the spv-mia prompt pool (pool.jsonl)"``.
    """
    labelled = [(t, "member") for t in members] + [(t, "non-member") for t in nonmembers]
    exact = {t.strip(): kind for t, kind in labelled}
    hits = Counter(exact[t.strip()] for t in texts if t.strip() in exact)
    if hits:
        raise TuneguardError(f"{source}: {sum(hits.values())} of its {len(texts)} texts are evaluated texts "
                             f"({_counts(hits)}); attacker data must be disjoint from the members and non-members: "
                             "remove them")
    normal = {_normalised(t): kind for t, kind in labelled}
    index: dict[tuple[str, ...], set[int]] = defaultdict(set)
    shingles = [_shingles(t) for t, _ in labelled]
    for i, grams in enumerate(shingles):
        for gram in grams:
            index[gram].add(i)
    near: Counter[str] = Counter()
    for text in texts:
        kind = normal.get(_normalised(text)) or _near_shingles(_shingles(text), index, shingles, labelled)
        if kind:
            near[kind] += 1
    if not near:
        return None
    return (f"{source}: {sum(near.values())} of its {len(texts)} texts are near duplicates of evaluated texts "
            f"({_counts(near)}: same text up to case and spacing, or >= {NEAR:.0%} shared word {SHINGLE}-grams); "
            "they may inflate the AUC")


def _near_shingles(grams: set, index: dict, shingles: list[set], labelled: list[tuple[str, str]]) -> str | None:
    """The kind of the first evaluated text sharing >= NEAR of the shorter one's shingles with ``grams``."""
    shared: Counter[int] = Counter(i for gram in grams for i in index.get(gram, ()))
    for i, n in shared.most_common():
        if n >= NEAR * min(len(grams), len(shingles[i])):
            return labelled[i][1]
    return None


def _counts(counter: Counter) -> str:
    return ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(counter.items()))
