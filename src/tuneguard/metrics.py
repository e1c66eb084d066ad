"""Membership-inference metrics: AUC, TPR at a fixed low FPR, and percentile-bootstrap confidence intervals.

Every AUC tuneguard computes from scores is :func:`mann_whitney_auc` (the share of (non-member, member) pairs the
member wins, a tie counting half): an attack's, several attacks' mean, a backdoor detector's calibration and cohort.

Conventions: label 1 = member, a higher score = more likely a member. TPR@FPR follows the canonical definition (the
largest TPR among ROC points whose FPR <= alpha); the papers' code's "nearest point" reading is the named variant
``rule="nearest"``, never the default.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from tuneguard.errors import TuneguardError

ALPHAS = (0.001, 0.01, 0.1)
RULES = ("canonical", "nearest")

# Bootstrap draws are processed in blocks so that the (draws x thresholds) matrices stay below ~32 MB each.
_BLOCK_CELLS = 4_000_000


def alpha_key(alpha: float) -> str:
    """The key of ``alpha`` in ``evaluate()``'s dicts ("0.001", "0.01", "0.1")."""
    return f"{alpha:g}"


def mann_whitney_auc(negatives: Any, positives: Any) -> float:
    """The AUC in its Mann-Whitney form: the share of (negative, positive) pairs in which the positive scores higher,
    a tie counting half (U / (m n); the area under the ROC's trapezoids, which scikit-learn's ``roc_auc_score`` sums to
    rounding). Exact up to one rounding: the pair count is a whole number of halves, divided once. One sort, no pair
    matrix. Both samples non-empty and free of NaN (callers drop non-finite scores first)."""
    neg = np.sort(np.asarray(negatives, dtype=float))
    pos = np.asarray(positives, dtype=float)
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(neg) * len(pos)))


def roc(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """FPR and TPR at every distinct score (sklearn's ``roc_curve`` without dropping points); non-finite dropped."""
    y, s, _ = _prepare(labels, scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(labels: Any, scores: Any, alpha: float, *, rule: str = "canonical") -> float:
    """TPR at FPR ``alpha``.

    ``rule="canonical"``: the largest TPR among ROC points whose FPR <= alpha. ``rule="nearest"``: the TPR of the ROC
    point whose FPR is nearest to alpha (the first such point in ROC order), as the SOFT and SPV-MIA code compute it.
    """
    _check_alpha(alpha)
    fpr, tpr = roc(labels, scores)
    return float(_tpr_from_curves(fpr[None], tpr[None], alpha, _check_rule(rule))[0])


def evaluate(labels: Any, scores: Any, *, alphas: tuple[float, ...] = ALPHAS, n_boot: int = 1000, seed: int = 0,
             rule: str = "canonical") -> dict:
    """AUC and TPR@FPR with 95% percentile-bootstrap CIs, the ROC curve and the counts behind them.

    Non-finite scores are dropped first (``n_dropped``). Members and non-members are resampled separately with
    replacement, ``n_boot`` times from a seeded generator, so the same seed gives the same CIs; ``n_boot=0`` skips
    the bootstrap (CIs are None). With fewer than 1/alpha non-members TPR@alpha is None and ``tpr_note`` says why:
    the lowest non-zero FPR such a set can measure is above alpha.
    """
    rule = _check_rule(rule)
    for alpha in alphas:
        _check_alpha(alpha)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise TuneguardError(f"n_boot must be a whole number >= 0 (bootstrap draws), got {n_boot!r}")
    y, s, n_dropped = _prepare(labels, scores)
    n_mem, n_non = int(y.sum()), int(len(y) - y.sum())
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)

    tprs, tpr_ci, notes = {}, {}, {}
    allowed = [a for a in alphas if n_non >= nonmembers_needed(a)]
    for alpha in alphas:
        key, need = alpha_key(alpha), nonmembers_needed(alpha)
        if alpha in allowed:
            tprs[key] = float(_tpr_from_curves(fpr[None], tpr[None], alpha, rule)[0])
            notes[key] = None
        else:
            tprs[key] = None
            notes[key] = f"needs >= {need} non-members, have {n_non}"
        tpr_ci[key] = None

    auc_ci = None
    if n_boot:
        aucs, boot_tprs = _bootstrap(y, s, allowed, n_boot, seed, rule)
        auc_ci = _percentile_ci(aucs)
        for alpha, values in zip(allowed, boot_tprs):
            tpr_ci[alpha_key(alpha)] = _percentile_ci(values)

    return {"auc": mann_whitney_auc(s[y == 0], s[y == 1]), "auc_ci": auc_ci, "tpr": tprs, "tpr_ci": tpr_ci,
            "tpr_note": notes, "n_members": n_mem, "n_nonmembers": n_non, "n_dropped": n_dropped,
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, "rule": rule, "n_boot": int(n_boot)}


def mean_auc(labels: Any, scores: list[Any], *, n_boot: int = 1000, seed: int = 0) -> tuple[float, list[float] | None]:
    """The mean AUC of several attacks that scored the same texts, and its 95% percentile-bootstrap CI.

    One joint resampling: each draw resamples the members and the non-members once (stratified, with replacement,
    as :func:`evaluate` does) and every attack is measured on that same draw, so the CI follows how the attacks rise
    and fall together. Averaging the attacks' own CI bounds instead would assume they move in lockstep and overstate
    the width when they do not. A pair with a non-finite score is left out of that attack's AUC, as :func:`evaluate`
    drops the row. ``n_boot=0``: no CI.
    """
    if not scores:
        raise TuneguardError("mean_auc needs at least one attack's scores")
    y = np.asarray(labels)
    classes = []  # per attack: its members' and non-members' scores
    for s in scores:
        _prepare(y, s)  # the shape, label and class-size checks of evaluate()
        s = np.asarray(s, dtype=float)
        classes.append((s[y == 1], s[y == 0]))
    mean = float(np.mean([mann_whitney_auc(non[np.isfinite(non)], mem[np.isfinite(mem)]) for mem, non in classes]))
    if not n_boot:
        return mean, None
    pairs = []  # per attack: member x non-member win matrix (1, 0.5 for a tie, 0) and which pairs count
    for mem, non in classes:
        valid = np.isfinite(mem)[:, None] & np.isfinite(non)[None, :]
        wins = (mem[:, None] > non[None, :]) + 0.5 * (mem[:, None] == non[None, :])
        pairs.append((np.where(valid, wins, 0.0), valid.astype(float)))
    n_mem, n_non = pairs[0][0].shape
    rng_mem, rng_non = np.random.default_rng(seed).spawn(2)
    cm = _resample_counts(rng_mem, n_mem, n_boot).astype(float)
    cn = _resample_counts(rng_non, n_non, n_boot).astype(float)
    # AUC of a draw = sum_ij c_i c_j win_ij / sum_ij c_i c_j valid_ij, for every attack on the same counts.
    draws = np.mean([((cm @ w) * cn).sum(axis=1) / ((cm @ v) * cn).sum(axis=1) for w, v in pairs], axis=0)
    return mean, _percentile_ci(draws)


def _prepare(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate labels/scores, drop non-finite scores; return labels (int), scores (float) and the drop count."""
    y = np.asarray(labels)
    try:
        s = np.asarray(scores, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TuneguardError(f"scores must be numbers: {exc}") from None
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise TuneguardError(f"labels and scores must be two flat lists of the same length, got shapes {y.shape} "
                             f"and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise TuneguardError("labels must be 1 (member) or 0 (non-member)")
    finite = np.isfinite(s)
    y, s = y[finite].astype(int), s[finite]
    n_mem, n_non = int(y.sum()), int(len(y) - y.sum())
    if n_mem < 2 or n_non < 2:
        raise TuneguardError(f"metrics need at least 2 members and 2 non-members with a finite score, have {n_mem} "
                             f"and {n_non} ({int((~finite).sum())} non-finite scores dropped)")
    return y, s, int((~finite).sum())


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise TuneguardError(f"FPR level alpha must lie strictly between 0 and 1, got {alpha!r}")


def _check_rule(rule: str) -> str:
    if rule not in RULES:
        raise TuneguardError(f"unknown TPR@FPR rule {rule!r}: use one of {', '.join(RULES)}")
    return rule


def nonmembers_needed(alpha: float) -> int:
    """Non-members needed before an FPR of ``alpha`` is measurable: ceil(1/alpha), robust to 1/0.001 = 999.99..."""
    return math.ceil(1 / alpha - 1e-9)


def _percentile_ci(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _tpr_from_curves(fpr: np.ndarray, tpr: np.ndarray, alpha: float, rule: str) -> np.ndarray:
    """TPR@alpha of each row of (draws x points) ROC matrices whose points run in ROC order from (0, 0)."""
    if rule == "canonical":
        # (0, 0) is always a point, so every row has one with FPR <= alpha.
        return np.where(fpr <= alpha, tpr, -np.inf).max(axis=1)
    nearest = np.abs(fpr - alpha).argmin(axis=1)  # argmin takes the first tie, as np.argmin on roc_curve output does
    return np.take_along_axis(tpr, nearest[:, None], axis=1)[:, 0]


def _bootstrap(y: np.ndarray, s: np.ndarray, alphas: list[float], n_boot: int, seed: int,
               rule: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """AUC and TPR@alpha for ``n_boot`` stratified resamples, vectorised over draws.

    A resample is a count per original row, so each draw's ROC can be read off cumulative counts at the pooled
    distinct scores: no per-draw sort or roc_curve call. Thresholds absent from a draw only repeat a neighbouring
    point, which changes neither the area nor either TPR rule.
    """
    mem, non = np.sort(s[y == 1]), np.sort(s[y == 0])
    thresholds = np.unique(s)[::-1]  # descending: the ROC order
    # Members / non-members scoring >= threshold = total - (count of rows sorted before the first one >= it).
    mem_below = np.searchsorted(mem, thresholds, side="left")
    non_below = np.searchsorted(non, thresholds, side="left")
    # Separate streams for the two classes keep each class's draws independent of the block size.
    rng_mem, rng_non = np.random.default_rng(seed).spawn(2)
    block = max(1, _BLOCK_CELLS // (len(thresholds) + 1))
    aucs, tprs = [], [[] for _ in alphas]
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        fpr = _rates(_resample_counts(rng_non, len(non), b), non_below)
        tpr = _rates(_resample_counts(rng_mem, len(mem), b), mem_below)
        aucs.append((np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(axis=1))
        for out, alpha in zip(tprs, alphas):
            out.append(_tpr_from_curves(fpr, tpr, alpha, rule))
    return np.concatenate(aucs), [np.concatenate(t) for t in tprs]


def _resample_counts(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """(draws x n) times each of n sorted rows is picked when n rows are drawn with replacement."""
    picks = rng.integers(0, n, size=(draws, n)) + n * np.arange(draws)[:, None]
    return np.bincount(picks.ravel(), minlength=draws * n).reshape(draws, n)


def _rates(counts: np.ndarray, below: np.ndarray) -> np.ndarray:
    """(draws x (1 + thresholds)) share of a class scoring >= each threshold, with the (0, 0) point first."""
    n = counts.shape[1]
    cum = np.concatenate([np.zeros((len(counts), 1), dtype=counts.dtype), counts.cumsum(axis=1)], axis=1)
    rates = (n - cum[:, below]) / n
    return np.concatenate([np.zeros((len(counts), 1)), rates], axis=1)
