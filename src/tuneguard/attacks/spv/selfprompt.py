"""SPV-MIA step 1: self-prompt reference data, sampled from the fine-tuned target itself.

Each prompt is the first ``prompt_tokens`` tokens (L = 16 in the paper) of a text from the attacker's public pool; the
target continues it by sampling (top-k 50, temperature 1) to ``total_tokens`` (128) in all. Generation is batched
with a KV cache (``generate``); all prompts have the same length, so no padding is needed. Written to a JSONL file
after every batch; a rerun resumes after the last finished batch. M = 10,000 (the paper's) takes hours on a CPU:
when the first batches say the stage will run longer than a minute, a warning gives the estimate and how to shrink
it before the rest runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from tuneguard.cache import cache_dir, key_hash, text_hash
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_jsonl, read_jsonl
from tuneguard.models import LoadedModel

log = logging.getLogger(__name__)

PROBE_BATCHES = 2  # batches timed before the estimate (the first one also pays for warming up)
LONG_STAGE_SECONDS = 60.0  # a stage expected to run longer gets the estimate and how to shrink it
SUGGESTED_SECONDS = 600.0  # the suggested n_texts fits in about this long


def prompt_ids(model: LoadedModel, pool: Sequence[str], prompt_tokens: int, n_texts: int, seed: int) -> list[list[int]]:
    """``n_texts`` prompts of exactly ``prompt_tokens`` tokens (plus BOS where the tokenizer adds one).

    Pool texts too short to give a full prompt are skipped; when the pool has fewer usable texts than ``n_texts``
    the prompts are reused in a new shuffled order (each reuse samples a different continuation).
    """
    tok = model.tokenizer
    bos = tok("", add_special_tokens=True)["input_ids"]
    usable = []
    for text in pool:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= prompt_tokens:
            usable.append(bos + ids[:prompt_tokens])
    if not usable:
        raise TuneguardError(f"no text in the SPV-MIA prompt pool has {prompt_tokens} tokens: give a pool of longer "
                             "texts from the target's domain or a smaller prompt length")
    if len(usable) < n_texts:
        log.warning("the prompt pool has %d usable texts for %d self-prompt texts: prompts are reused",
                    len(usable), n_texts)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(usable)) for _ in range(-(-n_texts // len(usable)))])
    return [usable[k] for k in order[:n_texts]]


def self_prompt_texts(model: LoadedModel, pool: Sequence[str], *, n_texts: int, prompt_tokens: int = 16,
                      total_tokens: int = 128, top_k: int = 50, temperature: float = 1.0, batch_size: int = 16,
                      seed: int = 0, directory: str | Path | None = None, progress: bool = True) -> list[str]:
    """Sample ``n_texts`` reference texts from ``model`` (the fine-tuned target) prompted by the pool; cached.

    The JSONL file goes in ``directory`` (default: the cache), named by a hash of the model, pool and settings.
    """
    if not 0 < prompt_tokens < total_tokens:
        raise TuneguardError(f"SPV-MIA needs 0 < prompt length ({prompt_tokens}) < total tokens ({total_tokens})")
    settings = (model.fingerprint, sorted(text_hash(t) for t in pool), n_texts, prompt_tokens, total_tokens, top_k,
                temperature, batch_size, seed)
    path = Path(directory or cache_dir("spv", "self-prompt"), f"texts-{key_hash(*settings)[:24]}.jsonl")
    rows = read_jsonl(path) if path.is_file() else []
    if len(rows) >= n_texts:
        return [r["text"] for r in rows[:n_texts]]
    prompts = prompt_ids(model, pool, prompt_tokens, n_texts, seed)
    tok = model.tokenizer
    bar = tqdm(total=n_texts, initial=len(rows), desc="SPV-MIA self-prompt", unit="text", disable=not progress)
    t0, timed = time.perf_counter(), 0
    # Whole batches only, each seeded by its index, so a resumed run writes what an uninterrupted one would.
    for k, start in enumerate(range(len(rows) // batch_size * batch_size, n_texts, batch_size)):
        rows = rows[:start]
        ids = torch.tensor(prompts[start:start + batch_size], device=model.device)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(int(key_hash(seed, start)[:15], 16))
            out = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                       top_k=top_k, top_p=1.0, temperature=temperature,
                                       max_new_tokens=total_tokens - ids.shape[1], min_new_tokens=1,
                                       pad_token_id=tok.pad_token_id)
        for prompt, seq in zip(ids.tolist(), out.tolist()):
            rows.append({"prompt": tok.decode(prompt, skip_special_tokens=True),
                         "text": tok.decode(seq, skip_special_tokens=True)})
        atomic_write_jsonl(path, rows)
        bar.update(len(ids))
        timed += len(ids)
        if k + 1 == PROBE_BATCHES:
            note = long_stage_note((time.perf_counter() - t0) / timed, n_texts - len(rows), n_texts, batch_size)
            if note:
                log.warning(note)
    bar.close()
    return [r["text"] for r in rows[:n_texts]]


def long_stage_note(seconds_per_text: float, left: int, n_texts: int, batch_size: int) -> str | None:
    """The warning for a generation stage with ``left`` of ``n_texts`` texts to go at ``seconds_per_text``: the
    time it will take and a smaller ``n_texts`` (about ten minutes' worth, at most half); None when it is short."""
    seconds = seconds_per_text * left
    if seconds <= LONG_STAGE_SECONDS:
        return None
    # About ten minutes' worth, and at least a halving, in whole batches.
    fits = min(int(SUGGESTED_SECONDS / seconds_per_text), n_texts // 2) // batch_size * batch_size
    fits = max(fits, batch_size)
    return (f"SPV-MIA self-prompt generation: about {_duration(seconds)} more for the {left:,} texts left of "
            f"n_texts = {n_texts:,} ({seconds_per_text:.2f} s per text over the first batches); the reference model "
            f"is then fine-tuned on all of them, which grows with it. To shrink both, generate fewer texts: "
            f"--param spv-mia.n_texts={fits} (about {_duration(fits * seconds_per_text)} of generation here; the "
            "paper uses 10,000).")


def _duration(seconds: float) -> str:
    """``2 h 05 min``, ``12 min``, ``45 s``."""
    if seconds >= 3600:
        hours, rest = divmod(round(seconds / 60), 60)
        return f"{hours} h {rest:02d} min"
    return f"{round(seconds / 60)} min" if seconds >= 90 else f"{round(seconds)} s"
