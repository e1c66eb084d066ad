"""Held-out perplexity through the scoring engine (cached passes: free for texts already scored)."""

from __future__ import annotations

import math

from tuneguard.errors import TuneguardError


def perplexity(engine, texts: list[str]) -> float:
    """Token-weighted perplexity ``exp(Σ NLL / Σ tokens)`` over every scored token of ``texts``."""
    scores = engine.score(texts, desc="perplexity")
    tokens = sum(s.n for s in scores)
    if tokens == 0:
        raise TuneguardError("the held-out texts have no token to score")
    return math.exp(-sum(float(s.logprobs.sum()) for s in scores) / tokens)
