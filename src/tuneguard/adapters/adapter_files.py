"""PEFT adapter directories: validation, config, and torch-free reading of their safetensors weights."""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from tuneguard.errors import TuneguardError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")

# safetensors dtype -> numpy dtype; BF16 has no numpy type and is widened by hand.
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
# ``base_model.model.<module>.lora_A[.<adapter name>].weight`` (the adapter name appears in some exports).
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Parse a safetensors header (no torch, no tensor data read); refuse a file that is not one."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise TuneguardError(f"{path} is not a safetensors file (too short); re-save it with safetensors")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100_000_000):
            raise TuneguardError(f"{path} is not a safetensors file (bad header length); re-save it with safetensors")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise TuneguardError(f"{path} has a corrupt safetensors header; re-save the adapter") from None
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        out[name] = TensorInfo(name, entry["dtype"], tuple(entry["shape"]), 8 + n + start, 8 + n + end)
    return out


def load_tensors(path: str | os.PathLike, names: list[str] | None = None, *,
                 header: dict[str, TensorInfo] | None = None) -> dict[str, np.ndarray]:
    """Read tensors (all, or ``names``) from a safetensors file as read-only numpy arrays (BF16 widened to float32);
    pass ``header`` when it was already parsed."""
    header = header if header is not None else read_safetensors_header(path)
    wanted = header.keys() if names is None else names
    # Zero-copy views into a read-only map; the map stays alive as long as an array refers to it.
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if header else b""
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        info = header[name]
        if info.dtype not in _DTYPES:
            raise TuneguardError(f"{path}: tensor {name} has unsupported dtype {info.dtype}")
        dtype = np.dtype(_DTYPES[info.dtype])
        count = (info.end - info.start) // dtype.itemsize
        arr = np.frombuffer(mm, dtype=dtype, count=count, offset=info.start).reshape(info.shape)
        if info.dtype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out


@dataclass(frozen=True)
class LoraPair:
    """The A and B tensors of one LoRA module."""

    module: str  # module path inside the base model, e.g. ``model.layers.3.self_attn.q_proj``
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.a_shape[0]

    @property
    def layer(self) -> int | None:
        """The transformer block index, when the module path has one."""
        m = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)\.", f".{self.module}.")
        return int(m.group(1)) if m else None


@dataclass
class AdapterFiles:
    """A validated PEFT adapter directory: its config and the layout of its safetensors weights."""

    path: Path
    config: dict
    header: dict[str, TensorInfo] = field(repr=False)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 0))

    @property
    def task_type(self) -> str | None:
        return self.config.get("task_type")

    @cached_property
    def pairs(self) -> list[LoraPair]:
        """Every LoRA module's (A, B) pair, checked for matching rank."""
        halves: dict[str, dict[str, TensorInfo]] = {}
        for name, info in self.header.items():
            m = _LORA_KEY.match(name)
            if m:
                module = m.group("module").removeprefix(_PEFT_PREFIX)
                halves.setdefault(module, {})[m.group("ab")] = info
        pairs = []
        for module, ab in sorted(halves.items()):
            if set(ab) != {"A", "B"}:
                missing = "B" if "A" in ab else "A"
                raise TuneguardError(f"{self.path}: module {module} has no lora_{missing} tensor; "
                                     "the adapter is incomplete")
            a, b = ab["A"], ab["B"]
            if len(a.shape) < 2 or len(b.shape) < 2 or a.shape[0] != b.shape[1]:
                raise TuneguardError(
                    f"{self.path}: {module} has mismatched LoRA shapes A {list(a.shape)} and B {list(b.shape)} "
                    "(A must be r x d_in and B d_out x r); the adapter file is corrupt"
                )
            pairs.append(LoraPair(module, a.name, b.name, a.shape, b.shape))
        return pairs

    def scale(self, pair: LoraPair) -> float:
        """The LoRA scale PEFT applies to ``pair``: alpha/r, or alpha/sqrt(r) with rsLoRA; patterns honoured."""
        patterns = self.config.get("alpha_pattern") or {}
        alpha = float(_pattern_value(patterns, pair.module, self.config.get("lora_alpha", 8)))
        r = pair.rank  # the tensor's rank is authoritative; rank_pattern only explains why it differs from ``r``
        return alpha / (r**0.5 if self.config.get("use_rslora") else r)

    def invisible_tensors(self) -> list[str]:
        """Tensors a LoRA (A, B) statistic cannot see: full modules_to_save copies, embedding LoRA, DoRA, biases."""
        seen = {k for p in self.pairs for k in (p.a_key, p.b_key)}
        return sorted(k for k in self.header if k not in seen)

    def load(self, names: list[str]) -> dict[str, np.ndarray]:
        """Read some tensors as numpy arrays."""
        return load_tensors(self.weights_path, names, header=self.header)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha pattern lookup: a key matches when it matches the end of the module path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(path: str | os.PathLike) -> AdapterFiles:
    """Validate a PEFT LoRA adapter directory and read its config and weight header (no weights, no torch)."""
    path = Path(path)
    if not path.is_dir():
        raise TuneguardError(f"{path} is not a directory; pass the adapter directory that holds {CONFIG_NAME}")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise TuneguardError(f"{path} is not a PEFT adapter directory: {CONFIG_NAME} is missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TuneguardError(f"{cfg_path} is not valid JSON ({exc.msg}); fix or re-save the adapter") from None
    if not isinstance(config, dict):
        raise TuneguardError(f"{cfg_path} must hold a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise TuneguardError(f"{path} is a {peft_type} adapter; only LoRA adapters can be scanned")
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [n for n in PICKLE_NAMES if (path / n).is_file()]
        if pickles:
            raise TuneguardError(
                f"{path / pickles[0]} is a pickle, which can run code when loaded, so tuneguard refuses it; "
                "convert it to adapter_model.safetensors in a trusted environment"
            )
        raise TuneguardError(f"{path}: {WEIGHTS_NAME} is missing; the adapter has no weights")
    adapter = AdapterFiles(path, config, read_safetensors_header(weights))
    if not adapter.pairs:
        raise TuneguardError(f"{weights} holds no lora_A/lora_B tensors; is it a LoRA adapter?")
    return adapter


def find_adapters(paths: list[str | os.PathLike]) -> list[Path]:
    """Adapter directories among ``paths``: each path is an adapter directory or is searched recursively for them."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise TuneguardError(f"{p} does not exist")
        if (p / CONFIG_NAME).is_file() or not p.is_dir():
            found.append(p)  # read_adapter explains what is wrong with a non-directory
            continue
        # hidden directories hold temporaries (atomic writes, checkpoints), never a finished adapter
        below = sorted(c.parent for c in p.rglob(CONFIG_NAME)
                       if not any(part.startswith(".") for part in c.relative_to(p).parts))
        if not below:
            raise TuneguardError(f"{p} holds no adapter directory (no {CONFIG_NAME} below it)")
        found.extend(below)
    return list(dict.fromkeys(found))
