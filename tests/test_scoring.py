"""The scoring engine against a naive float64 full log-softmax, plus its BOS, padding, prefix and cache behaviour."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers import with_bos
from tuneguard.models import LoadedModel, tiny_model
from tuneguard.scoring import ScoringEngine

TEXTS = [
    "The patient was given a small dose of aspirin.",
    "Membership inference asks whether a record was in the training set.",
    "ok then",
    "A much longer text, with punctuation; numbers like 3.14 and 2025, and several clauses that keep going on.",
]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def loaded(request) -> LoadedModel:
    return tiny_model(request.param)


def naive(model: torch.nn.Module, ids: list[int], first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lp, mu, sigma of positions first..n-1 from one unbatched pass and a full float64 log-softmax."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)[first - 1:len(ids) - 1]
    p = logp.exp()
    lp = logp.gather(-1, torch.tensor(ids[first:])[:, None])[:, 0]
    mu = (p * logp).sum(-1)
    sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(0).sqrt()
    return lp.numpy(), mu.numpy(), sigma.numpy()


def assert_matches(scores, reference, atol: float = 2e-5) -> None:
    for got, want in zip((scores.logprobs, scores.mu, scores.sigma), reference):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_engine_equals_naive_log_softmax(loaded):
    engine = ScoringEngine(loaded, batch_size=3, cache=False, progress=False)
    for text, scores in zip(TEXTS, engine.score(TEXTS)):
        ids = engine.tokenize(text)
        assert scores.n == len(ids) - 1  # no BOS: x_1 is context only
        np.testing.assert_array_equal(scores.token_ids, ids[1:])
        assert_matches(scores, naive(loaded.model, ids, 1))
        assert scores.ll == pytest.approx(scores.logprobs.mean())
        assert scores.sigma.min() > 0


def test_engine_ll_is_minus_hf_loss(loaded):
    engine = ScoringEngine(loaded, cache=False, progress=False)
    ids = torch.tensor([engine.tokenize(TEXTS[1])])
    with torch.no_grad():
        loss = loaded.model(input_ids=ids, labels=ids).loss.item()
    assert engine.ll([TEXTS[1]])[0] == pytest.approx(-loss, abs=1e-5)


def test_bos_scores_first_token_from_bos(loaded):
    bos = with_bos(loaded)
    engine = ScoringEngine(bos, cache=False, progress=False)
    for text, scores in zip(TEXTS, engine.score(TEXTS)):
        ids = bos.tokenizer(text)["input_ids"]
        assert ids[0] == bos.tokenizer.bos_token_id
        assert scores.n == len(ids) - 1 == len(engine.tokenize(text))  # every own token, x_1 included
        np.testing.assert_array_equal(scores.token_ids, engine.tokenize(text))
        assert_matches(scores, naive(bos.model, ids, 1))


def test_padding_invariance(loaded):
    short = TEXTS[2] + " and a few more words"
    alone = ScoringEngine(loaded, cache=False, progress=False).score([short])[0]
    engine = ScoringEngine(loaded, batch_size=8, cache=False, progress=False)
    batched = engine.score([TEXTS[3], short, TEXTS[1]])[1]
    assert engine.batches == 1  # really padded beside longer texts
    for a, b in zip((alone.logprobs, alone.mu, alone.sigma), (batched.logprobs, batched.mu, batched.sigma)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)


def test_prefix_scores_only_the_text(loaded):
    engine = ScoringEngine(loaded, cache=False, progress=False)
    prefix, text = TEXTS[1] + "\n\n", TEXTS[0]
    scores = engine.score([text], [prefix])[0]
    pre, own = engine.tokenize(prefix), engine.tokenize(text)
    assert scores.n == len(own)  # x_1 is scored from the prefix's last token
    np.testing.assert_array_equal(scores.token_ids, own)
    assert_matches(scores, naive(loaded.model, pre + own, len(pre)))
    # The prefix changes the context, hence the scores of the shared positions.
    plain = engine.score([text])[0]
    assert not np.allclose(plain.logprobs, scores.logprobs[1:])


def test_prefix_keeps_its_most_recent_tokens(loaded):
    engine = ScoringEngine(loaded, cache=False, progress=False)
    prefix, text = " ".join(TEXTS * 10), "the dose"
    own, pre = engine.tokenize(text), engine.tokenize(prefix)
    room = engine.prefix_room(text)
    assert room == loaded.max_length - len(own) < len(pre)
    scores = engine.score([text], [prefix])[0]
    assert not scores.truncated and scores.n == len(own)
    assert_matches(scores, naive(loaded.model, pre[-room:] + own, room))


def test_max_length_bounds_the_text_not_the_prefix(loaded):
    engine = ScoringEngine(loaded, max_length=8, cache=False, progress=False)
    prefix, text = TEXTS[1], TEXTS[3]
    pre, own = engine.tokenize(prefix), engine.tokenize(text)
    scores = engine.score([text], [prefix])[0]
    assert scores.truncated and scores.n == 8
    assert_matches(scores, naive(loaded.model, pre + own[:8], len(pre)))


def test_texts_behind_one_prefix_share_its_pass(loaded):
    engine = ScoringEngine(loaded, batch_size=3, cache=False, progress=False)
    prefix = " ".join(TEXTS) + "\n\n"
    got = engine.score(TEXTS + TEXTS[:1], [prefix] * 4 + [""])
    pre = engine.tokenize(prefix)
    for text, scores in zip(TEXTS, got):
        assert_matches(scores, naive(loaded.model, pre + engine.tokenize(text), len(pre)))
    assert_matches(got[4], naive(loaded.model, engine.tokenize(TEXTS[0]), 1))
    # One pass reads the prefix, two batches of 3 + 1 texts continue from it, one batch holds the unprefixed text.
    assert engine.forward_passes == 5 and engine.batches == 4


def test_prefix_with_bos(loaded):
    bos = with_bos(loaded)
    engine = ScoringEngine(bos, cache=False, progress=False)
    pre, own = engine.tokenize(TEXTS[1]), engine.tokenize(TEXTS[0])
    scores = engine.score([TEXTS[0]], [TEXTS[1]])[0]
    assert scores.n == len(own)
    assert_matches(scores, naive(bos.model, [bos.tokenizer.bos_token_id] + pre + own, 1 + len(pre)))


def test_cache_hits_cost_no_forward_pass(loaded):
    engine = ScoringEngine(loaded, batch_size=2, progress=False)
    first = engine.score(TEXTS)
    assert engine.forward_passes == len(TEXTS)
    again = engine.score(TEXTS + [TEXTS[0]])
    assert engine.forward_passes == len(TEXTS)
    # A fresh engine for the same weights reads the disk cache.
    fresh = ScoringEngine(loaded, batch_size=2, progress=False)
    from_disk = fresh.score(TEXTS)
    assert fresh.forward_passes == 0 and fresh.batches == 0
    for a, b, c in zip(first, again, from_disk):
        np.testing.assert_array_equal(a.logprobs, c.logprobs)
        np.testing.assert_array_equal(a.sigma, c.sigma)
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
    # With a prefix the text is another entry; other weights or another max_length are another cache.
    fresh.score([TEXTS[0]], [TEXTS[1]])
    assert fresh.forward_passes == 1
    other = ScoringEngine(tiny_model(loaded.ref.removeprefix("tiny-"), seed=1), progress=False)
    other.score(TEXTS)
    assert other.forward_passes == len(TEXTS)
    shorter = ScoringEngine(loaded, max_length=64, progress=False)
    shorter.score(TEXTS)
    assert shorter.forward_passes == len(TEXTS)


def test_duplicates_in_one_call_are_forwarded_once(loaded):
    engine = ScoringEngine(loaded, cache=False, progress=False)
    a, b = engine.score([TEXTS[0], TEXTS[0]])
    assert engine.forward_passes == 1
    np.testing.assert_array_equal(a.logprobs, b.logprobs)


def test_cache_distinguishes_tokenizers(loaded):
    # The same weights under another tokenizer score other tokens: never served from the first one's cache.
    ScoringEngine(loaded, progress=False).score([TEXTS[0]])
    bos = ScoringEngine(with_bos(loaded), progress=False)
    scores = bos.score([TEXTS[0]])[0]
    assert scores.n == len(bos.tokenize(TEXTS[0]))


def test_cache_key_ignores_the_tokenizers_padding_state(loaded):
    own = LoadedModel(model=loaded.model, tokenizer=copy.deepcopy(loaded.tokenizer), ref=loaded.ref)
    ScoringEngine(own, progress=False).score(TEXTS)
    own.tokenizer(["a", "b c d"], padding=True, truncation=True, max_length=4)  # e.g. a training batch
    fresh = ScoringEngine(own, progress=False)
    fresh.score(TEXTS)
    assert fresh.forward_passes == 0


def test_truncation_flag(loaded):
    engine = ScoringEngine(loaded, max_length=8, cache=False, progress=False)
    long, short = engine.score([TEXTS[3], "a cat"])
    assert long.truncated and long.n == 7
    np.testing.assert_array_equal(long.token_ids, engine.tokenize(TEXTS[3])[1:8])
    assert not short.truncated
    assert engine.max_length == 8
    # max_length never exceeds the model's context.
    assert ScoringEngine(loaded, max_length=10**6, cache=False, progress=False).max_length == loaded.max_length


def test_truncated_text_matches_naive_on_its_head(loaded):
    engine = ScoringEngine(loaded, max_length=8, cache=False, progress=False)
    scores = engine.score([TEXTS[3]])[0]
    assert_matches(scores, naive(loaded.model, engine.tokenize(TEXTS[3])[:8], 1))


@pytest.mark.parametrize("text", ["", " ", "a"])
def test_nothing_to_score_costs_no_forward_pass(loaded, text):
    engine = ScoringEngine(loaded, progress=False)
    scores, other = engine.score([text, TEXTS[0]])
    assert scores.n == 0 and np.isnan(scores.ll) and other.n > 0
    assert engine.forward_passes == 1 and engine.batches == 1


def test_only_empty_texts(loaded):
    engine = ScoringEngine(loaded, progress=False)
    assert engine.score([""])[0].n == 0
    assert engine.forward_passes == 0


@pytest.mark.parametrize("bos", [False, True])
def test_top1_token_and_its_logprob_come_from_the_same_pass(loaded, bos):
    model = with_bos(loaded) if bos else loaded
    engine = ScoringEngine(model, batch_size=3, cache=False, progress=False)
    for text, scores in zip(TEXTS, engine.score(TEXTS)):  # batched and padded beside each other
        ids, first, _ = engine.encode(text)
        with torch.no_grad():
            logits = model.model(input_ids=torch.tensor([ids])).logits[0, first - 1:len(ids) - 1]
        np.testing.assert_array_equal(scores.argmax, logits.argmax(-1).numpy())
        assert scores.argmax.dtype == np.int64 and scores.max_logprob.dtype == np.float64
        best = torch.log_softmax(logits.double(), dim=-1).max(-1).values.numpy()
        np.testing.assert_allclose(scores.max_logprob, best, rtol=0, atol=2e-5)
        assert (scores.max_logprob >= scores.logprobs).all()
        # Where the model's top-1 is the true token, its log-prob is the true token's.
        right = scores.argmax == scores.token_ids
        np.testing.assert_array_equal(scores.max_logprob[right], scores.logprobs[right])


def test_cache_entries_of_an_older_engine_are_recomputed(loaded):
    import io

    from tuneguard.cache import text_hash

    first = ScoringEngine(loaded, progress=False).score(TEXTS[:2])
    path = next(ScoringEngine(loaded, progress=False)._dir.glob(f"{text_hash(chr(0) + TEXTS[0])}.npz"))
    buf = io.BytesIO()  # the entry as the engine wrote it before the top-1 arrays (no schema, four arrays)
    np.savez(buf, token_ids=first[0].token_ids, logprobs=first[0].logprobs - 1.0, mu=first[0].mu,
             sigma=first[0].sigma, truncated=np.array(False))
    path.write_bytes(buf.getvalue())
    fresh = ScoringEngine(loaded, progress=False)
    again = fresh.score(TEXTS[:2])
    assert fresh.forward_passes == 1  # the old entry is recomputed, the current one read
    np.testing.assert_allclose(again[0].logprobs, first[0].logprobs, rtol=0, atol=2e-5)  # not the old file's -1
    np.testing.assert_array_equal(again[0].argmax, first[0].argmax)
    with np.load(path) as z:  # and overwritten in the current format
        assert int(z["schema"]) == 2 and "argmax" in z.files
    assert ScoringEngine(loaded, progress=False).score(TEXTS[:1])[0].argmax.shape == first[0].argmax.shape
