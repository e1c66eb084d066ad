"""What the tensor names of a PEFT adapter's safetensors header say: its LoRA modules' (A, B) pairs, checked for shapes
PEFT could load, a module's transformer block, and the base model's name for a full tensor the adapter saves."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tuneguard.adapters.safetensors_io import READABLE, TensorInfo
from tuneguard.errors import TuneguardError

# ``base_model.model.<module>.lora_A[.<adapter name>].weight`` (the adapter name appears in some exports).
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_PEFT_PREFIX = "base_model.model."


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
        return layer_of(self.module)


def lora_pairs(path: Path, header: dict[str, TensorInfo]) -> list[LoraPair]:
    """Every LoRA module's (A, B) pair in the safetensors ``header`` of the adapter at ``path`` (named in errors),
    sorted by module, checked for shapes PEFT could load and dtypes tuneguard reads."""
    halves: dict[str, dict[str, TensorInfo]] = {}
    for name, info in header.items():
        m = _LORA_KEY.match(name)
        if m:
            module = m.group("module").removeprefix(_PEFT_PREFIX)
            if m.group("ab") in halves.setdefault(module, {}):
                raise TuneguardError(f"{path}: module {module} has two lora_{m.group('ab')} tensors; the "
                                     "adapter file is corrupt")
            halves[module][m.group("ab")] = info
    pairs = []
    for module, ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            missing = "B" if "A" in ab else "A"
            raise TuneguardError(f"{path}: module {module} has no lora_{missing} tensor; "
                                 "the adapter is incomplete")
        a, b = ab["A"], ab["B"]
        if len(a.shape) < 2 or len(b.shape) < 2 or a.shape[0] != b.shape[1] or 0 in (*a.shape, *b.shape):
            raise TuneguardError(
                f"{path}: {module} has LoRA shapes A {list(a.shape)} and B {list(b.shape)}, which no LoRA "
                "layer has (A must be r x d_in and B d_out x r, all sizes > 0); the adapter file is corrupt"
            )
        for info in (a, b):
            if info.dtype not in READABLE:
                raise TuneguardError(f"{path}: tensor {info.name} has dtype {info.dtype}, which tuneguard "
                                     "cannot read; save the adapter in float32, float16 or bfloat16")
        pairs.append(LoraPair(module, a.name, b.name, a.shape, b.shape))
    return pairs


def layer_of(module: str) -> int | None:
    """The transformer block index in a module or tensor path (``model.layers.3.mlp`` -> 3), when it has one."""
    m = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)\.", f".{module}.")
    return int(m.group(1)) if m else None


def base_tensor_name(key: str) -> str:
    """The base model's name for a full tensor an adapter saves: PEFT's prefix (and a ``modules_to_save.<adapter>``
    infix some exports keep) removed, e.g. ``base_model.model.lm_head.weight`` -> ``lm_head.weight``."""
    return re.sub(r"\.modules_to_save\.[^.]+(?=\.)", "", key.removeprefix(_PEFT_PREFIX))
