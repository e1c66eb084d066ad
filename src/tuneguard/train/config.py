"""Fine-tuning hyperparameters, declared once (types, defaults, bounds, help) and checked at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tuneguard.cache import key_hash
from tuneguard.params import Params, param

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class TrainConfig(Params):
    """What ``finetune`` (and DP-SGD) does. ``target_modules=None`` lets peft pick its default for the architecture."""

    method: str = param("lora", "fine-tuning method (tuneguard.train.METHODS)")
    epochs: int = param(3, "passes over the training texts", ge=1)
    lr: float = param(1e-4, "peak learning rate (AdamW)", gt=0)
    batch_size: int = param(8, "examples per batch and process", ge=1)
    grad_accum: int = param(1, "batches accumulated per optimizer step", ge=1)
    max_length: int = param(128, "tokens per text: the training window (longer texts are cut)", ge=1)
    scheduler: str = param("linear", "learning-rate schedule", choices=SCHEDULERS)
    warmup_ratio: float = param(0.0, "share of the steps spent warming the learning rate up", ge=0, le=1)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0)
    seed: int = param(0, "seed of the initialisation, batch order and dropout")
    lora_r: int = param(16, "LoRA rank", ge=1)
    lora_alpha: int = param(32, "LoRA alpha (the update is scaled by alpha / r)", gt=0)
    lora_dropout: float = param(0.05, "LoRA dropout", ge=0, lt=1)
    target_modules: list[str] | None = param(None, "modules to adapt (default: peft's choice for the model)")
    lora_layers: list[int] | None = param(None, "LoRA: the decoder layers adapted, by index from 0 (default: every "
                                                "layer; peft's layers_to_transform)", ge=0)
    num_virtual_tokens: int = param(20, "prefix tuning: virtual tokens", ge=1)
    group_by_length: bool = param(True, "batch texts of similar length together (less padding)")
    max_steps: int | None = param(None, "stop after this many optimizer steps", ge=1)
    extra: dict = param({}, "passed through to the peft config (e.g. use_rslora)")

    def __post_init__(self) -> None:
        super().__post_init__()
        from tuneguard.train.methods import METHODS  # methods.py imports this module

        METHODS.check(self.method)

    def key_dict(self) -> dict:
        """The settings a saved run, experiment cell or shadow is keyed by: every field of :data:`KEYED`, and a
        field added after them only when it is away from its default. So adding an option (whose default keeps what
        runs did before it) leaves every saved run's key as it was, and a new value of it still makes a new run."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        return {k: v for k, v in self.to_dict().items() if k in KEYED or v != _default(fields[k])}

    def digest(self) -> str:
        """Hash of everything that changes the result (used to refuse resuming a different run)."""
        return key_hash(sorted(self.key_dict().items()))


# The fields when keys were fixed: always in a key, so a changed default of one of them makes new runs. A field added
# to TrainConfig later is not listed here (see TrainConfig.key_dict).
KEYED = frozenset({"method", "epochs", "lr", "batch_size", "grad_accum", "max_length", "scheduler", "warmup_ratio",
                   "weight_decay", "seed", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
                   "num_virtual_tokens", "group_by_length", "max_steps", "extra"})


def layers_text(layers: list[int]) -> str:
    """``layers`` as ``--lora-layers`` reads them, runs written as ranges (``[0, 1, 2, 5]`` -> ``0-2,5``)."""
    runs: list[list[int]] = []
    for i in sorted(layers):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _default(field: dataclasses.Field) -> object:
    return field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
