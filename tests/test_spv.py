"""SPV-MIA: variation formulas and sign, shared neighbours, self-prompt generation, reference set-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tuneguard.attacks.spv.pipeline import SPVConfig, run_spv
from tuneguard.attacks.spv.reference import target_setup
from tuneguard.attacks.spv.selfprompt import self_prompt_texts
from tuneguard.attacks.spv.variation import calibrated_score, variation
from tuneguard.models import tiny_model
from tuneguard.train import TrainConfig, finetune

SUBJECTS = ["aspirin", "insulin", "statins", "vitamin D", "exercise", "metformin", "caffeine", "zinc", "sleep",
            "fasting", "iron", "yoga"]
OUTCOMES = ["blood pressure", "glucose", "mood", "bone density", "heart rate", "memory"]
TEXTS = [f"In a trial of {80 + 7 * i} adults, {s} changed {OUTCOMES[i % 6]} by {i + 2} percent over {i + 4} weeks "
         f"compared with placebo, and the effect lasted after the study ended in most of the patients"
         for i, s in enumerate(SUBJECTS)]
MEMBERS, NONMEMBERS = TEXTS[:6], TEXTS[6:]


def mean_ll(loaded, texts: list[str]) -> np.ndarray:
    """Naive mean per-token log-likelihood, one text at a time (independent of the scoring engine)."""
    out = []
    with torch.no_grad():
        for t in texts:
            ids = loaded.tokenizer(t, return_tensors="pt")["input_ids"]
            out.append(-loaded.model(input_ids=ids, labels=ids).loss.item())
    return np.array(out)


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny GPT-2 fully fine-tuned on MEMBERS until it has memorised them."""
    cfg = TrainConfig(method="full", epochs=25, lr=3e-3, batch_size=6, max_length=64)
    return finetune(tiny_model("gpt2"), MEMBERS, tmp_path_factory.mktemp("overfit"), cfg, progress=False).model


def test_variation_forms_by_hand():
    ll_x = np.array([-1.0, -2.0])
    ll_n = [np.array([-1.5, -2.5]), np.array([])]
    prob = variation(ll_x, ll_n, "prob")
    assert prob[0] == pytest.approx((np.exp(-1.5) + np.exp(-2.5)) / 2 - np.exp(-1.0)) and np.isnan(prob[1])
    assert variation(ll_x, ll_n, "logprob")[0] == pytest.approx(-2.0 - -1.0)
    assert calibrated_score(np.array([-0.3]), np.array([-0.1]))[0] == pytest.approx(0.2)
    assert calibrated_score(np.array([-0.3]), None)[0] == pytest.approx(0.3)


def test_variation_sign_on_overfit_model(overfit):
    cfg = SPVConfig(reference="none", neighbours="random-fill", n_neighbours=6, seed=0)
    out = run_spv(overfit, TEXTS, mean_ll, cfg, progress=False)
    v = out["v_target"]
    # A memorised text is a local maximum of the likelihood: its neighbours are less likely (V < 0, score > 0).
    assert (v[:6] < 0).all()
    assert v[:6].mean() < v[6:].mean()
    labels = [1] * 6 + [0] * 6
    assert roc_auc_score(labels, out["scores"]) > 0.8


def test_calibration_uses_the_same_neighbours_for_both_models(overfit):
    reference = tiny_model("gpt2", seed=1)
    seen: dict[int, list[list[str]]] = {}

    def spy(model, texts):
        seen.setdefault(id(model), []).append(list(texts))
        return mean_ll(model, texts)

    cfg = SPVConfig(reference="model", neighbours="random-fill", n_neighbours=3, form="logprob")
    out = run_spv(overfit, TEXTS[:4], spy, cfg, reference=reference, progress=False)
    assert seen[id(overfit)] == seen[id(reference)] and len(seen[id(overfit)][1]) == 12
    assert np.allclose(out["scores"], -(out["v_target"] - out["v_reference"]))


def test_self_prompt_generation_is_seeded_and_resumes(tmp_path, monkeypatch):
    model = tiny_model("gpt2")
    kw = dict(n_texts=5, prompt_tokens=4, total_tokens=12, batch_size=2, seed=3, progress=False)
    texts = self_prompt_texts(model, TEXTS, directory=tmp_path / "a", **kw)
    assert len(texts) == 5 and all(any(t.startswith(p.split()[0]) for p in TEXTS) for t in texts)
    assert all(len(model.tokenizer(t)["input_ids"]) <= 12 for t in texts)
    again = self_prompt_texts(model, TEXTS, directory=tmp_path / "b", **kw)
    assert again == texts
    monkeypatch.setattr(model.model, "generate", lambda *a, **k: pytest.fail("regenerated a cached file"))
    assert self_prompt_texts(model, TEXTS, directory=tmp_path / "a", **kw) == texts


def test_target_setup_copies_lora_settings(tmp_path):
    cfg = TrainConfig(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.1, max_steps=1, batch_size=4)
    target = finetune(tiny_model("gpt2"), MEMBERS, tmp_path / "t", cfg, progress=False).model
    setup = target_setup(target)
    assert setup["method"] == "lora" and setup["lora_r"] == 4 and setup["lora_alpha"] == 8
    assert setup["lora_dropout"] == 0.1


def test_self_prompt_reference_end_to_end(tmp_path):
    cfg = TrainConfig(method="lora", lora_r=4, lora_alpha=8, epochs=1, batch_size=4)
    target = finetune("tiny-gpt2", MEMBERS, tmp_path / "t", cfg, progress=False).model
    spv = SPVConfig(prompts=NONMEMBERS, n_texts=4, prompt_tokens=4, total_tokens=16, generation_batch_size=2,
                    neighbours="random-fill", n_neighbours=2, out_dir=str(tmp_path / "spv"))
    out = run_spv(target, TEXTS[:4], mean_ll, spv, progress=False)
    assert np.isfinite(out["scores"]).all() and out["stats"]["generated_texts"] == 4
    runs = list((tmp_path / "spv" / "reference").iterdir())
    assert len(runs) == 1 and (runs[0] / "adapter_config.json").is_file()
