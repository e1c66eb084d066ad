"""What the scoring engine gives back for one text: its scored tokens' log-probs, Min-K%++ moments and top-1 tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenScores:
    """Per scored token of one text: the token id, its log-prob, the moments of the model's distribution, and the
model's own top-1 token at that position with its log-prob."""

    token_ids: np.ndarray  # int64
    logprobs: np.ndarray  # float64
    mu: np.ndarray  # float64
    sigma: np.ndarray  # float64
    argmax: np.ndarray  # int64: argmax_v p_t(v), the token the model would have predicted
    max_logprob: np.ndarray  # float64: max_v log p_t(v)
    truncated: bool = False

    @classmethod
    def empty(cls, truncated: bool = False) -> TokenScores:
        """No scored token (a text empty after tokenisation)."""
        ids = np.zeros(0, dtype=np.int64)
        return cls(ids, np.zeros(0), np.zeros(0), np.zeros(0), ids.copy(), np.zeros(0), truncated)

    @property
    def n(self) -> int:
        """Number of scored tokens."""
        return len(self.logprobs)

    @property
    def ll(self) -> float:
        """``LL(x)``: the mean log-prob of the scored tokens (NaN when there are none)."""
        return float(self.logprobs.mean()) if self.n else float("nan")
