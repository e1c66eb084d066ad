"""The scoring engine on PEFT models: LoRA, prefix tuning and (IA)^3 adapters score like the merged network."""

import numpy as np
import pytest
import torch

from tuneguard.models import load_model, tiny_model
from tuneguard.scoring import ScoringEngine
from tuneguard.train import TrainConfig, finetune

TEXTS = ["The patient was given a second dose of the drug.",
         "Blood pressure fell after two weeks of treatment in most of the cohort studied here.",
         "No."]


def naive_scores(loaded, text: str | list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lp_t, mu_t, sigma_t of a text (or token ids) from one un-padded pass and a full float64 log-softmax (no BOS:
    GPT-2's tokenizer)."""
    ids = torch.tensor([text]) if isinstance(text, list) else \
        loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0, -ids.shape[1]:]
    logp = torch.log_softmax(logits.double(), dim=-1)[:-1]
    p = logp.exp()
    lp = logp.gather(-1, ids[0, 1:, None])[:, 0]
    mu = (p * logp).sum(-1)
    sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp(min=0).sqrt()
    return lp.numpy(), mu.numpy(), sigma.numpy()


@pytest.fixture(scope="module", params=["lora", "prefix", "ia3"])
def adapter(request, tmp_path_factory):
    # A few steps at a high learning rate move the adapter's weights away from their (identity) initialisation.
    cfg = TrainConfig(method=request.param, epochs=1, lr=0.3 if request.param == "ia3" else 3e-2, batch_size=3,
                      num_virtual_tokens=4)
    out = tmp_path_factory.mktemp(request.param)
    return finetune(tiny_model("gpt2"), TEXTS, out, cfg, progress=False).model


def test_peft_model_scores_equal_the_naive_computation(adapter):
    assert type(adapter.model).__name__.startswith("Peft")
    engine = ScoringEngine(adapter, batch_size=3, cache=False, progress=False)
    for text, got in zip(TEXTS, engine.score(TEXTS)):
        lp, mu, sigma = naive_scores(adapter, text)
        np.testing.assert_allclose(got.logprobs, lp, atol=1e-5)
        np.testing.assert_allclose(got.mu, mu, atol=1e-5)
        np.testing.assert_allclose(got.sigma, sigma, atol=1e-4)


def test_peft_model_prefixed_scores_equal_the_naive_computation(adapter):
    # Prefix tuning feeds its own key/values, so its prefixed texts are forwarded whole; LoRA and (IA)^3 continue
    # from the shared prefix's cache. Both must equal one plain pass over prefix + text.
    engine = ScoringEngine(adapter, batch_size=2, cache=False, progress=False)
    prefix = TEXTS[0] + "\n\n"
    pre = engine.tokenize(prefix)
    n_pre = len(pre)
    for text, got in zip(TEXTS[1:], engine.score(TEXTS[1:], [prefix] * (len(TEXTS) - 1))):
        lp, mu, sigma = naive_scores(adapter, pre + engine.tokenize(text))
        np.testing.assert_allclose(got.logprobs, lp[n_pre - 1:], atol=1e-5)
        np.testing.assert_allclose(got.sigma, sigma[n_pre - 1:], atol=1e-4)


def test_adapter_scores_differ_from_the_base_and_are_cached_apart(adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEGUARD_CACHE", str(tmp_path))
    base = ScoringEngine(load_model("tiny-gpt2"), progress=False)
    tuned = ScoringEngine(adapter, progress=False)
    assert not np.allclose(base.ll(TEXTS), tuned.ll(TEXTS))
    # A fresh engine on the same adapter reads the disk cache: no forward pass.
    again = ScoringEngine(adapter, progress=False)
    np.testing.assert_array_equal(again.ll(TEXTS), tuned.ll(TEXTS))
    assert again.forward_passes == 0 and tuned.forward_passes == len(TEXTS)


@pytest.mark.parametrize("kind", ["prompt", "p-tuning"])
def test_virtual_token_adapters_score_only_the_inputs_positions(kind):
    # Prompt tuning and p-tuning prepend virtual tokens, and the model returns logits for them too.
    from peft import PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model

    from tuneguard.models import LoadedModel

    make = PromptTuningConfig if kind == "prompt" else PromptEncoderConfig
    base = tiny_model("gpt2")
    model = get_peft_model(base.model, make(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5,
                                            **({} if kind == "prompt" else {"encoder_hidden_size": 16})))
    loaded = LoadedModel(model.eval(), base.tokenizer, kind)
    for text, got in zip(TEXTS, ScoringEngine(loaded, batch_size=3, cache=False, progress=False).score(TEXTS)):
        np.testing.assert_allclose(got.logprobs, naive_scores(loaded, text)[0], atol=1e-5)
