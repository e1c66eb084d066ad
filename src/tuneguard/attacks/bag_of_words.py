"""Bag-of-words blind baseline (Das et al. 2024): no model access, it measures member/non-member distribution shift."""

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import CountVectorizer

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.attacks.folds import out_of_fold


class BagOfWordsAttack(Attack):
    """Token counts (min_df 0.05) into a shallow random forest; out-of-fold P(member) over stratified folds.

    An AUC far from 0.5 means the split itself is confounded: the report says so.
    """

    name = "bag-of-words"
    defaults = {"folds": 5, "trees": 100, "depth": 2, "min_leaf": 5, "min_df": 0.05}
    summary = "blind baseline: text features only, no model"

    def run(self, ctx: AttackContext) -> AttackOutput:
        p = self.params

        def fit_predict(train, test):
            vec = CountVectorizer(min_df=p["min_df"])
            x_train = vec.fit_transform([ctx.texts[i] for i in train])
            forest = RandomForestClassifier(n_estimators=p["trees"], max_depth=p["depth"],
                                            min_samples_leaf=p["min_leaf"], random_state=ctx.seed)
            forest.fit(x_train, ctx.labels[train])
            return forest.predict_proba(vec.transform([ctx.texts[i] for i in test]))[:, 1]

        scores = out_of_fold(ctx.labels, p["folds"], ctx.seed, fit_predict)
        return AttackOutput(scores=scores, raw=scores, raw_name="out-of-fold P(member)",
                            note=f"{p['folds']}-fold out-of-fold; uses the labels of the other folds")


ATTACK = BagOfWordsAttack
