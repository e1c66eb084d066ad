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
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tuneguard.errors import TuneguardError
from tuneguard.files import apply_umask, atomic_directory, atomic_write_json, read_json, writing
from tuneguard.models import LoadedModel, as_loaded, load_model
from tuneguard.models.device import current_settings
from tuneguard.models.record import RUN_RECORD, RunRecord
from tuneguard.seed import set_seed
from tuneguard.train.batching import (IGNORE, Encoded, collate, encode_examples, examples_digest,
                                      length_grouped_batches)
from tuneguard.train.config import TrainConfig
from tuneguard.train.goldfish import GoldfishConfig, goldfish_labels
from tuneguard.train.methods import METHODS, check_extra, prepare_model
from tuneguard.train.precision import prepare_precision, training_accelerator

if TYPE_CHECKING:  # the leak monitor imports the attacks, which import this package
    from tuneguard.integrations.leak import LeakMonitor

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"


@dataclass
class TrainResult:
    """The trained model (in memory, eval mode), where it was saved, and its run record."""

    model: LoadedModel
    out_dir: Path
    record: RunRecord


def finetune(model: LoadedModel | str, examples: list, out_dir: str | Path, config: TrainConfig | None = None, *,
             goldfish: GoldfishConfig | None = None, progress: bool = True, leak: LeakMonitor | None = None,
             leak_every: int = 1) -> TrainResult:
    """Fine-tune ``model`` on ``examples`` and save the result (adapter or full model, safetensors) in ``out_dir``.

    ``examples``: texts (loss on every token), (prompt, completion) pairs (loss on the completion), or (text, class)
    pairs for a sequence-classification model. A checkpoint is written after every epoch; an interrupted run resumes
    from it, and a finished run with the same settings and data is loaded instead of retrained. Under
    ``accelerate launch`` the batches are sharded over the processes and only the main process writes.
    ``goldfish``: train with the Goldfish loss (:mod:`tuneguard.train.goldfish`: a hashed 1/k of the tokens left
    out of every batch's loss).
    ``leak``: watch the membership leak every ``leak_every`` optimizer steps
    (:class:`tuneguard.integrations.leak.LeakMonitor`, run by every process); training stops at the first check
    beyond its budget, and the model trained so far is saved as the run.
    """
    config = config or TrainConfig()
    check_extra(config)
    out_dir = Path(out_dir)
    base = as_loaded(model)
    base_fingerprint = base.fingerprint  # before training: a model loaded here is trained in place
    seq_cls = "SequenceClassification" in type(base.model).__name__
    if goldfish is not None and seq_cls:
        raise TuneguardError("the Goldfish loss leaves tokens out of a language model's loss: it does not apply to a "
                             "sequence-classification model")
    # Goldfish changes what is learnt: its settings join the digest a finished run or a checkpoint must match (as
    # DP-SGD's do); the model itself is prepared from ``config``.
    key = config if goldfish is None else config.replace(extra={**config.extra, "goldfish": goldfish.to_dict()})
    data_digest = examples_digest([list(e) if isinstance(e, tuple) else e for e in examples])
    done = finished_record(out_dir, key, data_digest, base)
    if done is not None:
        log.info("%s already holds this finished run; loading it", out_dir)
        return TrainResult(load_model(out_dir, base=base.ref, task="seq-cls" if seq_cls else "causal-lm"),
                           out_dir, done)

    # The model trains where it was loaded (--device), in mixed precision when loaded in bfloat16 / float16.
    accelerator = training_accelerator(base.device, base.dtype, gradient_accumulation_steps=config.grad_accum)
    set_seed(config.seed)
    # Training mutates the weights (and peft injects layers in place): never touch the caller's model.
    net = prepare_model(copy.deepcopy(base.model) if not isinstance(model, str) else base.model, config,
                        seq_cls=seq_cls)
    prepare_precision(net, gradient_checkpointing=current_settings().gradient_checkpointing)
    encoded = predictable(encode_examples(examples, base.tokenizer, config.max_length, seq_cls=seq_cls))
    lengths = [len(e.input_ids) for e in encoded]
    world, rank = accelerator.num_processes, accelerator.process_index
    n_batches = _batches_per_epoch(len(encoded), config, world)
    total_steps = optimizer_steps(len(encoded), config, world)

    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config, total_steps)
    net, optimizer = accelerator.prepare(net, optimizer)
    state = {"epoch": 0, "step": 0, "loss_curve": [], "lr_curve": [], "epoch_loss": [], "tokens": 0, "padded": 0,
             "seconds": 0.0, "cpu_seconds": 0.0}
    ckpt = out_dir / CHECKPOINT
    if (ckpt / "state.json").is_file():
        state = _load_checkpoint(ckpt, accelerator.unwrap_model(net), optimizer, scheduler,
                                 _stamp(key, data_digest, base, base_fingerprint))
        log.info("resuming %s after epoch %d", out_dir, state["epoch"])

    net.train()
    if leak is not None:
        if state["step"] and leak.reference is None and not METHODS.get(config.method).saves_adapter:
            # A resumed full fine-tuning run is past its base weights: the reference is the base, named or given.
            leak.reference = base.ref if isinstance(model, str) else base
        leak.start(accelerator.unwrap_model(net), base.tokenizer, step=state["step"])
    pad_id = base.tokenizer.pad_token_id
    # Closed on an error too: the error line then starts on a line of its own, not glued to the bar.
    with tqdm(total=total_steps, initial=state["step"], desc=f"finetune {config.method}", unit="step",
              disable=not progress or not accelerator.is_local_main_process) as bar:
        for epoch in range(state["epoch"], config.epochs):
            if config.max_steps and state["step"] >= config.max_steps:
                break
            t0, c0 = time.perf_counter(), time.process_time()
            batches = length_grouped_batches(lengths, config.batch_size, seed=config.seed, epoch=epoch,
                                             group=config.group_by_length)
            batches = (batches * world)[:n_batches][rank::world]  # equal count per process for DDP
            losses, micro = [], []
            for position, batch_idx in enumerate(batches, 1):
                batch = collate([encoded[i] for i in batch_idx], pad_id)
                if goldfish is not None:
                    batch["labels"] = goldfish_labels(batch, goldfish)
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
                    state["lr_curve"].append(scheduler.get_last_lr()[0])
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
                    if leak is not None and state["step"] % leak_every == 0:
                        leak.check(accelerator.unwrap_model(net), step=state["step"],
                                   epoch=epoch + position / len(batches))
                        if leak.exceeded:
                            break
            state["epoch"] = epoch + 1
            state["epoch_loss"].append(round(sum(losses) / max(len(losses), 1), 6))
            state["seconds"] += time.perf_counter() - t0
            state["cpu_seconds"] += time.process_time() - c0
            if leak is not None and leak.exceeded:
                break  # every process decided alike (each got every score); the run ends and is saved below
            if accelerator.is_main_process and state["epoch"] < config.epochs:
                _save_checkpoint(ckpt, accelerator.unwrap_model(net), optimizer, scheduler, state,
                                 _stamp(key, data_digest, base, base_fingerprint))
            accelerator.wait_for_everyone()

    trained = accelerator.unwrap_model(net)
    trained.eval()
    record = RunRecord(
        base_ref=base.ref, base_fingerprint=base_fingerprint,
        method=config.method if goldfish is None else f"{config.method}+goldfish", config=key.to_dict(),
        config_digest=key.digest(), data_digest=data_digest, n_examples=len(examples), processes=world,
        epochs_done=state["epoch"], steps=state["step"], loss_curve=state["loss_curve"], lr_curve=state["lr_curve"],
        epoch_loss=state["epoch_loss"], train_seconds=round(state["seconds"], 3),
        cpu_seconds=round(state["cpu_seconds"], 3), tokens=state["tokens"] * world,
        tokens_per_second=round(state["tokens"] * world / max(state["seconds"], 1e-9), 2),
        padding_fraction=round(1 - state["tokens"] / max(state["padded"], 1), 4),
        trainable_parameters=sum(p.numel() for p in trained.parameters() if p.requires_grad))
    if accelerator.is_main_process:
        save_trained(trained, base, out_dir, record)
    accelerator.wait_for_everyone()
    meta = {**base.meta, "adapter": str(out_dir)} if METHODS.get(config.method).saves_adapter else dict(base.meta)
    return TrainResult(LoadedModel(trained, base.tokenizer, ref=str(out_dir), base_ref=base.ref, meta=meta),
                       out_dir, record)


def predictable(encoded: list[Encoded]) -> list[Encoded]:
    """The examples with a token to predict: one of fewer than 2 tokens (or a lone completion token) has none, and a
    batch of them only has the loss 0/0 = NaN. Those left out are counted in one warning; none left is an error."""
    keep = [e for e in encoded if isinstance(e.labels, int) or any(y != IGNORE for y in e.labels[1:])]
    if not keep:
        raise TuneguardError(f"none of the {len(encoded)} training examples has a token to predict (each is a single "
                             "token); train on longer texts")
    if len(keep) < len(encoded):
        first = next(i for i, e in enumerate(encoded) if not isinstance(e.labels, int)
                     and all(y == IGNORE for y in e.labels[1:]))
        log.warning("%d of %d training examples are a single token (nothing to predict) and are left out of training, "
                    "e.g. example %d", len(encoded) - len(keep), len(encoded), first + 1)
    return keep


def optimizer_steps(n_examples: int, config: TrainConfig, world: int = 1) -> int:
    """Optimizer steps of a run over ``n_examples`` (``max_steps`` when set): batches per process and epoch,
    divided by the gradient accumulation, times the epochs. DP-SGD plans the same number."""
    per_epoch = math.ceil(_batches_per_epoch(n_examples, config, world) // world / config.grad_accum)
    return config.max_steps or per_epoch * config.epochs


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """The learning-rate schedule of ``config`` (warm-up share included) over ``total_steps``."""
    from transformers import get_scheduler

    return get_scheduler(config.scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def _batches_per_epoch(n_examples: int, config: TrainConfig, world: int) -> int:
    """Batches of one epoch over all processes: a multiple of ``world``, so every process takes as many."""
    return math.ceil(n_examples / config.batch_size) // world * world or world


def finished_record(out_dir: Path, config: TrainConfig, data_digest: str, base: LoadedModel) -> RunRecord | None:
    """The run record of a finished identical run in ``out_dir`` (same settings, data and base model); None when
    there is none; raise, naming what differs, if it holds another run."""
    path = out_dir / RUN_RECORD
    if not path.is_file():
        return None
    record = RunRecord.read(path)
    if record.config_digest != config.digest() or record.data_digest != data_digest:
        raise TuneguardError(f"{out_dir} already holds a run with other settings or data; choose another output "
                             "directory or delete it")
    if record.base_fingerprint is None and record.base_ref == base.ref:
        log.warning("%s: its run record (schema %d) has no base-model fingerprint; assuming its base %s is unchanged",
                    out_dir, record.schema, base.ref)
    elif record.base_fingerprint != base.fingerprint:
        saved, given = _base_name(record.base_ref, record.base_fingerprint), _base_name(base.ref, base.fingerprint)
        raise TuneguardError(f"{out_dir} holds a run fine-tuned from another base model ({saved}, not {given}): "
                             "choose another output directory or delete it")
    return record


def _base_name(ref: str | None, fingerprint: str | None) -> str:
    return f"{ref}, weights {fingerprint[:12]}" if fingerprint else f"{ref}, weights not recorded"


def save_trained(model: torch.nn.Module, base: LoadedModel, out_dir: Path, record: RunRecord) -> None:
    """Write the adapter (or full model + tokenizer) as safetensors and the run record that marks it complete.

    Everything is written into a temporary directory inside ``out_dir`` and moved in only once all of it is there,
    the run record last, every file with the user's umask's mode: a full disk or a crash leaves no half-written
    file and no run record (a write the disk stopped is an OSError naming ``out_dir``). Not one atomic rename of
    ``out_dir`` itself: it may hold the user's other files.
    """
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".save."))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            if not METHODS.get(record.config["method"]).saves_adapter:
                base.tokenizer.save_pretrained(tmp)
            else:  # name the base as the user named it, so `load_model(out_dir)` finds it again
                cfg_path = tmp / "adapter_config.json"
                cfg = json.loads(cfg_path.read_text())
                cfg["base_model_name_or_path"] = base.ref
                cfg_path.write_text(json.dumps(cfg, indent=2))
            record.write(tmp / RUN_RECORD)
            apply_umask(tmp)
            for item in sorted(tmp.iterdir(), key=lambda p: p.name == RUN_RECORD):
                os.replace(item, out_dir / item.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)


def _stamp(config: TrainConfig, data_digest: str, base: LoadedModel, base_fingerprint: str) -> dict:
    """What a checkpoint must match to be resumed: settings, data and base model."""
    return {"config_digest": config.digest(), "data_digest": data_digest, "base_ref": base.ref,
            "base_fingerprint": base_fingerprint}


def _save_checkpoint(ckpt: Path, model, optimizer, scheduler, state: dict, stamp: dict) -> None:
    with atomic_directory(ckpt) as tmp:
        trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(tmp / "trainable.safetensors"))
        # Through a Python file: torch.save's own writer drops the OSError of a full disk ("unexpected pos" alone),
        # while with a Python file the OSError stays the error's context, which atomic_directory reports.
        with open(tmp / "optimizer.pt", "wb") as fh:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state()}, fh)
        atomic_write_json(tmp / "state.json", {**state, **stamp})


def _load_checkpoint(ckpt: Path, model, optimizer, scheduler, stamp: dict) -> dict:
    state = read_json(ckpt / "state.json", fix=f"delete {ckpt} to start the run over", expect=dict)
    if state.get("config_digest") != stamp["config_digest"] or state.get("data_digest") != stamp["data_digest"]:
        raise TuneguardError(f"{ckpt} is a checkpoint of a run with other settings or data; delete it to start over")
    if state.get("base_fingerprint") != stamp["base_fingerprint"]:
        raise TuneguardError(f"{ckpt} is a checkpoint of a run on another base model "
                             f"({_base_name(state.get('base_ref'), state.get('base_fingerprint'))}, not "
                             f"{_base_name(stamp['base_ref'], stamp['base_fingerprint'])}); delete it to start over")
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
    return {k: v for k, v in state.items() if k not in stamp}
