"""One-run lower bounds on the epsilon a training delivers, from m canaries each included with probability 1/2.

Guesses. The auditor ranks the canaries by a membership score, guesses "in" for the k+ highest and "out" for the k-
lowest and abstains on the rest; W of the k = k+ + k- guesses are right. k+ = k- = round(f·m) is fixed before any
score is seen (``guesses``: default f = 0.05). A search over many (k+, k-) costs more than it finds: each pair is
tested at β / pairs (Bonferroni), and the review of issue 28 measured the old 7 fractions × 2 search at β/14 giving mean bounds
0.157 / 1.280 / 2.606 on Gaussian-mechanism canaries that are exactly (ε, 1e-5)-DP at ε 1 / 4 / 8 (m = 1000), against
0.227 / 1.494 / 3.059 for k+ = k- = 50 fixed in advance. Several fractions may still be given: each is tested at
β / their number and the largest bound is kept, its confidence still 1 - β. Ties in the score are broken by a seeded
random order, never by the input order (which could follow the inclusion bits). A canary without a finite score is
never guessed on; when fewer canaries than the planned k can be ranked, the missing guesses count as wrong (as if
made and missed: W can only be lower than with them, so the test at the planned k stays valid).

**Steinke, Nasr & Jagielski** (NeurIPS 2023, "Privacy Auditing with One (1) Training Run"): if training is ε-DP, W is
stochastically dominated by Binomial(k, e^ε / (1 + e^ε)) however the guesses were formed from the trained model.
Under (ε, δ)-DP the tail gains 2·m·δ·α, α = max over i = 1..W of P[W - i <= Binomial(k, q) < W] / i (the paper's
appendix algorithm). The bound is the largest ε this W rejects at level β.

**f-DP** (Mahloujifar, Melis & Chaudhuri, ICML 2025, "Auditing f-Differential Privacy in One Run"), as reconstructed
and checked here. Hypothesis: adding or removing one canary is f-DP: every test on the trained model Y that tells
"canary j out" from "j in" with false-positive rate α has a true-positive rate of at most g(α) = 1 - f(α) (g is
concave and increasing). Let C_j = 1 when guess j is made and right, W = Σ C_j, W_-j = W - C_j, p_i = P[W = i].

1. One canary. Fix the other canaries' bits; A = {guess j is "in" and W_-j >= c - 1} is an event of Y, so
   P[A | j in] <= g(P[A | j out]); the same for "out" guesses with the roles swapped. Averaging over j's fair coin,
   the other bits and the two directions (g concave: Jensen): a_j <= g(b_j), a_j = P[guess j right and W >= c],
   b_j = P[guess j wrong and W >= c - 1] (a wrong guess leaves W = W_-j).
2. All canaries. Σ_j a_j = E[W·1(W >= c)] and Σ_j b_j = E[(k - W)·1(W >= c - 1)]; Jensen over the m canaries:
   R_c <= g(H_(c-1)) for c = 1..k, with R_c = Σ_(i>=c) i·p_i / m and H_c = Σ_(i>=c) (k - i)·p_i / m.
3. The least probability P[W >= v] >= β needs. Put β at exactly W = v (mass higher up only raises R and so asks
   more below; mass beyond β at v can go to v - 1 instead at no loss), then for i = v-1 down to 0 add the least p_i that satisfies step 2 at c = i + 1:
   H_new = max(H, g⁻¹(R)), R += i·(H_new - H) / (k - i); when H does not move, nothing below needs mass. Adding
   the least at each level is optimal: mass beyond it at level i moves to level i - 1 without breaking any
   constraint. The total probability is (R + H)·m / k; above 1, P[W >= v] >= β is impossible, so the hypothesis is
   rejected at level β. The bound is the largest ε whose curve is rejected (g grows with ε: a bisection).

Curves: at δ = 0, ε-DP's f(α) = max(0, 1 - e^ε·α, e^-ε·(1 - α)), a pure-DP test. At δ > 0, ``tradeoff``:
``gaussian`` (default), the Gaussian mechanism's curve f(α) = Φ(Φ⁻¹(1 - α) - μ) with μ the one whose (ε, δ) profile
δ(ε) = Φ(-ε/μ + μ/2) - e^ε·Φ(-ε/μ - μ/2) (Dong, Roth & Su 2022, Cor. 2.13) passes through the claimed (ε, δ): it
tests "at least as private as the Gaussian mechanism that is (ε, δ)-DP", which DP-SGD approaches and which gives far
more power (m = 1000 canaries all guessed right at k+ = k- = 50: ε 5.55 against Steinke's 3.47 at δ = 1e-5), but
which is a stronger claim than (ε, δ)-DP: randomized response, ε-DP, exceeds it at large m. Checked against DP-SGD's
own curve (Opacus' PRV accountant, q 0.021-0.125, 8-141 steps, ε 1-8 at 1e-5): its δ(ε) stays under the calibrated
Gaussian's at every δ from 1e-2 to 1e-7, but not at 1e-8, where the subsampled mechanism's tail is the heavier: for
DP-SGD the gaussian bound is a close approximation, not a proof; Steinke's bound and ``dp`` are. ``dp``: the
(ε, δ)-DP curve f(α) = max(0, 1 - δ - e^ε·α, e^-ε·(1 - δ - α)), valid for any (ε, δ)-DP mechanism; on these guesses
it comes within about 1% of Steinke's bound (both rest on randomized response).
With every guess right under ε-DP the recursion's total is exactly β·(1 + e^-ε)^k: it rejects where q^k < β, the
same bound as Steinke's, logit(β^(1/k)) (tests/test_dp_audit_power.py checks this, hand-computed totals, and both
bounds on randomized response and on the Gaussian mechanism of known ε).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr, ndtri
from scipy.stats import binom

from tuneguard.errors import TuneguardError
from tuneguard.params import Params, param

# Bisection on ε stops when the bracket is this narrow; the returned end is always one that is rejected.
TOLERANCE = 1e-6
METHODS = ("steinke", "fdp")
TRADEOFFS = ("gaussian", "dp")
PURE = "pure-dp"  # the f-DP curve at delta = 0, whatever ``tradeoff`` says: a Gaussian is never (ε, 0)-DP


def p_value(m: int, r: int, w: int, epsilon: float, delta: float = 0.0) -> float:
    """P[at least ``w`` of ``r`` guesses right] for an (epsilon, delta)-DP training on ``m`` randomised canaries,
    bounded as in Steinke et al. (exact binomial tails)."""
    _check_counts(m, r, w)
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
    """Steinke et al.'s bound: the largest epsilon that ``w`` correct of ``r`` guesses rejects at level ``beta`` (0
    when none is). The returned value always has a p-value <= ``beta``, so it is a valid bound even where the
    (epsilon, delta) p-value is not monotone in epsilon."""
    _check_level(delta, beta)
    return _largest_rejected(lambda eps: p_value(m, r, w, eps, delta) <= beta)


def gaussian_mu(epsilon: float, delta: float) -> float:
    """The μ of the μ-GDP Gaussian mechanism that is exactly (epsilon, delta)-DP (``delta`` > 0)."""
    def excess(mu: float) -> float:  # delta(epsilon; mu) - delta, in logs: both terms underflow at large epsilon
        a, b = log_ndtr(-epsilon / mu + mu / 2), epsilon + log_ndtr(-epsilon / mu - mu / 2)
        return math.exp(a) * -math.expm1(b - a) - delta

    hi = 1.0
    while excess(hi) < 0:  # delta(epsilon; mu) grows with mu, to 1
        hi *= 2
    return brentq(excess, 1e-12, hi, xtol=1e-12)


def tradeoff_inverse(epsilon: float, delta: float, tradeoff: str = "gaussian") -> Callable[[float], float]:
    """g⁻¹(y) = the least false-positive rate at which a test can reach true-positive rate y (g = 1 - f) under the
    curve of (epsilon, delta): ε-DP's at delta = 0, else ``tradeoff``'s (see the module docstring)."""
    if tradeoff not in TRADEOFFS:
        raise TuneguardError(f"unknown tradeoff curve {tradeoff!r}: choose from {', '.join(TRADEOFFS)}")
    if delta == 0 or tradeoff == "dp":
        # g(x) = min(delta + e^ε x, 1 - e^-ε (1 - delta - x)): the larger of the two pieces' inverses.
        grow, shrink = math.exp(epsilon), math.exp(-epsilon)
        return lambda y: max(0.0, (y - delta) * shrink, (1 - delta) - grow * (1 - y))
    mu = gaussian_mu(epsilon, delta)
    return lambda y: float(ndtr(ndtri(min(y, 1.0)) - mu))


def fdp_total(m: int, k: int, v: int, beta: float, inverse: Callable[[float], float]) -> float:
    """The least total probability a distribution of W obeying the f-DP constraints (``inverse`` = g⁻¹) needs for
    P[W >= ``v``] >= ``beta`` with ``k`` guesses on ``m`` canaries (step 3 of the module docstring); above 1 the
    hypothesis is rejected at level ``beta``."""
    _check_counts(m, k, v)
    r, h = beta * v / m, beta * (k - v) / m
    for i in range(v - 1, -1, -1):
        h_new = max(h, inverse(r))
        if h_new <= h:  # the constraint holds without mass at i, so every one below it does too
            break
        r, h = r + i * (h_new - h) / (k - i), h_new
        if r + h > k / m:  # already more than all the probability there is
            break
    return (r + h) * m / k


def fdp_epsilon_lower_bound(m: int, k: int, v: int, *, delta: float = 0.0, beta: float = 0.05,
                            tradeoff: str = "gaussian") -> float:
    """The f-DP bound: the largest epsilon whose tradeoff curve (see :func:`tradeoff_inverse`) ``v`` correct of ``k``
    guesses rejects at level ``beta`` (0 when none is)."""
    _check_level(delta, beta)
    if v == 0:
        return 0.0
    return _largest_rejected(lambda eps: fdp_total(m, k, v, beta, tradeoff_inverse(eps, delta, tradeoff)) > 1)


@dataclass
class BoundParams(Params):
    """How the one-run audit guesses and tests."""

    beta: float = param(0.05, "significance: the bound holds with confidence 1 - beta", gt=0, lt=1)
    delta: float = param(0.0, "the delta of the (epsilon, delta)-DP claim being tested", ge=0, lt=1)
    guesses: tuple[float, ...] = param((0.05,), "k+ = k- as fractions of the canaries, fixed before any score is "
                                       "seen; several are each tested at beta / their number (Bonferroni)",
                                       gt=0, le=0.5)
    two_sided: bool = param(True, "also guess 'out' for the k- = k+ lowest scores (false: k- = 0)")
    tradeoff: str = param("gaussian", "the f-DP bound's curve at delta > 0: gaussian (the Gaussian mechanism with "
                          "this (epsilon, delta), as DP-SGD; tighter) or dp (any (epsilon, delta)-DP mechanism)",
                          choices=TRADEOFFS)
    seed: int = param(0, "seed of the random order that breaks score ties")


@dataclass
class OneRunBound:
    """One bound of the audit and the guesses that gave it."""

    epsilon_lower_bound: float
    delta: float
    beta: float
    m: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    grid_size: int
    grid: list[dict] = field(default_factory=list)  # every (k+, k-) tested, with its W and bound
    method: str = "steinke"
    curve: str | None = None  # the f-DP bound's tradeoff curve: gaussian, dp or pure-dp

    @property
    def confidence(self) -> float:
        """1 - beta."""
        return 1.0 - self.beta

    def describe(self) -> str:
        """What was tested, in words (audit.json, the report)."""
        if self.method == "steinke":
            return "one-run (Steinke, Nasr & Jagielski 2023), k+ = k- fixed in advance, Bonferroni over the fractions"
        return (f"f-DP one-run (Mahloujifar, Melis & Chaudhuri 2025), {self.curve} tradeoff curve, k+ = k- fixed in "
                "advance, Bonferroni over the fractions")

    def to_json(self) -> dict:
        """Plain-JSON form (audit.json)."""
        return {"epsilon_lower_bound": self.epsilon_lower_bound, "confidence": self.confidence, "delta": self.delta,
                "beta": self.beta, "m": self.m, "k_plus": self.k_plus, "k_minus": self.k_minus,
                "guesses": self.guesses, "correct": self.correct, "grid_size": self.grid_size, "grid": self.grid,
                "method": self.method, "curve": self.curve, "description": self.describe()}

    @classmethod
    def from_json(cls, d: dict) -> OneRunBound:
        """Inverse of :meth:`to_json`."""
        keep = ("epsilon_lower_bound", "delta", "beta", "m", "k_plus", "k_minus", "guesses", "correct", "grid_size",
                "grid", "method", "curve")
        return cls(**{k: d[k] for k in keep if k in d})


def one_run_audit(scores, included, params: BoundParams | None = None, *, method: str = "steinke") -> OneRunBound:
    """The epsilon lower bound (``method``: steinke or fdp) from canaries' membership ``scores`` (higher = more
    likely included) and their inclusion bits, with k+ / k- fixed by ``params.guesses`` (see the module docstring).
    """
    params = params or BoundParams()
    if method not in METHODS:
        raise TuneguardError(f"unknown bound {method!r}: choose from {', '.join(METHODS)}")
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
    grid = guess_grid(m, params)
    level = params.beta / len(grid)
    curve = None if method == "steinke" else _curve(params)
    rows, best = [], None
    for k_plus, k_minus in grid:
        made_in = min(k_plus, n)
        w = int(hits_in[made_in] + hits_out[min(k_minus, n - made_in)])
        r = k_plus + k_minus
        bound = _bound(method, m, r, w, params.delta, level, params.tradeoff)
        rows.append({"k_plus": k_plus, "k_minus": k_minus, "guesses": r, "correct": w, "epsilon": bound})
        if best is None or bound > best["epsilon"]:
            best = rows[-1]
    return OneRunBound(best["epsilon"], params.delta, params.beta, m, best["k_plus"], best["k_minus"],
                       best["guesses"], best["correct"], len(grid), rows, method, curve)


def bound_ceiling(m: int, params: BoundParams | None = None, *, method: str = "steinke") -> float:
    """The largest bound ``m`` canaries can give at all: every guess right, at the best (k+, k-) of the grid.

    Steinke's (epsilon, delta) tail gains 2·m·delta·alpha, which alone can exceed beta / |grid| (e.g. delta =
    1/(10·n) with m close to n): then this is 0 and no score, however good, certifies anything.
    """
    params = params or BoundParams()
    grid = guess_grid(m, params)
    level = params.beta / len(grid)
    return max(_bound(method, m, k + k_minus, k + k_minus, params.delta, level, params.tradeoff)
               for k, k_minus in grid)


def guess_grid(m: int, params: BoundParams) -> list[tuple[int, int]]:
    """The (k+, k-) pairs for ``m`` canaries: k+ = round(f·m) for each fraction f, k- = k+ (or 0 one-sided); fixed
    by m alone, before any score is seen."""
    ks = sorted({min(max(1, round(f * m)), m // 2) for f in params.guesses} - {0})
    if not ks:
        raise TuneguardError(f"{m} canaries are too few to guess on: plant at least 2")
    return [(k, k if params.two_sided else 0) for k in ks]


def _curve(params: BoundParams) -> str:
    return PURE if params.delta == 0 else params.tradeoff


def _bound(method: str, m: int, r: int, w: int, delta: float, beta: float, tradeoff: str) -> float:
    if method == "steinke":
        return epsilon_lower_bound(m, r, w, delta=delta, beta=beta)
    return fdp_epsilon_lower_bound(m, r, w, delta=delta, beta=beta, tradeoff=tradeoff)


def _largest_rejected(rejects: Callable[[float], bool]) -> float:
    """The largest epsilon (to TOLERANCE) for which ``rejects`` holds, found by doubling then bisection; 0 when even
    epsilon 0 is not rejected. The returned end is always a rejected one."""
    if not rejects(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejects(hi):  # terminates: no finite number of guesses rejects every epsilon
        lo, hi = hi, 2 * hi
    while hi - lo > TOLERANCE:
        mid = (lo + hi) / 2
        if rejects(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _check_counts(m: int, r: int, w: int) -> None:
    if not 0 <= w <= r <= m:
        raise TuneguardError(f"need 0 <= correct guesses <= guesses <= canaries, got {w}, {r}, {m}")


def _check_level(delta: float, beta: float) -> None:
    if not 0 <= delta < 1:
        raise TuneguardError(f"delta must be in [0, 1), got {delta}")
    if not 0 < beta < 1:
        raise TuneguardError(f"beta (significance) must be in (0, 1), got {beta}")
