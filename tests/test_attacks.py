"""Every attack's formula against a value computed by hand, their signs on an over-fitted toy model, and the runner."""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tuneguard.attacks import ATTACKS, run_attacks
from tuneguard.attacks.base import AttackContext, lowest_k_mean, token_count
from tuneguard.attacks.folds import out_of_fold
from tuneguard.attacks.recall import SEPARATOR
from tuneguard.attacks.zlib import zlib_bytes
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.scoring import ScoringEngine
from tuneguard.train import TrainConfig, finetune
from helpers import FakeEngine, context, run, sentences, ts

# -- formulas -----------------------------------------------------------------------------------------------------

A, B = "Hello hello HELLO, a text.", "ZZZZZzzzzzzzzzzzzzzzzzzzzzzzzz"
TABLE = {A: ts([-1.0, -2.0, -3.0, -6.0]), B: ts([-0.5, -1.5])}


def test_loss():
    out = run("loss", context(TABLE, [A, B]))
    np.testing.assert_allclose(out.scores, [-3.0, -1.0])
    np.testing.assert_allclose(out.raw, [3.0, 1.0])  # NLL, MIMIR's sign


def test_zlib_both_forms():
    za, zb = len(zlib.compress(A.encode())), len(zlib.compress(B.encode()))
    assert zb < len(B)  # a repetitive text compresses: the calibration means something
    out = run("zlib", context(TABLE, [A, B]))
    np.testing.assert_allclose(out.scores, [-3.0 / za, -1.0 / zb])
    np.testing.assert_allclose(out.raw, [3.0 / za, 1.0 / zb])
    ratio = run("zlib", context(TABLE, [A, B]), form="ratio")
    np.testing.assert_allclose(ratio.scores, [-3.0 / (za / len(A)), -1.0 / (zb / len(B))])
    assert ratio.note
    with pytest.raises(TuneguardError, match="canonical"):
        run("zlib", context(TABLE, [A, B]), form="bogus")


def test_zlib_counts_the_bytes_of_the_scored_text_only(tiny):
    """LL covers the truncated text the engine scored, so zlib's byte count and len(x) must too (issue 9, item 1)."""
    engine = ScoringEngine(tiny, max_length=12, cache=False, progress=False)
    long, short = " ".join(sentences(3, seed=21, clauses=2)), "The cat sees the dog."
    ctx = AttackContext(texts=[long, short], labels=np.array([1, 0]), target=engine, progress=False)
    scored = tiny.tokenizer.decode(engine.tokenize(long)[:12])  # GPT-2: no BOS, all 12 tokens are the text's
    assert engine.score([long])[0].truncated and len(scored) < len(long) / 3
    ll = engine.ll([long, short])
    canonical = run("zlib", ctx)
    np.testing.assert_allclose(canonical.scores, ll / [zlib_bytes(scored), zlib_bytes(short)])
    ratio = run("zlib", ctx, form="ratio")
    np.testing.assert_allclose(ratio.scores, ll / [zlib_bytes(scored) / len(scored),
                                                   zlib_bytes(short) / len(short)])


def test_lowercase():
    table = {**TABLE, A.lower(): ts([-1.0, -1.0]), B.lower(): ts([-0.25, -0.75])}
    ctx = context(table, [A, B])
    out = run("lowercase", ctx)
    np.testing.assert_allclose(out.scores, [1.0 / 3.0, 0.5 / 1.0])
    assert [A.lower(), B.lower()] in ctx.target.calls  # one extra pass on the lower-cased texts


LP7 = [-3.0, -1.0, -7.0, -2.0, -5.0, -4.0, -6.0]


@pytest.mark.parametrize("k, rounding, expected", [
    (0.2, "ceil", (-7 - 6) / 2),  # ceil(1.4) = 2
    (0.2, "floor", -7.0),  # int(1.4) = 1, MIMIR's count
    (0.1, "ceil", -7.0),  # ceil(0.7) = 1
    (0.1, "floor", float("nan")),  # int(0.7) = 0: no token, no score
    (0.5, "ceil", (-7 - 6 - 5 - 4) / 4),
    (1.0, "ceil", sum(LP7) / 7),
])
def test_min_k(k, rounding, expected):
    out = run("min-k", context({A: ts(LP7), B: ts([-1.0, -2.0])}, [A, B]), k=k, rounding=rounding)
    np.testing.assert_allclose(out.scores[0], expected)
    np.testing.assert_allclose(out.raw[0], -expected)


@pytest.mark.parametrize("k, rounding, count", [(0.55, "ceil", 55), (0.29, "floor", 29), (0.07, "ceil", 7),
                                                 (0.551, "ceil", 56), (0.559, "floor", 55)])
def test_min_k_token_count_is_exact(k, rounding, count):
    # Floating point takes 56 for 0.55 * 100 (= 55.000000000000007) and 28 for int(0.29 * 100) (= 28.999999999999996).
    values = np.arange(100.0)
    assert token_count(k, 100, rounding) == count
    assert lowest_k_mean(values, k, rounding=rounding) == values[:count].mean()


def test_lowest_k_mean_of_nothing_is_nan():
    assert math.isnan(lowest_k_mean(np.zeros(0), 0.2))


def test_min_k_plus_plus():
    lp = np.array([-1.0, -4.0, -2.0, -8.0, -3.0])
    mu = np.array([-2.0, -2.0, -1.0, -4.0, -3.0])
    sigma = np.array([0.5, 1.0, 2.0, 4.0, 0.0])  # the last: a one-hot distribution
    z = [2.0, -2.0, -0.5, -1.0, 0.0]  # (lp - mu) / sigma, and 0 where sigma = 0
    ctx = context({A: ts(lp, mu, sigma), B: ts([-1.0, -1.0])}, [A, B])
    np.testing.assert_allclose(run("min-k++", ctx).scores[0], np.mean(sorted(z)[:1]))  # ceil(0.2 * 5) = 1
    np.testing.assert_allclose(run("min-k++", ctx, k=0.6).scores[0], np.mean(sorted(z)[:3]))
    plain = run("min-k++", ctx, k=0.6, normalise=False)  # SOFT's code: lp - mu
    np.testing.assert_allclose(plain.scores[0], np.mean(sorted(lp - mu)[:3]))
    assert plain.note and "normalisation" in plain.note


def test_min_k_plus_plus_uniform_distribution_gives_zero():
    from test_scoring import with_bos

    from tuneguard.attacks.min_k_plus_plus import z_scores

    # Tiny Llama: BOS = pad, whose embedding row is zero, so the distribution after BOS is exactly uniform.
    loaded = with_bos(tiny_model("llama"))
    scores = ScoringEngine(loaded, cache=False, progress=False).score(["hello"])[0]
    assert scores.logprobs[0] == pytest.approx(-math.log(len(loaded.tokenizer)))  # uniform indeed
    assert z_scores(scores)[0] == 0.0


def test_dc_pdd_by_hand():
    # Corpus tokens: 1 x3, 2 x1, 3 x2 -> total 6; |V| = 10, so f(t) = (count + 1) / 16.
    corpus = ["1 1 2", "3 3 1"]
    text = "x"
    lp = np.log([0.5, 1e-3, 0.9, 2e-3])
    ids = [2, 5, 2, 3]  # 2 repeats: only its first occurrence counts
    ctx = context({text: ts(lp, ids=ids), B: ts([-1.0, -1.0], ids=[1, 1])}, [text, B], corpus=corpus)
    out = run("dc-pdd", ctx)
    a = [min(0.5 * math.log(16 / 2), 0.01),  # token 2: count 1, clipped
         min(1e-3 * math.log(16 / 1), 0.01),  # token 5: unseen, Laplace count 0 + 1
         min(2e-3 * math.log(16 / 3), 0.01)]  # token 3: count 2
    assert a[1] < 0.01 and a[2] < 0.01  # not everything is clipped
    np.testing.assert_allclose(out.scores[0], np.mean(a))
    np.testing.assert_allclose(out.scores[1], min(1.0 / math.e * math.log(16 / 4), 0.01))
    assert out.extra["corpus_tokens"] == 6
    np.testing.assert_allclose(run("dc-pdd", ctx, clip=10.0).scores[0],
                               np.mean([0.5 * math.log(8), 1e-3 * math.log(16), 2e-3 * math.log(16 / 3)]))
    with pytest.raises(TuneguardError, match="corpus"):
        run("dc-pdd", context(ctx.target.table, [text, B]))


def test_ratio_both_forms():
    ref = FakeEngine({A: ts([-4.0, -4.0]), B: ts([-2.0])})
    ctx = context(TABLE, [A, B], reference=ref)
    diff = run("ratio", ctx)
    np.testing.assert_allclose(diff.scores, [-3.0 + 4.0, -1.0 + 2.0])
    np.testing.assert_allclose(diff.raw, -diff.scores)
    ratio = run("ratio", ctx, form="ratio")
    np.testing.assert_allclose(ratio.scores, [-3.0 / 4.0, -1.0 / 2.0])  # -NLL_t / NLL_ref
    with pytest.raises(TuneguardError, match="difference"):
        run("ratio", ctx, form="log")


def test_unknown_parameter():
    with pytest.raises(TuneguardError, match="no parameter 'kk'"):
        ATTACKS.make("min-k", kk=0.3)


# -- ReCall / CON-ReCall prefixes ---------------------------------------------------------------------------------

class SpyEngine:
    """A real engine that records the prefixes it is asked to score with."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine, self.prefixes = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def score(self, texts, prefixes=None, **kwargs):
        if prefixes is not None:
            self.prefixes.append(list(prefixes))
        return self.engine.score(texts, prefixes, **kwargs)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("gpt2")


def test_recall_prefix_and_value(tiny):
    texts = sentences(4, seed=1, clauses=1)
    shots = sentences(3, seed=2, clauses=1)
    spy = SpyEngine(ScoringEngine(tiny, cache=False, progress=False))
    ctx = AttackContext(texts=texts, labels=np.array([1, 1, 0, 0]), target=spy, nonmember_shots=shots,
                        progress=False)
    out = run("recall", ctx)
    prefix = shots[0] + SEPARATOR + shots[1] + SEPARATOR + shots[2] + SEPARATOR
    assert spy.prefixes == [[prefix] * 4]
    conditioned, plain = spy.engine.score(texts, [prefix] * 4), spy.engine.score(texts)
    # GPT-2 adds no BOS: LL(x) cannot score x's first token, so LL(x|P) leaves it out too (the same positions).
    assert all(c.n == p.n + 1 for c, p in zip(conditioned, plain))
    matched = np.array([c.logprobs[1:].mean() for c in conditioned])
    np.testing.assert_allclose(out.scores, matched / spy.engine.ll(texts))
    assert out.note is None and out.extra["n_shots"] == 3
    keep = run("recall", ctx, first_token="keep")  # the named variant: every token x has beside the prefix
    np.testing.assert_allclose(keep.scores, np.array([c.ll for c in conditioned]) / spy.engine.ll(texts))


class PrefixEngine(FakeEngine):
    """A FakeEngine whose texts score differently behind a prefix (``table[text]`` / ``prefixed[text]``), with room
    for any prefix and no BOS: behind a prefix a text has one more scored token, its first."""

    def __init__(self, table, prefixed):
        super().__init__(table)
        self.prefixed = prefixed

    def score(self, texts, prefixes=None, *, desc=""):
        if prefixes is None or not any(prefixes):
            return super().score(texts)
        return [self.prefixed[t] for t in texts]

    def prefix_room(self, text):
        return 10_000


def test_recall_over_matched_tokens_toy_case():
    # Members: x's first token is far more likely behind the prefix (-0.1 vs -3), the rest a little less (-1.2 vs
    # -1.1). Matched tokens (canonical) see the shift over the positions LL(x) scores: members' ReCall > non-members'.
    # Keeping the first token lets that one token decide, and the verdict flips.
    texts = [f"{i}" for i in range(4)]
    labels = np.array([1, 1, 0, 0])
    table = {t: ts([-1.0, -1.0]) for t in texts}
    prefixed = {t: ts([-0.1, -1.2, -1.2] if y else [-3.0, -1.1, -1.1]) for t, y in zip(texts, labels)}
    ctx = AttackContext(texts=texts, labels=labels, target=PrefixEngine(table, prefixed), nonmember_shots=["7 7"],
                        progress=False)
    matched, keep = run("recall", ctx).scores, run("recall", ctx, first_token="keep").scores
    np.testing.assert_allclose(matched, [1.2, 1.2, 1.1, 1.1])
    np.testing.assert_allclose(keep, [2.5 / 3, 2.5 / 3, 5.2 / 3, 5.2 / 3])
    assert roc_auc_score(labels, matched) == 1.0 and roc_auc_score(labels, keep) == 0.0
    ctx.member_shots = ["8 8"]
    np.testing.assert_allclose(run("con-recall", ctx, gamma=0.5).scores, 0.5 * matched)  # both prefixes matched


def test_recall_uses_the_same_shots_for_every_text():
    texts = ["The cat sees the dog.", "A much longer text that leaves less room for the shots in front of it."]
    shots = sentences(4, seed=3, clauses=1)
    engine = ScoringEngine(tiny_model("gpt2", n_positions=40), cache=False, progress=False)  # a short context
    sizes = [len(engine.tokenize(s + SEPARATOR)) for s in shots]
    fits = []
    for text in texts:  # how many of the most recent whole shots fit beside each text
        room, n = engine.prefix_room(text), 0
        while n < len(shots) and sum(sizes[len(shots) - n - 1:]) <= room:
            n += 1
        fits.append(n)
    assert 0 < fits[1] < fits[0] <= len(shots) - 1  # the texts differ in how many shots fit
    expected = "".join(s + SEPARATOR for s in shots[len(shots) - fits[1]:])  # what fits beside every text
    spy = SpyEngine(engine)
    ctx = AttackContext(texts=texts, labels=np.array([1, 0]), target=spy, nonmember_shots=shots, progress=False)
    out = run("recall", ctx)
    assert spy.prefixes == [[expected, expected]]
    assert len(engine.tokenize(expected)) <= min(engine.prefix_room(t) for t in texts)  # no shot cut in half
    assert out.note.startswith(f"the {fits[1]} most recent of 4 shots fit beside every text")
    assert out.extra["n_shots"] == fits[1]
    assert np.isfinite(out.scores).all()


def test_recall_nan_when_no_shot_fits():
    engine = ScoringEngine(tiny_model("gpt2", n_positions=12), cache=False, progress=False)
    texts = ["The cat sees the dog near the river bank.", "ok then"]
    shots = ["A shot that is far too long to fit in twelve tokens of context at all."]
    ctx = AttackContext(texts=texts, labels=np.array([1, 0]), target=engine, nonmember_shots=shots, progress=False)
    out = run("recall", ctx)
    assert np.isnan(out.scores).all()
    assert "could not fit even one" in out.note


def test_con_recall_value(tiny):
    texts = sentences(4, seed=4, clauses=1)
    non, mem = sentences(2, seed=5, clauses=1), sentences(2, seed=6, clauses=1)
    engine = ScoringEngine(tiny, cache=False, progress=False)
    ctx = AttackContext(texts=texts, labels=np.array([1, 1, 0, 0]), target=engine, nonmember_shots=non,
                        member_shots=mem, progress=False)
    ll = engine.ll(texts)

    def matched(shots):  # LL(x|P) over the positions LL(x) scores (no BOS: all but x's first token)
        return np.array([s.logprobs[1:].mean() for s in engine.score(texts, ["".join(x + SEPARATOR for x in shots)]
                                                                       * 4)])

    ll_non, ll_mem = matched(non), matched(mem)
    np.testing.assert_allclose(run("con-recall", ctx).scores, (ll_non - ll_mem) / ll)
    np.testing.assert_allclose(run("con-recall", ctx, gamma=0.5).scores, (ll_non - 0.5 * ll_mem) / ll)


# -- supervised attacks never score their own training rows -------------------------------------------------------

@pytest.mark.parametrize("model", ["logistic", "tree"])
def test_ensemble_is_out_of_fold(monkeypatch, model):
    import tuneguard.attacks.ensemble as ensemble

    rng = np.random.default_rng(0)
    n = 30
    texts = [str(i) for i in range(n)]
    table = {t: ts(rng.normal(-3, 1, 12)) for t in texts}
    labels = np.array([1] * 15 + [0] * 15)
    loss = rng.normal(size=n)  # a distinct value per row: identifies the row in the feature matrix
    results = {"loss": SimpleNamespace(scores=loss), "zlib": SimpleNamespace(scores=rng.normal(size=n)),
               "min-k": SimpleNamespace(scores=rng.normal(size=n)),
               "bag-of-words": SimpleNamespace(scores=rng.normal(size=n))}
    folds = []
    build = ensemble.classifier

    class Recording:
        def __init__(self, *args):
            self.inner = build(*args)

        def fit(self, x, y):
            folds.append({"fit": {int(np.flatnonzero(loss == v)[0]) for v in x[:, 0]}})
            return self.inner.fit(x, y)

        def predict_proba(self, x):
            folds[-1]["predict"] = {int(np.flatnonzero(loss == v)[0]) for v in x[:, 0]}
            return self.inner.predict_proba(x)

    monkeypatch.setattr(ensemble, "classifier", Recording)
    ctx = context(table, texts, labels, results=results)
    out = run("ensemble", ctx, model=model)
    assert len(folds) == 5
    predicted = [i for f in folds for i in f["predict"]]
    assert sorted(predicted) == list(range(n))  # every row scored exactly once
    for f in folds:
        assert not f["fit"] & f["predict"]
        assert f["fit"] | f["predict"] == set(range(n))
    assert np.isfinite(out.scores).all()
    # The blind baseline is not a feature; Min-K% enters as its levels (free: the same token scores).
    assert out.extra["features"] == ["loss", "zlib"] + [f"min-k@{k}" for k in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]


ALL_SCORES = ("loss", "zlib", "lowercase", "min-k", "min-k++", "dc-pdd", "ratio", "ez-mia", "wbc", "ht-mia", "recall",
              "con-recall", "gradnorm", "neighbourhood", "spv-mia", "bag-of-words")
MIN_K_LEVELS = [f"min-k@{k}" for k in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]


def test_ensemble_default_features_are_softs_each_once():
    rng = np.random.default_rng(1)
    texts, labels = [str(i) for i in range(20)], np.array([1, 0] * 10)
    results = {name: SimpleNamespace(scores=rng.normal(size=20)) for name in ALL_SCORES}
    ctx = context({t: ts(rng.normal(-3, 1, 10)) for t in texts}, texts, labels, results=results)
    soft = run("ensemble", ctx).extra["features"]
    assert soft == ["loss", "zlib", "lowercase", *MIN_K_LEVELS, "ratio", "recall"]  # SOFT's, in SOFT's order
    extended = run("ensemble", ctx, features="extended").extra["features"]
    assert extended == ["loss", "zlib", "lowercase", *MIN_K_LEVELS, "min-k++", "dc-pdd", "ratio", "ez-mia", "wbc",
                        "ht-mia", "recall", "con-recall", "gradnorm", "neighbourhood"]
    assert len(set(extended)) == len(extended)


def test_ensemble_default_output_is_continuous():
    # SOFT's depth-5 tree gives a handful of distinct probabilities, so large groups of texts tie (the TPR at a low
    # FPR then jumps from 0 to a large share at once); the default logistic regression ranks every text.
    rng = np.random.default_rng(2)
    n = 80
    texts, labels = [str(i) for i in range(n)], np.array([1, 0] * (n // 2))
    results = {name: SimpleNamespace(scores=rng.normal(size=n) + 0.8 * labels) for name in ("loss", "zlib", "ratio")}
    ctx = context({t: ts(rng.normal(-3, 1, 10)) for t in texts}, texts, labels, results=results)
    largest_tie = lambda scores: max(np.unique(scores, return_counts=True)[1])  # noqa: E731
    default = run("ensemble", ctx)
    assert largest_tie(default.scores) == 1 and "logistic regression" in default.note
    assert largest_tie(run("ensemble", ctx, model="tree").scores) >= 5
    assert roc_auc_score(labels, default.scores) > 0.7
    np.testing.assert_array_equal(default.scores, run("ensemble", ctx).scores)  # seeded, deterministic


def test_supervised_notes_give_the_folds_actually_used():
    # 3 members and 3 non-members allow 3 stratified folds, not the 5 asked for.
    texts, labels = sentences(6, seed=13, clauses=1), np.array([1, 0] * 3)
    ctx = context({t: ts([-1.0, -2.0 - i]) for i, t in enumerate(texts)}, texts, labels,
                  results={"loss": SimpleNamespace(scores=np.arange(6.0))})
    assert run("ensemble", ctx).note.startswith("logistic regression, 3-fold out-of-fold")
    assert run("bag-of-words", ctx, min_df=1).note.startswith("3-fold out-of-fold")


def test_out_of_fold_helper_is_stratified_and_disjoint():
    labels = np.array([1] * 7 + [0] * 9)
    seen = []

    def fit_predict(train, test):
        assert not set(train) & set(test)
        assert labels[test].sum() >= 1 and (1 - labels[test]).sum() >= 1  # stratified
        seen.extend(test)
        return np.full(len(test), 0.5)

    scores = out_of_fold(labels, 5, 0, fit_predict)
    assert sorted(seen) == list(range(16)) and np.isfinite(scores).all()
    with pytest.raises(TuneguardError):
        out_of_fold(np.array([1, 0, 0]), 5, 0, fit_predict)


def test_bag_of_words_random_vs_confounded_split():
    texts = sentences(120, seed=7, clauses=2)
    labels = np.array([1, 0] * 60)
    random_split = run("bag-of-words", context({}, texts, labels))
    auc = roc_auc_score(labels, random_split.scores)
    assert abs(auc - 0.5) < 0.15, auc
    # Members mention a drug, non-members do not: a split any text classifier separates without the model.
    confounded = [t + (" Aspirin was given." if y else " Nothing else happened.") for t, y in zip(texts, labels)]
    assert roc_auc_score(labels, run("bag-of-words", context({}, confounded, labels)).scores) > 0.95


# -- signs on a toy model over-fitted on its members ----------------------------------------------------------------

@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    texts = sentences(48, seed=0, clauses=2)
    members, nonmembers, corpus = texts[:16], texts[16:32], texts[32:]
    base = tiny_model("gpt2")
    config = TrainConfig(method="full", lr=3e-3, epochs=20, batch_size=4, max_length=64)
    target = finetune(base, members, tmp_path_factory.mktemp("overfit"), config, progress=False).model
    cache = str(tmp_path_factory.mktemp("cache"))
    # Module fixtures run before conftest's per-test cache isolation: isolate this one by hand.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEGUARD_CACHE", cache)
        result = run_attacks(target, members, nonmembers, attacks=["all", "dc-pdd"], reference=base, corpus=corpus,
                             n_shots=4, n_boot=0, progress=False)
    return SimpleNamespace(result=result, members=members, nonmembers=nonmembers, target=target, base=base,
                           corpus=corpus, cache=cache)


def test_signs_on_an_overfitted_model(overfit):
    auc = {name: r.auc for name, r in overfit.result.attacks.items()}
    # The attacks that read the target's per-token likelihoods see the memorisation clearly (measured: loss 0.93,
    # ratio 0.91, zlib 0.90, lowercase 0.89, min-k 0.80, min-k++ 0.81).
    for name in ("loss", "zlib", "lowercase", "min-k", "min-k++", "ratio"):
        assert auc[name] > 0.7, (name, auc)
    assert auc["loss"] > 0.85 and auc["ratio"] > 0.85
    # ReCall over matched tokens has no signal on this 2-layer toy (0.45; keeping x's first token, the named variant,
    # gives 0.73, but that share of the score is LL(x) again); CON-ReCall's contrast of two in-context prefixes has
    # none either (0.20), and DC-PDD's clip of 0.01 saturates once the model predicts the template (0.38-0.71): for
    # those three only finiteness is asserted. Against this random base every template token gained (d > 0 almost
    # everywhere): EZ-MIA finds no negative difference and WBC's votes saturate; the hard tokens separate (0.80).
    # Their orientation against a same-domain reference: tests/test_attacks_finetune.py.
    assert auc["ht-mia"] > 0.7
    assert all(np.isfinite(r.scores).all() for r in overfit.result.attacks.values())
    assert overfit.result.attacks["ensemble"].auc > 0.6


def test_every_raw_statistic_is_kept(overfit):
    for name, r in overfit.result.attacks.items():
        assert len(r.raw) == len(r.scores) == len(r.labels), name
        assert r.raw_name


def test_suite_shares_one_target_pass(overfit):
    evaluated = overfit.result.settings["evaluated"]
    assert evaluated == 32 - 2 * 4  # the ReCall shots are not evaluated
    shots = overfit.result.shots
    assert set(shots["nonmember"]) <= set(overfit.nonmembers) and set(shots["member"]) <= set(overfit.members)
    # One pass for loss, zlib, min-k, min-k++, dc-pdd and the ensemble; lowercase, ReCall and CON-ReCall's member
    # prefix one extra each; the reference model one pass, which EZ-MIA, WBC and the hard tokens read beside ratio.
    assert overfit.result.cost["forward_passes"] == {"target": 4 * evaluated, "reference": evaluated}


def test_a_rerun_is_free(overfit, monkeypatch):
    monkeypatch.setenv("TUNEGUARD_CACHE", overfit.cache)  # the fixture's score cache
    again = run_attacks(overfit.target, overfit.members, overfit.nonmembers, attacks="loss", n_boot=0,
                        progress=False)
    # Without ReCall no shots are held out: only the 8 former shots are new, the 24 scored texts come from the cache.
    assert again.cost["forward_passes"] == {"target": 8}


def test_same_seed_same_numbers(overfit, monkeypatch):
    monkeypatch.setenv("TUNEGUARD_CACHE", overfit.cache)  # the fixture's score cache
    again = run_attacks(overfit.target, overfit.members, overfit.nonmembers, attacks=["all", "dc-pdd"],
                        reference=overfit.base, corpus=overfit.corpus, n_shots=4, n_boot=0, progress=False)
    for name, r in overfit.result.attacks.items():
        np.testing.assert_array_equal(r.scores, again.attacks[name].scores, err_msg=name)


# -- runner errors --------------------------------------------------------------------------------------------------

MEMBERS, NONMEMBERS = sentences(6, seed=8, clauses=1), sentences(6, seed=9, clauses=1)


@pytest.mark.parametrize("members, nonmembers, kwargs, message", [
    (MEMBERS[:1], NONMEMBERS, {}, "at least 2 members"),
    (MEMBERS, NONMEMBERS[:1], {}, "at least 2 members and 2 non-members"),
    (MEMBERS, MEMBERS[:1] + NONMEMBERS, {}, "both members and non-members"),
    (MEMBERS, NONMEMBERS, {"attacks": "loss,bogus"}, "unknown attack 'bogus'"),
    (MEMBERS, NONMEMBERS, {"attacks": "min-k", "params": {"min-k": {"kk": 1}}}, "no parameter 'kk'"),
    (MEMBERS, NONMEMBERS, {"attacks": "loss", "params": {"min-k": {"k": 0.1}}}, "not being run: min-k"),
    (MEMBERS, NONMEMBERS, {"attacks": "ratio"}, "need a reference model"),
    (MEMBERS, NONMEMBERS, {"attacks": "recall", "n_shots": 5}, "cannot take 5 ReCall shots"),
    (MEMBERS, NONMEMBERS, {"attacks": "dc-pdd"}, "reference corpus"),
    (MEMBERS[:2] + [""], NONMEMBERS, {"attacks": "loss"}, None),  # passes the check, then 1 member is left
])
def test_run_attacks_refuses(tiny, members, nonmembers, kwargs, message):
    if message is None:
        members = [MEMBERS[0], ""]
        message = r"left to evaluate: 1 members"
    with pytest.raises(TuneguardError, match=message):
        run_attacks(tiny, members, nonmembers, n_boot=0, progress=False, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"attacks": "ratio"}, "need a reference model and the target records no base model"),
    ({"attacks": "recall", "n_shots": 5}, "cannot take 5 ReCall shots"),
    ({"attacks": "con-recall", "n_shots": 5}, "cannot take 5 ReCall shots"),
    ({"attacks": "dc-pdd"}, "needs a reference corpus"),
    ({"attacks": "ensemble"}, "the ensemble has no feature: run at least one of loss, zlib, lowercase, min-k, "
                              "ratio, recall before it"),
    ({"attacks": "bag-of-words,ensemble"}, "the ensemble has no feature"),  # the blind baseline is no feature
    ({"attacks": "ensemble", "params": {"ensemble": {"model": "forest"}}},
     "attack 'ensemble': parameter 'model' must be one of logistic, tree, got 'forest'"),
    ({"attacks": "min-k", "params": {"min-k": {"k": "5"}}}, r"parameter 'k' must be in \(0, 1\], got 5"),
])
def test_needs_and_parameters_are_checked_before_any_model_loads(kwargs, message):
    # The target does not exist: any error but the expected one would come from loading it.
    with pytest.raises(TuneguardError, match=message):
        run_attacks("/nonexistent/model", MEMBERS, NONMEMBERS, n_boot=0, progress=False, **kwargs)


def test_a_new_attack_is_one_class_and_one_registry_line(tiny, monkeypatch):
    """A toy attack registered like the others runs in registry order, reports its declared parameters and, by its
    ``ensemble`` flag alone, becomes a feature of the ensemble."""
    from dataclasses import dataclass

    from tuneguard.attacks.base import Attack, AttackOutput
    from tuneguard.params import Params, param

    @dataclass
    class ToyParams(Params):
        scale: float = param(2.0, "factor on LL(x)", gt=0)

    class ToyAttack(Attack):
        name = "toy"
        summary = "scale · LL(x)"
        ensemble = "soft"
        Params = ToyParams

        def run(self, ctx):
            return AttackOutput(scores=self.params.scale * ctx.target_ll(), raw=ctx.target_ll(), raw_name="LL")

    import sys
    import types
    module = types.ModuleType("toy_attack_module")
    module.ToyAttack = ToyAttack
    monkeypatch.setitem(sys.modules, "toy_attack_module", module)
    entries = {n: ATTACKS._entries[n] for n in ATTACKS}
    monkeypatch.setattr(ATTACKS, "_entries", {**{n: e for n, e in entries.items() if n != "ensemble"},
                                              "toy": "toy_attack_module:ToyAttack", "ensemble": entries["ensemble"]})
    out = run_attacks(tiny, MEMBERS, NONMEMBERS, attacks="ensemble,toy,loss", params={"toy": {"scale": 3}},
                      n_boot=0, progress=False)
    assert list(out.attacks) == ["loss", "toy", "ensemble"]
    assert out.attacks["toy"].params == {"scale": 3.0}
    np.testing.assert_allclose(out.attacks["toy"].scores, 3 * out.attacks["loss"].scores)
    assert "over: loss, toy" in out.attacks["ensemble"].note


def test_skipped_texts_are_reported(tiny):
    members = MEMBERS[:3] + ["", " "]
    out = run_attacks(tiny, members, NONMEMBERS, attacks="loss,min-k", n_boot=0, progress=False)
    assert [(s["index"], s["label"], s["text"]) for s in out.skipped] == [(3, 1, ""), (4, 1, " ")]
    assert all("no token" in s["reason"] for s in out.skipped)
    assert out.settings["evaluated"] == 3 + len(NONMEMBERS)
    assert len(out.attacks["loss"].scores) == 3 + len(NONMEMBERS)


def test_cached_rerun_with_a_skipped_text(tiny):
    # The re-run finds every scorable text cached and only the empty one to compute.
    members = MEMBERS[:3] + [""]
    first = run_attacks(tiny, members, NONMEMBERS, attacks="loss", n_boot=0, progress=False)
    again = run_attacks(tiny, members, NONMEMBERS, attacks="loss", n_boot=0, progress=False)
    np.testing.assert_array_equal(first.attacks["loss"].scores, again.attacks["loss"].scores)


# -- the reference model is the target: reference attacks are not applicable -------------------------------------

@pytest.mark.parametrize("same", ["object", "rebuilt"])
def test_reference_equal_to_the_target_marks_ratio_not_applicable(tiny, same):
    reference = tiny if same == "object" else tiny_model("gpt2")  # same seed: the same weights
    out = run_attacks(tiny, MEMBERS, NONMEMBERS, attacks="loss,ratio", reference=reference, n_boot=0,
                      progress=False)
    ratio = out.attacks["ratio"]
    assert "reference model is the target itself" in ratio.not_applicable
    assert ratio.auc == 0.5 and not np.any(ratio.scores)  # still computed: identically 0
    assert out.attacks["loss"].not_applicable is None and "not_applicable" not in out.attacks["loss"].to_json()
    other = run_attacks(tiny, MEMBERS, NONMEMBERS, attacks="ratio", reference=tiny_model("gpt2", seed=1), n_boot=0,
                        progress=False)
    assert other.attacks["ratio"].not_applicable is None


# -- attacker data is checked against the evaluated texts ---------------------------------------------------------

def test_attacker_data_exact_overlap_is_refused_and_near_duplicates_warned():
    from tuneguard.attacks.attacker_data import check_attacker_data

    members, nonmembers = sentences(4, seed=31, clauses=2), sentences(4, seed=32, clauses=2)
    pool = sentences(6, seed=33, clauses=2)
    assert check_attacker_data("the pool", pool, members, nonmembers) is None
    with pytest.raises(TuneguardError, match=r"the pool \(p.txt\): 3 of its 9 texts are evaluated texts "
                                             r"\(2 members, 1 non-member\)"):
        check_attacker_data("the pool (p.txt)", pool + [members[0] + " ", members[1], nonmembers[2]], members,
                            nonmembers)
    near = [members[0].upper(), "  ".join(nonmembers[1].split()),  # case and spacing
            nonmembers[3] + " And then something else happened in the garden today."]  # most 5-grams shared
    warning = check_attacker_data("the pool", pool + near, members, nonmembers)
    assert warning.startswith("the pool: 3 of its 9 texts are near duplicates of evaluated texts (1 member, "
                              "2 non-members")


def test_run_attacks_refuses_a_corpus_holding_an_evaluated_text_before_loading_the_model():
    with pytest.raises(TuneguardError, match="the dc-pdd corpus: 1 of its 3 texts are evaluated texts"):
        run_attacks("/nonexistent/model", MEMBERS, NONMEMBERS, attacks="dc-pdd",
                    corpus=sentences(2, seed=40) + [NONMEMBERS[3]])


def test_run_attacks_refuses_an_spv_prompt_pool_holding_an_evaluated_text(tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(sentences(3, seed=41) + [MEMBERS[2]]) + "\n")
    with pytest.raises(TuneguardError, match=r"the spv-mia prompt pool \(pool.txt\): 1 of its 4 texts"):
        run_attacks("/nonexistent/model", MEMBERS, NONMEMBERS, attacks="spv-mia",
                    params={"spv-mia": {"prompts": str(pool)}})
    data = sentences(3, seed=42) + [NONMEMBERS[0]]
    with pytest.raises(TuneguardError, match="the spv-mia reference data: 1 of its 4 texts"):
        run_attacks("/nonexistent/model", MEMBERS, NONMEMBERS, attacks="spv-mia",
                    params={"spv-mia": {"reference": "data", "reference_data": data}})


def test_a_near_duplicate_in_the_corpus_is_a_warning(tiny):
    corpus = sentences(4, seed=43) + [MEMBERS[1].lower()]
    out = run_attacks(tiny, MEMBERS, NONMEMBERS, attacks="dc-pdd", corpus=corpus, n_boot=0, progress=False)
    assert any(w.startswith("the dc-pdd corpus: 1 of its 5 texts are near duplicates") for w in out.warnings)
