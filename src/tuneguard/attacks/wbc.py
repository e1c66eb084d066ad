"""WBC, window-based comparison (Chen et al. 2026, arXiv 2601.02751): votes of windows of target-vs-reference
log-prob differences.

Per-token differences ``d_j = lpT_j - lpR_j`` are heavy-tailed, so one global mean is decided by a few tokens;
instead every window of ``w`` consecutive scored tokens votes. For each window size ``w`` (``e = min(w, n)`` on a
text of n scored tokens), ``S_i = Σ_{j=i}^{i+e-1} d_j`` for i = 0..n-e (stride 1) and ``T(w) = mean_i [S_i > 0]``
(strict: a tie votes non-member); the score is ``mean_w T(w)`` in [0, 1]. ``statistic`` = mean / median / min of
``S_i`` replaces the vote (named variants). Windows: the authors' code's list (default) or the paper's geometric
``round(2·20^((k-1)/9))``, k = 1..10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.errors import TuneguardError
from tuneguard.params import Params, param

CODE_WINDOWS = (2, 3, 4, 6, 9, 13, 18, 25, 32, 40)  # Stry233/WBC @ 8112878
PAPER_WINDOWS = tuple(round(2 * 20 ** ((k - 1) / 9)) for k in range(1, 11))  # (2, 3, 4, 5, 8, 11, 15, 21, 29, 40)
WINDOWS = {"code": CODE_WINDOWS, "paper": PAPER_WINDOWS}
STATISTICS: dict[str, Callable[[np.ndarray], float]] = {
    "sign": lambda s: float(np.mean(s > 0)), "mean": lambda s: float(np.mean(s)),
    "median": lambda s: float(np.median(s)), "min": lambda s: float(np.min(s))}
RAW_NAMES = {"sign": "mean over window sizes of the share of windows with S > 0",
             "mean": "mean over window sizes of mean_i S_i", "median": "mean over window sizes of median_i S_i",
             "min": "mean over window sizes of min_i S_i"}


def window_sums(d: np.ndarray, w: int) -> np.ndarray:
    """``S_i``: the sums of every ``min(w, n)`` consecutive values of ``d`` (stride 1); empty for no values."""
    e = min(w, len(d))
    return sliding_window_view(d, e).sum(-1) if e else np.zeros(0)


def wbc_score(d: np.ndarray, windows: tuple[int, ...], statistic: str = "sign") -> float:
    """``mean_w stat_i S_i(w)`` over ``windows`` (NaN for a text with no scored token)."""
    if len(d) == 0:
        return float("nan")
    reduce = STATISTICS[statistic]
    return float(np.mean([reduce(window_sums(d, w)) for w in windows]))


@dataclass
class WBCParams(Params):
    windows: str | list[int] = param("code", "window sizes: code (2, 3, 4, 6, 9, 13, 18, 25, 32, 40: the authors' "
                                             "code), paper (round(2·20^((k-1)/9)): 2, 3, 4, 5, 8, 11, 15, 21, 29, "
                                             "40) or a list of sizes")
    statistic: str = param("sign", "per window size: sign (the share of windows whose sum is > 0, canonical), or "
                                   "the mean, median or min of the window sums", choices=tuple(STATISTICS))

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.windows, str) and self.windows not in WINDOWS or \
                isinstance(self.windows, list) and (not self.windows or min(self.windows) < 1):
            raise TuneguardError(f"parameter 'windows' must be code, paper or a list of window sizes >= 1, got "
                                 f"{self.windows!r}")

    def sizes(self) -> tuple[int, ...]:
        """The window sizes."""
        return WINDOWS[self.windows] if isinstance(self.windows, str) else tuple(self.windows)


class WBCAttack(Attack):
    """Target and reference must score the same token ids (refused otherwise). Scores are discrete on short texts
    (many ties)."""

    name = "wbc"
    summary = "share of sliding windows where the target beats the reference, averaged over window sizes"
    needs = frozenset({"reference", "same_tokens"})
    ensemble = "extended"
    Params = WBCParams

    def run(self, ctx: AttackContext) -> AttackOutput:
        sizes, statistic = self.params.sizes(), self.params.statistic
        pairs = ctx.token_pairs(self.label())
        scores = np.array([wbc_score(t.logprobs - r.logprobs, sizes, statistic) for t, r in pairs])
        short = sum(t.n < max(sizes) for t, _ in pairs)
        note = (f"{short} of {len(pairs)} texts have fewer scored tokens than the largest window ({max(sizes)}): "
                "their larger windows are the whole text") if short else None
        return AttackOutput(scores=scores, raw=scores, raw_name=RAW_NAMES[statistic], note=note,
                            extra={"windows": list(sizes)})
