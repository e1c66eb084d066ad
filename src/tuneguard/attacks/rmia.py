"""RMIA, offline (Zarifzadeh, Liu, Mittal, Shokri, ICML 2024, "Low-Cost High-Power Membership Inference Attacks"),
over shadow fine-tunes (:mod:`tuneguard.attacks.shadows`).

For a text x and the target θ, ``LR(x) = Pr(x|θ) / Pr(x)`` with ``Pr(x)`` the mean of ``Pr(x|θ')`` over reference
models θ'. x is compared with population samples z: ``score(x) = Pr_z[LR(x) / LR(z) > γ]``, the fraction of the
population that x dominates (higher = member); the raw statistic is ``log LR(x)``.

Choices, with the paper's and its authors' code's values (privacytrustlab/ml_privacy_meter: ``modules/mia/attacks/
rmia.py``, ``get_signals.py``, and the paper's configurations in ``research/2023_rmia/attack_configs``):

- ``Pr(x|θ)`` is ``exp(LL(x))``, the per-token geometric-mean probability (LL = mean token log-prob over the scored
  window), as the authors' code scores a text under a causal LM. The paper defines one probability per record: no
  per-token statistic is implemented.
- Offline: every evaluated text is OUT for every shadow, so ``Pr(x)`` is the paper's linear approximation from the
  OUT models, ``Pr(x) = ½((1 + a)·Pr_OUT(x) + (1 − a))`` (it models ``Pr_IN = a·Pr_OUT + (1 − a)``), where
  ``Pr_OUT(x)`` is the mean probability over the shadows that did not train on x: all k for an evaluated text, the
  k/2 that left it out for a population text z (an even k).
- ``a`` (parameter ``a``): unset = tuned on the shadows, as the authors' code does (``tune_offline_a``: a in
  {0, 0.1, ..., 1} maximising the AUC of the attack on one reference model with the others as references; here on
  every shadow in turn, its population texts labelled by whether they trained it, the mean AUC, ties to the larger
  a). The paper's configurations use a = 0.33 (CIFAR-10) and 0.6 (CIFAR-100); the code's default is 0.3, and a = 1
  (``Pr(x) = Pr_OUT(x)``) its value "if unknown".
- ``γ`` (parameter ``gamma``): 1, as the authors' current code (``ratios > 1.0``); the paper's configurations use
  γ = 2. With one population the score is a non-decreasing function of LR(x): γ and the population move ties and the
  scale, never the order.
- z: every population text (the configurations' ``top_k: -1``); the target's ``Pr(z|θ)`` costs one target pass
  per population text.
- Ties: the share of z dominated moves in steps of 1/|Z|, and every text beyond the population's largest LR scores
  1. On a target that memorises, that is many members and a few non-members: the ROC then jumps over a block of
  ties exactly where TPR at a low FPR is read (measured: TPR@1% 1.000 with a bootstrap CI of [0, 1] on a fully
  fine-tuned SmolLM2, 500 z). The score breaks ties by ``log LR(x)``: ``(#z dominated + t) / (|Z| + 1)`` with
  ``t = ½ + arctan(log LR(x)) / π`` in (0, 1), so the share's order is kept and texts with the same share are
  ordered by their ratio; the paper's share is ``floor(score · (|Z| + 1)) / |Z|``.
- Online RMIA (IN and OUT shadows per evaluated text) is not available: no shadow trains on an evaluated text.

Identity: with every shadow equal to the base model and a = 1, ``log LR(x) = LL_target(x) − LL_base(x)``, ratio's
score, and the RMIA share is the population's empirical distribution function of ratio's score at x (γ = 1): with
its ties broken by log LR(x), the reference attack's order exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tuneguard.attacks.base import TARGET_TEXTS, Attack, AttackContext, AttackOutput, Pass
from tuneguard.params import Params, param

A_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # the authors' code's np.arange(0, 1.1, 0.1)
SHADOW_TEXTS = Pass("shadows", "texts")  # counted per shadow model


def out_probability(ll: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``Pr_OUT`` per text (column): the mean of ``exp(LL)`` over the shadows (rows) where ``out`` is True (all when
    None); NaN where no shadow is OUT."""
    prob = np.exp(ll)
    if out is None:
        return prob.mean(axis=0)
    count = out.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (prob * out).sum(axis=0) / count, np.nan)


def log_lr(ll_target: np.ndarray, p_out: np.ndarray, a: float) -> np.ndarray:
    """``log LR = log Pr(x|θ) − log Pr(x)`` with the offline ``Pr(x) = ½((1 + a)·Pr_OUT(x) + (1 − a))``."""
    return ll_target - np.log(0.5 * ((1 + a) * p_out + (1 - a)))


def dominated(log_lr_x: np.ndarray, log_lr_z: np.ndarray, gamma: float) -> np.ndarray:
    """Per x, the fraction of the z with ``LR(x) / LR(z) > γ``, i.e. ``log LR(z) < log LR(x) − log γ`` (NaN where
    ``log LR(x)`` is not finite; z without a finite value are left out)."""
    z = np.sort(log_lr_z[np.isfinite(log_lr_z)])
    share = np.searchsorted(z, log_lr_x - math.log(gamma), side="left") / len(z)
    return np.where(np.isfinite(log_lr_x), share, np.nan)


def tie_broken(share: np.ndarray, log_lr_x: np.ndarray, n_z: int) -> np.ndarray:
    """RMIA's share of z dominated with its ties broken by ``log LR(x)``: ``(share · |Z| + t) / (|Z| + 1)``, ``t`` in
    (0, 1) increasing in ``log LR(x)`` (see the module docstring); NaN stays NaN."""
    return (np.rint(share * n_z) + 0.5 + np.arctan(log_lr_x) / np.pi) / (n_z + 1)


def tune_a(ll_population: np.ndarray, keep: np.ndarray) -> tuple[float, dict[str, float]]:
    """The offline ``a`` whose attack best tells each shadow's own population texts from the rest, with the other
    shadows as references (see the module docstring): (a, mean AUC per a tried). ``ll_population``: (k, n) LL of the
    population under each shadow; ``keep``: (k, n), True where the text trained the shadow. The AUC is that of
    ``log LR``, the RMIA score's order without its ties."""
    from tuneguard.metrics import evaluate  # imports scikit-learn: only when the attack runs, not to import it

    k = len(keep)
    aucs: dict[float, list[float]] = {a: [] for a in A_GRID}
    for j in range(k):
        others = np.arange(k) != j
        p_out = out_probability(ll_population[others], ~keep[others])
        usable = np.isfinite(p_out) & np.isfinite(ll_population[j])  # a text with no OUT reference says nothing
        labels = keep[j][usable].astype(int)
        if min(labels.sum(), len(labels) - labels.sum()) < 2:
            continue
        for a in A_GRID:
            scores = log_lr(ll_population[j][usable], p_out[usable], a)
            aucs[a].append(evaluate(labels, scores, alphas=(), n_boot=0)["auc"])
    means = {a: float(np.mean(v)) for a, v in aucs.items() if v}
    if not means:
        return 1.0, {}  # no shadow could be attacked: Pr(x) = Pr_OUT(x), the code's value "if unknown"
    best = max(means, key=lambda a: (round(means[a], 12), a))
    return best, {f"{a:g}": round(v, 6) for a, v in means.items()}


@dataclass
class RMIAParams(Params):
    a: float | None = param(None, "offline Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2; unset: tuned on the shadows "
                                  "(the authors' code; the paper's CIFAR settings: 0.33, 0.6; 1 = Pr_OUT)", ge=0, le=1)
    gamma: float = param(1.0, "x dominates z when LR(x) / LR(z) > gamma (the authors' code: 1; the paper's "
                              "configurations: 2)", ge=1)


class RMIAAttack(Attack):
    """Offline RMIA over the run's shadow models (``--shadows K --population FILE``); see the module docstring."""

    name = "rmia"
    summary = ("share of population z with LR(x) / LR(z) > gamma (ties broken by LR(x)), LR = Pr(x|target) / Pr(x) "
               "over the shadows (offline)")
    needs = frozenset({"shadows"})
    Params = RMIAParams

    def passes(self, n_texts: int) -> dict[Pass, int]:
        """The target's and each shadow's pass of the texts; the population's passes under the target and the
        shadows (one per population text and model) depend on the run's population and are counted when made."""
        return {TARGET_TEXTS: n_texts, SHADOW_TEXTS: n_texts}

    def run(self, ctx: AttackContext) -> AttackOutput:
        shadows, n = ctx.shadows, len(ctx.texts)
        population = shadows.population
        # One call: each shadow is loaded once for the evaluated texts and the population together.
        ll = shadows.ll(ctx.texts + population)
        ll_x, ll_z = ll[:, :n], ll[:, n:]
        a, tried = (self.params.a, {}) if self.params.a is not None else tune_a(ll_z, shadows.keep)
        raw = log_lr(ctx.target_ll(), out_probability(ll_x), a)
        lr_z = log_lr(ctx.target.ll(population, desc="target (population)"), out_probability(ll_z, ~shadows.keep), a)
        n_z = int(np.isfinite(lr_z).sum())
        scores = tie_broken(dominated(raw, lr_z, self.params.gamma), raw, n_z)
        how = "tuned on the shadows" if self.params.a is None else "given"
        note = (f"offline, {shadows.k} shadow models, {n_z} population texts as z; "
                f"a = {a:g} ({how}), gamma = {self.params.gamma:g}")
        return AttackOutput(scores=scores, raw=raw, raw_name="log LR(x) = log Pr(x|target) - log Pr(x)", note=note,
                            extra={"a": a, "a_auc": tried})
