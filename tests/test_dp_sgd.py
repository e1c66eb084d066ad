import math

import pytest
import torch

from helpers import NewerTrainConfig
from tuneguard.defenses.dp_sgd import DPConfig, dp_finetune
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.train import TrainConfig

TEXTS = [f"record {i}: the committee approved budget line {i * 7} for the spring term" for i in range(24)]
CFG = TrainConfig(method="lora", epochs=2, batch_size=6, lr=2e-2, lora_dropout=0.0, max_length=32)


def lora_weights(result):
    return {n: p.detach().clone() for n, p in result.model.model.named_parameters() if "lora_" in n}


def test_epsilon_spent_meets_the_target(tmp_path):
    result = dp_finetune(tiny_model("llama"), TEXTS, tmp_path / "dp", CFG, DPConfig(target_epsilon=4.0),
                         progress=False)
    dp = result.record["dp"]
    assert dp["steps"] == 8 and dp["sample_rate"] == 0.25 and dp["delta"] == pytest.approx(1 / 240)
    assert dp["noise_multiplier"] > 0
    assert 3.0 < dp["epsilon_spent"] <= 4.0 + 1e-6
    # The noise on a step's mean gradient, to hold against the clipped gradient's norm (at most max_grad_norm).
    assert dp["noise_std"] == pytest.approx(dp["noise_multiplier"] * dp["max_grad_norm"] / dp["expected_batch_size"])


def test_same_seed_same_weights_and_noise_matters(tmp_path):
    base = tiny_model("llama")
    a = lora_weights(dp_finetune(base, TEXTS, tmp_path / "a", CFG, DPConfig(target_epsilon=2.0), progress=False))
    b = lora_weights(dp_finetune(base, TEXTS, tmp_path / "b", CFG, DPConfig(target_epsilon=2.0), progress=False))
    c = lora_weights(dp_finetune(base, TEXTS, tmp_path / "c", CFG, DPConfig(target_epsilon=math.inf),
                                 progress=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.allclose(a[k], c[k]) for k in a)


def test_finished_run_is_reused_and_reloads(tmp_path):
    first = dp_finetune("tiny-gpt2", TEXTS, tmp_path / "r", CFG, DPConfig(target_epsilon=8.0), progress=False)
    again = dp_finetune("tiny-gpt2", TEXTS, tmp_path / "r", CFG, DPConfig(target_epsilon=8.0), progress=False)
    assert again.record == first.record and again.model.base_ref == "tiny-gpt2"


def test_a_new_train_config_option_at_its_default_keeps_a_finished_run(tmp_path):
    first = dp_finetune("tiny-gpt2", TEXTS, tmp_path / "r", CFG, DPConfig(target_epsilon=8.0), progress=False)
    newer = NewerTrainConfig(**CFG.to_dict())  # a later TrainConfig, its new option at its default
    again = dp_finetune("tiny-gpt2", TEXTS, tmp_path / "r", newer, DPConfig(target_epsilon=8.0), progress=False)
    assert again.record == first.record  # reused: a retrained run would record the new option
    with pytest.raises(TuneguardError, match="already holds a run with other settings"):
        dp_finetune("tiny-gpt2", TEXTS, tmp_path / "r", newer.replace(new_option=0.7), DPConfig(target_epsilon=8.0),
                    progress=False)


def test_only_lora_is_offered():
    with pytest.raises(TuneguardError, match="LoRA only"):
        dp_finetune(tiny_model("gpt2"), TEXTS, "/tmp/unused", TrainConfig(method="full"), progress=False)


def test_the_schedule_and_accumulation_are_those_of_the_run_it_is_compared_with(tmp_path):
    from tuneguard.train import finetune

    cfg = CFG.replace(scheduler="linear", warmup_ratio=0.25, grad_accum=2, epochs=2)
    plain = finetune(tiny_model("llama"), TEXTS, tmp_path / "plain", cfg, progress=False).record
    record = dp_finetune(tiny_model("llama"), TEXTS, tmp_path / "dp", cfg, DPConfig(target_epsilon=8.0),
                         progress=False).record
    # 24 texts, batches of 6 accumulated 2 by 2: 2 optimizer steps per epoch, and an expected 12 texts per step.
    assert record.steps == plain.steps == 4 and record.dp["sample_rate"] == 0.5
    assert record.dp["expected_batch_size"] == 12
    assert record.lr_curve == pytest.approx(plain.lr_curve) and len(set(record.lr_curve)) > 1  # warm-up, then decay
    assert record.lr_curve[0] < max(record.lr_curve)


def test_every_dp_option_is_honoured(tmp_path):
    delta = 1e-3
    record = dp_finetune(tiny_model("llama"), TEXTS, tmp_path / "dp", CFG, DPConfig(target_epsilon=4.0, delta=delta),
                         progress=False).record
    assert record.dp["delta"] == delta and record.dp["max_grad_norm"] == 1.0
    with pytest.raises(TuneguardError, match="parameter 'delta' must be in \\(0, 1\\)"):
        DPConfig.create("regime 'dp'", {"delta": 2})


def test_one_token_texts_are_left_out_before_the_sampling_rate(tmp_path):
    texts = ["hello", "world", *TEXTS]
    result = dp_finetune("tiny-gpt2", texts, tmp_path / "r", CFG, DPConfig(target_epsilon=8.0), progress=False)
    assert result.record.n_examples == len(TEXTS)  # q and the accountant saw only the texts that can be sampled
    assert result.record.loss_curve and all(math.isfinite(x) for x in result.record.loss_curve)
