"""Training methods: how a model is wrapped for fine-tuning (itself for full fine-tuning, peft for the others).

Each method is a :class:`TrainMethod` registered in :data:`METHODS` below; its hyperparameters live in
:class:`tuneguard.train.TrainConfig` (one flat config, as the run record stores it). peft is imported on use.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from tuneguard.errors import TuneguardError
from tuneguard.params import check_names
from tuneguard.plugin import Plugin
from tuneguard.registry import Registry
from tuneguard.train.config import TrainConfig

if TYPE_CHECKING:
    import torch

METHODS: Registry[TrainMethod] = Registry("training method", "tuneguard.train.methods:TrainMethod")
METHODS.register("full", "tuneguard.train.methods:FullFineTuning")
METHODS.register("lora", "tuneguard.train.methods:LoRA")
METHODS.register("prefix", "tuneguard.train.methods:PrefixTuning")
METHODS.register("ia3", "tuneguard.train.methods:IA3")


class TrainMethod(Plugin):
    """Base of every training method: ``prepare`` returns the module to train, only its trainable part requiring
    gradients. ``saves_adapter``: the run saves an adapter beside its base (else a whole model); ``mergeable``: the
    adapter can be merged into the base weights; ``peft_type``: the ``peft_type`` an ``adapter_config.json`` of this
    method records (peft's ``PeftType`` name; None for a method peft does not implement), which
    :func:`method_of_adapter` reads back with :meth:`train_options`."""

    kind = "training method"
    saves_adapter: ClassVar[bool] = True
    mergeable: ClassVar[bool] = True
    peft_type: ClassVar[str | None] = None

    def prepare(self, model: torch.nn.Module, config: TrainConfig, *, seq_cls: bool = False) -> torch.nn.Module:
        raise NotImplementedError

    def extra_options(self, config: TrainConfig) -> tuple[list[str], list[str]]:
        """The options ``config.extra`` may set, and those TrainConfig's own fields set (none: no peft config)."""
        return [], []

    @classmethod
    def train_options(cls, adapter_config: dict[str, Any]) -> dict[str, Any]:
        """The TrainConfig fields a saved ``adapter_config.json`` of this method sets (peft's defaults where it
        lacks a key): the way back from its peft config; by default none."""
        return {}

    def check_extra(self, config: TrainConfig) -> None:
        """Refuse an ``extra`` option the method's peft config does not take, in one line, before any model loads
        (peft itself would raise a bare TypeError once the model is loaded)."""
        if config.extra:
            allowed, own = self.extra_options(config)
            check_names(config.extra, allowed, f"{self.kind} {self.name!r}", "peft option",
                        hints={name: f"TrainConfig sets {name!r}: use its own option" for name in own})


class FullFineTuning(TrainMethod):
    name = "full"
    summary = "every weight is trained; the whole model is saved"
    saves_adapter = False

    def prepare(self, model: torch.nn.Module, config: TrainConfig, *, seq_cls: bool = False) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model


class PeftMethod(TrainMethod):
    """A method implemented by peft: its config class (``peft_class``, a name in peft) built from the options
    TrainConfig's fields set (``peft_options``) and ``config.extra``."""

    peft_class: ClassVar[str]

    def peft_options(self, config: TrainConfig) -> dict[str, Any]:
        raise NotImplementedError

    def peft_config(self, config: TrainConfig, task: Any) -> Any:
        import peft

        return getattr(peft, self.peft_class)(task_type=task, **self.peft_options(config), **config.extra)

    def extra_options(self, config: TrainConfig) -> tuple[list[str], list[str]]:
        import peft

        own = ["task_type", *self.peft_options(config)]
        fields = dataclasses.fields(getattr(peft, self.peft_class))
        return [f.name for f in fields if f.init and f.name not in own], own

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
    summary = "low-rank adapters (lora_r, lora_alpha, lora_dropout, target_modules, lora_layers)"

    peft_class = "LoraConfig"
    peft_type = "LORA"

    def peft_options(self, config: TrainConfig) -> dict[str, Any]:
        return {"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
                "target_modules": config.target_modules, "layers_to_transform": config.lora_layers}

    def prepare(self, model: torch.nn.Module, config: TrainConfig, *, seq_cls: bool = False) -> torch.nn.Module:
        n = getattr(model.config, "num_hidden_layers", None)
        if config.lora_layers and n is not None and max(config.lora_layers) >= n:
            raise TuneguardError(f"LoRA layers up to {max(config.lora_layers)} were asked for, and "
                                 f"{type(model).__name__} has {n} (0-{n - 1}): choose indices below {n}")
        return super().prepare(model, config, seq_cls=seq_cls)

    @classmethod
    def train_options(cls, adapter_config: dict[str, Any]) -> dict[str, Any]:
        modules, layers = adapter_config.get("target_modules"), adapter_config.get("layers_to_transform")
        return {"lora_r": adapter_config.get("r", 8), "lora_alpha": adapter_config.get("lora_alpha", 8),
                "lora_dropout": adapter_config.get("lora_dropout", 0.0),
                "target_modules": sorted(modules) if isinstance(modules, (list, set)) else None,
                "lora_layers": [layers] if isinstance(layers, int) else sorted(layers) if layers else None}


class PrefixTuning(PeftMethod):
    name = "prefix"
    summary = "trained virtual tokens before every input (num_virtual_tokens)"
    mergeable = False

    peft_class = "PrefixTuningConfig"
    peft_type = "PREFIX_TUNING"

    def peft_options(self, config: TrainConfig) -> dict[str, Any]:
        return {"num_virtual_tokens": config.num_virtual_tokens}

    @classmethod
    def train_options(cls, adapter_config: dict[str, Any]) -> dict[str, Any]:
        return {"num_virtual_tokens": adapter_config.get("num_virtual_tokens", 20)}


class IA3(PeftMethod):
    name = "ia3"
    summary = "(IA)^3: learned rescaling of activations (target_modules)"

    peft_class = "IA3Config"
    peft_type = "IA3"

    def peft_options(self, config: TrainConfig) -> dict[str, Any]:
        return {"target_modules": config.target_modules}


def prepare_model(model: torch.nn.Module, config: TrainConfig, *, seq_cls: bool = False) -> torch.nn.Module:
    """Return the model to train: itself for full fine-tuning, else a peft model with only the adapter trainable."""
    return METHODS.make(config.method).prepare(model, config, seq_cls=seq_cls)


def method_of_adapter(adapter_config: dict[str, Any]) -> str | None:
    """The training method whose declared ``peft_type`` an ``adapter_config.json`` records, or None when none has
    it (imports each method's class, never peft)."""
    peft_type = str(adapter_config.get("peft_type", "")).upper()
    return next((name for name in METHODS if METHODS.get(name).peft_type == peft_type), None)


def check_extra(config: TrainConfig) -> None:
    """Refuse ``config.extra`` options its method's peft config does not take (see :meth:`TrainMethod.check_extra`)."""
    METHODS.make(config.method).check_extra(config)
