"""The one-run epsilon lower bound (Steinke, Nasr & Jagielski, NeurIPS 2023, "Privacy Auditing with One (1) Training
Run").

m canaries are each included in training independently with probability 1/2. The auditor ranks them by a membership
score, guesses "in" for the k+ highest and "out" for the k- lowest, abstains on the rest, and is right W times out
of r = k+ + k-. If training is ε-DP, W is stochastically dominated by Binomial(r, e^ε / (1 + e^ε)) however the
guesses were formed from the trained model. Under (ε, δ)-DP the tail probability gains the paper's term
2·m·δ·α, α = max over i = 1..W of P[W - i <= Binomial(r, q) < W] / i (the paper's appendix algorithm). The lower
bound is the largest ε this W rejects at level β: the algorithm is not (ε, δ)-DP for that ε, with confidence 1 - β.

k+ / k- are chosen by a grid search: every (k+, k-) on the grid is tested at β / |grid| (Bonferroni), so the best
one's bound keeps its 1 - β confidence. Ties in the score are broken by a seeded random order, never by the input
order (which could follow the inclusion bits, e.g. a file listing the included canaries first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binom

from tuneguard.errors import TuneguardError
from tuneguard.params import Params, param

# Bisection on ε stops when the bracket is this narrow; the returned end is always one that is rejected.
TOLERANCE = 1e-6


def p_value(m: int, r: int, w: int, epsilon: float, delta: float = 0.0) -> float:
    """P[at least ``w`` of ``r`` guesses right] for an (epsilon, delta)-DP training on ``m`` randomised canaries,
    bounded as in Steinke et al. (exact binomial tails)."""
    if not 0 <= w <= r <= m:
        raise TuneguardError(f"need 0 <= correct guesses <= guesses <= canaries, got {w}, {r}, {m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # the accuracy of epsilon-DP randomised response
    tail = float(binom.sf(w - 1, r, q))  # P[Binomial(r, q) >= w]
    if delta == 0 or w == 0:
        return min(tail, 1.0)
    i = np.arange(1, w + 1)
    # P[w - i <= Binomial(r, q) < w] = cdf(w - 1) - cdf(w - i - 1)
    mass = binom.cdf(w - 1, r, q) - binom.cdf(w - i - 1, r, q)
    alpha = float(np.max(mass / i))
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, w: int, *, delta: float = 0.0, beta: float = 0.05) -> float:
    """The largest epsilon that ``w`` correct of ``r`` guesses rejects at level ``beta`` (0 when none is).

    Found by bisection; the returned value is always one whose p-value is <= ``beta``, so it is a valid bound even
    where the (epsilon, delta) p-value is not monotone in epsilon.
    """
    _check_level(delta, beta)
    if p_value(m, r, w, 0.0, delta) > beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, w, hi, delta) <= beta:  # terminates: the p-value tends to 1 as epsilon grows
        lo, hi = hi, 2 * hi
    while hi - lo > TOLERANCE:
        mid = (lo + hi) / 2
        if p_value(m, r, w, mid, delta) <= beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class BoundParams(Params):
    """How the one-run audit guesses and tests."""

    beta: float = param(0.05, "significance: the bound holds with confidence 1 - beta", gt=0, lt=1)
    delta: float = param(0.0, "the delta of the (epsilon, delta)-DP claim being tested", ge=0, lt=1)
    fractions: tuple[float, ...] = param((0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
                                         "k+ grid, as fractions of the canaries", gt=0, le=0.5)
    abstain_low: bool = param(True, "also try k- = 0 (guess only 'in') beside k- = k+")
    seed: int = param(0, "seed of the random order that breaks score ties")


@dataclass
class OneRunBound:
    """The audit's result: the bound and the guesses that gave it."""

    epsilon_lower_bound: float
    delta: float
    beta: float
    m: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    grid_size: int
    grid: list[dict] = field(default_factory=list)  # every (k+, k-) tried, with its W and bound

    @property
    def confidence(self) -> float:
        """1 - beta."""
        return 1.0 - self.beta

    def to_json(self) -> dict:
        """Plain-JSON form (audit.json)."""
        return {"epsilon_lower_bound": self.epsilon_lower_bound, "confidence": self.confidence, "delta": self.delta,
                "beta": self.beta, "m": self.m, "k_plus": self.k_plus, "k_minus": self.k_minus,
                "guesses": self.guesses, "correct": self.correct, "grid_size": self.grid_size, "grid": self.grid,
                "method": "one-run (Steinke, Nasr & Jagielski 2023), (k+, k-) grid with Bonferroni correction"}


def one_run_audit(scores, included, params: BoundParams | None = None) -> OneRunBound:
    """The epsilon lower bound from canaries' membership ``scores`` (higher = more likely included) and their
    inclusion bits, with k+ / k- chosen on the grid of ``params`` (each tested at beta / grid size).

    A canary whose score is not finite is never guessed on (it still counts in m).
    """
    params = params or BoundParams()
    s = np.asarray(scores, dtype=float)
    y = np.asarray(included)
    if s.ndim != 1 or y.shape != s.shape:
        raise TuneguardError(f"scores and inclusion bits must be two flat lists of one length, got {s.shape} "
                             f"and {y.shape}")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise TuneguardError("inclusion bits must be true/false (or 1/0)")
    y = y.astype(bool)
    m = len(s)
    finite = np.flatnonzero(np.isfinite(s))
    if len(finite) < 2:
        raise TuneguardError(f"the audit needs at least 2 canaries with a finite score, got {len(finite)}")
    # Highest score first; ties in a seeded random order (a stable sort of a random permutation).
    shuffled = np.random.default_rng(params.seed).permutation(finite)
    ranked = shuffled[np.argsort(-s[shuffled], kind="stable")]
    hits_in = np.concatenate([[0], np.cumsum(y[ranked])])  # included among the top k
    hits_out = np.concatenate([[0], np.cumsum(~y[ranked[::-1]])])  # excluded among the bottom k
    n = len(ranked)
    grid = _grid(n, params)
    level = params.beta / len(grid)
    rows, best = [], None
    for k_plus, k_minus in grid:
        w = int(hits_in[k_plus] + hits_out[k_minus])
        r = k_plus + k_minus
        bound = epsilon_lower_bound(m, r, w, delta=params.delta, beta=level)
        rows.append({"k_plus": k_plus, "k_minus": k_minus, "guesses": r, "correct": w, "epsilon": bound})
        if best is None or bound > best["epsilon"]:
            best = rows[-1]
    return OneRunBound(best["epsilon"], params.delta, params.beta, m, best["k_plus"], best["k_minus"],
                       best["guesses"], best["correct"], len(grid), rows)


def bound_ceiling(m: int, params: BoundParams | None = None) -> float:
    """The largest bound ``m`` canaries can give at all: every guess right, at the best (k+, k-) of the grid.

    With delta > 0 the tail gains 2·m·delta·alpha, which alone can exceed beta / |grid| (e.g. delta = 1/(10·n) with
    m close to n): then this is 0 and no score, however good, certifies anything.
    """
    params = params or BoundParams()
    grid = _grid(m, params)
    level = params.beta / len(grid)
    return max(epsilon_lower_bound(m, k + k_minus, k + k_minus, delta=params.delta, beta=level)
               for k, k_minus in grid)


def _grid(n: int, params: BoundParams) -> list[tuple[int, int]]:
    """(k+, k-) pairs for ``n`` rankable canaries: k+ = round(f·n) for each fraction f, k- in {0, k+}."""
    ks = sorted({min(max(1, round(f * n)), n // 2) for f in params.fractions} - {0})
    if not ks:
        raise TuneguardError(f"{n} canaries are too few for the guess grid")
    return [(k, k_minus) for k in ks for k_minus in ((0, k) if params.abstain_low else (k,))]


def _check_level(delta: float, beta: float) -> None:
    if not 0 <= delta < 1:
        raise TuneguardError(f"delta must be in [0, 1), got {delta}")
    if not 0 < beta < 1:
        raise TuneguardError(f"beta (significance) must be in (0, 1), got {beta}")
