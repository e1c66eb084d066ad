"""DP-LoRA that learns: a run whose weights never move is stopped with the causes, the noisy gradient is the clipped
sum over the expected batch (never the drawn one), and one rule for the method and for epsilon = inf in `defend dp`
and the experiment file."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from helpers import write_jsonl
from tuneguard.cli import main
from tuneguard.defenses import dp_sgd
from tuneguard.defenses.dp_sgd import DPConfig, dp_finetune
from tuneguard.errors import TuneguardError
from tuneguard.experiment import load_experiment
from tuneguard.models import tiny_model
from tuneguard.train import TrainConfig

TEXTS = [f"record {i}: the committee approved budget line {i * 7} for the spring term" for i in range(24)]
CFG = TrainConfig(method="lora", epochs=1, batch_size=4, grad_accum=2, lr=1e-2, lora_dropout=0.0, max_length=24)


def test_a_run_whose_optimizer_step_does_nothing_is_stopped_after_its_first_step(tmp_path, monkeypatch):
    from opacus.optimizers import DPOptimizer

    steps = []
    monkeypatch.setattr(DPOptimizer, "step", lambda self, closure=None: steps.append(1))
    with pytest.raises(TuneguardError, match=r"^DP-SGD: the \d+ trainable LoRA tensors did not change in the first "
                                             r"optimizer step \(lr 0\.01, float32; they had gradients\): raise --lr"):
        dp_finetune(tiny_model("llama"), TEXTS, tmp_path / "dp", CFG, DPConfig(target_epsilon=8.0), progress=False)
    # Stopped after the first logical step (its physical batches), with nothing saved.
    assert len(steps) <= math.ceil(len(TEXTS) / CFG.batch_size) and not (tmp_path / "dp" / "run.json").exists()


def test_the_check_waits_for_a_step_with_a_learning_rate(tmp_path):
    # Warm-up starts at lr 0: that step moves nothing, and must not be taken for a frozen run.
    record = dp_finetune(tiny_model("llama"), TEXTS, tmp_path / "dp", CFG.replace(epochs=2, warmup_ratio=0.5),
                         DPConfig(target_epsilon=8.0), progress=False).record
    assert record.lr_curve[0] == 0 and record.lr_curve[1] > 0 and record.steps == 6


def test_the_noisy_gradient_is_the_clipped_sum_over_the_expected_batch_not_the_drawn_one(tmp_path, monkeypatch):
    """Opacus issue #819: with no noise and no clipping, the first step's gradient is the sum of the per-sample
    gradients of the texts the Poisson draw gave, divided by the expected batch q·n = batch_size x grad_accum."""
    from tuneguard.seed import set_seed
    from tuneguard.train import batching
    from tuneguard.train.methods import prepare_model

    base = tiny_model("llama")
    cfg = CFG.replace(seed=3)  # its draw gives 10 texts where 8 are expected: three physical batches, one step
    collated, first = [], []
    real_collate = batching.collate
    # dp_finetune collates each physical batch of a drawn one: record which texts the draw gave.
    monkeypatch.setattr(batching, "collate", lambda examples, pad: collated.extend(examples) or real_collate(examples,
                                                                                                            pad))

    def spy(optimizer, args, kwargs):  # the inner AdamW's first step: the gradient Opacus hands it, and its texts
        if isinstance(optimizer, torch.optim.AdamW) and not first:
            first.append(([p.grad.detach().clone() for p in optimizer.param_groups[0]["params"]], list(collated)))

    handle = register_optimizer_step_pre_hook(spy)
    try:
        dp_finetune(base, TEXTS, tmp_path / "dp", cfg, DPConfig(target_epsilon=math.inf, max_grad_norm=1e6),
                    progress=False)
    finally:
        handle.remove()
    grads, drawn = first[0]
    expected_batch = cfg.batch_size * cfg.grad_accum
    assert len(drawn) == 10 != expected_batch  # the draw differs from its expectation: the case that matters

    # The same LoRA model (same seed), each drawn text's own gradient by plain autograd, summed.
    set_seed(cfg.seed)
    net = prepare_model(copy.deepcopy(base.model), cfg)
    net.train()
    trainable = [p for p in net.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in trainable]
    for example in drawn:
        net.zero_grad()
        dp_sgd._per_example_mean_loss(net, real_collate([example], base.tokenizer.pad_token_id)).backward()
        total = [t + p.grad for t, p in zip(total, trainable)]
    assert any(t.abs().sum() > 0 for t in total)
    for got, want in zip(grads, total):
        torch.testing.assert_close(got, want / expected_batch, rtol=1e-4, atol=1e-7)


# --- one rule for the method and for epsilon = inf -----------------------------------------------------------------

def _experiment(tmp_path, regimes: str):
    write_jsonl(tmp_path / "a.jsonl", TEXTS)
    (tmp_path / "exp.toml").write_text(f'model = "tiny-gpt2"\nattacks = ["loss"]\n[[datasets]]\nname = "A"\n'
                                       f'path = "a.jsonl"\nmembers = 4\nnonmembers = 4\n[regimes]\n{regimes}\n')
    return load_experiment(tmp_path / "exp.toml")


def test_the_experiment_file_refuses_dp_with_another_method_as_defend_dp_does(tmp_path):
    with pytest.raises(TuneguardError, match=r"regime 'dp': DP-SGD is offered for LoRA only \(Opacus has no "
                                             r"per-sample gradients for full layers\)"):
        _experiment(tmp_path, 'dp = { train = { method = "full" } }')
    assert _experiment(tmp_path, "dp = {}").regimes[0].train.method == "lora"


def test_epsilon_inf_means_clipping_only_in_the_file_and_on_the_command_line(tmp_path, capsys):
    column = _experiment(tmp_path, "dp = { epsilon = inf }").regimes[0]
    assert math.isinf(column.regime.params.epsilon)
    data = tmp_path / "a.jsonl"
    assert main(["defend", "dp", "--model", "tiny-gpt2", "--data", str(data), "--epsilon", "inf", "--epochs", "1",
                 "--batch-size", "4", "--max-length", "16", "--out", str(tmp_path / "dp")]) == 0
    figures = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("{")))
    assert figures["dp"]["noise_multiplier"] == 0 and math.isinf(figures["dp"]["epsilon_spent"])
    for bad, why in (("0", "must be > 0"), ("nan", "must be a finite number")):
        with pytest.raises(SystemExit):
            main(["defend", "dp", "--model", "tiny-gpt2", "--data", str(data), "--epsilon", bad, "--out",
                  str(tmp_path / "x")])
        assert f"argument --epsilon: {why}" in capsys.readouterr().err
