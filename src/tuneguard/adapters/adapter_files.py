"""PEFT adapter directories: finding them, their type-checked config, and their safetensors weights read without torch.

The safetensors file is opened with ``safetensors.safe_open(framework="numpy")``: its Rust parser refuses a header
over 100 MB before reading it, and validates the header (a JSON object of known dtypes), the offsets (inside the
file, contiguous, not overlapping, covering the file) and that every shape fits its bytes. numpy has no bfloat16, so
those tensors' bits are read from the validated offsets and widened to float32.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from tuneguard.errors import TuneguardError
from tuneguard.params import Params, param

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")

# safetensors dtypes tuneguard reads (as before the switch to safe_open); FLOATS can hold NaN/inf.
READABLE = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")
FLOATS = ("F64", "F32", "F16", "BF16")
# ``base_model.model.<module>.lora_A[.<adapter name>].weight`` (the adapter name appears in some exports).
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_PEFT_PREFIX = "base_model.model."


class RefusedAdapter(TuneguardError):
    """An adapter tuneguard will not read because reading it could run code (a pickle)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@contextmanager
def _safe_open(path: Path) -> Iterator[Any]:
    """``safe_open`` with its errors turned into one line naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="numpy")
    except SafetensorError as exc:
        why = str(exc).removeprefix("Error while deserializing header: ").splitlines()[0][:200]
        raise TuneguardError(f"{path} is not a valid safetensors file ({why}); re-save the adapter with "
                             "safetensors") from None
    except OSError as exc:
        raise TuneguardError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle as f:
        yield f


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor's name, dtype and shape in a safetensors file, once safetensors has validated it (no data read)."""
    with _safe_open(Path(path)) as f:
        return {k: TensorInfo(k, s.get_dtype(), tuple(s.get_shape())) for k in f.keys() for s in [f.get_slice(k)]}


def load_tensors(path: str | os.PathLike, names: list[str] | None = None, *,
                 header: dict[str, TensorInfo] | None = None) -> dict[str, np.ndarray]:
    """Read tensors (all, or ``names``) from a safetensors file as numpy arrays (BF16 widened to float32); pass
    ``header`` when it was already read. A dtype tuneguard cannot read is refused with the tensor named."""
    return dict(iter_tensors(path, names, header=header))


def iter_tensors(path: str | os.PathLike, names: list[str] | None = None, *,
                 header: dict[str, TensorInfo] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``load_tensors`` one tensor at a time, so that only one is in memory."""
    path = Path(path)
    header = header if header is not None else read_safetensors_header(path)
    offsets: dict | None = None
    with _safe_open(path) as f:
        for name in list(header) if names is None else names:
            info = header[name]
            if info.dtype not in READABLE:
                raise TuneguardError(f"{path}: tensor {name} has dtype {info.dtype}, which tuneguard cannot read; "
                                     "save the adapter in float32, float16 or bfloat16")
            if info.dtype != "BF16":
                yield name, f.get_tensor(name)
                continue
            offsets = offsets if offsets is not None else _data_offsets(path)
            yield name, _read_bf16(path, offsets[name], info.shape)


def _data_offsets(path: Path) -> dict:
    """Absolute (start, end) byte offsets of every tensor. Only called once safe_open has validated the file, so its
    header is trusted here."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__"}


def _read_bf16(path: Path, span: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """A BF16 tensor as float32 (numpy has no bfloat16): its 16-bit patterns are the top halves of float32 ones."""
    with open(path, "rb") as fh:
        fh.seek(span[0])
        bits = np.frombuffer(fh.read(span[1] - span[0]), dtype="<u2").reshape(shape)
    return (bits.astype(np.uint32) << 16).view(np.float32)


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


def layer_of(module: str) -> int | None:
    """The transformer block index in a module or tensor path (``model.layers.3.mlp`` -> 3), when it has one."""
    m = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)\.", f".{module}.")
    return int(m.group(1)) if m else None


def base_tensor_name(key: str) -> str:
    """The base model's name for a full tensor an adapter saves: PEFT's prefix (and a ``modules_to_save.<adapter>``
    infix some exports keep) removed, e.g. ``base_model.model.lm_head.weight`` -> ``lm_head.weight``."""
    return re.sub(r"\.modules_to_save\.[^.]+(?=\.)", "", key.removeprefix(_PEFT_PREFIX))


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
        halves: dict[str, dict[str, TensorInfo]] = {}
        for name, info in self.header.items():
            m = _LORA_KEY.match(name)
            if m:
                module = m.group("module").removeprefix(_PEFT_PREFIX)
                if m.group("ab") in halves.setdefault(module, {}):
                    raise TuneguardError(f"{self.path}: module {module} has two lora_{m.group('ab')} tensors; the "
                                         "adapter file is corrupt")
                halves[module][m.group("ab")] = info
        pairs = []
        for module, ab in sorted(halves.items()):
            if set(ab) != {"A", "B"}:
                missing = "B" if "A" in ab else "A"
                raise TuneguardError(f"{self.path}: module {module} has no lora_{missing} tensor; "
                                     "the adapter is incomplete")
            a, b = ab["A"], ab["B"]
            if len(a.shape) < 2 or len(b.shape) < 2 or a.shape[0] != b.shape[1] or 0 in (*a.shape, *b.shape):
                raise TuneguardError(
                    f"{self.path}: {module} has LoRA shapes A {list(a.shape)} and B {list(b.shape)}, which no LoRA "
                    "layer has (A must be r x d_in and B d_out x r, all sizes > 0); the adapter file is corrupt"
                )
            for info in (a, b):
                if info.dtype not in READABLE:
                    raise TuneguardError(f"{self.path}: tensor {info.name} has dtype {info.dtype}, which tuneguard "
                                         "cannot read; save the adapter in float32, float16 or bfloat16")
            pairs.append(LoraPair(module, a.name, b.name, a.shape, b.shape))
        return pairs

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
        plain = [p.rank for p in pairs if _pattern_value(patterns, p.module, None) is None] or [p.rank for p in pairs]
        return max(Counter(plain).items(), key=lambda kv: (kv[1], kv[0]))[0]

    def rank_mismatch(self) -> str | None:
        """How the configured rank (``r``, rank_pattern) contradicts the tensors' rank, or None."""
        patterns = self.config.rank_pattern or {}
        wrong = [p for p in self.pairs if p.rank != _pattern_value(patterns, p.module, self.config.r)]
        if not wrong:
            return None
        p = wrong[0]
        return (f"adapter_config.json gives rank {_pattern_value(patterns, p.module, self.config.r)} but the tensors "
                f"of {len(wrong)} of {len(self.pairs)} modules have another (e.g. {p.module}: rank {p.rank}); the "
                f"tensors' rank {self.rank} is used")

    def scale(self, pair: LoraPair) -> float:
        """The LoRA scale PEFT applies to ``pair``: alpha/r, or alpha/sqrt(r) with rsLoRA; patterns honoured."""
        alpha = float(_pattern_value(self.config.alpha_pattern or {}, pair.module, self.lora_alpha))
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


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha pattern lookup: a key matches when it matches the end of the module path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_config(path: Path) -> AdapterConfig:
    """``adapter_config.json`` of an adapter directory, type-checked; one-line errors naming the file."""
    cfg_path = path / CONFIG_NAME
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
    config = read_config(path)
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


@dataclass(frozen=True)
class Skipped:
    """A path found while searching for adapters that is not scanned, and why."""

    path: Path
    reason: str


def discover_adapters(paths: list[str | os.PathLike]) -> tuple[list[Path], list[Skipped]]:
    """(adapter directories among ``paths``, paths skipped and why). A path that is an adapter directory, not a
    directory, or missing is returned as is (``read_adapter`` explains what is wrong); others are searched.

    The search lists every directory holding an adapter file, so one with weights but no config is not passed
    over. A symlinked directory is not followed (it may lead anywhere, or in a loop) unless it points straight at an
    adapter directory, which is scanned; otherwise it is skipped. Directories inside hidden ones (temporaries of
    atomic writes, checkpoints) are skipped when they hold an adapter. The same directory found twice is skipped
    the second time.
    """
    found: list[Path] = []
    skipped: list[Skipped] = []
    adapter_files = {CONFIG_NAME, WEIGHTS_NAME, *PICKLE_NAMES}
    for top in map(Path, paths):
        if not top.is_dir() or (top / CONFIG_NAME).is_file():
            found.append(top)
            continue
        before = len(found) + len(skipped)

        def unreadable(exc: OSError) -> None:
            skipped.append(Skipped(Path(exc.filename or top), f"cannot list directory: {exc.strerror}"))

        linked: list[Path] = []  # after the real directories, so a link to one of them is the duplicate
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
            dirnames.sort()
            d = Path(dirpath)
            hidden = any(part.startswith(".") for part in d.relative_to(top).parts)
            if adapter_files & set(filenames):
                if hidden:
                    skipped.append(Skipped(d, "inside a hidden directory (an unfinished write or a checkpoint?); "
                                              "pass it explicitly to scan it"))
                else:
                    found.append(d)
            for name in dirnames:
                link = d / name
                if not link.is_symlink() or hidden:
                    continue
                target = os.readlink(link)
                if (link / CONFIG_NAME).is_file():
                    linked.append(link)
                else:
                    skipped.append(Skipped(link, f"symlinked directory (-> {target}), not followed; pass it "
                                                 "explicitly to search it"))
        found += linked
        if len(found) + len(skipped) == before:
            raise TuneguardError(f"{top} holds no adapter directory (no {CONFIG_NAME} below it)")
    unique: dict[str, Path] = {}
    kept = []
    for p in found:
        key = os.path.realpath(p)
        if key in unique:
            if p != unique[key]:
                skipped.append(Skipped(p, f"the same directory as {unique[key]}, scanned once"))
            continue
        unique[key] = p
        kept.append(p)
    return kept, skipped


def find_adapters(paths: list[str | os.PathLike]) -> list[Path]:
    """The adapter directories ``discover_adapters`` finds (without the paths it skips)."""
    return discover_adapters(paths)[0]
