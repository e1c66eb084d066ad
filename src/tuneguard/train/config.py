"""Fine-tuning hyperparameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tuneguard.cache import key_hash
from tuneguard.errors import TuneguardError

METHODS = ("full", "lora", "prefix", "ia3")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class TrainConfig:
    """What ``finetune`` does. ``target_modules=None`` lets peft pick its default for the architecture."""

    method: str = "lora"
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 128
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None
    num_virtual_tokens: int = 20
    group_by_length: bool = True
    max_steps: int | None = None
    extra: dict = field(default_factory=dict)  # passed through to the peft config (e.g. use_rslora)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TuneguardError(f"unknown fine-tuning method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.scheduler not in SCHEDULERS:
            raise TuneguardError(f"unknown scheduler {self.scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        for name in ("epochs", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise TuneguardError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise TuneguardError(f"learning rate must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        """Plain-JSON form (stored in the run record)."""
        return asdict(self)

    def digest(self) -> str:
        """Hash of everything that changes the result (used to refuse resuming a different run)."""
        return key_hash(sorted(self.to_dict().items()))
