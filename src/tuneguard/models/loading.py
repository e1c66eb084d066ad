"""``load_model``: resolve what the user named (embedded, directory, adapter, GGUF, hub id) into a LoadedModel."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch

from tuneguard.errors import TuneguardError
from tuneguard.models.embedded import EMBEDDED, EMBEDDED_DIRS, tiny_model
from tuneguard.models.loaded import LoadedModel

log = logging.getLogger(__name__)

TASKS = ("causal-lm", "seq-cls")
RUN_RECORD = "run.json"  # written by tuneguard.train next to a saved model or adapter


def load_model(ref: str | Path, *, adapter: str | Path | None = None, base: str | None = None,
               task: str = "causal-lm", num_labels: int = 2, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model and its tokenizer, in eval mode.

    ``ref`` is an embedded name (``tuneguard models``), a local model directory, a PEFT adapter directory (its base is
    taken from ``base``, else the tuneguard run record, else ``adapter_config.json``), a ``.gguf`` file, or a Hugging
    Face hub id. ``adapter`` attaches a PEFT adapter directory to ``ref``.
    """
    if task not in TASKS:
        raise TuneguardError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    ref = str(ref)
    path = Path(ref).expanduser()
    if adapter is None and (path / "adapter_config.json").is_file():
        base_ref = base or _recorded_base(path)
        if not base_ref:
            raise TuneguardError(f"adapter {ref} does not name its base model: pass the base model explicitly")
        loaded = load_model(base_ref, task=task, num_labels=num_labels, dtype=dtype)
        return attach_adapter(loaded, path, ref=ref)
    loaded = _load_plain(ref, path, task=task, num_labels=num_labels, dtype=dtype)
    if adapter is not None:
        loaded = attach_adapter(loaded, Path(adapter).expanduser(), ref=str(adapter))
    return loaded


def attach_adapter(base: LoadedModel, adapter_dir: Path, *, ref: str) -> LoadedModel:
    """Put a PEFT adapter (safetensors only) on a loaded base model."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise TuneguardError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            raise TuneguardError(f"{adapter_dir} holds only adapter_model.bin, a pickle that can run code when loaded; "
                                 "tuneguard loads adapters from safetensors only (convert it if you trust its origin)")
        raise TuneguardError(f"{adapter_dir} has no adapter_model.safetensors")
    try:
        model = PeftModel.from_pretrained(base.model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise TuneguardError(f"adapter {adapter_dir} does not fit base model {base.ref}: {first}") from None
    model.eval()
    return LoadedModel(model=model, tokenizer=base.tokenizer, ref=ref, base_ref=base.ref,
                       meta={**base.meta, "adapter": str(adapter_dir)})


def _recorded_base(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained from: tuneguard's run record first, then PEFT's config."""
    record = adapter_dir / RUN_RECORD
    if record.is_file():
        base = json.loads(record.read_text(encoding="utf-8")).get("base_ref")
        if base:
            return base
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return config.get("base_model_name_or_path")


def _load_plain(ref: str, path: Path, *, task: str, num_labels: int, dtype: torch.dtype) -> LoadedModel:
    """Load a model without adapters from an embedded name, a directory, a GGUF file or the hub."""
    if ref.startswith("tiny-"):
        arch = ref.removeprefix("tiny-")
        if f"tiny-{arch}" not in EMBEDDED:
            raise TuneguardError(f"unknown embedded model {ref!r}; `tuneguard models` lists them")
        return tiny_model(arch, task=task, num_labels=num_labels)
    if ref in EMBEDDED_DIRS:
        loaded = _from_pretrained(str(EMBEDDED_DIRS[ref]()), task=task, num_labels=num_labels, dtype=dtype)
        loaded.ref = ref
        return loaded
    if path.is_file() and path.suffix == ".gguf":
        if importlib.util.find_spec("gguf") is None:
            raise TuneguardError(f"{ref} is a GGUF file, which needs the gguf package: pip install gguf")
        return _from_pretrained(str(path.parent), task=task, num_labels=num_labels, dtype=dtype,
                                gguf_file=path.name, ref=ref)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TuneguardError(f"{ref} is not a model directory (no config.json or adapter_config.json in it)")
        loaded = _from_pretrained(str(path), task=task, num_labels=num_labels, dtype=dtype, ref=ref)
        record = path / RUN_RECORD
        if record.is_file():
            loaded.base_ref = json.loads(record.read_text(encoding="utf-8")).get("base_ref")
        return loaded
    if path.exists():
        raise TuneguardError(f"{ref} is neither a model directory nor a .gguf file")
    if ref.startswith((".", "/", "~")) or path.suffix in {".gguf", ".safetensors", ".bin"} or ref.count("/") > 1:
        raise TuneguardError(f"model path {ref} does not exist")
    # A hub id: safetensors only, so nothing downloaded is ever unpickled.
    return _from_pretrained(ref, task=task, num_labels=num_labels, dtype=dtype, ref=ref, hub=True)


def _from_pretrained(source: str, *, task: str, num_labels: int, dtype: torch.dtype, ref: str | None = None,
                     gguf_file: str | None = None, hub: bool = False) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    kwargs: dict = {"gguf_file": gguf_file} if gguf_file else {}
    cls = AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM
    model_kwargs = dict(kwargs, dtype=dtype)
    if task == "seq-cls":
        model_kwargs["num_labels"] = num_labels
    if hub:
        model_kwargs["use_safetensors"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = cls.from_pretrained(source, **model_kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        where = "the Hugging Face hub (no network? use a local directory or `tuneguard models`)" if hub else source
        raise TuneguardError(f"could not load model {ref or source} from {where}: {first}") from None
    _check_tokenizer(tokenizer, model, ref or source)
    if task == "seq-cls":
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, ref=ref or source)


def _check_tokenizer(tokenizer, model, ref: str) -> None:
    """Give the tokenizer a pad token and refuse one whose ids overflow the model's embedding."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TuneguardError(f"the tokenizer of {ref} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise TuneguardError(f"the tokenizer of {ref} has {len(tokenizer)} tokens but the model's embedding has "
                             f"{rows} rows: the tokenizer does not match the model")


def as_loaded(model: LoadedModel | str | Path, **kwargs) -> LoadedModel:
    """``model`` itself when it is already loaded, else ``load_model(model, **kwargs)``."""
    return model if isinstance(model, LoadedModel) else load_model(model, **kwargs)


def reference_of(target: LoadedModel, explicit: LoadedModel | str | None = None) -> LoadedModel | str | None:
    """The reference model for target-vs-base attacks: ``explicit`` when given, else the base the target was
    fine-tuned from (its run record or adapter config), else None."""
    return explicit if explicit is not None else target.base_ref
