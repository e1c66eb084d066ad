"""Ensemble (SOFT's): a decision tree over the other attacks' scores, always out-of-fold."""

import numpy as np
from sklearn.tree import DecisionTreeClassifier

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput, lowest_k_mean
from tuneguard.attacks.folds import out_of_fold

# Attacks whose scores are features when they ran (the blind baseline is not: it sees no model).
FEATURES = ("loss", "zlib", "lowercase", "min-k", "min-k++", "ratio", "recall", "con-recall", "dc-pdd",
            "neighbourhood")
MIN_K_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


class EnsembleAttack(Attack):
    """Features: the scores of the attacks that ran before it, plus Min-K% at several k (free: same token scores).
    NaNs are filled with the training folds' medians. The attacker's labelled rows are part of its threat model."""

    name = "ensemble"
    needs = frozenset({"results"})
    defaults = {"folds": 5, "depth": 5}
    summary = "decision tree over the other scores (out-of-fold)"

    def run(self, ctx: AttackContext) -> AttackOutput:
        names = [n for n in FEATURES if n in ctx.results]
        columns = [ctx.results[n].scores for n in names]
        token_scores = ctx.target_scores()
        columns += [np.array([lowest_k_mean(s.logprobs, k) for s in token_scores]) for k in MIN_K_LEVELS]
        x = np.column_stack(columns).astype(float)

        def fit_predict(train, test):
            fill = np.nanmedian(x[train], axis=0)
            fill = np.where(np.isnan(fill), 0.0, fill)
            clean = np.where(np.isnan(x), fill, x)
            tree = DecisionTreeClassifier(max_depth=self.params["depth"], random_state=ctx.seed)
            tree.fit(clean[train], ctx.labels[train])
            return tree.predict_proba(clean[test])[:, 1]

        scores = out_of_fold(ctx.labels, self.params["folds"], ctx.seed, fit_predict)
        features = names + [f"min-k@{k}" for k in MIN_K_LEVELS]
        return AttackOutput(scores=scores, raw=scores, raw_name="out-of-fold P(member)",
                            note=f"{self.params['folds']}-fold out-of-fold over: {', '.join(features)}",
                            extra={"features": features})


ATTACK = EnsembleAttack
