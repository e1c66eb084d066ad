"""``random-fill``: masked spans replaced by words drawn from a corpus (MIMIR's ``random_fills``); no model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tuneguard.cache import key_hash
from tuneguard.errors import TuneguardError
from tuneguard.neighbours.base import NeighbourSet
from tuneguard.neighbours.masking import MaskingParams, SpanMaskingGenerator, apply_fills
from tuneguard.params import param


@dataclass
class RandomFillParams(MaskingParams):
    corpus: list[str] | None = param(None, "texts whose words fill the spans (default: the texts perturbed)")


class RandomFillNeighbours(SpanMaskingGenerator):
    """Fill each masked span with ``span_length`` words drawn uniformly from a fill dictionary.

    The dictionary is the sorted set of whitespace-separated words of ``corpus``, or, when no corpus is given, of the
    texts being perturbed (what MIMIR does). The cheapest baseline: neighbours are rarely fluent, so the neighbourhood
    score mostly measures how the model reacts to noise.
    """

    name = "random-fill"
    summary = "masked spans filled with words drawn from a corpus (no model)"
    Params = RandomFillParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        corpus = self.params.corpus
        self.words: list[str] = _dictionary(corpus) if corpus is not None else []

    def settings(self) -> dict:
        return {**self.masking(), "dictionary": key_hash(self.words)}

    def generate(self, texts: Sequence[str], n: int = 10) -> NeighbourSet:
        if not self.words:
            self.words = _dictionary(texts)
        return super().generate(texts, n)

    def perturb_batch(self, texts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        out: list[str | None] = []
        for text, seed in zip(texts, seeds, strict=True):
            words, spans, rng = self.mask(text, seed)
            if not spans:
                out.append(None)
                continue
            fills = [" ".join(self.words[k] for k in rng.integers(len(self.words), size=self.params.span_length))
                     for _ in spans]
            out.append(apply_fills(words, spans, fills))
        return out


def _dictionary(texts: Sequence[str]) -> list[str]:
    words = sorted({w for t in texts for w in t.split()})
    if not words:
        raise TuneguardError("random-fill needs a corpus with at least one word to draw fills from")
    return words
