"""Training methods: how a model is wrapped for fine-tuning (itself for full fine-tuning, peft for the others).

Each method is a :class:`TrainMethod` registered in ``tuneguard.train.METHODS``; its hyperparameters live in
:class:`tuneguard.train.TrainConfig` (one flat config, as the run record stores it). peft is imported on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from tuneguard.errors import TuneguardError
from tuneguard.plugin import Plugin
from tuneguard.train.config import TrainConfig

if TYPE_CHECKING:
    import torch


class TrainMethod(Plugin):
    """Base of every training method: ``prepare`` returns the module to train, only its trainable part requiring
    gradients. ``saves_adapter``: the run saves an adapter beside its base (else a whole model); ``mergeable``: the
    adapter can be merged into the base weights."""

    kind = "training method"
    saves_adapter: ClassVar[bool] = True
    mergeable: ClassVar[bool] = True

    def prepare(self, model: torch.nn.Module, config: TrainConfig, *, seq_cls: bool = False) -> torch.nn.Module:
        raise NotImplementedError


class FullFineTuning(TrainMethod):
    name = "full"
    summary = "every weight is trained; the whole model is saved"
    saves_adapter = False

    def prepare(self, model: torch.nn.Module, config: TrainConfig, *, seq_cls: bool = False) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model


class PeftMethod(TrainMethod):
    """A method implemented by peft: subclasses build the peft config."""

    def peft_config(self, config: TrainConfig, task: Any) -> Any:
        raise NotImplementedError

    def prepare(self, model: torch.nn.Module, config: TrainConfig, *, seq_cls: bool = False) -> torch.nn.Module:
        from peft import TaskType, get_peft_model

        peft_config = self.peft_config(config, TaskType.SEQ_CLS if seq_cls else TaskType.CAUSAL_LM)
        try:
            return get_peft_model(model, peft_config)
        except ValueError as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise TuneguardError(f"cannot apply {self.name} to {type(model).__name__}: {first} "
                                 "(set target modules explicitly)") from None


class LoRA(PeftMethod):
    name = "lora"
    summary = "low-rank adapters (lora_r, lora_alpha, lora_dropout, target_modules)"

    def peft_config(self, config: TrainConfig, task: Any) -> Any:
        from peft import LoraConfig

        return LoraConfig(task_type=task, r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, target_modules=config.target_modules, **config.extra)


class PrefixTuning(PeftMethod):
    name = "prefix"
    summary = "trained virtual tokens before every input (num_virtual_tokens)"
    mergeable = False

    def peft_config(self, config: TrainConfig, task: Any) -> Any:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type=task, num_virtual_tokens=config.num_virtual_tokens, **config.extra)


class IA3(PeftMethod):
    name = "ia3"
    summary = "(IA)^3: learned rescaling of activations (target_modules)"

    def peft_config(self, config: TrainConfig, task: Any) -> Any:
        from peft import IA3Config

        return IA3Config(task_type=task, target_modules=config.target_modules, **config.extra)


def prepare_model(model: torch.nn.Module, config: TrainConfig, *, seq_cls: bool = False) -> torch.nn.Module:
    """Return the model to train: itself for full fine-tuning, else a peft model with only the adapter trainable."""
    from tuneguard.train import METHODS

    return METHODS.make(config.method).prepare(model, config, seq_cls=seq_cls)
