"""``wordnet``: replace a fraction of content words by WordNet synonyms (offline thesaurus, no model).

Deviation from the masked-LM fillers: the neighbour keeps the text's structure word for word and changes meaning
little, but a synonym chosen without word-sense disambiguation is often the wrong sense.
"""

from __future__ import annotations

import functools
import re
from typing import Sequence

import numpy as np

from tuneguard import wordnet
from tuneguard.errors import TuneguardError
from tuneguard.neighbours.base import NeighbourGenerator
from tuneguard.neighbours.masking import split_words

# Function words WordNet still lists under odd senses ("a" angstrom, "in" inch, "is" be): never replaced.
STOPWORDS = frozenset("""
a an and are as at be been being but by can could did do does for from had has have he her hers him his how i if in
into is it its may me might more most must my no nor not of on or our ours she should so such than that the their them
then there these they this those to too up us was we were what when where which while who whom why will with would you
your also only very each other some any all both few many much own same just over under again further once here out off
""".split())
_CORE = re.compile(r"^(\W*)([A-Za-z][A-Za-z-]*[A-Za-z])(\W*)$")


class WordNetNeighbours(NeighbourGenerator):
    """Swap ``round(pct · words)`` randomly chosen content words for a random single-word WordNet synonym.

    A content word is alphabetic (punctuation around it is kept), at least 3 letters, not a stopword, and has a
    synonym. The replacement copies the original's capitalisation. Texts with no content word give no neighbour.
    """

    name = "wordnet"

    def __init__(self, *, pct: float = 0.15, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 < pct <= 1:
            raise TuneguardError(f"wordnet neighbours need 0 < pct <= 1 (got {pct})")
        if not wordnet.wordnet_available():
            raise TuneguardError(wordnet.INSTALL_HINT)
        self.pct = pct

    def settings(self) -> dict:
        return {"pct": self.pct}

    def perturb_batch(self, texts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        return [self._perturb(text, np.random.default_rng(seed)) for text, seed in zip(texts, seeds, strict=True)]

    def _perturb(self, text: str, rng: np.random.Generator) -> str | None:
        words = split_words(text)
        candidates = [k for k, w in enumerate(words) if _synonyms_of(w)]
        n = min(len(candidates), max(1, round(self.pct * len(words))))
        if not candidates:
            return None
        for k in rng.choice(candidates, size=n, replace=False):
            lead, core, trail = _CORE.match(words[k]).groups()
            options = _synonyms_of(words[k])
            words[k] = lead + _same_case(options[rng.integers(len(options))], core) + trail
        return " ".join(words)


@functools.lru_cache(maxsize=65536)
def _synonyms_of(word: str) -> tuple[str, ...]:
    match = _CORE.match(word)
    if not match or len(match.group(2)) < 3 or match.group(2).lower() in STOPWORDS:
        return ()
    return tuple(wordnet.synonyms(match.group(2)))


def _same_case(replacement: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[0].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement.lower() if original.islower() else replacement
