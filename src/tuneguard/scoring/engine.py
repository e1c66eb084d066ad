"""The one forward-pass engine every attack shares.

For each text it returns the per-token log-probabilities ``lp_t = log p(x_t | x_<t)``, the Min-K%++ moments
``mu_t = Σ_v p_t(v) log p_t(v)`` and ``sigma_t`` (the std of ``log p_t`` under ``p_t``), and the model's top-1 token
``argmax_v p_t(v)`` with its log-prob ``max_v log p_t(v)`` (EZ-MIA's error positions, hard-token variants: lp, mu and
sigma cannot give them back), all from the same logits, reduced in float64.
Scored positions: t = 2..n, plus t = 1 when the tokenizer adds a BOS token (then x_1 is scored from BOS). A text can
carry a prefix (ReCall's shots): the prefix is fed to the model but only the text's own tokens are scored, the first
one from the prefix's last token. A prefix is read once and its key/value cache shared by every text behind it.

Texts longer than the model's context (or ``max_length``) are truncated to their first ``max_length`` tokens; with a
prefix, the text is cut first and then the prefix keeps its most recent tokens that still fit in the model's context
(``max_length`` bounds the scored text, not the prefix). Results are cached in
memory and on disk by (model fingerprint, tokenizer, max_length, prefix + text), so re-running or adding an attack
costs no forward pass. A cache entry written by an older engine (another ``SCHEMA``, e.g. one without the top-1
arrays) is recomputed and overwritten, never read.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import Cache

from tuneguard.cache import cache_dir, key_hash, text_hash
from tuneguard.files import atomic_write_bytes
from tuneguard.models import LoadedModel

log = logging.getLogger(__name__)

POSITION_BLOCK = 32  # positions whose full-vocabulary log-softmax is held at once
SCHEMA = 2  # of a cache entry: 1 = token ids, lp, mu, sigma; 2 = also the top-1 token and its log-prob


@dataclass(frozen=True)
class TokenScores:
    """Per scored token of one text: the token id, its log-prob, the moments of the model's distribution, and the
model's own top-1 token at that position with its log-prob."""

    token_ids: np.ndarray  # int64
    logprobs: np.ndarray  # float64
    mu: np.ndarray  # float64
    sigma: np.ndarray  # float64
    argmax: np.ndarray  # int64: argmax_v p_t(v), the token the model would have predicted
    max_logprob: np.ndarray  # float64: max_v log p_t(v)
    truncated: bool = False

    @classmethod
    def empty(cls, truncated: bool = False) -> TokenScores:
        """No scored token (a text empty after tokenisation)."""
        ids = np.zeros(0, dtype=np.int64)
        return cls(ids, np.zeros(0), np.zeros(0), np.zeros(0), ids.copy(), np.zeros(0), truncated)

    @property
    def n(self) -> int:
        """Number of scored tokens."""
        return len(self.logprobs)

    @property
    def ll(self) -> float:
        """``LL(x)``: the mean log-prob of the scored tokens (NaN when there are none)."""
        return float(self.logprobs.mean()) if self.n else float("nan")


def tokenizer_digest(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's output: the fast tokenizer's JSON (vocabulary, merges,
    normalizer, pre- and post-processor), else the vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Truncation and padding are per-call state (set by whoever called the tokenizer last), not the tokenizer.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        spec = json.dumps(spec, sort_keys=True)
    else:
        spec = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.special_tokens_map], default=str)
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()


class ScoringEngine:
    """Batched, cached scoring of texts under one model.

    ``forward_passes`` counts texts actually forwarded (cache hits cost none); ``batches`` counts model calls.
    """

    def __init__(self, loaded: LoadedModel, *, batch_size: int = 8, max_length: int | None = None,
                 cache: bool = True, progress: bool = True) -> None:
        self.loaded = loaded
        self.batch_size = batch_size
        self.max_length = min(max_length or loaded.max_length, loaded.max_length)
        self.progress = progress
        self.forward_passes = 0
        self.batches = 0
        self._memory: dict[str, TokenScores] = {}
        tok = loaded.tokenizer
        # The weights alone do not fix the scores: the same model under another tokenizer scores other tokens.
        self._dir: Path | None = cache_dir("scores", key_hash(loaded.fingerprint, tokenizer_digest(tok))[:24],
                                           f"len{self.max_length}") if cache else None
        probe = tok("a")["input_ids"]
        self._bos = [probe[0]] if probe and tok.bos_token_id is not None and probe[0] == tok.bos_token_id else []

    @property
    def name(self) -> str:
        """The model this engine scores with."""
        return self.loaded.ref

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
        todo: dict[str, tuple[list[int], int, bool]] = {}  # key -> encoded input, each distinct text once
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
        if todo:
            bar = tqdm(total=len(todo), desc=f"{desc} ({self.name})", unit="text", disable=not self.progress)
            for context, group in self._by_context(todo).items():
                past = self._context_cache(list(context)) if context else None
                order = sorted(group, key=lambda k: -len(todo[k][0]))  # similar lengths share a batch
                for start in range(0, len(order), self.batch_size):
                    batch = order[start:start + self.batch_size]
                    inputs = [self._after_context(todo[k], len(context)) for k in batch]
                    for key, scores in zip(batch, self._forward(inputs, past)):
                        out[key] = scores
                        self._store(key, scores)
                    bar.update(len(batch))
            bar.close()
        return [out[k] for k in keys]

    def ll(self, texts: list[str], **kwargs) -> np.ndarray:
        """``LL(x)`` for each text."""
        return np.array([s.ll for s in self.score(texts, **kwargs)])

    def encode(self, text: str, prefix: str = "") -> tuple[list[int], int, bool]:
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

    def _by_context(self, todo: dict[str, tuple[list[int], int, bool]]) -> dict[tuple[int, ...], list[str]]:
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
    def _after_context(encoded: tuple[list[int], int, bool], n_context: int) -> tuple[list[int], int, bool]:
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
        return out.past_key_values

    @torch.no_grad()
    def _forward(self, batch: list[tuple[list[int], int, bool]], past: Cache | None = None) -> list[TokenScores]:
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
            kwargs = {"past_key_values": cache, "use_cache": True,
                      "position_ids": torch.arange(n_past, n_past + width, device=device).expand(len(batch), -1)}
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        # Prompt / p-tuning adapters prepend virtual tokens and return their logits too: keep the inputs' positions.
        logits = logits[:, -width:]
        self.forward_passes += len(batch)
        self.batches += 1
        results = []
        for row, (ids, first, truncated) in enumerate(batch):
            n = len(ids)
            # logits at position t-1 predict token t; score t = first .. n-1.
            lp, mu, sd, top, top_lp = [], [], [], [], []
            for s in range(first - 1, n - 1, POSITION_BLOCK):
                e = min(s + POSITION_BLOCK, n - 1)
                # float64 and a two-pass variance: E[(log p - mu)^2] keeps sigma exact where E[x^2] - mu^2 cancels.
                logp = torch.log_softmax(logits[row, s:e].double(), dim=-1)
                p = logp.exp()
                targets = input_ids[row, s + 1:e + 1].to(device)
                lp.append(logp.gather(-1, targets[:, None])[:, 0])
                m1 = (p * logp).sum(-1)
                mu.append(m1)
                sd.append((p * (logp - m1[:, None]).square()).sum(-1).sqrt())
                best = logp.max(-1)  # log_softmax keeps the logits' order: the argmax of the logits
                top_lp.append(best.values)
                top.append(best.indices)
            cat = lambda xs: torch.cat(xs).cpu().numpy() if xs else np.zeros(0)  # noqa: E731
            results.append(TokenScores(np.array(ids[first:], dtype=np.int64), cat(lp), cat(mu), cat(sd),
                                       cat(top).astype(np.int64), cat(top_lp), truncated))
        return results

    def _lookup(self, key: str) -> TokenScores | None:
        hit = self._memory.get(key)
        if hit is None and self._dir is not None:
            path = self._dir / f"{key}.npz"
            if path.is_file():
                with np.load(path, allow_pickle=False) as z:
                    if "schema" not in z.files or int(z["schema"]) != SCHEMA:
                        return None  # an older engine's entry lacks arrays this one keeps: recompute it
                    hit = TokenScores(z["token_ids"], z["logprobs"], z["mu"], z["sigma"], z["argmax"],
                                      z["max_logprob"], bool(z["truncated"]))
                self._memory[key] = hit
        return hit

    def _store(self, key: str, scores: TokenScores) -> None:
        self._memory[key] = scores
        if self._dir is not None:
            import io

            buf = io.BytesIO()
            np.savez(buf, schema=np.array(SCHEMA), token_ids=scores.token_ids, logprobs=scores.logprobs, mu=scores.mu,
                     sigma=scores.sigma, argmax=scores.argmax, max_logprob=scores.max_logprob,
                     truncated=np.array(scores.truncated))
            atomic_write_bytes(self._dir / f"{key}.npz", buf.getvalue())
