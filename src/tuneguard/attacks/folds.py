"""Out-of-fold prediction: a supervised attack never scores a row it was fit on."""

from __future__ import annotations

from typing import Callable

import numpy as np

from tuneguard.errors import TuneguardError


def usable_folds(labels: np.ndarray, folds: int) -> int:
    """The folds ``out_of_fold`` uses: ``folds``, at most the size of the smaller class (each fold needs both)."""
    return min(folds, int(min((labels == 1).sum(), (labels == 0).sum())))


def out_of_fold(labels: np.ndarray, folds: int, seed: int,
                fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Scores for every row from a model fit on the other folds (stratified, shuffled with ``seed``); the fold
    count is :func:`usable_folds`."""
    from sklearn.model_selection import StratifiedKFold  # scikit-learn only when an attack fits: not to import one

    folds = usable_folds(labels, folds)
    if folds < 2:
        raise TuneguardError("a supervised attack needs at least 2 members and 2 non-members")
    scores = np.full(len(labels), np.nan)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels):
        scores[test] = fit_predict(train, test)
    return scores
