"""LiRA, offline (Carlini, Chien, Nasr, Song, Terzis, Tramèr, IEEE S&P 2022, "Membership Inference Attacks From First
Principles"), over shadow fine-tunes (:mod:`tuneguard.attacks.shadows`).

Every evaluated text x is OUT for every shadow. The shadows' statistics of x are modelled as a Gaussian
``N(μ_out(x), σ_out²)``; the paper's offline test is one-sided, ``Λ = 1 − Pr[Z > s_θ(x)] = Φ((s_θ(x) − μ_out(x)) /
σ_out)`` with ``s_θ(x)`` the target's statistic. The score is the z-value ``(s_θ(x) − μ_out(x)) / σ_out``: it orders
the texts exactly as Λ does, but Λ rounds to 1 for the strongest members, where TPR at a low FPR is decided. The raw
statistic is ``1 − Λ``, the one-sided p-value (lower = member).

Choices, with the paper's and its code's values (tensorflow/privacy ``research/mi_lira_2021``, ``plot.py``:
``generate_ours_offline``):

- ``statistic``: ``logit`` (default), the paper's logit scaling ``φ(p) = log(p / (1 − p))`` of the model's
  confidence, with ``p = exp(LL(x))`` the per-token geometric-mean probability (as RMIA's authors score a text under
  a causal LM); ``ll``: ``LL(x)`` itself. The paper fits one Gaussian per example: no per-token statistic is
  implemented.
- ``variance``: ``global`` (default), one σ² for every text (the mean over the evaluated texts of the shadows'
  variance of each text's statistic), the paper's remedy when few shadow models are trained (it trains up to 256; the
  default here is 4, and the RMIA authors run offline LiRA with 4 reference models with ``fix_variance: True``);
  ``per-text``: σ_out(x) from x's own k values, the paper's choice with many shadows. With a global variance the
  order is that of ``s_θ(x) − μ_out(x)``: a reference attack against the shadows' mean.
- μ_out is the mean of the k values (a Gaussian fit) and σ uses ddof 0 (numpy's ``np.std``, as the code).
- ``form``: ``paper`` (default) as above; ``code``, the authors' code: μ_out the median of the OUT values, a global σ
  the std of every OUT value of every text (the spread between texts included), and the score ``−log N(s_θ(x);
  μ_out, σ)``, two-sided: a target value far *below* the OUT values also scores as a member.
- Online LiRA (IN and OUT Gaussians per text) is not available: no shadow trains on an evaluated text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuneguard.attacks.base import TARGET_TEXTS, Attack, AttackContext, AttackOutput, Pass
from tuneguard.attacks.rmia import SHADOW_TEXTS
from tuneguard.params import Params, param

STATISTICS = ("logit", "ll")
VARIANCES = ("global", "per-text")
FORMS = ("paper", "code")
CODE_EPSILON = 1e-30  # the code's std_out + 1e-30


def statistic(ll: np.ndarray, kind: str = "logit") -> np.ndarray:
    """The per-text statistic from ``LL``: ``φ(p) = log p − log(1 − p)`` with ``p = exp(LL)`` (``logit``; the
    ``log(1 − p)`` from ``expm1``, exact for p near 0 or 1), or ``LL`` itself (``ll``)."""
    if kind == "ll":
        return np.asarray(ll, dtype=float)
    with np.errstate(divide="ignore"):
        return ll - np.log(-np.expm1(ll))


def lira_scores(target: np.ndarray, shadows: np.ndarray, *, variance: str = "global",
                form: str = "paper") -> tuple[np.ndarray, np.ndarray]:
    """(scores, raw) of the offline test of ``target`` (one statistic per text) against ``shadows`` (k x texts, all
    OUT); see the module docstring. A text whose σ is 0 (the shadows agree exactly) gets NaN under ``form=paper``."""
    from scipy.stats import norm  # SciPy only when the attack scores: not to import it

    per_text = variance == "per-text"
    if form == "code":
        mu = np.median(shadows, axis=0)
        sigma = (shadows.std(axis=0) if per_text else shadows.std()) + CODE_EPSILON
        log_density = norm.logpdf(target, mu, sigma)
        return -log_density, log_density
    mu = shadows.mean(axis=0)
    sigma = shadows.std(axis=0) if per_text else np.sqrt(shadows.var(axis=0).mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, (target - mu) / np.where(sigma > 0, sigma, 1.0), np.nan)
    return z, norm.sf(z)


@dataclass
class LiRAParams(Params):
    statistic: str = param("logit", "logit: the paper's logit-scaled confidence log(p / (1 - p)), p = exp(LL); "
                                    "ll: LL itself", choices=STATISTICS)
    variance: str = param("global", "global: one variance for every text (the paper's choice with few shadows); "
                                    "per-text: each text's own", choices=VARIANCES)
    form: str = param("paper", "paper: one-sided Gaussian test, mean of the OUT values; code: the authors' code "
                               "(median, -log density: two-sided)", choices=FORMS)


class LiRAAttack(Attack):
    """Offline LiRA over the run's shadow models (``--shadows K --population FILE``); see the module docstring."""

    name = "lira"
    summary = "one-sided Gaussian test of the target's confidence against the OUT shadows' (offline)"
    needs = frozenset({"shadows"})
    Params = LiRAParams

    def passes(self, n_texts: int) -> dict[Pass, int]:
        return {TARGET_TEXTS: n_texts, SHADOW_TEXTS: n_texts}

    def run(self, ctx: AttackContext) -> AttackOutput:
        p = self.params
        target = statistic(ctx.target_ll(), p.statistic)
        shadows = statistic(ctx.shadows.ll(ctx.texts), p.statistic)
        scores, raw = lira_scores(target, shadows, variance=p.variance, form=p.form)
        raw_name = "log N(s; median, sigma), the code's density (lower = member)" if p.form == "code" else \
            "one-sided p-value 1 - Phi((s - mu_out) / sigma_out)"
        note = f"offline, {ctx.shadows.k} shadow models (all OUT), {p.variance} variance, statistic {p.statistic}"
        return AttackOutput(scores=scores, raw=raw, raw_name=raw_name, note=note)
