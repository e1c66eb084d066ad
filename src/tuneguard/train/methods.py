"""Wrap a model for the chosen fine-tuning method (peft for LoRA, prefix tuning and (IA)^3)."""

from __future__ import annotations

import torch

from tuneguard.errors import TuneguardError
from tuneguard.train.config import TrainConfig


def prepare_model(model: torch.nn.Module, config: TrainConfig, *, seq_cls: bool = False) -> torch.nn.Module:
    """Return the model to train: itself for full fine-tuning, else a peft model with only the adapter trainable."""
    if config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    task = TaskType.SEQ_CLS if seq_cls else TaskType.CAUSAL_LM
    if config.method == "lora":
        peft_config = LoraConfig(task_type=task, r=config.lora_r, lora_alpha=config.lora_alpha,
                                 lora_dropout=config.lora_dropout, target_modules=config.target_modules,
                                 **config.extra)
    elif config.method == "prefix":
        peft_config = PrefixTuningConfig(task_type=task, num_virtual_tokens=config.num_virtual_tokens, **config.extra)
    else:
        peft_config = IA3Config(task_type=task, target_modules=config.target_modules, **config.extra)
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise TuneguardError(f"cannot apply {config.method} to {type(model).__name__}: {first} "
                             "(set target modules explicitly)") from None
