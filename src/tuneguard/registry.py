"""Lazy registries: a name mapped to ``"module:attribute"``, imported on first use so that an entry's heavy
dependencies load only when it is chosen."""

from __future__ import annotations

import importlib
from typing import Any

from tuneguard.errors import TuneguardError


def load_entry(registry: dict[str, str], name: str, kind: str) -> Any:
    """The object ``registry`` holds under ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in registry:
        raise TuneguardError(f"unknown {kind} {name!r}: use one of {', '.join(registry)}")
    module, attribute = registry[name].split(":")
    return getattr(importlib.import_module(module), attribute)
