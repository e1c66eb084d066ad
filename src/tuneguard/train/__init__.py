"""Fine-tuning: full, LoRA, prefix tuning and (IA)^3, resumable per epoch, Accelerate-ready.

``METHODS`` is the registry of training methods (one :class:`tuneguard.train.methods.TrainMethod` each); adding one
= a ``TrainMethod`` subclass in its own module + one ``METHODS.register`` line. Importing this package loads no
torch: ``finetune`` and ``TrainResult`` are imported on first use.
"""

from __future__ import annotations

from typing import Any

from tuneguard.registry import Registry

METHODS = Registry("training method", "tuneguard.train.methods:TrainMethod")
METHODS.register("full", "tuneguard.train.methods:FullFineTuning")
METHODS.register("lora", "tuneguard.train.methods:LoRA")
METHODS.register("prefix", "tuneguard.train.methods:PrefixTuning")
METHODS.register("ia3", "tuneguard.train.methods:IA3")

from tuneguard.train.config import TrainConfig  # noqa: E402  (TrainConfig checks names against METHODS)
from tuneguard.train.record import RunRecord  # noqa: E402

_LAZY = {"finetune": "tuneguard.train.loop", "TrainResult": "tuneguard.train.loop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # the training loop imports torch and accelerate: only when it is used
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHODS", "RunRecord", "TrainConfig", "TrainResult", "finetune"]
