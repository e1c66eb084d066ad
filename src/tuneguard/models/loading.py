"""``load_model``: resolve what the user named (embedded, directory, adapter, GGUF, hub id) into a LoadedModel."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch

from tuneguard.errors import TuneguardError
from tuneguard.files import read_json
from tuneguard.models.device import DeviceSettings, check_fits, resolve_settings
from tuneguard.models.embedded import EMBEDDED, EMBEDDED_DIRS, tiny_model
from tuneguard.models.loaded import LoadedModel
from tuneguard.models.record import RUN_RECORD, RunRecord

log = logging.getLogger(__name__)

TASKS = ("causal-lm", "seq-cls")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Weights in a format that is unpickled (or otherwise not safetensors) when loaded.
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack")
HUB_PROBE_SECONDS = 3.0  # how long the hub may take to answer before tuneguard treats it as unreachable


def load_model(ref: str | Path, *, adapter: str | Path | None = None, base: str | None = None,
               task: str = "causal-lm", num_labels: int = 2, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, device_map: str | None = None) -> LoadedModel:
    """Load a model and its tokenizer, in eval mode.

    ``ref`` is an embedded name (``tuneguard models``), a local model directory, a PEFT adapter directory (its base is
    taken from ``base``, else the tuneguard run record, else ``adapter_config.json``), a ``.gguf`` file, or a Hugging
    Face hub id. ``adapter`` attaches a PEFT adapter directory to ``ref``. ``device``, ``dtype`` and ``device_map``
    (see :mod:`tuneguard.models.device`) default to ``current_settings()``: the CPU in float32 unless a command or
    ``use_device`` set others. Weights load from safetensors only, straight into place in ``dtype``, after a check
    that they fit the free memory there.
    """
    if task not in TASKS:
        raise TuneguardError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    return _load(str(ref), adapter=adapter, base=base, task=task, num_labels=num_labels,
                 settings=resolve_settings(device, dtype, device_map))


def _load(ref: str, *, adapter: str | Path | None, base: str | None, task: str, num_labels: int,
          settings: DeviceSettings) -> LoadedModel:
    path = Path(ref).expanduser()
    if adapter is None and (path / "adapter_config.json").is_file():
        base_ref = base or _recorded_base(path)
        if not base_ref:
            raise TuneguardError(f"adapter {ref} does not name its base model: pass the base model explicitly")
        loaded = _load(base_ref, adapter=None, base=None, task=task, num_labels=num_labels, settings=settings)
        return attach_adapter(loaded, path, ref=ref)
    loaded = _load_plain(ref, path, task=task, num_labels=num_labels, settings=settings)
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
        base = RunRecord.read(record).base_ref  # a corrupt run.json: one line naming it and the fix
        if base:
            return base
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return config.get("base_model_name_or_path")


def _load_plain(ref: str, path: Path, *, task: str, num_labels: int, settings: DeviceSettings) -> LoadedModel:
    """Load a model without adapters from an embedded name, a directory, a GGUF file or the hub."""
    if ref.startswith("tiny-"):
        arch = ref.removeprefix("tiny-")
        if f"tiny-{arch}" not in EMBEDDED:
            raise TuneguardError(f"unknown embedded model {ref!r}; `tuneguard models` lists them")
        return _placed(tiny_model(arch, task=task, num_labels=num_labels), settings)
    if ref in EMBEDDED_DIRS:
        source = EMBEDDED_DIRS[ref]()
        check_weight_files(source)
        return _from_pretrained(str(source), task=task, num_labels=num_labels, settings=settings, ref=ref)
    if path.is_file() and path.suffix == ".gguf":
        if importlib.util.find_spec("gguf") is None:
            raise TuneguardError(f"{ref} is a GGUF file, which needs the gguf package: pip install gguf")
        return _from_pretrained(str(path.parent), task=task, num_labels=num_labels, settings=settings,
                                gguf_file=path.name, ref=ref)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TuneguardError(f"{ref} is not a model directory (no config.json or adapter_config.json in it)")
        check_model_type(path)
        check_weight_files(path)
        loaded = _from_pretrained(str(path), task=task, num_labels=num_labels, settings=settings, ref=ref)
        record = path / RUN_RECORD
        if record.is_file():
            loaded.base_ref = RunRecord.read(record).base_ref
        return loaded
    if path.exists():
        raise TuneguardError(f"{ref} is neither a model directory nor a .gguf file")
    if ref.startswith((".", "/", "~")) or path.suffix in {".gguf", ".safetensors", ".bin"} or ref.count("/") > 1:
        raise TuneguardError(f"model path {ref} does not exist")
    # A hub id: safetensors only, so nothing downloaded is ever unpickled. Unreachable, the hub client would retry
    # each file for about a minute: take the local hub cache at once instead.
    offline = hub_unreachable()
    where = f"the local hub cache ({offline}, so nothing is downloaded)" if offline else "the Hugging Face hub"
    return _from_pretrained(ref, task=task, num_labels=num_labels, settings=settings, ref=ref, where=where,
                            fix="connect to the network, or use a local model directory or `tuneguard models`",
                            local_files_only=offline is not None)


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be used now (``HF_HUB_OFFLINE``, or no answer from its endpoint within
    ``HUB_PROBE_SECONDS``), or None when it answers."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer is what the probe looks for
        return f"{constants.ENDPOINT} does not answer ({type(exc).__name__})"
    return None


def check_model_type(path: Path) -> None:
    """Refuse a model directory whose config.json names a ``model_type`` this transformers does not know, in one
    line (transformers' own message runs over several lines, its fix in the last)."""
    from transformers import CONFIG_MAPPING, __version__

    config = path / "config.json"
    model_type = read_json(config, fix="download or save the model again", expect=dict).get("model_type")
    if isinstance(model_type, str) and model_type not in CONFIG_MAPPING:
        raise TuneguardError(f"{config} names model_type {model_type!r}, which transformers {__version__} does not "
                             "know: upgrade transformers (pip install -U transformers) if the model is newer, else "
                             f"correct model_type in {config}")


def check_weight_files(path: Path) -> None:
    """Refuse a model directory whose weights are not safetensors (a pickle runs code when loaded), or whose
    safetensors files are missing, truncated or damaged: one line naming the file, before anything loads."""
    from safetensors import SafetensorError, safe_open

    index = path / SAFETENSORS_INDEX
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TuneguardError(f"{index} is not a safetensors index (no weight_map): save the model again") from None
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        unsafe = sorted(p.name for p in path.iterdir() if p.suffix in UNSAFE_SUFFIXES)
        if unsafe:
            raise TuneguardError(
                f"{path} holds {unsafe[0]} but no model.safetensors: tuneguard loads only safetensors (a pickled "
                "checkpoint can run code when loaded); if you trust it, convert it once with python -c \"from "
                f"transformers import AutoModelForCausalLM as M; M.from_pretrained('{path}').save_pretrained('{path}')\"")
        raise TuneguardError(f"{path} has a config.json but no model.safetensors: save the model with "
                             "save_pretrained(..., safe_serialization=True)")
    for name in files:
        file = path / name
        if not file.is_file():
            raise TuneguardError(f"{file} is missing ({SAFETENSORS_INDEX} lists it): download or save the model again")
        try:
            with safe_open(str(file), framework="pt"):  # validates the header against the file's size
                pass
        except (SafetensorError, OSError) as exc:
            why = str(exc).removeprefix("Error while deserializing header: ").strip().splitlines()[0][:200]
            raise TuneguardError(f"{file} is truncated or damaged ({why}, {file.stat().st_size} bytes): download "
                                 "or save the model again") from None


def _placed(loaded: LoadedModel, settings: DeviceSettings) -> LoadedModel:
    """A model built in memory, moved to the settings' device and dtype (CPU float32 ones stay as built; a device
    map placed the weights already)."""
    if not settings.device_map and (settings.device != loaded.device or settings.dtype != loaded.dtype):
        loaded.model.to(device=settings.device, dtype=settings.dtype)
    return loaded


def count_parameters(config, cls) -> int | None:
    """Parameters of the model ``config`` describes, counted on the meta device (no memory, no weights); None for
    a quantised model, whose packed weights a float count would overstate."""
    if getattr(config, "quantization_config", None):
        return None
    with torch.device("meta"):
        model = cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _from_pretrained(source: str, *, task: str, num_labels: int, settings: DeviceSettings, ref: str,
                     gguf_file: str | None = None, where: str | None = None, fix: str | None = None,
                     local_files_only: bool = False) -> LoadedModel:
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    download: dict = {"gguf_file": gguf_file} if gguf_file else {}
    if local_files_only:
        download["local_files_only"] = True
    cls = AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM
    model_kwargs = dict(download, **settings.pretrained_kwargs())
    if gguf_file:  # de-quantised on the CPU, then moved
        model_kwargs.pop("device_map", None)
    else:
        model_kwargs["use_safetensors"] = True
    if task == "seq-cls":
        model_kwargs["num_labels"] = num_labels
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **download)
        if not gguf_file:  # a GGUF file's config is read from the file with its weights
            config = AutoConfig.from_pretrained(source, **download)
            _check_tokenizer(tokenizer, config, ref)
            n_parameters = count_parameters(config, cls)
            if n_parameters:
                check_fits(ref, n_parameters, settings)
        model = _load_weights(cls, source, model_kwargs, new_head=task == "seq-cls")
    except (OSError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        fix = f"; {fix}" if fix else ""
        raise TuneguardError(f"could not load model {ref} from {where or source}: {first.rstrip('.')}{fix}") from None
    if gguf_file:
        _check_tokenizer(tokenizer, model.config, ref)
    if task == "seq-cls":
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return _placed(LoadedModel(model=model, tokenizer=tokenizer, ref=ref), settings)


def _load_weights(cls, source: str, kwargs: dict, *, new_head: bool):
    """``cls.from_pretrained``; a classification head the checkpoint lacks is initialised from a fixed seed, so every
    load of the same base gives the same model (and fingerprint: a resumed or repeated run trains the same head),
    without touching the caller's random state."""
    import torch

    if not new_head:
        return cls.from_pretrained(source, **kwargs)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        torch.manual_seed(0)
        return cls.from_pretrained(source, **kwargs)


def _check_tokenizer(tokenizer, config, ref: str) -> None:
    """Give the tokenizer a pad token; refuse one that does not belong to the model ``config`` describes: ids
    beyond its embedding, begin/end-of-text tokens none of which are the model's (another model family's), or,
    for a tokenizer without such tokens (BERT's), the model's own begin/end-of-text tokens missing from it."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TuneguardError(f"the tokenizer of {ref} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    text = config.get_text_config()
    rows = getattr(text, "vocab_size", None)
    top = max([len(tokenizer) - 1, *tokenizer.all_special_ids])
    if rows and top >= rows:
        raise TuneguardError(f"the tokenizer of {ref} has token ids up to {top} but the model's embedding has "
                             f"{rows} rows: the tokenizer does not match the model")
    ours = {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None}
    eos = getattr(text, "eos_token_id", None)
    theirs = {i for i in [getattr(text, "bos_token_id", None), *(eos if isinstance(eos, list) else [eos])]
              if i is not None}
    if ours and theirs and not ours & theirs:
        raise TuneguardError(f"the tokenizer of {ref} marks text with token ids {sorted(ours)} but the model with "
                             f"{sorted(theirs)}: the tokenizer is from another model; use the model's own tokenizer")
    # A model's begin/end-of-text token is one of its own tokenizer's: one the model can emit (inside its
    # embedding) but this tokenizer cannot name means the tokenizer is another, smaller one. (An id beyond the
    # embedding is the config's own slip, not the tokenizer's.)
    unknown = sorted(i for i in theirs if i >= len(tokenizer) and (not rows or i < rows))
    if unknown:
        raise TuneguardError(f"the model {ref} marks text with token id {unknown[0]} but its tokenizer has only "
                             f"{len(tokenizer)} tokens: the tokenizer is from another model; use the model's own "
                             "tokenizer")


def as_loaded(model: LoadedModel | str | Path, **kwargs) -> LoadedModel:
    """``model`` itself when it is already loaded, else ``load_model(model, **kwargs)``."""
    return model if isinstance(model, LoadedModel) else load_model(model, **kwargs)


def reference_of(target: LoadedModel, explicit: LoadedModel | str | None = None) -> LoadedModel | str | None:
    """The reference model for target-vs-base attacks: ``explicit`` when given, else the base the target was
    fine-tuned from (its run record or adapter config), else None."""
    return explicit if explicit is not None else target.base_ref
