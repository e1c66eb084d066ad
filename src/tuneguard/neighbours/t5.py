"""``t5``: DetectGPT span masking filled by a T5 mask-filling model (the official SPV-MIA neighbours).

Any T5-family model works (``t5-base``, ``t5-large`` as in the papers, a local directory, or a model + tokenizer built
in code). Each span becomes a sentinel ``<extra_id_k>``; the model writes ``<extra_id_0> fill <extra_id_1> ...`` and a
neighbour whose output has fewer fills than spans is a failure (retried by the base class, up to its cap).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from tuneguard.cache import key_hash
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel
from tuneguard.neighbours.masking import MaskingParams, SpanMaskingGenerator, apply_fills
from tuneguard.params import param

SENTINEL = re.compile(r"<extra_id_\d+>")


@dataclass
class T5Params(MaskingParams):
    model: Any = param(None, "a T5 directory or hub id, or a (model, tokenizer) pair (required)")
    top_p: float = param(1.0, "nucleus sampling mass", gt=0, le=1)
    top_k: int = param(50, "sample from the k most likely tokens", ge=0)
    max_new_tokens: int = param(150, "most tokens the filler writes per text", ge=1)


class T5Neighbours(SpanMaskingGenerator):
    """Fill masked spans with a T5 model, sampling (top-p 1.0 and top-k 50, DetectGPT's effective settings).

    ``model`` is a local directory or hub id (loaded with safetensors only), or a ready ``(model, tokenizer)`` pair.
    Sampling uses the global torch generator seeded from the batch's item seeds, so a neighbour is reproducible for the
    same texts and batch size (unlike ``lm-fill`` and ``random-fill``, it may change when the batching changes).
    """

    name = "t5"
    summary = "DetectGPT span masking filled by a T5 mask-filling model (the official SPV-MIA neighbours)"
    Params = T5Params

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        model = self.params.model
        if model is None:
            raise TuneguardError(f"{self.label()} needs parameter 'model' (a T5 directory or hub id, e.g. t5-base)")
        self.model, self.tokenizer = _load_t5(model) if isinstance(model, str) else model
        self.model.eval()
        if self.tokenizer.convert_tokens_to_ids("<extra_id_0>") in (None, self.tokenizer.unk_token_id):
            raise TuneguardError("the t5 neighbour model's tokenizer has no <extra_id_N> sentinels: use a T5 model")
        self._fingerprint = key_hash(LoadedModel(self.model, self.tokenizer, ref="t5").fingerprint,
                                     sorted(self.tokenizer.get_vocab().items()))

    def settings(self) -> dict:
        p = self.params
        return {**self.masking(), "model": self._fingerprint, "top_p": p.top_p, "top_k": p.top_k,
                "max_new_tokens": p.max_new_tokens}

    @torch.no_grad()
    def perturb_batch(self, texts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        plans = []
        for text, seed in zip(texts, seeds, strict=True):
            words, spans, _ = self.mask(text, seed)
            plans.append((words, spans))
        todo = [k for k, (_, spans) in enumerate(plans) if spans]
        out: list[str | None] = [None] * len(texts)
        if not todo:
            return out
        masked = [_with_sentinels(*plans[k]) for k in todo]
        n_spans = max(len(plans[k][1]) for k in todo)
        # Generation stops at the sentinel after the last span, as in DetectGPT.
        stop = self.tokenizer.convert_tokens_to_ids(f"<extra_id_{n_spans}>")
        enc = self.tokenizer(masked, return_tensors="pt", padding=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(key_hash(*seeds)[:15], 16))
            generated = self.model.generate(**enc.to(self.model.device), do_sample=True, top_p=self.params.top_p,
                                            top_k=self.params.top_k, max_new_tokens=self.params.max_new_tokens,
                                            eos_token_id=stop,
                                            num_return_sequences=1)
        decoded = self.tokenizer.batch_decode(generated, skip_special_tokens=False)
        for k, raw in zip(todo, decoded, strict=True):
            words, spans = plans[k]
            fills = _fills(raw, self.tokenizer)
            if len(fills) >= len(spans) and all(fills[:len(spans)]):
                out[k] = apply_fills(words, spans, fills[:len(spans)])
        return out


def _with_sentinels(words: list[str], spans: list[tuple[int, int]]) -> str:
    """The text with span k replaced by ``<extra_id_k>``."""
    return apply_fills(words, spans, [f"<extra_id_{k}>" for k in range(len(spans))])


def _fills(raw: str, tokenizer) -> list[str]:
    """The text between consecutive sentinels of a T5 output (DetectGPT's ``extract_fills``)."""
    for special in (tokenizer.pad_token, tokenizer.eos_token):
        if special:
            raw = raw.replace(special, "")
    return [piece.strip() for piece in SENTINEL.split(raw.strip())[1:-1]]


def _load_t5(ref: str):
    """A T5 model and tokenizer from a directory or the hub (safetensors only)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from tuneguard.models.device import current_settings

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
        model = AutoModelForSeq2SeqLM.from_pretrained(ref, use_safetensors=True,
                                                      **current_settings().pretrained_kwargs())
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise TuneguardError(f"could not load T5 model {ref} for neighbours (a local T5 directory or hub id, e.g. "
                             f"t5-base; offline without one? use the lm-fill generator): {first}") from None
    return model, tokenizer
