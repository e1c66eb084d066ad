"""``wordnet``: the cheapest paraphraser, offline and model-free: swap content words for WordNet synonyms.

It keeps structure and punctuation exactly, so it changes less than an LM rewrite, and without word-sense
disambiguation a synonym is sometimes of the wrong sense; the quality gate catches the worst cases.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tuneguard import wordnet
from tuneguard.errors import TuneguardError
from tuneguard.paraphrase.base import Paraphraser, ParaphraserParams
from tuneguard.params import param

_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")
# Numbers are facts a paraphrase must keep ("two weeks" must not become "deuce weeks").
NUMBER_WORDS = frozenset("""
one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen
nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million billion trillion first second
third fourth fifth sixth seventh eighth ninth tenth half twice dozen zero
""".split())


@dataclass
class WordNetParams(ParaphraserParams):
    batch_size: int = param(64, "texts rewritten per batch", ge=1)
    fraction: float = param(1.0, "probability that a content word is swapped", gt=0, le=1)
    top_k: int = param(3, "draw among the word's k most frequent synonyms", ge=1)
    senses: int | None = param(2, "use the word's first senses only (WordNet's most frequent; null: all)", ge=1)


class WordNetParaphraser(Paraphraser):
    """Replace each content word (with probability ``fraction``) by one of its ``top_k`` most frequent synonyms
    drawn from its first ``senses`` senses (WordNet's most frequent; fewer senses, fewer wrong-sense swaps).

    A content word has at least 3 letters, is not a stopword or a number word and has a single-word synonym. Base
    forms are swapped directly; plural nouns keep their ``-s``/``-es``; other inflected forms (``-ed``, ``-ing``) keep
    only senses in which they are words of their own, since WordNet cannot inflect the replacement. Capitalisation is
    copied from the original word.
    """

    name = "wordnet"
    summary = "content words swapped for WordNet synonyms (offline, no model: the cheapest fallback)"
    Params = WordNetParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not wordnet.wordnet_available():
            raise TuneguardError(wordnet.INSTALL_HINT)

    def settings(self) -> dict:
        p = self.params
        return {"fraction": p.fraction, "top_k": p.top_k, "senses": p.senses}

    def prompt_template(self, text: str) -> str:
        return "{text}"  # no instruction: the rewrite does not depend on one

    def rewrite_batch(self, texts: Sequence[str], prompts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        return [self._rewrite(text, np.random.default_rng(seed)) for text, seed in zip(texts, seeds, strict=True)]

    def _rewrite(self, text: str, rng: np.random.Generator) -> str | None:
        changed = False

        def swap(match: re.Match) -> str:
            nonlocal changed
            word = match.group(0)
            options = replacements(word.lower(), self.params.senses)[:self.params.top_k]
            # Two draws for every word, replaced or not, so one word's options never shift the others' draws.
            keep, pick = rng.random() >= self.params.fraction, rng.integers(1 << 30)
            if not options or keep:
                return word
            changed = True
            return wordnet.same_case(options[pick % len(options)], word)

        out = _WORD.sub(swap, text)
        return out if changed else None


@functools.lru_cache(maxsize=65536)
def replacements(word: str, senses: int | None = None) -> tuple[str, ...]:
    """Synonyms of a lowercase word in the word's own form (plural nouns stay plural), most frequent first, from
    its first ``senses`` senses per part of speech (all when None).

    Only the word's most frequent part of speech counts (all of them when WordNet has no count), and only where
    ``word`` is a base form or a regular plural noun: "treated" never gets the base forms of the verb "treat".
    """
    if len(word) < 3 or word in wordnet.STOPWORDS or word in NUMBER_WORDS:
        return ()
    reader = wordnet.wordnet_reader()
    counts = wordnet.pos_counts(word)
    # Without a tagger, take the word's most frequent part of speech ("long" as an adjective, not the verb "hanker").
    dominant = max("nvar", key=lambda p: counts[p]) if any(counts.values()) else None
    found: dict[str, None] = {}
    for pos in [dominant] if dominant else "nvar":
        base = reader.morphy(word, pos)
        if base == word:
            found.update(dict.fromkeys(wordnet.synonyms(word, pos=pos, senses=senses)))
        elif base and pos == "n" and word in (base + "s", base + "es"):
            suffix = word[len(base):]
            found.update(dict.fromkeys(s + suffix for s in wordnet.synonyms(base, pos="n", senses=senses)))
    return tuple(found)

