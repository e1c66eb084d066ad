"""Fine-tuning: full, LoRA, prefix tuning and (IA)^3, resumable per epoch, Accelerate-ready.

``METHODS`` (:mod:`tuneguard.train.methods`) is the registry of training methods, one ``TrainMethod`` each; adding
one = a ``TrainMethod`` subclass in its own module + one ``METHODS.register`` line. The run record ``finetune``
writes is :class:`tuneguard.models.record.RunRecord`. Importing this package loads no torch: ``finetune`` and
``TrainResult`` are imported on first use.
"""

from __future__ import annotations

from typing import Any

from tuneguard.train.config import TrainConfig
from tuneguard.train.methods import METHODS

_LAZY = {"finetune": "tuneguard.train.loop", "TrainResult": "tuneguard.train.loop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # the training loop imports torch and accelerate: only when it is used
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHODS", "TrainConfig", "TrainResult", "finetune"]
