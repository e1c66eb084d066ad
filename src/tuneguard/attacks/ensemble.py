"""Ensemble: a classifier over the other attacks' scores, always out-of-fold.

An attack joins the features by its ``ensemble`` flag (:class:`tuneguard.attacks.base.Attack`). The default
``features="soft"`` are SOFT's, each once: loss, zlib, lowercase, Min-K% at k in {.05, .1, .2, .3, .4, .5, .6},
ratio, recall (those that ran); ``"extended"`` adds every other model-based score. The default model is a logistic
regression on standardised features, whose continuous P(member) leaves no large ties in the ROC; SOFT's depth-5
decision tree is ``model="tree"``.

Threat model: each fold is scored by a classifier fit on the other folds' labels, so the ensemble is an attacker who
holds labelled members and non-members of the target's training data, a stronger one than the threshold attacks
(which need no label); its report row says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuneguard.attacks import ATTACKS
from tuneguard.attacks.base import Attack, AttackContext, AttackOutput, Pass
from tuneguard.attacks.folds import out_of_fold, usable_folds
from tuneguard.errors import TuneguardError
from tuneguard.params import Params, param

# Which attacks' flags each feature set takes.
FEATURE_SETS = {"soft": ("soft",), "extended": ("soft", "extended")}
THREAT_MODEL = "the attacker holds labelled members and non-members, each fold fit on the others' labels"


def classifier(model: str, depth: int, seed: int):
    """An unfitted scikit-learn classifier: ``logistic`` (standardised features; lbfgs, deterministic) or
    ``tree`` (SOFT's decision tree of depth ``depth``)."""
    # scikit-learn only when a classifier is made: not to import the attack
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    if model == "tree":
        return DecisionTreeClassifier(max_depth=depth, random_state=seed)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


@dataclass
class EnsembleParams(Params):
    folds: int = param(5, "stratified folds of the out-of-fold prediction (at most the smaller class's size)", ge=2)
    features: str = param("soft", "soft: SOFT's features, each once; extended: every model-based score",
                          choices=tuple(FEATURE_SETS))
    model: str = param("logistic", "logistic: logistic regression on standardised features (continuous output); "
                       "tree: SOFT's decision tree", choices=("logistic", "tree"))
    depth: int = param(5, "depth of the tree (model=tree)", ge=1)


class EnsembleAttack(Attack):
    """Features: the scores of the flagged attacks that ran before it (Min-K% as its seven levels). NaNs are filled
    with the training folds' medians. The attacker's labelled rows are part of its threat model."""

    name = "ensemble"
    summary = f"classifier over the other scores, out-of-fold; threat model: {THREAT_MODEL}"
    needs = frozenset({"results"})
    Params = EnsembleParams

    def feature_attacks(self, suite: list[str]) -> list[str]:
        """The attacks of ``suite`` whose scores are features of the chosen set, in run order."""
        flags = FEATURE_SETS[self.params.features]
        return [n for n in ATTACKS if n in suite and n != self.name and ATTACKS.get(n).ensemble in flags]

    def passes(self, n_texts: int) -> dict[Pass, int]:
        return {}  # reads the other attacks' outputs: their passes are theirs

    def check_needs(self, suite: list[str]) -> None:
        if not self.feature_attacks(suite[:suite.index(self.name)] if self.name in suite else suite):
            flags = FEATURE_SETS[self.params.features]
            usable = [n for n in ATTACKS if ATTACKS.get(n).ensemble in flags]
            raise TuneguardError(f"the ensemble has no feature: run at least one of {', '.join(usable)} before it")

    def run(self, ctx: AttackContext) -> AttackOutput:
        p = self.params
        features: dict[str, np.ndarray] = {}
        for name in self.feature_attacks(list(ctx.results)):
            features.update(ATTACKS.get(name).ensemble_columns(ctx, ctx.results[name]))
        if not features:
            self.check_needs(list(ctx.results))  # raises: nothing before it to read
        x = np.column_stack(list(features.values())).astype(float)

        def fit_predict(train, test):
            fill = np.nanmedian(x[train], axis=0)
            fill = np.where(np.isnan(fill), 0.0, fill)
            clean = np.where(np.isnan(x), fill, x)
            model = classifier(p.model, p.depth, ctx.seed)
            model.fit(clean[train], ctx.labels[train])
            return model.predict_proba(clean[test])[:, 1]

        scores = out_of_fold(ctx.labels, p.folds, ctx.seed, fit_predict)
        what = f"depth-{p.depth} decision tree" if p.model == "tree" else "logistic regression"
        return AttackOutput(scores=scores, raw=scores, raw_name="out-of-fold P(member)",
                            note=f"{what}, {usable_folds(ctx.labels, p.folds)}-fold out-of-fold (threat model: "
                                 f"{THREAT_MODEL}) over: {', '.join(features)}",
                            extra={"features": list(features)})
