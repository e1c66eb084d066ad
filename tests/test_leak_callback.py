"""The leak watched while a Hugging Face Trainer trains (tuneguard.integrations): tiny models over-fitted on a few
member texts, seconds each."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainerControl, TrainerState,
                          TrainingArguments)

from helpers import accelerate_launch, sentences, write_jsonl
from tuneguard.errors import TuneguardError
from tuneguard.integrations.hf import LeakCallback
from tuneguard.integrations.leak import LeakMonitor
from tuneguard.models import tiny_model
from tuneguard.scoring import ScoringEngine

MEMBERS, NONMEMBERS = sentences(12, 1), sentences(12, 2)  # 12 non-members: TPR at 10% FPR is measurable


def lora(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(0)  # the adapter's initialisation
    return get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=["c_attn"]))


def trainer_for(model: torch.nn.Module, tokenizer, out: Path, *, epochs: int = 4, lr: float = 3e-4,
                **overrides) -> Trainer:
    """A plain Trainer over the member texts (batch 4: 3 steps an epoch), evaluating on the non-members."""
    settings = dict(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=4, learning_rate=lr,
                    eval_strategy="epoch", save_strategy="no", logging_strategy="no", report_to="none", use_cpu=True,
                    disable_tqdm=True, seed=0)
    return Trainer(model=model, args=TrainingArguments(**{**settings, **overrides}),
                   train_dataset=[tokenizer(t) for t in MEMBERS], eval_dataset=[tokenizer(t) for t in NONMEMBERS],
                   data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer)


def test_leak_rises_while_overfitting_and_is_logged_beside_eval_loss(tmp_path):
    loaded = tiny_model("gpt2")
    trainer = trainer_for(loaded.model, loaded.tokenizer, tmp_path / "trainer", eval_on_start=True)
    seen: list[dict] = []

    class Reporter(TrainerCallback):  # stands for TensorBoard / W&B: a reporter placed before the leak callback
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer.add_callback(Reporter())
    callback = LeakCallback(trainer=trainer, members=MEMBERS, nonmembers=NONMEMBERS, out=tmp_path / "leak")
    trainer.add_callback(callback)
    trainer.train()

    steps = [p["step"] for p in callback.points]
    assert steps == [0, 3, 6, 9, 12]  # eval_on_start, then each epoch's evaluation
    loss_auc = [p["attacks"]["loss"]["auc"] for p in callback.points]
    assert loss_auc[-1] > 0.5 and loss_auc[-1] > loss_auc[0]
    assert callback.points[0]["attacks"]["ratio"]["auc"] == 0.5  # the target is its own reference before training
    logged = [e for e in trainer.state.log_history if "leak/auc_loss" in e]
    assert [e["step"] for e in logged] == steps
    assert {"leak/tpr@10%_loss", "leak/strongest_auc", "leak/strongest_attack"} <= set(logged[-1])
    assert sum("leak/auc_ratio" in logs for logs in seen) == len(steps)  # through Trainer.log to every reporter
    assert {e["step"] for e in trainer.state.log_history if "eval_loss" in e} == set(steps)
    curve = json.loads((tmp_path / "leak" / "leak.json").read_text())
    assert [p["step"] for p in curve["points"]] == steps and curve["settings"]["sample"] == 12
    assert (tmp_path / "leak" / "leak.png").stat().st_size > 0
    # The changing model's scores are never cached: no disk cache entry was read or written.
    assert not list(Path(os.environ["TUNEGUARD_CACHE"]).rglob("*.npz"))


def test_budget_stops_training_and_names_the_checkpoint_within_it(tmp_path):
    loaded = tiny_model("gpt2")
    trainer = trainer_for(loaded.model, loaded.tokenizer, tmp_path / "trainer", epochs=8, eval_strategy="no",
                          save_strategy="steps", save_steps=1, save_only_model=True, logging_strategy="steps",
                          logging_steps=1)
    callback = LeakCallback(trainer=trainer, members=MEMBERS, nonmembers=NONMEMBERS, every=1, budget="auc<=0.87",
                            out=tmp_path / "leak")
    trainer.add_callback(callback)
    trainer.train()

    curve = json.loads((tmp_path / "leak" / "leak.json").read_text())["budget"]
    assert curve["exceeded_at_step"] == trainer.state.global_step < trainer.state.max_steps  # stopped early
    within = curve["last_step_within"]
    assert within is not None and within < curve["exceeded_at_step"]
    assert curve["checkpoint_within"] == str(tmp_path / "trainer" / f"checkpoint-{within}")
    assert callback.checkpoint_within == tmp_path / "trainer" / f"checkpoint-{within}"
    # Logging the leak through Trainer.log kept the trainer's own loss log of every step.
    assert {e["step"] for e in trainer.state.log_history if "loss" in e} == set(range(1, within + 2))


def test_peft_reference_is_the_same_model_with_its_adapter_disabled(tmp_path, monkeypatch):
    import tuneguard.models.loading

    def no_second_model(*args, **kwargs):
        raise AssertionError("the PEFT path loaded a second model")

    monkeypatch.setattr(tuneguard.models.loading, "load_model", no_second_model)
    loaded = tiny_model("gpt2")
    model = lora(loaded.model)
    n_parameters = sum(p.numel() for p in model.parameters())
    trainer = trainer_for(model, loaded.tokenizer, tmp_path / "trainer", lr=1e-2, eval_on_start=True)
    callback = LeakCallback(trainer=trainer, members=MEMBERS, nonmembers=NONMEMBERS)
    trainer.add_callback(callback)
    trainer.train()

    reference = callback.monitor._reference
    assert reference.loaded.model is model and sum(p.numel() for p in model.parameters()) == n_parameters
    # Its scores are those of the base model loaded on its own (the same seeded tiny model, never trained).
    base = ScoringEngine(tiny_model("gpt2"), cache=False, progress=False)
    for ours, theirs in zip(reference.score(callback.monitor.texts), base.score(callback.monitor.texts)):
        np.testing.assert_allclose(ours.logprobs, theirs.logprobs, atol=1e-5)
    assert callback.points[-1]["attacks"]["ratio"]["auc"] > callback.points[0]["attacks"]["ratio"]["auc"]


def test_a_check_restores_train_mode_and_the_adapter(tmp_path):
    loaded = tiny_model("gpt2")
    model = lora(loaded.model)
    with torch.no_grad():  # a trained adapter: B != 0, so the adapter changes the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.train()
    dropout = next(m for m in model.modules() if isinstance(m, torch.nn.Dropout))
    dropout.eval()  # a module the training loop keeps in eval mode stays so
    monitor = LeakMonitor(MEMBERS, NONMEMBERS)
    monitor.start(model, loaded.tokenizer)
    point = monitor.check(model, step=1)

    assert model.training and not dropout.training
    assert model.get_model_status().enabled is True
    assert point["attacks"]["ratio"]["auc"] != 0.5  # the target was scored with the adapter on


def test_nothing_is_written_or_logged_from_a_non_main_process(tmp_path):
    loaded = tiny_model("gpt2")
    callback = LeakCallback(members=MEMBERS, nonmembers=NONMEMBERS, every=1, budget="auc<=0.1",
                            out=tmp_path / "leak")
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), report_to="none", use_cpu=True)
    state, control = TrainerState(is_world_process_zero=False, is_local_process_zero=False), TrainerControl()
    callback.on_train_begin(args, state, control, model=loaded.model, processing_class=loaded.tokenizer)
    state.global_step = 1
    callback.on_step_end(args, state, control, model=loaded.model)
    callback.on_train_end(args, state, control)

    assert len(callback.points) == 1  # it scored its share, as every process does
    assert control.should_training_stop  # and stops with the others
    assert not (tmp_path / "leak").exists() and state.log_history == []


def test_without_the_trainer_the_figures_reach_the_log_history(tmp_path, caplog):
    loaded = tiny_model("gpt2")
    trainer = trainer_for(loaded.model, loaded.tokenizer, tmp_path / "trainer", epochs=1)
    with caplog.at_level(logging.WARNING, logger="tuneguard"):
        trainer.add_callback(LeakCallback(members=MEMBERS, nonmembers=NONMEMBERS))
        trainer.train()
    assert any("leak/strongest_auc" in e for e in trainer.state.log_history)
    assert "given no trainer=" in caplog.text


def test_settings_are_refused_before_training(caplog):
    with pytest.raises(TuneguardError, match="choose from"):
        LeakMonitor(MEMBERS, NONMEMBERS, attacks=("loss", "recall"))
    with pytest.raises(TuneguardError, match="both members and non-members"):
        LeakMonitor(MEMBERS, MEMBERS[:2])
    with pytest.raises(TuneguardError, match="privacy target"):
        LeakMonitor(MEMBERS, NONMEMBERS, budget="tpr<=0.2")
    with pytest.raises(TuneguardError, match="every"):
        LeakCallback(members=MEMBERS, nonmembers=NONMEMBERS, every=0)
    with caplog.at_level(logging.WARNING, logger="tuneguard"):
        LeakMonitor(MEMBERS, NONMEMBERS, budget="tpr@1%<=0.05")  # 12 non-members cannot measure 1% FPR
    assert "needs at least 100 sampled non-members" in caplog.text


def test_the_sample_is_fixed_by_the_seed():
    first, again = LeakMonitor(MEMBERS, NONMEMBERS, sample=4), LeakMonitor(MEMBERS, NONMEMBERS, sample=4)
    other = LeakMonitor(MEMBERS, NONMEMBERS, sample=4, seed=1)
    assert first.texts == again.texts != other.texts
    assert set(first.texts[:4]) <= set(MEMBERS) and set(first.texts[4:]) <= set(NONMEMBERS)


def test_full_fine_tuning_resumed_past_its_base_needs_the_reference():
    loaded = tiny_model("gpt2")
    with pytest.raises(TuneguardError, match="pass reference="):
        LeakMonitor(MEMBERS, NONMEMBERS).start(loaded.model, loaded.tokenizer, step=5)
    monitor = LeakMonitor(MEMBERS, NONMEMBERS, reference=tiny_model("gpt2"))
    monitor.start(loaded.model, loaded.tokenizer, step=5)
    assert monitor.check(loaded.model, step=5)["attacks"]["ratio"]["auc"] == 0.5  # same weights as the reference


def test_a_resumed_run_keeps_the_curve_it_drew(tmp_path):
    loaded = tiny_model("gpt2")
    first = LeakMonitor(MEMBERS, NONMEMBERS, out=tmp_path)
    first.start(loaded.model, loaded.tokenizer)
    for step in (1, 2):
        first.check(loaded.model, step=step)
    resumed = LeakMonitor(MEMBERS, NONMEMBERS, out=tmp_path, reference=tiny_model("gpt2"))
    resumed.start(loaded.model, loaded.tokenizer, step=1)
    assert [p["step"] for p in resumed.points] == [1]  # not the step-2 check the interrupted run drew after it
    other = LeakMonitor(MEMBERS, NONMEMBERS, out=tmp_path, reference=tiny_model("gpt2"), seed=1)
    other.start(loaded.model, loaded.tokenizer, step=1)
    assert other.points == []  # another sample: its curve starts anew


def test_sft_trainer(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    loaded = tiny_model("gpt2")
    args = trl.SFTConfig(output_dir=str(tmp_path / "trainer"), num_train_epochs=2, per_device_train_batch_size=4,
                         learning_rate=1e-3, eval_strategy="epoch", save_strategy="no", report_to="none",
                         use_cpu=True, disable_tqdm=True)
    trainer = trl.SFTTrainer(model=loaded.model, args=args, processing_class=loaded.tokenizer,
                             train_dataset=Dataset.from_dict({"text": MEMBERS}),
                             eval_dataset=Dataset.from_dict({"text": NONMEMBERS}))
    callback = LeakCallback(trainer=trainer, members=MEMBERS, nonmembers=NONMEMBERS)
    trainer.add_callback(callback)
    trainer.train()
    assert [p["step"] for p in callback.points] == [3, 6]
    assert any("leak/auc_loss" in e for e in trainer.state.log_history)


TWO_PROCESSES = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_leak_callback import MEMBERS, NONMEMBERS, trainer_for
from tuneguard.integrations.hf import LeakCallback
from tuneguard.integrations.leak import LeakMonitor
from tuneguard.models import tiny_model

out = Path(sys.argv[1])
loaded = tiny_model("gpt2")
trainer = trainer_for(loaded.model, loaded.tokenizer, out / "trainer", epochs=8)
rank = trainer.args.process_index
write = LeakMonitor.write
def recorded(self):
    with open(out / f"writer-{{rank}}", "a") as fh:
        fh.write("x")
    write(self)
LeakMonitor.write = recorded
callback = LeakCallback(trainer=trainer, members=MEMBERS, nonmembers=NONMEMBERS, budget="auc<=0.87", out=out / "leak")
trainer.add_callback(callback)
trainer.train()
(out / f"points-{{rank}}.json").write_text(json.dumps([callback.points, trainer.state.global_step,
                                                      sum("leak/auc_loss" in e for e in trainer.state.log_history)]))
"""


@pytest.mark.slow
def test_two_processes_stop_together_and_only_the_main_one_writes(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TWO_PROCESSES.format(tests=str(Path(__file__).parent)))
    accelerate_launch(str(tmp_path), script=str(script))
    (main_points, main_step, main_logged), (other_points, other_step, other_logged) = (
        json.loads((tmp_path / f"points-{rank}.json").read_text()) for rank in (0, 1))
    assert main_step == other_step < 8 * 2  # both stopped at the budget (2 steps an epoch over 2 processes)
    strip = [{k: v for k, v in p.items() if k != "seconds"} for p in main_points]
    assert strip == [{k: v for k, v in p.items() if k != "seconds"} for p in other_points]
    assert main_logged == len(main_points) and other_logged == 0
    assert (tmp_path / "writer-0").is_file() and not (tmp_path / "writer-1").exists()
    assert json.loads((tmp_path / "leak" / "leak.json").read_text())["budget"]["exceeded_at_step"] == main_step


def test_finetune_watches_the_leak_and_stops_at_its_budget(tmp_path):
    from tuneguard.cli import main
    from tuneguard.files import read_json

    texts = sentences(24, seed=5)
    for name, part in (("members.jsonl", texts[:12]), ("held.jsonl", texts[12:])):
        write_jsonl(tmp_path / name, part)
    common = ["finetune", "--model", "tiny-gpt2", "--data", str(tmp_path / "members.jsonl"), "--method", "full",
              "--epochs", "6", "--lr", "3e-3", "--batch-size", "4", "--max-length", "24"]
    assert main([*common, "--leak-budget", "auc<=0.6", "--out", str(tmp_path / "x")]) == 2  # needs --leak-every
    out = tmp_path / "run"
    assert main([*common, "--leak-every", "1", "--leak-nonmembers", str(tmp_path / "held.jsonl"), "--leak-sample",
                 "12", "--leak-budget", "auc<=0.95", "--out", str(out)]) == 0
    curve = read_json(out / "leak" / "leak.json")
    steps = [p["step"] for p in curve["points"]]
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))  # one check per optimizer step
    assert curve["points"][-1]["strongest"]["auc"] > 0.95 >= curve["points"][-2]["strongest"]["auc"]
    assert read_json(out / "run.json")["epochs_done"] < 6  # stopped at the budget, and the model so far saved


def test_the_leak_plot_shows_the_held_out_perplexity_beside_the_leak():
    from tuneguard.integrations.leak import leak_figure

    points = [{"step": s, "attacks": {"ratio": {"auc": a, "tpr": {"0.1": a / 2}}}, "nonmember_perplexity": p}
              for s, a, p in [(0, 0.5, 30.0), (10, 0.7, 25.0), (20, 0.9, 27.0)]]
    fig = leak_figure(points, (0.1,))
    assert [ax.get_title() for ax in fig.axes] == ["AUC", "TPR at 10% FPR", "held-out perplexity (the non-members)"]
    assert list(fig.axes[-1].lines[0].get_ydata()) == [30.0, 25.0, 27.0]
