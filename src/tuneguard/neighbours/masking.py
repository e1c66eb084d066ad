"""DetectGPT-style span masking: which words of a text a neighbour generator rewrites.

Words are the pieces of ``text.split(" ")`` (DetectGPT's convention), so newlines and punctuation stay attached to
their words and every unmasked part of a neighbour is byte-identical to the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuneguard.neighbours.base import NeighbourGenerator, NeighbourParams
from tuneguard.params import param


def split_words(text: str) -> list[str]:
    """The text's words as the maskers count them (``text.split(" ")``; ``" ".join`` restores the text)."""
    return text.split(" ")


def n_spans(n_words: int, *, pct: float, span_length: int, buffer_size: int) -> int:
    """How many spans DetectGPT masks: ``pct · n / (span + 2 · buffer)``, at least one when the text has room.

    With the official SPV-MIA settings (pct 0.3, span 2, buffer 1) that is 0.075 · n spans of 2 words, i.e. about 15%
    of the words.
    """
    if n_words < span_length:
        return 0
    return max(1, int(pct * n_words / (span_length + 2 * buffer_size)))


def mask_spans(n_words: int, rng: np.random.Generator, *, pct: float = 0.3, span_length: int = 2,
               buffer_size: int = 1) -> list[tuple[int, int]]:
    """Pick non-overlapping word spans ``[start, end)`` to rewrite, sorted, each kept ``buffer_size`` words apart.

    DetectGPT retries random starts until enough spans fit, with no cap; here the starts are drawn without replacement
    from the positions still free, so the loop ends after at most ``n_words`` draws even when fewer spans fit.
    """
    wanted = n_spans(n_words, pct=pct, span_length=span_length, buffer_size=buffer_size)
    taken = np.zeros(n_words, dtype=bool)
    spans: list[tuple[int, int]] = []
    for start in rng.permutation(n_words - span_length + 1) if wanted else []:
        if len(spans) == wanted:
            break
        lo, hi = max(0, start - buffer_size), min(n_words, start + span_length + buffer_size)
        if not taken[lo:hi].any():
            taken[start:start + span_length] = True
            spans.append((int(start), int(start + span_length)))
    return sorted(spans)


def apply_fills(words: list[str], spans: list[tuple[int, int]], fills: list[str]) -> str:
    """Replace each span by its fill (a string of any number of words) and join with single spaces."""
    out: list[str] = []
    cursor = 0
    for (start, end), fill in zip(spans, fills, strict=True):
        out.extend(words[cursor:start])
        out.append(fill.strip())
        cursor = end
    out.extend(words[cursor:])
    return " ".join(out)


@dataclass
class MaskingParams(NeighbourParams):
    """DetectGPT's masking, shared by every span generator (defaults: the official SPV-MIA settings)."""

    pct: float = param(0.3, "masking budget: pct·n / (span_length + 2·buffer_size) spans", gt=0, le=1)
    span_length: int = param(2, "words per masked span", ge=1)
    buffer_size: int = param(1, "unmasked words kept between spans", ge=0)


class SpanMaskingGenerator(NeighbourGenerator):
    """A generator that masks DetectGPT-style spans and fills each one (``t5``, ``lm-fill``, ``random-fill``).

    Defaults are the official SPV-MIA / DetectGPT settings: budget ``pct`` 0.3, spans of 2 words, 1 buffer word,
    which rewrites about 15% of the words.
    """

    Params = MaskingParams

    def masking(self) -> dict:
        """The masking settings (part of every span generator's cache key)."""
        p = self.params
        return {"pct": p.pct, "span_length": p.span_length, "buffer_size": p.buffer_size}

    def mask(self, text: str, seed: int) -> tuple[list[str], list[tuple[int, int]], np.random.Generator]:
        """The text's words, the spans to fill, and the item's random stream (for the fill) after masking."""
        words = split_words(text)
        rng = np.random.default_rng(seed)
        p = self.params
        return words, mask_spans(len(words), rng, pct=p.pct, span_length=p.span_length,
                                 buffer_size=p.buffer_size), rng
