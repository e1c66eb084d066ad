"""AUC, TPR@FPR (canonical and nearest) and the vectorised stratified bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from tuneguard import metrics
from tuneguard.errors import TuneguardError
from tuneguard.metrics import ALPHAS, evaluate, roc, tpr_at_fpr

# Non-members score 1..10; members 10.5, 9.5, 8.5, 3.
HAND_LABELS = [0] * 10 + [1] * 4
HAND_SCORES = [*range(1, 11), 10.5, 9.5, 8.5, 3]


def _tied(n_mem: int = 200, n_non: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to one decimal, so many ties within and across classes."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_mem, int), np.zeros(n_non, int)]
    return y, np.round(rng.normal(size=n_mem + n_non) + 0.6 * y, 1)


def _sklearn_canonical(y: np.ndarray, s: np.ndarray, alpha: float) -> float:
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(tpr[fpr <= alpha].max())


def test_auc_and_roc_match_sklearn_with_ties():
    y, s = _tied()
    assert len(np.unique(s)) < len(s) / 3  # the case really has ties
    result = evaluate(y, s, n_boot=0)
    assert result["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr = roc(y, s)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, ref_fpr)
    np.testing.assert_array_equal(tpr, ref_tpr)
    assert result["roc"] == {"fpr": ref_fpr.tolist(), "tpr": ref_tpr.tolist()}


@pytest.mark.parametrize(("alpha", "expected"), [(0.05, 0.25), (0.1, 0.5), (0.2, 0.75), (0.5, 0.75), (0.9, 1.0)])
def test_tpr_at_fpr_hand_computed(alpha, expected):
    # alpha 0.1 allows one false positive (score 10): members above 9 are caught -> 2 of 4.
    assert tpr_at_fpr(HAND_LABELS, HAND_SCORES, alpha) == expected


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.03, 0.1, 0.25])
def test_tpr_at_fpr_matches_sklearn_roc_curve(alpha):
    y, s = _tied(300, 300, seed=3)
    assert tpr_at_fpr(y, s, alpha) == _sklearn_canonical(y, s, alpha)


def test_nearest_rule_differs_from_canonical():
    # alpha 0.12: the nearest ROC FPR is 0.1, whose first point (threshold 10) catches one member of four; the
    # canonical rule takes the best point with FPR <= 0.12 (threshold 9.5) and catches two.
    assert tpr_at_fpr(HAND_LABELS, HAND_SCORES, 0.12, rule="nearest") == 0.25
    assert tpr_at_fpr(HAND_LABELS, HAND_SCORES, 0.12) == 0.5
    # A member tied with the non-member at 9: the nearest point to 0.19 has FPR 0.2 > alpha, and a higher TPR than
    # any point the canonical rule may use.
    scores = [*range(1, 11), 10.5, 9.5, 9, 3]
    assert tpr_at_fpr(HAND_LABELS, scores, 0.19, rule="nearest") == 0.75
    assert tpr_at_fpr(HAND_LABELS, scores, 0.19) == 0.5


def test_ci_contains_estimate_and_is_seeded():
    y, s = _tied()
    a, b = evaluate(y, s, seed=1), evaluate(y, s, seed=1)
    assert a["auc_ci"] == b["auc_ci"] and a["tpr_ci"] == b["tpr_ci"]
    assert a["auc_ci"][0] <= a["auc"] <= a["auc_ci"][1]
    assert a["auc_ci"][1] - a["auc_ci"][0] > 0.01  # a real interval, not a point
    for key in ("0.01", "0.1"):
        lo, hi = a["tpr_ci"][key]
        assert lo <= a["tpr"][key] <= hi
    assert evaluate(y, s, seed=2)["auc_ci"] != a["auc_ci"]
    assert a["n_boot"] == 1000 and a["rule"] == "canonical"


@pytest.mark.parametrize("rule", metrics.RULES)
def test_vectorised_bootstrap_equals_a_loop_over_resamples(rule):
    y, s = _tied(40, 60, seed=5)
    alphas = [0.02, 0.1, 0.3]
    aucs, tprs = metrics._bootstrap(y, s, alphas, 50, 7, rule)
    # The same draws, the slow way: build every resample and call sklearn.
    mem, non = np.sort(s[y == 1]), np.sort(s[y == 0])
    rng_mem, rng_non = np.random.default_rng(7).spawn(2)
    pick_non, pick_mem = rng_non.integers(0, len(non), (50, len(non))), rng_mem.integers(0, len(mem), (50, len(mem)))
    for b in range(50):
        yb = np.r_[np.ones(len(mem), int), np.zeros(len(non), int)]
        sb = np.r_[mem[pick_mem[b]], non[pick_non[b]]]
        assert aucs[b] == pytest.approx(roc_auc_score(yb, sb), abs=1e-12)
        for alpha, values in zip(alphas, tprs):
            assert values[b] == tpr_at_fpr(yb, sb, alpha, rule=rule)


def test_too_few_nonmembers_gives_no_tpr_and_says_why():
    y, s = _tied(50, 100)
    result = evaluate(y, s)
    assert result["tpr"]["0.001"] is None and result["tpr_ci"]["0.001"] is None
    assert result["tpr_note"]["0.001"] == "needs >= 1000 non-members, have 100"
    assert result["tpr"]["0.01"] is not None and result["tpr_note"]["0.01"] is None  # exactly 1/alpha is enough
    y, s = _tied(50, 99)
    assert evaluate(y, s, n_boot=0)["tpr"]["0.01"] is None


def test_non_finite_scores_are_dropped_and_counted():
    y, s = _tied(30, 30)
    s_bad = s.copy()
    s_bad[[0, 5, 40]] = [np.nan, np.inf, -np.inf]
    keep = np.isfinite(s_bad)
    got, want = evaluate(y, s_bad, seed=3), evaluate(y[keep], s[keep], seed=3)
    assert got["n_dropped"] == 3 and (got["n_members"], got["n_nonmembers"]) == (28, 29)
    assert {k: v for k, v in got.items() if k != "n_dropped"} == {k: v for k, v in want.items() if k != "n_dropped"}


def test_result_is_plain_json():
    y, s = _tied(20, 20)
    result = evaluate(y, s)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert list(result["tpr"]) == [metrics.alpha_key(a) for a in ALPHAS] == ["0.001", "0.01", "0.1"]


@pytest.mark.parametrize(("labels", "scores", "message"), [
    ([1, 0, 0], [0.1, 0.2, 0.3], "at least 2 members"),
    ([1, 1, 0, 0], [0.1, np.nan, 0.2, 0.3], "1 non-finite"),
    ([1, 2, 0, 0], [0.1, 0.2, 0.3, 0.4], r"must be 1 \(member\)"),
    ([1, 1, 0, 0], [0.1, 0.2, 0.3], "same length"),
    ([1, 1, 0, 0], ["a", "b", "c", "d"], "must be numbers"),
])
def test_bad_input_is_a_tuneguard_error(labels, scores, message):
    with pytest.raises(TuneguardError, match=message):
        evaluate(labels, scores)


def test_bad_options_are_tuneguard_errors():
    y, s = _tied(10, 10)
    with pytest.raises(TuneguardError, match="between 0 and 1"):
        tpr_at_fpr(y, s, 1.5)
    with pytest.raises(TuneguardError, match="unknown TPR@FPR rule"):
        evaluate(y, s, rule="closest")
    with pytest.raises(TuneguardError, match="n_boot"):
        evaluate(y, s, n_boot=-1)


# -- the mean AUC of several attacks --------------------------------------------------------------------------------

def _noisy_attacks(n: int = 60, attacks: int = 4, seed: int = 3) -> tuple[np.ndarray, list[np.ndarray]]:
    """Attacks sharing a weak membership signal, each with its own noise."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    return y, [0.6 * y + rng.normal(size=2 * n) for _ in range(attacks)]


def test_mean_auc_is_the_mean_of_sklearn_aucs_with_ties_and_a_non_finite_score():
    y, scores = _noisy_attacks()
    scores[0] = np.round(scores[0], 1)  # ties
    scores[1][[0, 70]] = [np.nan, np.inf]
    mean, _ = metrics.mean_auc(y, scores, n_boot=0)
    finite = [np.isfinite(s) for s in scores]
    assert mean == pytest.approx(np.mean([roc_auc_score(y[f], s[f]) for s, f in zip(scores, finite)]), abs=1e-12)


def test_mean_auc_ci_resamples_the_attacks_jointly():
    y, scores = _noisy_attacks()
    mean, (lo, hi) = metrics.mean_auc(y, scores, n_boot=2000, seed=1)
    assert lo < mean < hi
    assert metrics.mean_auc(y, scores, n_boot=2000, seed=1) == (mean, [lo, hi])  # seeded
    # The same attack twice is that attack: a joint draw cannot average its noise away.
    assert metrics.mean_auc(y, [scores[0]] * 3, n_boot=500, seed=2) == metrics.mean_auc(y, scores[:1], n_boot=500,
                                                                                       seed=2)
    # Attacks with their own noise average part of it away: the joint CI is narrower than the mean of their CIs,
    # which is what averaging their CI bounds would report.
    widths = [np.diff(evaluate(y, s, n_boot=2000, seed=1)["auc_ci"])[0] for s in scores]
    assert hi - lo < 0.85 * np.mean(widths)


def test_mean_auc_draws_equal_sklearn_on_each_joint_resample():
    y, scores = _noisy_attacks(n=15, attacks=3)
    _, ci = metrics.mean_auc(y, scores, n_boot=40, seed=4)
    # The same draws, the slow way: one resample of the member and non-member rows, every attack scored on it.
    rng_mem, rng_non = np.random.default_rng(4).spawn(2)
    mem, non = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pick_mem, pick_non = rng_mem.integers(0, 15, (40, 15)), rng_non.integers(0, 15, (40, 15))
    yb = np.r_[np.ones(15, int), np.zeros(15, int)]
    draws = [np.mean([roc_auc_score(yb, s[np.r_[mem[pick_mem[b]], non[pick_non[b]]]]) for s in scores])
             for b in range(40)]
    assert ci == pytest.approx(list(np.percentile(draws, [2.5, 97.5])), abs=1e-12)


def test_mann_whitney_auc_counts_ties_half_and_rounds_once():
    rng = np.random.default_rng(5)
    for _ in range(50):
        neg = rng.integers(0, 5, rng.integers(1, 9)).astype(float)
        pos = rng.integers(0, 5, rng.integers(1, 9)).astype(float)
        halves = sum(2 * int(p > n) + int(p == n) for p in pos for n in neg)  # every pair, a tie counting half
        assert metrics.mann_whitney_auc(neg, pos) == halves / 2 / (len(neg) * len(pos))
        y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
        assert metrics.mann_whitney_auc(neg, pos) == pytest.approx(roc_auc_score(y, np.r_[neg, pos]), abs=1e-12)
    # A chance split is exactly 0.5: scikit-learn's trapezoids give 0.49999999999999994 here, which turned a backdoor
    # calibration's direction to "lower" (calibrate() reads raw >= 0.5 as "higher").
    assert metrics.mann_whitney_auc([0.0, 3.0], [1.0, 0.0, 3.0]) == 0.5
