"""A cell's privacy figures (what ``tuneguard run`` stores per regime and the experiment report renders), kept
light so a renderer imports them without the scoring stack."""

from __future__ import annotations

import math
from typing import Any

from tuneguard.attacks.result import MIAResult
from tuneguard.report.verdict import Leader, mia_verdict

MAX_ATTACK_FPR = 0.1  # each regime's strongest attack is quoted at 10% FPR: 10 non-members measure it, 1% needs 100


def attack_figures(result: MIAResult) -> dict[str, Any]:
    """A cell's privacy figures from its attacks: per attack the AUC, TPR@1% and TPR@10% FPR with their 95%
    bootstrap CIs; the average AUC over the attacks that apply (``not_applicable`` ones left out); and the regime's
    strongest attack (``max_auc``, ``max_tpr_at_10pct``, and ``max_tpr`` at each FPR the verdict reads, keyed "0.01":
    attack, value, CI), picked as the report's verdict picks it
    (:mod:`tuneguard.report.verdict`: attacks that query the model only, so not the blind baseline).

    The average's CI comes from one joint bootstrap of every counted attack (:func:`tuneguard.metrics.mean_auc`), with
    the run's bootstrap draws and seed. The strongest attack is picked after seeing the results, so its figure leans
    optimistic for the attacker's side.
    """
    from tuneguard.metrics import mean_auc  # scikit-learn: not for the renderers that import this module

    attacks = result.attacks
    not_applicable = {n: a.not_applicable for n, a in attacks.items() if a.not_applicable}
    auc = {n: a.auc for n, a in attacks.items()}
    auc_ci = {n: a.metrics.get("auc_ci") for n, a in attacks.items()}
    counted = [n for n, v in auc.items() if n not in not_applicable and math.isfinite(v)]
    average, average_ci = mean_auc(attacks[counted[0]].labels, [attacks[n].scores for n in counted],
                                   n_boot=result.settings["bootstrap"], seed=result.settings["seed"]) \
        if counted else (math.nan, None)
    verdict = mia_verdict(result)
    best_tpr = next((b for b in verdict.strongest if b.fpr == MAX_ATTACK_FPR), None)
    return {"auc": auc, "auc_ci": auc_ci, "tpr_at_1pct": {n: a.tpr(0.01) for n, a in attacks.items()},
            "tpr_at_10pct": {n: a.tpr(MAX_ATTACK_FPR) for n, a in attacks.items()},
            "tpr_at_10pct_ci": {n: a.metrics["tpr_ci"].get(f"{MAX_ATTACK_FPR:g}") for n, a in attacks.items()},
            "not_applicable": not_applicable,
            "average_auc": average, "average_auc_ci": average_ci,
            "max_auc": _leader(verdict.best_auc), "max_tpr_at_10pct": _leader(best_tpr),
            "max_tpr": {f"{b.fpr:g}": _leader(b) for b in verdict.strongest}}


def _leader(leader: Leader | None) -> dict | None:
    return None if leader is None else {"attack": leader.attack, "value": leader.value, "ci": leader.ci}
