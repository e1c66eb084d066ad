"""The ``t5`` generator on a tiny random T5 with a T5 tokenizer built offline (no hub)."""

from __future__ import annotations

import pytest
import torch

from helpers import NEIGHBOUR_TEXTS as TEXTS, tiny_t5
from tuneguard.neighbours import NEIGHBOURS
from tuneguard.neighbours.masking import split_words


@pytest.fixture(scope="module")
def t5():
    return tiny_t5(TEXTS)


def test_tokenizer_has_sentinels(t5):
    _, tok = t5
    assert tok.convert_tokens_to_ids("<extra_id_3>") != tok.unk_token_id
    assert tok.convert_tokens_to_ids("<extra_id_0>") in tok("foo <extra_id_0> bar").input_ids


def test_fills_parsed_into_spans(t5, monkeypatch):
    model, tok = t5

    def fake_generate(input_ids, **kwargs):  # a perfect mask filler: "<extra_id_k> foo bar" for every span
        rows = []
        for text in tok.batch_decode(input_ids, skip_special_tokens=False):
            n = text.count("<extra_id_")
            out = " ".join(f"<extra_id_{k}> foo bar" for k in range(n)) + f" <extra_id_{n}>"
            rows.append(torch.tensor(tok(out).input_ids))
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_token_id)

    monkeypatch.setattr(model, "generate", fake_generate)
    gen = NEIGHBOURS.make("t5", model=(model, tok), seed=0, progress=False, cache=False)
    result = gen.generate(TEXTS, 2)
    assert not result.failures
    for text, ns in zip(TEXTS, result.neighbours):
        for n in ns:
            a, b = split_words(text), split_words(n)
            changed = sum(x != y for x, y in zip(a, b)) / len(a)
            assert len(a) == len(b) and 0 < changed <= 0.16 and n.count("foo bar") >= 1


def test_random_t5_runs_and_reports_unfilled(t5):
    gen = NEIGHBOURS.make("t5", model=t5, seed=0, progress=False, cache=False, max_tries=2, max_new_tokens=12)
    result = gen.generate(TEXTS[:2], 2)
    # A random T5 rarely writes every sentinel: whatever it cannot fill is reported, never silently dropped.
    assert len(result.failures) + sum(len(result.of(i)) for i in range(2)) == 4
