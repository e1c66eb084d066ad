"""A base model's own weights by tensor name, for the deltas of the full tensors an adapter saves (``modules_to_save``
copies, trained biases): read with numpy from the base's safetensors files wherever this machine has them (a model
directory, an embedded model already converted, the Hugging Face hub cache), never downloaded and never through torch.
An embedded tiny model has no files (it is built in code from a fixed seed), so it is built once and read from memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from tuneguard.adapters.safetensors_io import TensorInfo, iter_tensors, read_safetensors_header
from tuneguard.errors import TuneguardError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS = "model.safetensors"
# Input embeddings under the names transformers' architectures give them: a tied output embedding (lm_head) is this
# tensor, and the files hold it only once.
_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in)\.weight$")


@dataclass
class BaseWeights:
    """The tensors of one base model: each name's file (or, for a model built in code, the arrays themselves)."""

    ref: str
    source: str  # where the tensors are read from, for reports
    header: dict[str, TensorInfo]
    files: dict[str, Path] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tied: bool = False  # config.json's tie_word_embeddings: lm_head is the input embedding

    def name_of(self, name: str) -> str | None:
        """The base tensor that ``name`` is (a tied output embedding resolved to the input one), or None."""
        if name in self.header:
            return name
        if self.tied and name.rsplit(".", 2)[-2:] == ["lm_head", "weight"]:
            return next((k for k in self.header if _EMBEDDING.search(k)), None)
        return None

    def tensor(self, name: str) -> np.ndarray:
        """One base tensor (``name`` as resolved by ``name_of``), as a numpy array."""
        if name in self.arrays:
            return self.arrays[name]
        ((_, values),) = iter_tensors(self.files[name], [name], header={name: self.header[name]})
        return values


def base_weights(ref: str) -> BaseWeights | str:
    """The weights of base model ``ref`` found on this machine, or why there are none (one line)."""
    try:
        return _find(ref)
    except TuneguardError as exc:  # a damaged safetensors file: its own message
        return str(exc)
    except (OSError, ValueError, KeyError) as exc:  # an unreadable config.json or index
        return f"the weight files of base model {ref!r} cannot be read ({type(exc).__name__}: {exc})"


@lru_cache(maxsize=4)  # a scan reads one or two bases, for many adapters
def _find(ref: str) -> BaseWeights | str:
    from tuneguard.models.embedded import EMBEDDED, EMBEDDED_DIRS, embedded_is_cached

    if ref.startswith("tiny-") and ref in EMBEDDED:
        return _built_in_code(ref)
    if ref in EMBEDDED_DIRS:
        if not embedded_is_cached(ref):
            return (f"the embedded model {ref!r} is not converted on this machine yet (the first command that loads "
                    "it converts it)")
        return _from_directory(ref, EMBEDDED_DIRS[ref]())
    path = Path(ref).expanduser()
    if path.is_dir():
        return _from_directory(ref, path)
    cached = _hub_cache(ref)
    if cached is not None:
        return cached
    return (f"no local copy of the base model {ref!r} was found (a model directory, an embedded model or the Hugging "
            "Face hub cache); pass --base with a model directory")


def _from_directory(ref: str, path: Path) -> BaseWeights | str:
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (path / SAFETENSORS).is_file():
        shards = [SAFETENSORS]
    else:
        return f"{path} holds no {SAFETENSORS} (tuneguard reads only safetensors weights)"
    return _from_files(ref, str(path), [path / s for s in shards], path / "config.json")


def _from_files(ref: str, source: str, shards: list[Path], config: Path | None) -> BaseWeights:
    header, files = {}, {}
    for shard in shards:
        for name, info in read_safetensors_header(shard).items():
            header[name], files[name] = info, shard
    settings = json.loads(config.read_text(encoding="utf-8")) if config is not None and config.is_file() else {}
    return BaseWeights(ref, source, header, files=files, tied=bool(settings.get("tie_word_embeddings", False)))


def _hub_cache(ref: str) -> BaseWeights | None:
    """A hub id's safetensors from the local hub cache only (None when some file is not there)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> Path | None:
        hit = try_to_load_from_cache(ref, filename)
        return Path(hit) if isinstance(hit, (str, os.PathLike)) else None

    if ref.count("/") != 1:
        return None
    index = cached(SAFETENSORS_INDEX)
    names = (sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())) if index
             else [SAFETENSORS])
    shards = [cached(n) for n in names]
    if any(s is None for s in shards):
        return None
    return _from_files(ref, f"the hub cache ({ref})", shards, cached("config.json"))


def _built_in_code(ref: str) -> BaseWeights:
    """A tiny embedded model's language-model weights (its seeded init is the base every tiny adapter starts from)."""
    from tuneguard.models import tiny_model

    state = tiny_model(ref.removeprefix("tiny-")).model.state_dict()
    arrays = {k: v.detach().float().numpy() for k, v in state.items()}
    header = {k: TensorInfo(k, "F32", tuple(v.shape)) for k, v in arrays.items()}
    return BaseWeights(ref, f"{ref} (built in code)", header, arrays=arrays)
