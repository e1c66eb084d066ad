"""``finetune``: the training loop (Accelerate), per-epoch checkpoints, saving and the run record."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_directory, atomic_write_json, read_json
from tuneguard.models import LoadedModel, load_model
from tuneguard.models.loading import RUN_RECORD
from tuneguard.seed import set_seed
from tuneguard.train.batching import collate, encode_examples, examples_digest, length_grouped_batches
from tuneguard.train.config import TrainConfig
from tuneguard.train.methods import prepare_model

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"


@dataclass
class TrainResult:
    """The trained model (in memory, eval mode), where it was saved, and its run record."""

    model: LoadedModel
    out_dir: Path
    record: dict


def finetune(model: LoadedModel | str, examples: list, out_dir: str | Path, config: TrainConfig | None = None, *,
             progress: bool = True) -> TrainResult:
    """Fine-tune ``model`` on ``examples`` and save the result (adapter or full model, safetensors) in ``out_dir``.

    ``examples``: texts (loss on every token), (prompt, completion) pairs (loss on the completion), or (text, class)
    pairs for a sequence-classification model. A checkpoint is written after every epoch; an interrupted run resumes
    from it, and a finished run with the same settings and data is loaded instead of retrained. Under
    ``accelerate launch`` the batches are sharded over the processes and only the main process writes.
    """
    from accelerate import Accelerator

    config = config or TrainConfig()
    out_dir = Path(out_dir)
    base = load_model(model) if isinstance(model, str) else model
    seq_cls = "SequenceClassification" in type(base.model).__name__
    data_digest = examples_digest([list(e) if isinstance(e, tuple) else e for e in examples])
    done = finished_record(out_dir, config, data_digest)
    if done is not None:
        log.info("%s already holds this finished run; loading it", out_dir)
        return TrainResult(load_model(out_dir, base=base.ref, task="seq-cls" if seq_cls else "causal-lm"),
                           out_dir, done)

    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, cpu=not torch.cuda.is_available())
    set_seed(config.seed)
    # Training mutates the weights (and peft injects layers in place): never touch the caller's model.
    net = prepare_model(copy.deepcopy(base.model) if not isinstance(model, str) else base.model, config,
                        seq_cls=seq_cls)
    encoded = encode_examples(examples, base.tokenizer, config.max_length, seq_cls=seq_cls)
    lengths = [len(e.input_ids) for e in encoded]
    world, rank = accelerator.num_processes, accelerator.process_index
    n_batches = math.ceil(len(encoded) / config.batch_size) // world * world or world
    steps_per_epoch = math.ceil(n_batches // world / config.grad_accum)
    total_steps = config.max_steps or steps_per_epoch * config.epochs

    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    from transformers import get_scheduler

    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    net, optimizer = accelerator.prepare(net, optimizer)
    state = {"epoch": 0, "step": 0, "loss_curve": [], "epoch_loss": [], "tokens": 0, "padded": 0, "seconds": 0.0,
             "cpu_seconds": 0.0}
    ckpt = out_dir / CHECKPOINT
    if (ckpt / "state.json").is_file():
        state = _load_checkpoint(ckpt, accelerator.unwrap_model(net), optimizer, scheduler, config, data_digest)
        log.info("resuming %s after epoch %d", out_dir, state["epoch"])

    net.train()
    pad_id = base.tokenizer.pad_token_id
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"finetune {config.method}", unit="step",
               disable=not progress or not accelerator.is_local_main_process)
    for epoch in range(state["epoch"], config.epochs):
        if config.max_steps and state["step"] >= config.max_steps:
            break
        t0, c0 = time.perf_counter(), time.process_time()
        batches = length_grouped_batches(lengths, config.batch_size, seed=config.seed, epoch=epoch,
                                         group=config.group_by_length)
        batches = (batches * world)[:n_batches][rank::world]  # equal count per process for DDP
        losses, micro = [], []
        for batch_idx in batches:
            batch = collate([encoded[i] for i in batch_idx], pad_id)
            state["tokens"] += int(batch["attention_mask"].sum())
            state["padded"] += int(batch["attention_mask"].numel())
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(net):
                loss = net(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            micro.append(accelerator.reduce(loss.detach(), "mean").item())  # the loss over all processes
            if accelerator.sync_gradients:
                scheduler.step()
                state["step"] += 1
                step_loss = sum(micro) / len(micro)
                micro = []
                state["loss_curve"].append(round(step_loss, 6))
                losses.append(step_loss)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{step_loss:.4f}")
                if config.max_steps and state["step"] >= config.max_steps:
                    break
        state["epoch"] = epoch + 1
        state["epoch_loss"].append(round(sum(losses) / max(len(losses), 1), 6))
        state["seconds"] += time.perf_counter() - t0
        state["cpu_seconds"] += time.process_time() - c0
        if accelerator.is_main_process and state["epoch"] < config.epochs:
            _save_checkpoint(ckpt, accelerator.unwrap_model(net), optimizer, scheduler, state, config, data_digest)
        accelerator.wait_for_everyone()
    bar.close()

    trained = accelerator.unwrap_model(net)
    trained.eval()
    record = {
        "status": "done",
        "base_ref": base.ref,
        "method": config.method,
        "config": config.to_dict(),
        "config_digest": config.digest(),
        "data_digest": data_digest,
        "n_examples": len(examples),
        "processes": world,
        "epochs_done": state["epoch"],
        "steps": state["step"],
        "loss_curve": state["loss_curve"],
        "epoch_loss": state["epoch_loss"],
        "train_seconds": round(state["seconds"], 3),
        "cpu_seconds": round(state["cpu_seconds"], 3),
        "tokens": state["tokens"] * world,
        "tokens_per_second": round(state["tokens"] * world / max(state["seconds"], 1e-9), 2),
        "padding_fraction": round(1 - state["tokens"] / max(state["padded"], 1), 4),
        "trainable_parameters": sum(p.numel() for p in trained.parameters() if p.requires_grad),
    }
    if accelerator.is_main_process:
        save_trained(trained, base, out_dir, record)
    accelerator.wait_for_everyone()
    meta = {**base.meta, "adapter": str(out_dir)} if config.method != "full" else dict(base.meta)
    return TrainResult(LoadedModel(trained, base.tokenizer, ref=str(out_dir), base_ref=base.ref, meta=meta),
                       out_dir, record)


def finished_record(out_dir: Path, config: TrainConfig, data_digest: str) -> dict | None:
    """The run record of a finished identical run in ``out_dir``; raise if it holds a different run."""
    path = out_dir / RUN_RECORD
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("config_digest") == config.digest() and record.get("data_digest") == data_digest:
        return record
    raise TuneguardError(f"{out_dir} already holds a run with other settings or data; choose another output "
                         "directory or delete it")


def save_trained(model: torch.nn.Module, base: LoadedModel, out_dir: Path, record: dict) -> None:
    """Write the adapter (or full model + tokenizer) as safetensors, then the run record that marks it complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".save."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if record["method"] == "full":
            base.tokenizer.save_pretrained(tmp)
        else:  # name the base as the user named it, so `load_model(out_dir)` finds it again
            cfg_path = tmp / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = base.ref
            cfg_path.write_text(json.dumps(cfg, indent=2))
        for item in tmp.iterdir():
            os.replace(item, out_dir / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(out_dir / RUN_RECORD, record)
    shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)


def _save_checkpoint(ckpt: Path, model, optimizer, scheduler, state: dict, config: TrainConfig,
                     data_digest: str) -> None:
    with atomic_directory(ckpt) as tmp:
        trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", {**state, "config_digest": config.digest(), "data_digest": data_digest})


def _load_checkpoint(ckpt: Path, model, optimizer, scheduler, config: TrainConfig, data_digest: str) -> dict:
    state = read_json(ckpt / "state.json")
    if state.get("config_digest") != config.digest() or state.get("data_digest") != data_digest:
        raise TuneguardError(f"{ckpt} is a checkpoint of a run with other settings or data; delete it to start over")
    weights = load_file(str(ckpt / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    # Our own file, written above; weights_only keeps even that from running code.
    extra = torch.load(ckpt / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    return {k: v for k, v in state.items() if k not in ("config_digest", "data_digest")}
