"""The one forward-pass engine every attack shares.

For each text it returns the per-token log-probabilities ``lp_t = log p(x_t | x_<t)``, the Min-K%++ moments
``mu_t = Σ_v p_t(v) log p_t(v)`` and ``sigma_t`` (the std of ``log p_t`` under ``p_t``), and the model's top-1 token
``argmax_v p_t(v)`` with its log-prob ``max_v log p_t(v)`` (EZ-MIA's error positions, hard-token variants: lp, mu and
sigma cannot give them back), all from the same logits.
Reduction precision: whatever the model's dtype, the logits are widened to float32 and reduced over the vocabulary
in float32; the per-position results are float64. On a 49k vocabulary lp, mu and sigma stay within about 1e-6 of a
float64 log-softmax of the same logits (``bench/bench_scoring.py`` measures it), well below the rounding a float32
forward pass already puts into them (a text's scores move by ~3e-5 between batch shapes on SmolLM2-135M).
Scored positions: t = 2..n, plus t = 1 when the tokenizer adds a BOS token (then x_1 is scored from BOS). A text can
carry a prefix (ReCall's shots): the prefix is fed to the model but only the text's own tokens are scored, the first
one from the prefix's last token. A prefix is read once and its key/value cache shared by every text behind it.

Batching: the texts behind one context are sorted longest first and cut into batches of ``batch_size`` texts, or,
with ``batch_tokens``, filled up to that many padded tokens (the longest text's length times the count). A CUDA
out-of-memory error halves the budget (for the rest of the engine's life) and retries the batch; texts already
scored are kept. Batch independence: a text's scores depend on its batch mates only through the floating-point
rounding of the padded forward pass (padding changes the matrix shapes, hence the summation order); they agree
within ``BATCH_TOLERANCE`` (absolute, on lp, mu and sigma) across batch sizes and budgets, so rankings and AUCs do
not move. Bit-equality would need every text forwarded at one fixed shape (padding every text to the full context,
or a batch of one), which multiplies the cost; a cached score is the one its first batch gave.
Under ``accelerate launch`` (``distributed=True``) the batches, formed exactly as one process forms them, are dealt
to the processes in turn and the scores gathered on every process, so the numbers equal a one-process run's.

Texts longer than the model's context (or ``max_length``) are truncated to their first ``max_length`` tokens; with a
prefix, the text is cut first and then the prefix keeps its most recent tokens that still fit in the model's context
(``max_length`` bounds the scored text, not the prefix). Results are cached in memory and on disk by (model
fingerprint, tokenizer, device type, dtype, max_length, prefix + text): a bfloat16 or GPU score is not a float32 CPU
score. Re-running or adding an attack costs no forward pass. A cache entry written by an older engine (another
``score_cache.SCHEMA``, e.g. one without the top-1 arrays) is recomputed and overwritten, never read.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import json
import logging
from collections import deque
from pathlib import Path
from typing import TypeAlias

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import Cache

from tuneguard.cache import cache_dir, key_hash, text_hash
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel
from tuneguard.models.kv_cache import cache_kwarg, returned_cache
from tuneguard.scoring.distributed import agree_on_inputs, gather_scores, launched_processes
from tuneguard.scoring.score_cache import ScoreCache
from tuneguard.scoring.token_scores import TokenScores

log = logging.getLogger(__name__)

POSITION_BLOCK = 32  # positions whose full-vocabulary float32 terms are held at once
# How far a text's lp / mu / sigma may move with its batch mates (see the module docstring); measured: ~1e-7 on the
# tiny test models, 2.8e-5 on SmolLM2-135M in float32 (bench/bench_scoring.py --parts precision).
BATCH_TOLERANCE = 1e-4
# One text's model input, as :meth:`ScoringEngine.encode` gives it: (input ids, index of the first scored position,
# truncated?).
Encoded: TypeAlias = tuple[list[int], int, bool]


_BACKEND_DIGESTS: dict[str, str] = {}  # sha256 of a fast tokenizer's JSON -> tokenizer_digest


def tokenizer_digest(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's output: the fast tokenizer's JSON (vocabulary, merges,
    normalizer, pre- and post-processor), else the vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        raw = backend.to_str()
        # Parsing a 49k-token vocabulary's JSON costs 0.4 s, paid by every engine: once per distinct serialisation.
        digest = _BACKEND_DIGESTS.get(raw_key := hashlib.sha256(raw.encode("utf-8")).hexdigest())
        if digest is None:
            spec = json.loads(raw)
            # Truncation and padding are per-call state (set by whoever called the tokenizer last), not the
            # tokenizer.
            spec.pop("truncation", None)
            spec.pop("padding", None)
            digest = _BACKEND_DIGESTS[raw_key] = hashlib.sha256(
                json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()
        return digest
    spec = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.special_tokens_map], default=str)
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()


def _reduce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """lp, mu, sigma (float64), the top-1 token and its log-prob (float64) of each row of ``logits`` (positions x
    vocabulary, any float dtype) for the true next tokens ``targets``.

    With ``z = x - max x`` and ``S = Σ exp z``: ``log p = z - log S``, ``mu = E[z] - log S`` and
    ``sigma² = E[z²] - E[z]²``.
    The vocabulary-wide terms and their three sums are float32 (a float64 log-softmax cost 14% of a forward pass;
    float64 sums of the float32 terms cost 1.7 times this); only the per-position results are float64, and
    ``lp`` subtracts the max exactly. Shifting by the max keeps the one-pass variance accurate: the top token (z = 0)
    carries the most mass, so E[z]² never dwarfs E[z²].
    """
    x = logits.float()
    top, best = x.max(-1)
    z = x - top[:, None]
    e = z.exp()
    total = e.sum(-1).double()
    # e becomes e·z, then e·z² in place: one vocabulary-wide buffer fewer to allocate and fill per block (a third
    # of the reduction's time), the same numbers.
    mean_z = e.mul_(z).sum(-1).double() / total
    var_z = (e.mul_(z).sum(-1).double() / total - mean_z.square()).clamp_min(0)
    log_total = total.log()
    lp = (x.gather(-1, targets[:, None])[:, 0].double() - top.double()) - log_total
    return lp, mean_z - log_total, var_z.sqrt(), best, -log_total


def _malloc_trim():
    """glibc's ``malloc_trim``, or None off glibc (macOS, Windows, musl)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None


_MALLOC_TRIM = _malloc_trim()


def _return_freed_memory() -> None:
    """Give the memory a CPU batch freed back to the system. glibc keeps freed blocks below its (self-raising) mmap
    threshold in its heaps, and batches' temporaries of ever-changing sizes fragment them: a 200-text SmolLM2 LoRA
    audit peaks at 1.9 GB with this, 3.6 GB without (bench/bench_scoring.py --parts memory)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def check_batching(batch_size: int, batch_tokens: int | None) -> None:
    """Refuse a scoring batch size or token budget below 1 (callers check it before any model loads)."""
    if batch_size < 1:
        raise TuneguardError(f"the scoring batch size (--score-batch-size) must be at least 1, got {batch_size}")
    if batch_tokens is not None and batch_tokens < 1:
        raise TuneguardError(f"the scoring token budget (--score-batch-tokens) must be at least 1, got "
                             f"{batch_tokens}")


class ScoringEngine:
    """Batched, cached scoring of texts under one model, on the model's own device and dtype.

    ``batch_size`` texts per model call, or, when ``batch_tokens`` is given, as many as fit in that many padded
    tokens. ``distributed`` shards the texts over the processes of an ``accelerate launch`` run (every process must
    then call :meth:`score` with the same texts). ``forward_passes`` counts texts actually forwarded (cache hits cost
    none; over every process); ``batches`` counts model calls (over every process); ``cache_reads`` counts scores
    read from the disk cache (this process's), computed by an earlier engine in other batches: within
    ``BATCH_TOLERANCE`` of, not bit-equal to, what this engine would compute.
    """

    def __init__(self, loaded: LoadedModel, *, batch_size: int = 8, batch_tokens: int | None = None,
                 max_length: int | None = None, cache: bool = True, progress: bool = True,
                 distributed: bool = False) -> None:
        check_batching(batch_size, batch_tokens)
        self.loaded = loaded
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.max_length = min(max_length or loaded.max_length, loaded.max_length)
        self.forward_passes = 0
        self.batches = 0
        self.cache_reads = 0
        self._memory: dict[str, TokenScores] = {}
        self._processes = launched_processes() if distributed else None
        self.progress = progress and (self._processes is None or self._processes.is_main_process)
        tok = loaded.tokenizer
        # The weights alone do not fix the scores: the same model under another tokenizer scores other tokens, and
        # the same weights in bfloat16 or on a GPU give other numbers than in float32 on the CPU.
        key = key_hash(loaded.fingerprint, tokenizer_digest(tok), loaded.device.type, str(loaded.dtype))
        self._disk = ScoreCache(cache_dir("scores", key[:24], f"len{self.max_length}") if cache else None)
        probe = tok("a")["input_ids"]
        self._bos = [probe[0]] if probe and tok.bos_token_id is not None and probe[0] == tok.bos_token_id else []

    @property
    def name(self) -> str:
        """The model this engine scores with."""
        return self.loaded.ref

    @property
    def _dir(self) -> Path | None:
        """The disk cache's folder (None: no disk cache, or it could not be written)."""
        return self._disk.directory

    def tokenize(self, text: str) -> list[int]:
        """The text's own token ids (no special tokens)."""
        return self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def text_budget(self) -> int:
        """How many of a text's own tokens are scored at most (the rest is truncated)."""
        return self.max_length - len(self._bos)

    def prefix_room(self, text: str) -> int:
        """How many prefix tokens fit in the model's context beside ``text`` (as truncated for scoring)."""
        return self.loaded.max_length - len(self._bos) - min(len(self.tokenize(text)), self.text_budget)

    def score(self, texts: list[str], prefixes: list[str] | None = None, *, desc: str = "scoring") -> list[TokenScores]:
        """Scores for each text (with its prefix, if given); cached ones are not recomputed."""
        prefixes = prefixes or [""] * len(texts)
        keys = [text_hash(p + "\x00" + t) for p, t in zip(prefixes, texts)]
        out: dict[str, TokenScores] = {}
        todo: dict[str, Encoded] = {}  # key -> encoded input, each distinct text once
        for key, text, prefix in zip(keys, texts, prefixes):
            if key in out or key in todo:
                continue
            hit = self._lookup(key)
            if hit is not None:
                out[key] = hit
                continue
            encoded = self.encode(text, prefix)
            ids, first, truncated = encoded
            if len(ids) <= first:  # nothing to score (empty after tokenisation): no forward pass
                out[key] = TokenScores.empty(truncated)
            else:
                todo[key] = encoded
        if self._processes is not None:  # set only when several processes run
            todo = agree_on_inputs(todo, keys, texts, prefixes, self.encode)
        if todo:
            out.update(self._forward_all(todo, desc))
        return [out[k] for k in keys]

    def cache_use(self) -> dict[str, int]:
        """Where this engine's scores came from so far: ``from_cache`` (read from the disk cache) and ``computed``
        (forwarded), each score counted once."""
        return {"from_cache": self.cache_reads, "computed": self.forward_passes}

    def ll(self, texts: list[str], **kwargs) -> np.ndarray:
        """``LL(x)`` for each text."""
        return np.array([s.ll for s in self.score(texts, **kwargs)])

    def encode(self, text: str, prefix: str = "") -> Encoded:
        """The model's input for ``text`` (behind ``prefix``) without forwarding it: (input ids, index of the first
        scored position, truncated?). ``ids[first:]`` are the token ids :meth:`score` scores."""
        ids = self.tokenize(text)
        truncated = len(ids) > self.text_budget
        ids = ids[:self.text_budget]
        if prefix:  # max_length bounds the text; a prefix may use the rest of the model's context
            room = self.loaded.max_length - len(self._bos) - len(ids)
            pre = self.tokenize(prefix)[-room:] if room > 0 else []
            # x_1 is scored from the prefix's last token (or from BOS when the prefix does not fit at all).
            return self._bos + pre + ids, len(self._bos) + len(pre) if (self._bos or pre) else 1, truncated
        return self._bos + ids, 1, truncated

    # -- internals -------------------------------------------------------------------------------------------------

    def _forward_all(self, todo: dict[str, Encoded], desc: str) -> dict[str, TokenScores]:
        """Scores of every input in ``todo``: this process forwards its share of the batches (all of them when it
        runs alone), stores them, and, under ``accelerate launch``, receives every other process's share."""
        rank, world = (self._processes.process_index, self._processes.num_processes) if self._processes else (0, 1)
        passes, calls = self.forward_passes, self.batches
        # Dealt in turn, not in contiguous runs: the batches come longest first, so runs would be unequal shares.
        queue = deque(self._plan(todo)[rank::world])
        bar = tqdm(total=sum(len(keys) for _, keys in queue), desc=f"{desc} ({self.name})", unit="text",
                   disable=not self.progress)
        done: dict[str, TokenScores] = {}
        context, past = None, None
        while queue:
            batch_context, keys = queue.popleft()
            if batch_context != context:  # a plan lists each context's batches together: one prefix pass each
                context = batch_context
                past = self._context_cache(list(context)) if context else None
            inputs = [self._after_context(todo[k], len(context)) for k in keys]
            try:
                scored = self._forward(inputs, past)
            except torch.OutOfMemoryError:
                self._halve_budget(inputs)
                # This batch and the rest of this process's share again, under the halved budget.
                queue = deque(self._plan({k: todo[k] for _, ks in [(context, keys), *queue] for k in ks}))
                continue
            for key, scores in zip(keys, scored):
                done[key] = scores
                self._store(key, scores)
            if self.loaded.device.type == "cpu":
                _return_freed_memory()
            bar.update(len(keys))
        bar.close()
        if world > 1:  # every other process's share: in memory here (each process stored its own on disk)
            done, forwarded, batches = gather_scores(done, self.forward_passes - passes, self.batches - calls)
            self.forward_passes, self.batches = passes + forwarded, calls + batches
            self._memory.update(done)
        return done

    def _plan(self, todo: dict[str, Encoded]) -> list[tuple[tuple[int, ...], list[str]]]:
        """The model calls that score ``todo``, in order: (shared context, keys) per batch. It depends on the inputs
        and the budget alone, so every process forms the same plan."""
        plan = []
        for context, group in self._by_context(todo).items():
            order = sorted(group, key=lambda k: -len(todo[k][0]))  # similar lengths share a batch
            if self.batch_tokens is None:
                plan += [(context, order[i:i + self.batch_size]) for i in range(0, len(order), self.batch_size)]
                continue
            batches: list[list[str]] = []
            width = 0
            for key in order:  # longest first: a batch's padded size is its first text's length times its count
                if batches and (len(batches[-1]) + 1) * width <= self.batch_tokens:
                    batches[-1].append(key)
                else:  # a text longer than the budget gets a batch of its own
                    batches.append([key])
                    width = len(todo[key][0]) - len(context)
            plan += [(context, keys) for keys in batches]
        return plan

    def _halve_budget(self, inputs: list[Encoded]) -> None:
        """After ``inputs`` ran out of GPU memory: halve the batch budget, below what failed (one text alone that
        does not fit is the user's to solve)."""
        if len(inputs) == 1:
            raise TuneguardError(f"scoring one text of {len(inputs[0][0])} tokens alone runs out of GPU memory under "
                                 f"{self.name}: lower --score-max-length, or load the model in a smaller --dtype"
                                 ) from None
        torch.cuda.empty_cache()
        if self.batch_tokens is not None:
            self.batch_tokens = max(1, min(self.batch_tokens, len(inputs) * max(len(i[0]) for i in inputs)) // 2)
            budget = f"{self.batch_tokens} tokens"
        else:
            self.batch_size = max(1, min(self.batch_size, len(inputs)) // 2)
            budget = f"{self.batch_size} texts"
        log.warning("scoring %d texts at once ran out of GPU memory under %s: retrying with batches of at most %s",
                    len(inputs), self.name, budget)

    def _by_context(self, todo: dict[str, Encoded]) -> dict[tuple[int, ...], list[str]]:
        """Inputs grouped by their shared context: every token before the one that predicts the first scored token.

        A prefixed input's context (BOS + ReCall shots) is forwarded once and its KV cache reused for each text
        beside it, so n texts behind one long prefix cost one prefix pass plus n short ones. The split depends on the
        input alone, never on which other texts are scored with it.
        Unprefixed inputs, and every input of a prompt-learning adapter (which feeds its own key/values), have the
        empty context and are forwarded whole.
        """
        groups: dict[tuple[int, ...], list[str]] = {}
        for key, (ids, first, _) in todo.items():
            context = tuple(ids[:first - 1]) if first > 1 and not self._prompt_learning else ()
            groups.setdefault(context, []).append(key)
        return groups

    @staticmethod
    def _after_context(encoded: Encoded, n_context: int) -> Encoded:
        ids, first, truncated = encoded
        return ids[n_context:], first - n_context, truncated

    @property
    def _prompt_learning(self) -> bool:
        config = getattr(self.loaded.model, "active_peft_config", None)
        return bool(getattr(config, "is_prompt_learning", False))

    @torch.no_grad()
    def _context_cache(self, context: list[int]) -> Cache:
        """The model's key/value cache after reading ``context`` (no logits needed: the next input starts with the
        context's successor token)."""
        ids = torch.tensor([context], device=self.loaded.device)
        out = self.loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
        self.batches += 1
        return returned_cache(out)

    @torch.no_grad()
    def _forward(self, batch: list[Encoded], past: Cache | None = None) -> list[TokenScores]:
        model = self.loaded.model
        device = self.loaded.device
        width = max(len(ids) for ids, _, _ in batch)
        pad = self.loaded.tokenizer.pad_token_id
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        kwargs: dict = {"use_cache": False}
        if past is not None:  # continue every row from the shared context (a copy: the forward appends to it)
            n_past = past.get_seq_length()
            cache = copy.deepcopy(past)
            cache.batch_repeat_interleave(len(batch))
            mask = torch.cat([torch.ones((len(batch), n_past), dtype=torch.long), mask], dim=1)
            kwargs = {cache_kwarg(model): cache, "use_cache": True,
                      "position_ids": torch.arange(n_past, n_past + width, device=device).expand(len(batch), -1)}
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        # Prompt / p-tuning adapters prepend virtual tokens and return their logits too: keep the inputs' positions.
        logits = logits[:, -width:]
        self.forward_passes += len(batch)
        self.batches += 1
        targets = input_ids.to(device)
        results = []
        for row, (ids, first, truncated) in enumerate(batch):
            # logits at position t-1 predict token t; score t = first .. n-1.
            rows, row_targets = logits[row, first - 1:len(ids) - 1], targets[row, first:len(ids)]
            parts = [_reduce(rows[s:s + POSITION_BLOCK], row_targets[s:s + POSITION_BLOCK])
                     for s in range(0, len(rows), POSITION_BLOCK)]
            lp, mu, sd, top, top_lp = (torch.cat(xs).cpu().numpy() for xs in zip(*parts))
            results.append(TokenScores(np.array(ids[first:], dtype=np.int64), lp, mu, sd, top.astype(np.int64), top_lp,
                                       truncated))
        return results

    def _lookup(self, key: str) -> TokenScores | None:
        hit = self._memory.get(key)
        if hit is None:
            hit = self._disk.read(key)
            if hit is not None:
                self._memory[key] = hit
                self.cache_reads += 1
        return hit

    def _store(self, key: str, scores: TokenScores) -> None:
        self._memory[key] = scores
        self._disk.write(key, scores)
