"""A PEFT LoRA adapter directory: its file names, and :class:`AdapterFiles`, the directory validated by
:func:`read_adapter` (config, weight header, LoRA pairs and which of them would load), its weights read without torch
(:mod:`tuneguard.adapters.safetensors_io`)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from tuneguard.adapters.adapter_config import AdapterConfig, pattern_value, read_config
from tuneguard.adapters.lora_pairs import LoraPair, lora_pairs
from tuneguard.adapters.safetensors_io import (FLOATS, READABLE, TensorInfo, iter_tensors, load_tensors,
                                               read_safetensors_header)
from tuneguard.errors import TuneguardError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")


class RefusedAdapter(TuneguardError):
    """An adapter tuneguard will not read because reading it could run code (a pickle)."""


@dataclass
class AdapterFiles:
    """A validated PEFT adapter directory: its config, the layout of its safetensors weights, and the LoRA modules
    that would not load (``unloaded``: module -> why; PEFT ignores their tensors, so no statistic counts them)."""

    path: Path
    config: AdapterConfig
    header: dict[str, TensorInfo] = field(repr=False)
    unloaded: dict[str, str] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def base_model(self) -> str | None:
        return self.config.base_model_name_or_path

    @property
    def task_type(self) -> str | None:
        return self.config.task_type

    @property
    def lora_alpha(self) -> float:
        """The configured ``lora_alpha``; ``alpha_pattern`` may override it per module."""
        return self.config.lora_alpha

    @property
    def use_rslora(self) -> bool:
        """rsLoRA scales by alpha/sqrt(r) instead of alpha/r."""
        return self.config.use_rslora

    @cached_property
    def all_pairs(self) -> list[LoraPair]:
        """Every LoRA module's (A, B) pair in the file, checked for shapes PEFT could load and dtypes tuneguard
        reads."""
        return lora_pairs(self.path, self.header)

    @property
    def pairs(self) -> list[LoraPair]:
        """The LoRA pairs that would load (every detector statistic is computed over these only)."""
        return [p for p in self.all_pairs if p.module not in self.unloaded]

    @property
    def rank(self) -> int:
        """The LoRA rank the tensors have (what calibrations are matched on): the most common rank among the pairs
        rank_pattern does not cover (all pairs when it covers every one)."""
        patterns = self.config.rank_pattern or {}
        pairs = self.pairs or self.all_pairs
        plain = [p.rank for p in pairs if pattern_value(patterns, p.module, None) is None] or [p.rank for p in pairs]
        return max(Counter(plain).items(), key=lambda kv: (kv[1], kv[0]))[0]

    def rank_mismatch(self) -> str | None:
        """How the configured rank (``r``, rank_pattern) contradicts the tensors' rank, or None."""
        patterns = self.config.rank_pattern or {}
        wrong = [p for p in self.pairs if p.rank != pattern_value(patterns, p.module, self.config.r)]
        if not wrong:
            return None
        p = wrong[0]
        return (f"adapter_config.json gives rank {pattern_value(patterns, p.module, self.config.r)} but the tensors "
                f"of {len(wrong)} of {len(self.pairs)} modules have another (e.g. {p.module}: rank {p.rank}); the "
                f"tensors' rank {self.rank} is used")

    def scale(self, pair: LoraPair) -> float:
        """The LoRA scale PEFT applies to ``pair``: alpha/r, or alpha/sqrt(r) with rsLoRA; patterns honoured."""
        alpha = float(pattern_value(self.config.alpha_pattern or {}, pair.module, self.lora_alpha))
        r = pair.rank  # the tensor's rank is authoritative; rank_pattern only explains why it differs from ``r``
        return alpha / (r**0.5 if self.use_rslora else r)

    @cached_property
    def full_tensors(self) -> list[str]:
        """Every tensor that is not half of a LoRA pair: full modules_to_save copies, trained biases, embedding LoRA,
        DoRA magnitudes. The weight detector measures those the base model also holds (as a delta)."""
        seen = {k for p in self.all_pairs for k in (p.a_key, p.b_key)}
        return sorted(k for k in self.header if k not in seen)

    @property
    def target_modules(self) -> list[str]:
        """The kinds of module given LoRA (last path component, e.g. q_proj), from the pairs that would load: what a
        calibration records and compares, as the tensors decide rather than the config's patterns."""
        return sorted({p.module.rsplit(".", 1)[-1] for p in self.pairs})

    @property
    def modules_to_save(self) -> list[str]:
        """The modules saved as full copies (adapter_config.json's modules_to_save), sorted."""
        return sorted(self.config.modules_to_save or [])

    def load(self, names: list[str]) -> dict[str, np.ndarray]:
        """Read some tensors as numpy arrays."""
        return load_tensors(self.weights_path, names, header=self.header)

    def iter_tensors(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """Read some tensors one at a time, in order."""
        return iter_tensors(self.weights_path, names, header=self.header)

    def non_finite(self) -> tuple[list[str], list[str]]:
        """(every tensor holding NaN or inf, or float64 values beyond float32's range, described; tensors whose dtype
        tuneguard cannot read, so could not be checked). Reads the whole file, one tensor at a time."""
        unchecked = [f"tensor {k} ({i.dtype}) could not be read, so was not checked for NaN/inf"
                     for k, i in self.header.items() if i.dtype not in READABLE]
        floats = [k for k, i in self.header.items() if i.dtype in FLOATS]
        found = []
        for name, values in self.iter_tensors(floats):
            kinds = {"NaN": np.isnan(values), "inf": np.isinf(values)}
            if values.dtype == np.float64:
                # PEFT loads an adapter in the model's dtype, float32 at the widest in practice, where such a value is
                # inf: as harmful as an inf in the file.
                with np.errstate(over="ignore"):  # that overflow is what is looked for here
                    overflows = np.isinf(values.astype(np.float32)) & ~kinds["inf"]
                kinds["beyond float32's range (inf once loaded)"] = overflows
            bad = sum(int(np.count_nonzero(mask)) for mask in kinds.values())
            if bad:
                found.append(f"tensor {name} has {bad} of {values.size} values "
                             f"{'/'.join(k for k, mask in kinds.items() if mask.any())}")
        return found, unchecked


def read_adapter(path: str | os.PathLike) -> AdapterFiles:
    """Validate a PEFT LoRA adapter directory and read its config and weight header (no weights, no torch).

    Raises RefusedAdapter for a pickle and TuneguardError for anything else that cannot be read.
    """
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise TuneguardError(f"{path} {what}; pass the adapter directory that holds {CONFIG_NAME}")
    if not (path / CONFIG_NAME).is_file():
        raise TuneguardError(f"{path} is not a PEFT adapter directory: {CONFIG_NAME} is missing")
    config = read_config(path / CONFIG_NAME)
    peft_type = str(config.peft_type).upper()
    if peft_type != "LORA":
        raise TuneguardError(f"{path} is a {peft_type} adapter; only LoRA adapters can be scanned")
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [n for n in PICKLE_NAMES if (path / n).is_file()]
        if pickles:
            raise RefusedAdapter(
                f"{path / pickles[0]} is a pickle, which can run code when loaded, so tuneguard refuses it; "
                "convert it to adapter_model.safetensors in a trusted environment"
            )
        raise TuneguardError(f"{path}: {WEIGHTS_NAME} is missing; the adapter has no weights")
    adapter = AdapterFiles(path, config, read_safetensors_header(weights))
    if not adapter.all_pairs:
        raise TuneguardError(f"{weights} holds no lora_A/lora_B tensors; is it a LoRA adapter?")
    for pair in adapter.all_pairs:
        why = config.untargeted(pair.module)
        if why:
            adapter.unloaded[pair.module] = why
    if not adapter.pairs:
        raise TuneguardError(f"{path}: none of its {len(adapter.all_pairs)} LoRA modules would load "
                             f"(e.g. {adapter.all_pairs[0].module}: {adapter.unloaded[adapter.all_pairs[0].module]})")
    return adapter
