"""The key/value cache is passed and read under the name the installed transformers declares."""

from __future__ import annotations

import pytest
from transformers.utils import generic

from helpers import sentences
from tuneguard.models import tiny_model
from tuneguard.models.kv_cache import cache_kwarg
from tuneguard.neighbours import NEIGHBOURS
from tuneguard.scoring import ScoringEngine


@pytest.fixture
def deprecations(monkeypatch):
    """The deprecation notices transformers logs for the old cache name (one per process in normal use)."""
    said: list[str] = []
    monkeypatch.setattr(generic.logger, "warning_once", lambda message, *a, **k: said.append(message))
    return said


def test_a_prefix_continued_from_its_cache_uses_the_declared_name(deprecations):
    model = tiny_model("llama")
    texts = sentences(4, seed=3)
    engine = ScoringEngine(model, cache=False, progress=False, batch_size=2)
    assert len(engine.score(texts, prefixes=[texts[0]] * 4)) == 4
    assert not [m for m in deprecations if "past_key_values" in m]


def test_lm_fill_decodes_with_the_declared_name(deprecations):
    gen = NEIGHBOURS.make("lm-fill", model=tiny_model("gpt2"), seed=1, progress=False, cache=False,
                          max_span_tokens=4, batch_size=2)
    assert not gen.generate(sentences(2, seed=4), 2).failures
    assert not [m for m in deprecations if "past_key_values" in m]


def test_the_name_comes_from_the_base_model_of_a_peft_model():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama").model
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert cache_kwarg(wrapped) == cache_kwarg(model)
