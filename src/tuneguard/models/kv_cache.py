"""The key/value cache under either transformers name: ``cache`` (the name a recent transformers 5 release gave it;
the old one then logs a deprecation warning in the middle of the progress bars) or ``past_key_values`` (before)."""

from __future__ import annotations

import functools
import inspect
from typing import Any


def cache_kwarg(model: Any) -> str:
    """The keyword ``model``'s forward takes a key/value cache under (a PEFT model: its base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes(type(base))


@functools.cache
def _forward_takes(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The key/value cache a forward pass returned (``use_cache=True``)."""
    return output["cache"] if "cache" in output else output["past_key_values"]
