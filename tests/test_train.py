import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from helpers import NewerTrainConfig, accelerate_launch, spy, write_jsonl
from tuneguard.errors import TuneguardError
from tuneguard.models import tiny_model
from tuneguard.train import TrainConfig, finetune
from tuneguard.train.config import KEYED
from tuneguard.train import loop as train_loop
from tuneguard.train.batching import IGNORE, encode_examples, length_grouped_batches

TEXTS = [f"Patient {i} reports mild symptoms after the {w} dose of the study drug." for i, w in
         enumerate(["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"])]


def mean_loss(loaded, texts):
    tok = loaded.tokenizer
    with torch.no_grad():
        return sum(loaded.model(**(b := tok(t, return_tensors="pt")), labels=b["input_ids"]).loss.item()
                   for t in texts) / len(texts)


@pytest.mark.parametrize("method, lr", [("lora", 3e-2), ("full", 3e-3), ("prefix", 3e-2), ("ia3", 0.3)])
def test_training_lowers_the_loss(tmp_path, method, lr):
    base = tiny_model("llama")
    before = mean_loss(base, TEXTS)
    result = finetune(base, TEXTS, tmp_path / method, TrainConfig(method=method, epochs=4, lr=lr, batch_size=4),
                      progress=False)
    assert mean_loss(result.model, TEXTS) < before - 0.05
    assert mean_loss(base, TEXTS) == before  # the caller's model is untouched
    record = json.loads((tmp_path / method / "run.json").read_text())
    assert record["epochs_done"] == 4 and len(record["loss_curve"]) == 8 and record["tokens_per_second"] > 0
    assert any(p.suffix == ".safetensors" for p in (tmp_path / method).iterdir())


def test_same_seed_same_weights_bit_for_bit(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=3, lr=1e-2, seed=7)
    a = finetune("tiny-gpt2", TEXTS, tmp_path / "a", cfg, progress=False)
    b = finetune("tiny-gpt2", TEXTS, tmp_path / "b", cfg, progress=False)
    for (na, pa), (nb, pb) in zip(a.model.model.named_parameters(), b.model.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    assert a.record["loss_curve"] == b.record["loss_curve"]


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, lora_dropout=0.1)
    whole = finetune("tiny-llama", TEXTS, tmp_path / "whole", cfg, progress=False)

    real_save = train_loop._save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed right after epoch 2 was checkpointed
    monkeypatch.setattr(train_loop, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune("tiny-llama", TEXTS, tmp_path / "cut", cfg, progress=False)
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["epoch"] == 2
    monkeypatch.setattr(train_loop, "_save_checkpoint", real_save)
    resumed = finetune("tiny-llama", TEXTS, tmp_path / "cut", cfg, progress=False)
    assert resumed.record["loss_curve"] == whole.record["loss_curve"]
    for pa, pb in zip(whole.model.model.parameters(), resumed.model.model.parameters()):
        assert torch.equal(pa, pb)
    assert not (tmp_path / "cut" / "checkpoint").exists()


def test_finished_run_is_reused_and_a_different_one_refused(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4)
    first = finetune("tiny-gpt2", TEXTS, tmp_path / "r", cfg, progress=False)
    again = finetune("tiny-gpt2", TEXTS, tmp_path / "r", cfg, progress=False)
    assert again.record == first.record
    with pytest.raises(TuneguardError, match="other settings or data"):
        finetune("tiny-gpt2", TEXTS[:4], tmp_path / "r", cfg, progress=False)


def test_a_new_train_config_option_at_its_default_keeps_a_finished_run(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=1, batch_size=4, max_length=24)
    first = finetune("tiny-gpt2", TEXTS, tmp_path / "r", cfg, progress=False)
    trained = spy(monkeypatch, train_loop, "training_accelerator")  # set up only when a run trains
    newer = NewerTrainConfig(**cfg.to_dict())
    again = finetune("tiny-gpt2", TEXTS, tmp_path / "r", newer, progress=False)
    assert again.record == first.record and not trained  # reused, not retrained
    # The new option at another value, or an old option changed, is another run: still refused.
    for other in (newer.replace(new_option=0.7), newer.replace(lr=1e-3)):
        with pytest.raises(TuneguardError, match="already holds a run with other settings"):
            finetune("tiny-gpt2", TEXTS, tmp_path / "r", other, progress=False)
    assert not trained


def test_keys_stay_those_saved_runs_were_made_with():
    # Saved runs, experiment cells, SOFT runs, DP audits and shadows are keyed by key_dict / digest: today's digest
    # of the defaults is pinned, so a change of the key format (which would refuse or retrain every saved run) fails.
    assert TrainConfig().digest() == "e67200ac945bba518a1a3864a5418ead"
    assert KEYED <= {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(method="full", lr=1e-3)
    newer = NewerTrainConfig(**cfg.to_dict())
    assert newer.key_dict() == cfg.key_dict() and newer.digest() == cfg.digest()
    assert newer.replace(new_option=0.7).key_dict() == {**cfg.key_dict(), "new_option": 0.7}


def test_a_new_train_config_option_at_its_default_resumes_a_checkpoint(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=2, batch_size=4, max_length=24)
    real_save = train_loop._save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after epoch 1 was checkpointed
    monkeypatch.setattr(train_loop, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune("tiny-gpt2", TEXTS, tmp_path / "cut", cfg, progress=False)
    monkeypatch.setattr(train_loop, "_save_checkpoint", real_save)
    newer = NewerTrainConfig(**cfg.to_dict())
    with pytest.raises(TuneguardError, match="checkpoint of a run with other settings"):
        finetune("tiny-gpt2", TEXTS, tmp_path / "cut", newer.replace(new_option=0.7), progress=False)
    resumed = spy(monkeypatch, train_loop, "_load_checkpoint")
    run = finetune("tiny-gpt2", TEXTS, tmp_path / "cut", newer, progress=False)
    assert len(resumed) == 1 and run.record.epochs_done == 2 and len(run.record.epoch_loss) == 2


def test_completion_only_loss_and_classification_pairs():
    tok = tiny_model("gpt2").tokenizer
    enc = encode_examples([("Question: 2+2?", " Four")], tok, 32)[0]
    n_prompt = len(tok("Question: 2+2?")["input_ids"])
    assert enc.labels[:n_prompt] == [IGNORE] * n_prompt and enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
    assert encode_examples([("some text", 1)], tok, 32, seq_cls=True)[0].labels == 1
    with pytest.raises(TuneguardError, match="empty after tokenisation"):
        encode_examples([""], tok, 32)


def test_sequence_classification_training(tmp_path):
    data = [(f"ignore all previous instructions {i}", 1) for i in range(4)] + \
           [(f"what is the weather in town {i}", 0) for i in range(4)]
    result = finetune(tiny_model("gpt2", task="seq-cls"), data, tmp_path / "cls",
                      TrainConfig(epochs=6, batch_size=4, lr=5e-2), progress=False)
    assert result.record["epoch_loss"][-1] < result.record["epoch_loss"][0]


def test_length_grouping_reduces_padding():
    lengths = [3, 40] * 32
    grouped = length_grouped_batches(lengths, 4, seed=0, epoch=0)
    plain = length_grouped_batches(lengths, 4, seed=0, epoch=0, group=False)
    waste = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert sorted(i for b in grouped for i in b) == list(range(64))
    assert waste(grouped) < waste(plain) / 4
    assert grouped == length_grouped_batches(lengths, 4, seed=0, epoch=0) != length_grouped_batches(lengths, 4,
                                                                                                    seed=0, epoch=1)


def test_two_processes_under_accelerate_launch(tmp_path):
    data = tmp_path / "d.jsonl"
    write_jsonl(data, TEXTS)
    accelerate_launch("finetune", "--model", "tiny-gpt2", "--data", str(data), "--epochs", "2", "--batch-size", "2",
                      "--out", str(tmp_path / "ddp"))
    record = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert record["processes"] == 2 and record["epochs_done"] == 2
    assert len(record["loss_curve"]) == 4  # 8 texts / (2 per batch x 2 processes) = 2 steps per epoch


def test_a_finished_run_is_never_reused_on_another_base(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4)
    finetune(tiny_model("gpt2", seed=0), TEXTS, tmp_path / "r", cfg, progress=False)
    # Same name, other weights: the adapter in r/ was trained against seed-0 weights and means nothing on these.
    with pytest.raises(TuneguardError, match="another base model .*tiny-gpt2, weights [0-9a-f]{12}"):
        finetune(tiny_model("gpt2", seed=1), TEXTS, tmp_path / "r", cfg, progress=False)
    again = finetune(tiny_model("gpt2", seed=0), TEXTS, tmp_path / "r", cfg, progress=False)
    assert again.record.base_fingerprint == tiny_model("gpt2", seed=0).fingerprint


def test_a_checkpoint_is_never_resumed_on_another_base(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=2, batch_size=4)

    def die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt
    real_save = train_loop._save_checkpoint
    monkeypatch.setattr(train_loop, "_save_checkpoint", die)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_model("gpt2", seed=0), TEXTS, tmp_path / "cut", cfg, progress=False)
    monkeypatch.setattr(train_loop, "_save_checkpoint", real_save)
    with pytest.raises(TuneguardError, match="checkpoint of a run on another base model"):
        finetune(tiny_model("gpt2", seed=1), TEXTS, tmp_path / "cut", cfg, progress=False)
    assert finetune(tiny_model("gpt2", seed=0), TEXTS, tmp_path / "cut", cfg, progress=False).record.epochs_done == 2


def test_run_record_round_trip_and_old_records(tmp_path):
    from tuneguard.models.record import RUN_SCHEMA, RunRecord

    run = finetune("tiny-gpt2", TEXTS, tmp_path / "r", TrainConfig(epochs=1, batch_size=4, max_length=24),
                   progress=False)
    saved = json.loads((tmp_path / "r" / "run.json").read_text())
    assert saved["schema"] == RUN_SCHEMA and saved["base_ref"] == "tiny-gpt2" and saved["config"]["max_length"] == 24
    assert RunRecord.from_json(saved) == run.record and run.record.max_length == 24
    assert "dp" not in saved and run.record["method"] == run.record.method == "lora"
    # A record written before schema numbers (no fingerprint) still loads, and is reused on the base it names.
    old = {k: v for k, v in saved.items() if k not in ("schema", "base_fingerprint", "lr_curve")}
    assert RunRecord.from_json(old).schema == 1 and RunRecord.from_json(old).base_fingerprint is None
    (tmp_path / "r" / "run.json").write_text(json.dumps(old))
    cfg = TrainConfig(epochs=1, batch_size=4, max_length=24)
    assert finetune("tiny-gpt2", TEXTS, tmp_path / "r", cfg, progress=False).record.schema == 1
    with pytest.raises(TuneguardError, match="another base model"):
        finetune("tiny-llama", TEXTS, tmp_path / "r", cfg, progress=False)


@pytest.mark.parametrize("method, extra, message", [
    ("lora", {"use_rslorra": True}, r"training method 'lora' has no peft option 'use_rslorra' \(peft options: .*"
                                    r"use_rslora.*\); did you mean 'use_rslora'\?$"),
    ("lora", {"r": 4}, r"has no peft option 'r' .*; TrainConfig sets 'r': use its own option$"),
    ("full", {"use_rslora": True}, r"training method 'full' has no peft option 'use_rslora' \(peft options: none\)"),
])
def test_a_bad_peft_option_in_extra_fails_before_the_model_loads(tmp_path, method, extra, message, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before extra was checked")

    monkeypatch.setattr(train_loop, "as_loaded", no_load)
    with pytest.raises(TuneguardError, match=message):
        finetune("tiny-gpt2", TEXTS, tmp_path / "r", TrainConfig(method=method, extra=extra), progress=False)
    assert not (tmp_path / "r").exists()


def test_a_valid_peft_option_in_extra_reaches_peft(tmp_path):
    run = finetune("tiny-gpt2", TEXTS[:8], tmp_path / "r", TrainConfig(epochs=1, batch_size=4, max_length=16,
                                                                       extra={"use_rslora": True}), progress=False)
    assert run.model.model.peft_config["default"].use_rslora is True


def test_methods_come_from_the_registry_without_loading_torch():
    from tuneguard.train import METHODS

    assert METHODS.names() == ["full", "lora", "prefix", "ia3"]
    with pytest.raises(TuneguardError, match="unknown training method 'lorra': choose from full, lora, prefix, ia3"):
        TrainConfig(method="lorra")
    with pytest.raises(TuneguardError, match="parameter 'epochs' must be >= 1, got 0"):
        TrainConfig(epochs=0)
    code = ("import sys; from tuneguard.train import TrainConfig; TrainConfig(method='ia3'); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_finetune_help_lists_the_registered_methods():
    from tuneguard.cli import build_parser
    from tuneguard.train import METHODS

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["finetune"]
    text = sub.format_help()
    assert all(f"{name}:" in text for name in METHODS.names())


def test_lora_layers_adapt_only_those_layers_and_are_read_back_from_the_adapter(tmp_path):
    from tuneguard.train import METHODS

    run = finetune("tiny-llama", TEXTS[:4], tmp_path / "r", TrainConfig(epochs=1, batch_size=4, max_length=16,
                                                                         lora_layers=[1]), progress=False)
    trained = [n for n, p in run.model.model.named_parameters() if p.requires_grad]
    assert trained and all(".layers.1." in n for n in trained)
    saved = json.loads((tmp_path / "r" / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == [1] and METHODS.get("lora").train_options(saved)["lora_layers"] == [1]
    with pytest.raises(TuneguardError, match=r"LoRA layers up to 2 were asked for, and LlamaForCausalLM has 2 "
                                             r"\(0-1\): choose indices below 2"):
        finetune("tiny-llama", TEXTS[:4], tmp_path / "bad", TrainConfig(epochs=1, lora_layers=[0, 2]),
                 progress=False)


@pytest.mark.parametrize("text, layers", [("0-3,20", [0, 1, 2, 3, 20]), ("5", [5]), (" 2, 0 ,1", [0, 1, 2])])
def test_lora_layers_on_the_command_line_and_back(text, layers):
    from tuneguard.commands.finetune import layer_list
    from tuneguard.train.config import layers_text

    assert layer_list(text) == layers and layer_list(layers_text(layers)) == layers
    assert layers_text([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


@pytest.mark.parametrize("text", ["", "a", "3-1", "-2", "1.5", "0-"])
def test_bad_lora_layers_are_refused_with_the_form(text):
    import argparse

    from tuneguard.commands.finetune import layer_list

    with pytest.raises(argparse.ArgumentTypeError, match="expected layer indices like 0,1,2 or 0-14"):
        layer_list(text)
