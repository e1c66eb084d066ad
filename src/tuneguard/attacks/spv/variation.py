"""SPV-MIA steps 3-4: probabilistic variation and the calibrated score, from mean log-likelihoods.

``LL`` is the mean per-token log-probability, so ``P_M(y) = exp(-NLL(y; M)) = exp(LL(y; M))``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tuneguard.models import LoadedModel
from tuneguard.neighbours import NeighbourSet

FORMS = ("prob", "logprob")

# (model, texts) -> mean per-token log-likelihood of each text; the attacks pass their scoring engines'.
LogLikelihood = Callable[[LoadedModel, list[str]], np.ndarray]


def variation(ll_text: np.ndarray, ll_neighbours: Sequence[np.ndarray], form: str = "prob") -> np.ndarray:
    """``V(x) = mean_j P(x~_j) - P(x)`` (``form="prob"``, the paper) or ``mean_j LL(x~_j) - LL(x)`` (``"logprob"``).

    ``ll_neighbours[i]`` holds the LLs of text i's neighbours (any number; none gives NaN).
    """
    if form not in FORMS:
        raise ValueError(f"unknown variation form {form!r}: use one of {FORMS}")
    ll_text = np.asarray(ll_text, dtype=np.float64)
    to_p = np.exp if form == "prob" else (lambda v: v)
    means = np.array([to_p(np.asarray(n, dtype=np.float64)).mean() if len(n) else np.nan for n in ll_neighbours])
    return means - to_p(ll_text)


def calibrated_score(v_target: np.ndarray, v_reference: np.ndarray | None) -> np.ndarray:
    """``-(V_target - V_ref)``, higher = member; without a reference (ablation) ``-V_target``."""
    v = np.asarray(v_target, dtype=np.float64)
    return -(v - np.asarray(v_reference, dtype=np.float64)) if v_reference is not None else -v


def neighbour_variation(model: LoadedModel, neighbours: NeighbourSet, ll: LogLikelihood, form: str) -> np.ndarray:
    """V_model(x) for every text of ``neighbours``: one LL pass over the texts and one over all their neighbours."""
    flat = [n for i in range(len(neighbours.texts)) for n in neighbours.of(i)]
    ll_text = ll(model, list(neighbours.texts))
    ll_flat = ll(model, flat) if flat else np.zeros(0)
    splits = np.cumsum([len(neighbours.of(i)) for i in range(len(neighbours.texts))])[:-1]
    return variation(ll_text, np.split(ll_flat, splits), form)
