"""Paraphrasers (registry, cache, seeds, local LM, WordNet) and the quality gate."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from helpers import BagEmbedder, ReverseParaphraser
from tuneguard import wordnet
from tuneguard.errors import TuneguardError
from tuneguard.paraphrase import (CODE_PROMPT, PARAPHRASERS, TEXT_PROMPT, GateConfig, MiniLMEmbedder, QualityGate,
                                  clean_output, looks_like_code, obfuscate)
from tuneguard.paraphrase.gate import longest_common_run, ngram_overlap, words
from tuneguard.paraphrase.local import LocalParaphraser


def bag_gate(**config) -> QualityGate:
    return QualityGate(GateConfig(**config), BagEmbedder())


TEXT = "The committee approved the new budget after a long debate about school funding"


def test_registry_names_and_unknown_name():
    assert set(PARAPHRASERS) == {"local", "openai", "wordnet"}
    with pytest.raises(TuneguardError, match="unknown paraphraser 'nope': choose from local, openai, wordnet"):
        PARAPHRASERS.make("nope")
    for name in PARAPHRASERS:
        klass = PARAPHRASERS.get(name)
        assert klass.name == name and klass.kind == "paraphraser" and klass.summary
        assert {p.name for p in klass.Params.describe()} >= {"seed", "batch_size"}


def test_parameters_are_declared_and_checked():
    with pytest.raises(TuneguardError, match=r"paraphraser 'local' has no parameter 'temprature' \(parameters: seed"):
        PARAPHRASERS.make("local", temprature=0.5)
    with pytest.raises(TuneguardError, match=r"paraphraser 'local': parameter 'top_p' must be in \(0, 1\], got 1.5"):
        PARAPHRASERS.make("local", top_p=1.5)
    with pytest.raises(TuneguardError, match="paraphraser 'openai': parameter 'workers' must be >= 1"):
        PARAPHRASERS.make("openai", workers=0)
    p = PARAPHRASERS.make("local", temperature="0.9", progress=False)  # a command-line string is read as JSON
    assert p.params.temperature == 0.9 and p.settings()["temperature"] == 0.9
    assert "_loaded" not in vars(p) and "loaded" not in vars(p)  # building it loads no model


def test_openai_paraphraser_does_not_import_torch():
    code = ("import sys, tuneguard.paraphrase.openai_chat as m; m.OpenAIParaphraser(base_url='http://x'); "
            "from tuneguard.paraphrase import PARAPHRASERS; PARAPHRASERS.get('local'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_code_gets_the_code_prompt():
    code = "def add(a, b):\n    # sum two numbers\n    return a + b\n"
    assert looks_like_code(code) and not looks_like_code(TEXT)
    p = ReverseParaphraser()
    assert p.prompt_template(code) is CODE_PROMPT and p.prompt_template(TEXT) is TEXT_PROMPT
    assert ReverseParaphraser(prompt="text").prompt_template(code) is TEXT_PROMPT
    with pytest.raises(TuneguardError, match="paraphraser 'reverse': parameter 'prompt' must be one of auto, text"):
        ReverseParaphraser(prompt="poem")


def test_paraphrases_are_cached_per_text_and_attempt():
    p = ReverseParaphraser()
    first = p.paraphrase([TEXT, "a b c"])
    assert len(p.calls) == 2
    assert p.paraphrase([TEXT, "a b c"]) == first and len(p.calls) == 2  # memory of the disk cache: no call
    fresh = ReverseParaphraser()
    assert fresh.paraphrase(["a b c", TEXT]) == first[::-1] and fresh.calls == []  # a new instance reads the disk
    fresh.paraphrase([TEXT], attempt=1)
    assert len(fresh.calls) == 1  # a new attempt is a new sample
    other_prompt = ReverseParaphraser(prompt="code")
    other_prompt.paraphrase([TEXT])
    assert len(other_prompt.calls) == 1  # the prompt is part of the key


def test_attempt_seeds_do_not_depend_on_the_batch():
    a, b = ReverseParaphraser(cache=False), ReverseParaphraser(cache=False, batch_size=1)
    a.paraphrase([TEXT, "x y z"])
    b.paraphrase(["x y z", TEXT])
    assert dict(a.calls) == dict(b.calls)
    a.paraphrase([TEXT], attempt=1)
    assert a.calls[-1][1] != dict(b.calls)[TEXT]


def test_overlap_measures():
    a, b = words("the cat sat on the mat today"), words("a cat sat on the rug today")
    assert longest_common_run(a, b) == 4  # "cat sat on the"
    assert ngram_overlap(a, b, 3) == pytest.approx(2 / 5)  # "cat sat on", "sat on the" of 5 trigrams
    assert ngram_overlap(a, a, 3) == 1.0 and ngram_overlap(a, [], 3) == 0.0
    assert ngram_overlap(["hi"], ["hi"], 3) == 1.0  # n shrinks for a one-word text


def test_gate_rejects_copies_missing_and_unrelated_paraphrases():
    gate = bag_gate(min_similarity=0.5, max_common_run=4)
    reversed_text = " ".join(reversed(TEXT.split()))
    ok, copy, missing, unrelated = gate.check([TEXT] * 4, [reversed_text, TEXT, None, "zebra quantum violin"])
    assert ok.passed and ok.similarity == pytest.approx(1.0) and ok.longest_common_run == 1
    assert not copy.passed and "in a row" in copy.reason and "3-gram overlap 1.00" in copy.reason
    assert missing.reason == "no paraphrase"
    assert not unrelated.passed and "similarity" in unrelated.reason


def test_failed_paraphrase_is_retried_then_passes():
    p = ReverseParaphraser(copy_until=2)
    [outcome] = obfuscate([TEXT], p, bag_gate(max_tries=3))
    assert outcome.status == "ok" and outcome.attempts == 3 and len(p.calls) == 3
    assert outcome.paraphrase == " ".join(reversed(TEXT.split()))


def test_paraphrase_that_keeps_failing_is_reported(caplog):
    p = ReverseParaphraser()
    # "a b a b" reversed is "b a b a": it copies a 3-word run every time
    outcomes = obfuscate(["a b a b", TEXT], p, bag_gate(max_tries=2, max_common_run=1))
    assert [o.status for o in outcomes] == ["failed", "ok"]
    assert outcomes[0].attempts == 2 and "in a row" in outcomes[0].reason
    assert len(p.calls) == 3  # two tries for the failing text, one for the other
    assert "1 of 2 paraphrase(s) failed the quality gate after 2 tries" in caplog.text


def test_gate_config_is_validated():
    with pytest.raises(TuneguardError):
        GateConfig(max_tries=0)
    with pytest.raises(TuneguardError):
        GateConfig(max_ngram_overlap=1.5)


def test_minilm_ships_in_the_installed_package():
    assert (MiniLMEmbedder.model_dir() / "model.safetensors").is_file()


def test_clean_output_strips_preambles_fences_and_quotes():
    assert clean_output("Here is the rewritten text:\nHello there.") == "Hello there."
    assert clean_output("```python\nx = 1\n```") == "x = 1"
    assert clean_output('"A quoted answer."') == "A quoted answer."
    assert clean_output("Plain answer: with a colon") == "Plain answer: with a colon"


def test_local_paraphraser_is_seeded_and_batched():
    from tuneguard.models import tiny_model

    loaded = tiny_model()
    texts = ["a short text", "a somewhat longer text with more words in it"]
    p = LocalParaphraser(model=loaded, cache=False, progress=False, max_new_tokens=8)
    first = p.paraphrase(texts)
    assert all(isinstance(t, str) and t for t in first)
    assert LocalParaphraser(model=loaded, cache=False, progress=False, max_new_tokens=8).paraphrase(texts) == first
    assert p.paraphrase(texts, attempt=1) != first
    # the tiny GPT-2 tokenizer has no chat template: the plain instruction format is used
    assert loaded.tokenizer.decode(p.chat_prompt("Do it.")).endswith("Do it.\n\nAnswer:\n")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_local_paraphrase_of_a_text_does_not_depend_on_its_batch(arch):
    from tuneguard.models import tiny_model

    loaded = tiny_model(arch)
    # Budgets differ (1.5 × tokens + 16, capped at 20): a short text's budget must not follow the longest text's.
    # A random tiny model's next-token distribution is almost flat, so the rounding noise of batched matrix products
    # (1e-7) would move its samples; a low temperature makes it as peaked as a trained model's.
    texts = ["a short text", "a much longer text with many more words in it than the others have", "rivers"]

    def para(order, batch_size):
        p = LocalParaphraser(model=loaded, cache=False, progress=False, max_new_tokens=20, batch_size=batch_size,
                             temperature=0.02)
        return dict(zip(order, p.paraphrase(order)))

    together = para(texts, 3)
    assert together == para(texts, 1) == para(texts[::-1], 2)
    assert len(set(together.values())) == 3


needs_wordnet = pytest.mark.skipif(
    not wordnet.wordnet_available(),
    reason="WordNet is not installed (apt-get install -y wordnet-base wordnet-sense-index)",
)


@needs_wordnet
def test_wordnet_paraphraser_swaps_content_words_only():
    p = PARAPHRASERS.make("wordnet", progress=False, cache=False)
    text = "The Committee approved two new cars, after a long debate."
    [out] = p.paraphrase([text])
    assert out != text
    assert out.startswith("The ") and ", " in out and " a " in out and out.endswith(".")  # stopwords, punctuation
    assert " two " in out  # numbers are facts
    assert out.split()[1][0].isupper()  # capitalisation copied
    assert out.split()[5].endswith("s,") and out.split()[5] != "cars,"  # "cars" is swapped and stays plural
    assert p.paraphrase([text]) == [out]
    assert PARAPHRASERS.make("wordnet", progress=False, cache=False, seed=1).paraphrase([text]) != [out]


@needs_wordnet
def test_wordnet_paraphraser_returns_none_when_nothing_changes():
    p = PARAPHRASERS.make("wordnet", progress=False, cache=False)
    assert p.paraphrase(["of the and it"]) == [None]


@pytest.mark.slow
def test_minilm_similarity_orders_paraphrase_above_unrelated():
    gate = QualityGate()
    para, unrelated = gate.check([TEXT] * 2, ["After a lengthy discussion on funding for schools, the panel "
                                              "passed the fresh spending plan.", "Bake the bread for forty minutes."])
    assert para.similarity > 0.6 > unrelated.similarity


@pytest.mark.slow
def test_smollm2_paraphrases_a_short_text():
    text = "The weather was cold and rainy, so we stayed at home and read books all afternoon."
    p = PARAPHRASERS.make("local", cache=False, progress=False)
    t0 = time.perf_counter()
    [out] = p.paraphrase([text])
    seconds = time.perf_counter() - t0
    [result] = QualityGate(GateConfig(max_tries=1)).check([text], [out])
    print(f"\nSmolLM2 paraphrase ({seconds:.1f} s): {out!r}\ngate: {result}")
    assert out and out.strip() != text
