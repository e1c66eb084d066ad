"""Models: one ``load_model`` for embedded names, local dirs, adapters, GGUF files and hub ids, and where they run
(:mod:`tuneguard.models.device`). Importing this package loads no torch: each name is imported on first use, so the
command line builds its options (:func:`tuneguard.commands.add_device_args`) without it."""

from __future__ import annotations

from typing import Any

_LAZY = {"EMBEDDED": "tuneguard.models.embedded", "tiny_model": "tuneguard.models.embedded",
         "LoadedModel": "tuneguard.models.loaded", "as_loaded": "tuneguard.models.loading",
         "load_model": "tuneguard.models.loading", "reference_of": "tuneguard.models.loading"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EMBEDDED", "LoadedModel", "as_loaded", "load_model", "reference_of", "tiny_model"]
