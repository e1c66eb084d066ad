"""``wordnet``: replace a fraction of content words by WordNet synonyms (offline thesaurus, no model).

Deviation from the masked-LM fillers: the neighbour keeps the text's structure word for word and changes meaning
little, but a synonym chosen without word-sense disambiguation is often the wrong sense.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tuneguard import wordnet
from tuneguard.errors import TuneguardError
from tuneguard.neighbours.base import NeighbourGenerator, NeighbourParams
from tuneguard.neighbours.masking import split_words
from tuneguard.params import param

_CORE = re.compile(r"^(\W*)([A-Za-z][A-Za-z-]*[A-Za-z])(\W*)$")


@dataclass
class WordNetNeighbourParams(NeighbourParams):
    pct: float = param(0.15, "fraction of the words swapped for a synonym", gt=0, le=1)


class WordNetNeighbours(NeighbourGenerator):
    """Swap ``round(pct · words)`` randomly chosen content words for a random single-word WordNet synonym.

    A content word is alphabetic (punctuation around it is kept), at least 3 letters, not a stopword, and has a
    synonym. The replacement copies the original's capitalisation. Texts with no content word give no neighbour.
    """

    name = "wordnet"
    summary = "a fraction of the content words swapped for WordNet synonyms (no model)"
    Params = WordNetNeighbourParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not wordnet.wordnet_available():
            raise TuneguardError(wordnet.INSTALL_HINT)

    def settings(self) -> dict:
        return {"pct": self.params.pct}

    def perturb_batch(self, texts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        return [self._perturb(text, np.random.default_rng(seed)) for text, seed in zip(texts, seeds, strict=True)]

    def _perturb(self, text: str, rng: np.random.Generator) -> str | None:
        words = split_words(text)
        candidates = [k for k, w in enumerate(words) if _synonyms_of(w)]
        n = min(len(candidates), max(1, round(self.params.pct * len(words))))
        if not candidates:
            return None
        for k in rng.choice(candidates, size=n, replace=False):
            lead, core, trail = _CORE.match(words[k]).groups()
            options = _synonyms_of(words[k])
            words[k] = lead + wordnet.same_case(options[rng.integers(len(options))], core) + trail
        return " ".join(words)


@functools.lru_cache(maxsize=65536)
def _synonyms_of(word: str) -> tuple[str, ...]:
    match = _CORE.match(word)
    if not match or len(match.group(2)) < 3 or match.group(2).lower() in wordnet.STOPWORDS:
        return ()
    return tuple(wordnet.synonyms(match.group(2)))

