"""A PEFT adapter's ``adapter_config.json``: the fields tuneguard reads, type-checked, and PEFT's module matching (which
modules get a LoRA layer, which rank and alpha patterns apply)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tuneguard.errors import TuneguardError
from tuneguard.params import Params, param


@dataclass
class AdapterConfig(Params):
    """The ``adapter_config.json`` fields tuneguard reads, type-checked as PEFT would need them (other keys ignored)."""

    peft_type: str | None = param("LORA", "adapter kind; only LORA is scanned")
    r: int = param(8, "configured LoRA rank (the tensors' rank decides; a mismatch is reported)", ge=0)
    lora_alpha: float = param(8.0, "LoRA alpha (PEFT's default 8)")
    use_rslora: bool = param(False, "scale by alpha/sqrt(r) instead of alpha/r")
    use_dora: bool = param(False, "DoRA magnitudes present")
    target_modules: list[str] | str | None = param(None, "modules given LoRA: names matching the end of the module "
                                                         "path, or one regular expression (None: PEFT's defaults)")
    exclude_modules: list[str] | str | None = param(None, "modules never given LoRA (as target_modules)")
    layers_to_transform: list[int] | int | None = param(None, "only these layer indices get LoRA")
    layers_pattern: list[str] | str | None = param(None, "the name of the layer list that layers_to_transform indexes")
    rank_pattern: dict | None = param({}, "module pattern -> rank")
    alpha_pattern: dict | None = param({}, "module pattern -> alpha")
    modules_to_save: list[str] | None = param(None, "modules saved as full copies")
    base_model_name_or_path: str | None = param(None, "the base model the adapter was trained from")
    task_type: str | None = param(None, "PEFT task type (CAUSAL_LM, SEQ_CLS, ...)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rank_pattern", "alpha_pattern"):
            for key, value in (getattr(self, name) or {}).items():
                _compile(rf"(.*\.)?({key})$", f"{name} key {key!r}")
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not number or value <= 0 or (name == "rank_pattern" and not isinstance(value, int)):
                    kind = "integers" if name == "rank_pattern" else "numbers"
                    raise TuneguardError(f"parameter {name!r} must map patterns to positive {kind}, got "
                                         f"{key!r}: {value!r}")
        # every string PEFT uses as (part of) a regular expression
        for name in ("target_modules", "exclude_modules"):
            if isinstance(getattr(self, name), str):
                _compile(getattr(self, name), name)
        for name in ("layers_pattern", "modules_to_save"):
            value = getattr(self, name)
            for item in [value] if isinstance(value, str) else value or []:
                _compile(item, f"{name} entry {item!r}")

    def untargeted(self, module: str) -> str | None:
        """Why PEFT would put no LoRA layer on ``module`` (so it ignores that module's tensors on load), or None.

        PEFT's matching (``check_target_module_exists``); with no target_modules or "all-linear" only the base model
        can tell.
        """
        if _matches(self.exclude_modules, module):
            return "excluded by exclude_modules"
        if self.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in self.modules_to_save):
            return "a modules_to_save module, which PEFT never gives LoRA"
        if self.target_modules is None or self.target_modules == "all-linear":
            return None
        if not _matches(self.target_modules, module):
            return "not in target_modules"
        layers = self.layers_to_transform
        if isinstance(self.target_modules, list) and module not in self.target_modules and layers not in (None, []):
            if _layer_index(module, self.layers_pattern) not in (layers if isinstance(layers, list) else [layers]):
                return "not in layers_to_transform"
        return None


def _matches(spec: list[str] | str | None, module: str) -> bool:
    """PEFT's module matching: a string is a regex matching the whole path; a list entry is the path or its end."""
    if not spec:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, module) is not None
    return module in spec or any(module.endswith(f".{key}") for key in spec)


def _layer_index(module: str, layers_pattern: list[str] | str | None) -> int | None:
    """The layer index PEFT reads from a module path: the first number after ``layers_pattern`` (any name)."""
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern or []
    for rx in [rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\." for p in patterns] or [r".*?\.[^.]*\.(?P<idx>\d+)\."]:
        m = re.match(rx, module)
        if m:
            return int(m.group("idx"))
    return None


def _compile(pattern: str, what: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise TuneguardError(f"parameter {what} is not a valid regular expression ({exc})") from None


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha pattern lookup: a key matches when it matches the end of the module path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_config(cfg_path: Path) -> AdapterConfig:
    """An ``adapter_config.json`` file, type-checked; one-line errors naming the file."""
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise TuneguardError(f"{cfg_path} is not valid JSON ({why}); fix or re-save the adapter") from None
    except OSError as exc:
        raise TuneguardError(f"cannot read {cfg_path}: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise TuneguardError(f"{cfg_path} must hold a JSON object")
    # Built directly (not with Params.create): a file's "16" is a string, which PEFT cannot use as a rank.
    known = {k: raw[k] for k in AdapterConfig.__dataclass_fields__ if k in raw}
    try:
        return AdapterConfig(**known)
    except TuneguardError as exc:
        raise TuneguardError(f"{cfg_path}: {exc}; fix or re-save the adapter") from None
