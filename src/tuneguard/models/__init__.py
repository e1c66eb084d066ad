"""Models: one ``load_model`` for embedded names, local dirs, adapters, GGUF files and hub ids."""

from tuneguard.models.embedded import EMBEDDED, tiny_model
from tuneguard.models.loaded import LoadedModel
from tuneguard.models.loading import load_model

__all__ = ["EMBEDDED", "LoadedModel", "load_model", "tiny_model"]
