"""``lm-fill``: DetectGPT span masking, each span re-sampled by a causal LM (e.g. the base model) from its left context.

Deviation from the paper's T5 filler: the LM sees only the text to the left of a span (a causal model cannot read the
right context), so fills are fluent continuations rather than context-fitting infills. Each span gets exactly as many
words as it replaced, so the neighbour keeps the text's length. Importing it loads no torch (the fill does): the
attacks that default to it check their settings, and ``attack --help`` lists them, without.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tuneguard.errors import TuneguardError
from tuneguard.models.kv_cache import cache_kwarg, returned_cache
from tuneguard.neighbours.masking import MaskingParams, SpanMaskingGenerator, apply_fills
from tuneguard.params import param


@dataclass
class LMFillParams(MaskingParams):
    model: Any = param(None, "the causal LM that writes the fills (loaded model, directory or name; required)")
    top_k: int = param(50, "sample from the k most likely tokens (0: all)", ge=0)
    temperature: float = param(1.0, "sampling temperature", gt=0)
    max_span_tokens: int = param(16, "most tokens sampled for one span", ge=1)


@dataclass
class _Row:
    """One neighbour being written: the token chunks to feed and the spans to sample, in text order."""

    ops: list[tuple[str, object]]  # ("force", token ids) or ("span", (n_words, original words))
    rng: np.random.Generator
    fills: list[str] = field(default_factory=list)
    span: list[int] = field(default_factory=list)  # tokens sampled for the open span
    feed: list[int] = field(default_factory=list)  # tokens to feed at the next step
    failed: bool = False
    done: bool = False


class LMFillNeighbours(SpanMaskingGenerator):
    """Fill masked spans by sampling a causal LM (top-k, temperature) given everything to the left of the span.

    All neighbours of a batch advance together with a KV cache: a step feeds each row either its next unmasked chunk
    (in one go) or its last sampled token, so a text costs about one forward pass plus one step per sampled token.
    """

    name = "lm-fill"
    summary = "DetectGPT span masking, spans re-sampled by a causal LM from their left context"
    Params = LMFillParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.params.model is None:
            raise TuneguardError(f"{self.label()} needs parameter 'model' (a causal LM: e.g. the target's base model)")
        from tuneguard.models import as_loaded

        self.lm = as_loaded(self.params.model)

    def settings(self) -> dict:
        p = self.params
        return {**self.masking(), "model": self.lm.fingerprint, "top_k": p.top_k, "temperature": p.temperature,
                "max_span_tokens": p.max_span_tokens}

    def perturb_batch(self, texts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        rows: list[_Row | None] = []
        masked = []
        for text, seed in zip(texts, seeds, strict=True):
            words, spans, rng = self.mask(text, seed)
            masked.append((words, spans))
            rows.append(self._plan(words, spans, rng) if spans else None)
        live = [r for r in rows if r is not None]
        if live:
            self._run(live)
        out: list[str | None] = []
        for row, (words, spans) in zip(rows, masked):
            out.append(None if row is None or row.failed else apply_fills(words, spans, row.fills))
        return out

    def _plan(self, words: list[str], spans: list[tuple[int, int]], rng: np.random.Generator) -> _Row:
        tok = self.lm.tokenizer
        ops: list[tuple[str, object]] = []
        cursor = 0
        for start, end in spans:
            chunk = " ".join(words[cursor:start])
            if cursor == 0:  # the text's start, with BOS when the tokenizer adds one; a bare start token otherwise
                ids = tok(chunk, add_special_tokens=True)["input_ids"] or [
                    tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
            else:
                ids = tok(" " + chunk, add_special_tokens=False)["input_ids"] if chunk else []
            if ids:
                ops.append(("force", ids))
            ops.append(("span", (end - start, " ".join(words[start:end]))))
            cursor = end
        # Nothing after the last span is fed: it conditions no fill.
        return _Row(ops=ops[1:], rng=rng, feed=ops[0][1])

    def _run(self, rows: list[_Row]) -> None:
        import torch

        with torch.no_grad():
            self._fill(rows)

    def _fill(self, rows: list[_Row]) -> None:
        """Advance every row until each is done (under ``torch.no_grad``, from :meth:`_run`)."""
        import torch

        from tuneguard.neighbours.sampling import sample_tokens

        model, tok = self.lm.model, self.lm.tokenizer
        device = self.lm.device
        pad = tok.pad_token_id
        limit = self.lm.max_length
        counts = torch.zeros(len(rows), dtype=torch.long)
        attention = torch.zeros(len(rows), 0, dtype=torch.long)
        cache, cache_name = None, cache_kwarg(model)
        while True:
            for k, row in enumerate(rows):  # a row that would overflow the context keeps its remaining words
                if not row.done and counts[k] + len(row.feed) + self.params.max_span_tokens >= limit:
                    self._truncate(row)
            width = max((len(r.feed) for r in rows if not r.done), default=0)
            if width == 0:
                return
            # Each row's chunk is right-aligned (mask 0 before it), so every row's next-token logits sit at the last
            # position and only that position goes through the LM head.
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            chunk_mask = torch.zeros(len(rows), width, dtype=torch.long)
            for k, row in enumerate(rows):
                if not row.done and row.feed:
                    ids[k, width - len(row.feed):] = torch.tensor(row.feed)
                    chunk_mask[k, width - len(row.feed):] = 1
            fed = chunk_mask.sum(dim=1)
            attention = torch.cat([attention, chunk_mask], dim=1)
            positions = (counts.unsqueeze(1) + torch.arange(width) - (width - fed).unsqueeze(1)).clamp_min(0)
            out = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                        position_ids=positions.to(device), use_cache=True, logits_to_keep=1, **{cache_name: cache})
            cache = returned_cache(out)
            last = out.logits[:, -1].float().cpu()
            counts += fed
            uniforms = torch.tensor([r.rng.random() for r in rows])
            samples = sample_tokens(last, uniforms, top_k=self.params.top_k,
                                    temperature=self.params.temperature).tolist()
            for k, row in enumerate(rows):
                if not row.done and fed[k] > 0:
                    self._advance(row, samples[k])

    def _advance(self, row: _Row, token: int) -> None:
        """Take the token sampled after this step's feed into the open span; set what the row feeds next."""
        tok = self.lm.tokenizer
        row.feed = []
        n_words = row.ops[0][1][0]
        consumed = False
        if token != tok.eos_token_id:
            text = tok.decode(row.span + [token], skip_special_tokens=True)
            words = text.split()
            # The token belongs to the span unless it starts a word past the span's length.
            if not (len(words) > n_words or (len(words) == n_words and text[-1:].isspace())):
                row.span.append(token)
                consumed = True
                if len(row.span) < self.params.max_span_tokens:
                    row.feed = [token]
                    return
        fill = " ".join(tok.decode(row.span, skip_special_tokens=True).split()[:n_words])
        if not fill:
            row.failed = row.done = True
            return
        row.fills.append(fill)
        row.span = []
        row.ops.pop(0)
        if not row.ops:
            row.done = True
        elif row.ops[0][0] == "force":
            row.feed = row.ops.pop(0)[1]
        elif not consumed:  # adjacent spans (buffer 0): the unused token opens the next span
            self._advance(row, token)
        else:
            row.feed = [token]

    @staticmethod
    def _truncate(row: _Row) -> None:
        """Give every span not yet sampled its original words back and stop the row."""
        row.fills += [payload[1] for kind, payload in row.ops if kind == "span"]
        row.ops, row.feed, row.span, row.done = [], [], [], True
