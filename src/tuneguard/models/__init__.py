"""Models: one ``load_model`` for embedded names, local dirs, adapters, GGUF files and hub ids."""

from tuneguard.models.embedded import EMBEDDED, tiny_model
from tuneguard.models.loaded import LoadedModel
from tuneguard.models.loading import as_loaded, load_model, reference_of

__all__ = ["EMBEDDED", "LoadedModel", "as_loaded", "load_model", "reference_of", "tiny_model"]
