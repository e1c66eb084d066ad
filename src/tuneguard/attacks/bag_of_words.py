"""Bag-of-words blind baseline (Das et al. 2024): no model access, it measures member/non-member distribution shift."""

from dataclasses import dataclass

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput, Pass
from tuneguard.attacks.folds import out_of_fold, usable_folds
from tuneguard.params import Params, param


@dataclass
class BagOfWordsParams(Params):
    folds: int = param(5, "stratified folds of the out-of-fold prediction (at most the smaller class's size)", ge=2)
    trees: int = param(100, "trees of the random forest", ge=1)
    depth: int = param(2, "depth of each tree", ge=1)
    min_leaf: int = param(5, "fewest texts in a leaf", ge=1)
    # An int is a count of texts, a float a share of them (scikit-learn's CountVectorizer): never coerced.
    min_df: int | float = param(0.05, "drop tokens in fewer texts than this (int: a count, float: a share)", gt=0)


class BagOfWordsAttack(Attack):
    """Token counts (min_df 0.05) into a shallow random forest; out-of-fold P(member) over stratified folds.

    An AUC far from 0.5 means the split itself is confounded: the report says so.
    """

    name = "bag-of-words"
    summary = "blind baseline: text features only, no model"
    Params = BagOfWordsParams
    blind = True

    def run(self, ctx: AttackContext) -> AttackOutput:
        from sklearn.ensemble import RandomForestClassifier  # scikit-learn only when the attack runs
        from sklearn.feature_extraction.text import CountVectorizer

        p = self.params

        def fit_predict(train, test):
            vec = CountVectorizer(min_df=p.min_df)
            x_train = vec.fit_transform([ctx.texts[i] for i in train])
            forest = RandomForestClassifier(n_estimators=p.trees, max_depth=p.depth, min_samples_leaf=p.min_leaf,
                                            random_state=ctx.seed)
            forest.fit(x_train, ctx.labels[train])
            return forest.predict_proba(vec.transform([ctx.texts[i] for i in test]))[:, 1]

        scores = out_of_fold(ctx.labels, p.folds, ctx.seed, fit_predict)
        return AttackOutput(scores=scores, raw=scores, raw_name="out-of-fold P(member)",
                            note=f"{usable_folds(ctx.labels, p.folds)}-fold out-of-fold; uses the labels of the "
                                 "other folds")

    def passes(self, n_texts: int) -> dict[Pass, int]:
        return {}  # blind: no model
