"""The model + tokenizer pair every other module works with. Importing it loads no torch (torch is imported where a
method needs it): a declaration naming ``LoadedModel`` in a parameter's type, such as SPV-MIA's, is read by
``--help`` without it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class LoadedModel:
    """A causal LM (or classifier) with its tokenizer and where it came from.

    ``model`` is a transformers ``PreTrainedModel`` or, when an adapter is loaded, a peft ``PeftModel``. The tokenizer
    always has a pad token and pads on the right.
    """

    model: torch.nn.Module
    tokenizer: object
    ref: str
    base_ref: str | None = None
    meta: dict = field(default_factory=dict)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the config and every parameter/buffer (name, dtype, shape, bytes): a cache key for scores.

        Computed once; invalidate with ``del loaded.fingerprint`` after changing the weights in place.
        """
        import torch

        h = hashlib.sha256()
        config = getattr(self.model, "config", None)
        cfg = config.to_dict() if config is not None else {}
        cfg.pop("_name_or_path", None)
        cfg.pop("transformers_version", None)
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        h.update(type(self.model).__name__.encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy() if t.numel() else b"")  # the buffer itself: no copy of each weight
        return h.hexdigest()

    @property
    def max_length(self) -> int:
        """Context length in tokens (the model's position limit, else the tokenizer's, else 2048)."""
        config = getattr(self.model, "config", None)
        for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        return tok_max if isinstance(tok_max, int) and 0 < tok_max < 1_000_000 else 2048

    @property
    def device(self) -> torch.device:
        """Where the weights live (the first weight's device: a device-mapped model's inputs go there)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The precision of the weights (the first floating-point one's: a LoRA adapter on a bfloat16 base keeps
        its own weights in float32)."""
        import torch

        return next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)

    def placement(self) -> dict:
        """Where and in what precision the model runs, as results record it: ``device`` (each device of a device
        map, comma-separated) and ``dtype``."""
        mapped = getattr(self.model, "hf_device_map", None)
        devices = sorted({f"cuda:{d}" if isinstance(d, int) else str(d) for d in mapped.values()}) if mapped \
            else [str(self.device)]
        return {"device": ", ".join(devices), "dtype": str(self.dtype).removeprefix("torch.")}
