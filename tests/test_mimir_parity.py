"""Our raw statistics against MIMIR's formulas, re-implemented here from a reading of its code (not installed/copied).

Read (github.com/iamgroot42/mimir, via the code index): mimir/models.py @576339bb (Model.get_probabilities, get_ll),
mimir/attacks/loss.py @13a77a4b, zlib.py @05e5efd3, min_k.py @05e5efd3, min_k_plus_plus.py @206c0101,
reference.py @05e5efd3.

What MIMIR does, in short: tokenise with special tokens; one unbatched pass per text (a sliding window of stride
context/2 past the context); ``log_softmax`` of the shifted logits in the model's dtype; the log-prob of every token
after the first. ``get_ll`` = -mean (NLL: MIMIR's scores are loss-like, lower = member). zlib = NLL / zlib bytes.
Min-K% = -mean of the lowest ``int(k·n)`` log-probs. Min-K%++ = -mean of the lowest ``int(k·n)`` of
``(lp - mu) / sqrt(E_p[log p²] - mu²)``. Reference = ``get_ll_ref - get_ll_target`` (NLL_ref - NLL_target).

Differences on purpose, asserted below: our canonical Min-K% / Min-K%++ take ⌈k·n⌉ tokens (``rounding="floor"`` is
MIMIR's count); we truncate a text longer than the context (and flag it) where MIMIR slides a window; we compute the
moments in float64 with a two-pass variance, MIMIR in the model's dtype with ``E[x²] - mu²`` (same formula, the
reference below uses float64 so only the formula is compared).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from helpers import with_bos  # the same BOS-adding tokenizer wrapper

from tuneguard.attacks import ATTACKS
from tuneguard.attacks.base import AttackContext
from tuneguard.models import LoadedModel, tiny_model
from tuneguard.scoring import ScoringEngine

TEXTS = [
    "The patient was given a small dose of aspirin and observed for two hours.",
    "Membership inference asks whether a record was in the training set of a model.",
    "Short one here.",
    "Results: 12 of 40 samples (30%) showed the effect; the rest did not, p = 0.04.",
]


# -- MIMIR's formulas, re-implemented ------------------------------------------------------------------------------

def mimir_forward(model, tokenizer, text: str) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Per scored token: the log-prob, and the full next-token log-distribution (float64) for Min-K%++.

    Model.get_probabilities: labels = tokenizer(text).input_ids (special tokens included); for i in range(0, n,
    stride) a window [max(i + stride - context, 0), min(i + stride, n)) whose targets before its last ``end - i``
    are masked (-100), then shifted by one.
    """
    labels = tokenizer(text, return_tensors="pt").input_ids
    n = labels.size(1)
    config = model.config
    context = getattr(config, "max_position_embeddings", None) or config.n_positions
    stride = context // 2
    lps, dists = [], []
    for i in range(0, n, stride):
        begin, end = max(i + stride - context, 0), min(i + stride, n)
        window = labels[:, begin:end]
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0, :-1].double(), dim=-1)
        targets = window[0, 1:]
        for j in range(max(window.size(1) - (end - i) - 1, 0), len(targets)):
            lps.append(float(logp[j, targets[j]]))
            dists.append(logp[j])
    assert len(lps) == n - 1  # MIMIR's own check
    return np.array(lps), dists


def mimir_ll(lps: np.ndarray) -> float:
    return float(-np.mean(lps))


def mimir_zlib(text: str, lps: np.ndarray) -> float:
    return mimir_ll(lps) / len(zlib.compress(bytes(text, "utf-8")))


def mimir_min_k(lps: np.ndarray, k: float) -> float:
    count = int(len(lps) * k)
    return float(-np.mean(sorted(lps)[:count])) if count else math.nan  # MIMIR: np.mean([]) = NaN, with a warning


def mimir_min_k_plus_plus(lps: np.ndarray, dists: list[torch.Tensor], k: float) -> float:
    log_prob = torch.stack(dists)
    prob = log_prob.exp()
    mu = (prob * log_prob).sum(-1)
    sigma = (prob * log_prob.square()).sum(-1) - mu.square()
    scores = (lps - mu.numpy()) / sigma.sqrt().numpy()
    count = int(len(scores) * k)
    return float(-np.mean(sorted(scores)[:count])) if count else math.nan


# -- fixtures ------------------------------------------------------------------------------------------------------

def build(variant: str, seed: int = 0) -> LoadedModel:
    arch, _, bos = variant.partition("+")
    model = tiny_model(arch, seed=seed)
    return with_bos(model) if bos else model


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt2+bos"])
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def loaded(variant) -> LoadedModel:
    return build(variant)


@pytest.fixture(scope="module")
def mimir(loaded):
    return {t: mimir_forward(loaded.model, loaded.tokenizer, t) for t in TEXTS}


def ours(loaded, name: str, reference: LoadedModel | None = None, **params):
    engine = ScoringEngine(loaded, cache=False, progress=False)
    ref = ScoringEngine(reference, cache=False, progress=False) if reference else None
    ctx = AttackContext(texts=TEXTS, labels=np.array([1, 1, 0, 0]), target=engine, reference=ref, progress=False)
    return ATTACKS.make(name, **params).run(ctx)


# -- parity ----------------------------------------------------------------------------------------------------------

def test_token_logprobs_match(loaded, mimir):
    engine = ScoringEngine(loaded, cache=False, progress=False)
    for text, scores in zip(TEXTS, engine.score(TEXTS)):
        np.testing.assert_allclose(scores.logprobs, mimir[text][0], rtol=0, atol=1e-5)


def test_loss_is_mimirs_nll(loaded, mimir):
    out = ours(loaded, "loss")
    np.testing.assert_allclose(out.raw, [mimir_ll(mimir[t][0]) for t in TEXTS], rtol=1e-6)
    np.testing.assert_allclose(out.scores, -out.raw)  # ours: higher = member


def test_zlib_is_mimirs(loaded, mimir):
    out = ours(loaded, "zlib")
    np.testing.assert_allclose(out.raw, [mimir_zlib(t, mimir[t][0]) for t in TEXTS], rtol=1e-6)


@pytest.mark.parametrize("k", [0.05, 0.1, 0.2, 0.3, 0.5])
def test_min_k_floor_is_mimirs_and_ceil_is_not(loaded, mimir, k):
    floor = ours(loaded, "min-k", k=k, rounding="floor")
    expected = [mimir_min_k(mimir[t][0], k) for t in TEXTS]
    np.testing.assert_allclose(floor.raw, expected, rtol=1e-6)  # NaN where int(k·n) = 0, in both
    ceil = ours(loaded, "min-k", k=k)
    for text, value, want in zip(TEXTS, ceil.raw, expected):
        n = len(mimir[text][0])
        if math.ceil(k * n) == int(k * n):
            assert value == pytest.approx(want, rel=1e-6)
        else:  # the canonical count takes one more token: a mean over more, higher, log-probs
            assert math.isnan(want) or value < want
            assert np.isfinite(value)


@pytest.mark.parametrize("k", [0.1, 0.2, 0.5])
def test_min_k_plus_plus_floor_is_mimirs(loaded, mimir, k):
    out = ours(loaded, "min-k++", k=k, rounding="floor")
    expected = [mimir_min_k_plus_plus(*mimir[t], k) for t in TEXTS]
    np.testing.assert_allclose(out.raw, expected, rtol=1e-5)


def test_reference_is_mimirs_with_our_sign(loaded, variant):
    reference = build(variant, seed=1)
    out = ours(loaded, "ratio", reference=reference)
    mimir_ref = [mimir_ll(mimir_forward(reference.model, reference.tokenizer, t)[0])
                 - mimir_ll(mimir_forward(loaded.model, loaded.tokenizer, t)[0]) for t in TEXTS]
    # MIMIR's ReferenceAttack returns NLL_ref - NLL_target: already higher = member, i.e. our score, not our raw.
    np.testing.assert_allclose(out.scores, mimir_ref, rtol=1e-5)
    np.testing.assert_allclose(out.raw, -np.array(mimir_ref), rtol=1e-5)


def test_long_text_truncated_where_mimir_slides(loaded):
    text = " ".join(TEXTS * 8)
    engine = ScoringEngine(loaded, cache=False, progress=False)
    scores = engine.score([text])[0]
    lps, _ = mimir_forward(loaded.model, loaded.tokenizer, text)
    context = engine.max_length
    assert scores.truncated and scores.n == context - 1 < len(lps)
    # MIMIR's first two windows see the same context as our single pass: the shared tokens agree.
    np.testing.assert_allclose(scores.logprobs, lps[:context - 1], rtol=0, atol=1e-5)
