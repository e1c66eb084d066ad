"""Neighbour generators: masking fraction, reproducibility, batching independence, cache, retry cap."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import NEIGHBOUR_TEXTS
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.neighbours import NEIGHBOURS, NeighbourGenerator
from tuneguard.neighbours.masking import mask_spans, split_words

TEXTS = NEIGHBOUR_TEXTS


def changed_fraction(text: str, neighbour: str) -> float:
    a, b = split_words(text), split_words(neighbour)
    assert len(a) == len(b)
    return sum(x != y for x, y in zip(a, b)) / len(a)


def test_mask_spans_budget_and_buffer():
    rng = np.random.default_rng(0)
    spans = mask_spans(200, rng, pct=0.3, span_length=2, buffer_size=1)
    assert len(spans) == 15  # 0.3 * 200 / (2 + 2): 15 spans of 2 words = 15% of the words
    for (s1, e1), (s2, _) in zip(spans, spans[1:]):
        assert e1 - s1 == 2 and s2 - e1 >= 1  # at least one untouched word between spans


def test_mask_spans_ends_when_few_fit():
    spans = mask_spans(5, np.random.default_rng(0), pct=1.0, span_length=2, buffer_size=1)
    assert 1 <= len(spans) <= 2


def test_registry_names():
    assert set(NEIGHBOURS) == {"t5", "lm-fill", "wordnet", "random-fill"}
    with pytest.raises(TuneguardError, match="unknown neighbour generator 'nope': choose from t5, lm-fill"):
        NEIGHBOURS.make("nope")
    for name in NEIGHBOURS:
        klass = NEIGHBOURS.get(name)
        assert klass.name == name and klass.kind == "neighbour generator" and klass.summary
        assert klass.takes_model() == (name in ("t5", "lm-fill"))


def test_random_fill_fraction_and_reproducible():
    gen = NEIGHBOURS.make("random-fill", seed=3, progress=False, cache=False)
    a = gen.generate(TEXTS, 4)
    b = NEIGHBOURS.make("random-fill", seed=3, progress=False, cache=False).generate(TEXTS, 4)
    c = NEIGHBOURS.make("random-fill", seed=4, progress=False, cache=False).generate(TEXTS, 4)
    assert a.neighbours == b.neighbours and a.neighbours != c.neighbours
    for text, ns in zip(TEXTS, a.neighbours):
        assert len(set(ns)) == 4
        for n in ns:
            assert 0 < changed_fraction(text, n) <= 0.16


def test_neighbours_independent_of_batching_and_other_texts():
    one = NEIGHBOURS.make("random-fill", seed=0, batch_size=1, progress=False, cache=False, corpus=TEXTS)
    many = NEIGHBOURS.make("random-fill", seed=0, batch_size=7, progress=False, cache=False, corpus=TEXTS)
    assert one.generate(TEXTS, 3).neighbours[1:] == many.generate(TEXTS[1:], 3).neighbours


def test_lm_fill_keeps_length_changes_spans_and_is_batch_independent():
    model = tiny_model("gpt2")
    kw = dict(model=model, seed=1, progress=False, cache=False, max_span_tokens=4)
    a = NEIGHBOURS.make("lm-fill", batch_size=1, **kw).generate(TEXTS[:2], 2)
    b = NEIGHBOURS.make("lm-fill", batch_size=4, **kw).generate(TEXTS[:2], 2)
    assert a.neighbours == b.neighbours and not a.failures
    for text, ns in zip(TEXTS, a.neighbours):
        for n in ns:
            assert 0 < changed_fraction(text, n) <= 0.16


class Echo(NeighbourGenerator):
    """Fails every time (returns the text itself) and counts its calls."""

    name = "echo"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def settings(self) -> dict:
        return {}

    def perturb_batch(self, texts, seeds):
        self.calls += 1
        return list(texts)


def test_retry_cap_is_honoured_and_failures_reported():
    gen = Echo(max_tries=3, progress=False)
    result = gen.generate(TEXTS[:2], 2)
    assert gen.calls == 3
    assert result.failures == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert result.of(0) == []
    again = Echo(max_tries=3, progress=False)
    assert again.generate(TEXTS[:2], 2).failures == result.failures and again.calls == 0  # cached give-up
    more = Echo(max_tries=4, progress=False)
    more.generate(TEXTS[:2], 2)
    assert more.calls == 1  # a higher cap resumes at the next try, not from the first


def test_cache_reuses_and_extends(monkeypatch):
    gen = NEIGHBOURS.make("random-fill", seed=0, progress=False, corpus=TEXTS)
    first = gen.generate(TEXTS, 2)
    calls = []
    monkeypatch.setattr(type(gen), "perturb_batch", lambda self, t, s: calls.append(len(t)) or [None] * len(t))
    assert gen.generate(TEXTS, 2).neighbours == first.neighbours and not calls
    gen.params = gen.params.replace(max_tries=1)
    extended = gen.generate(TEXTS, 3)
    assert [ns[:2] for ns in extended.neighbours] == first.neighbours and calls == [3]


def test_wordnet_swaps_content_words():
    from tuneguard import wordnet

    if not wordnet.wordnet_available():
        pytest.skip("WordNet not installed (apt-get install wordnet-base wordnet-sense-index)")
    gen = NEIGHBOURS.make("wordnet", seed=0, progress=False, cache=False, pct=0.15)
    result = gen.generate(TEXTS, 3)
    assert not result.failures
    for text, ns in zip(TEXTS, result.neighbours):
        for n in ns:
            assert 0 < changed_fraction(text, n) <= 0.16
    assert result.neighbours == NEIGHBOURS.make("wordnet", seed=0, progress=False, cache=False).generate(
        TEXTS, 3).neighbours


def test_options_are_checked_against_the_generator():
    with pytest.raises(TuneguardError, match=r"neighbour generator 'wordnet' has no parameter 'span_length' "
                                             r"\(parameters: seed, batch_size, max_tries, pct\)"):
        NEIGHBOURS.make("wordnet", span_length=2)
    with pytest.raises(TuneguardError, match="neighbour generator 'lm-fill' needs parameter 'model'"):
        NEIGHBOURS.make("lm-fill", seed=0)
    with pytest.raises(TuneguardError, match=r"neighbour generator 'random-fill': parameter 'pct' must be in \(0, 1\]"):
        NEIGHBOURS.make("random-fill", pct=0)
    # Options can be checked before any model is loaded (an attack does so when it is built).
    lm_fill = NEIGHBOURS.get("lm-fill")
    assert lm_fill.Params.create(lm_fill.label(), {"top_k": "10"}).top_k == 10


def test_sampling_with_a_nucleus_keeps_the_likely_tokens_only():
    import torch

    from tuneguard.neighbours.sampling import sample_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    picks = {int(sample_tokens(logits, torch.tensor([u]), top_p=0.7)) for u in np.linspace(0, 0.999, 50)}
    assert picks == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3: the two least likely tokens are never drawn
    assert {int(sample_tokens(logits, torch.tensor([u]))) for u in np.linspace(0, 0.999, 50)} == {0, 1, 2, 3}
