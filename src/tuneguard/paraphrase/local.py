"""``local``: paraphrase with a local instruction-tuned causal LM (default: the embedded SmolLM2-135M-Instruct)."""

from __future__ import annotations

import re
from typing import Sequence

import torch

from tuneguard.cache import key_hash
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel, load_model
from tuneguard.paraphrase.base import Paraphraser

# Small chat models often open with a preamble ("Here is the rewritten text:") or wrap the answer in a code fence.
_PREAMBLE = re.compile(r"^\s*(sure|certainly|here('s| is| are)|rewritten( text| code)?|paraphrase[d]?)\b[^\n]*:\s*\n",
                       re.IGNORECASE)
_FENCE = re.compile(r"^\s*```[\w+-]*\n(.*?)\n```\s*$", re.DOTALL)


def clean_output(text: str) -> str:
    """The answer without a chat preamble, code fence or surrounding quotes."""
    text = _PREAMBLE.sub("", text.strip(), count=1).strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


class LocalParaphraser(Paraphraser):
    """Sample a paraphrase from a causal LM through its chat template (a plain instruction format without one).

    Prompts of a batch are left-padded and decoded together with the KV cache; sampling uses ``temperature`` and
    nucleus ``top_p`` and is seeded per batch from the texts' attempt seeds, so the same inputs give the same
    paraphrases. New tokens are capped at ``max_new_tokens`` and at 1.5 × the longest text's length + 16.
    """

    name = "local"

    def __init__(self, model: LoadedModel | str = "smollm2-135m", *, temperature: float = 0.7, top_p: float = 0.9,
                 max_new_tokens: int = 384, **kwargs) -> None:
        super().__init__(**kwargs)
        if temperature <= 0 or not 0 < top_p <= 1:
            raise TuneguardError(f"local paraphraser needs temperature > 0 and 0 < top_p <= 1 "
                                 f"(got {temperature}, {top_p})")
        self._model = model
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens

    @property
    def loaded(self) -> LoadedModel:
        """The model, loaded on first use (a cached run never loads it)."""
        if isinstance(self._model, str):
            self._model = load_model(self._model)
        return self._model

    def settings(self) -> dict:
        ref = self._model if isinstance(self._model, str) else self._model.ref
        return {"model": ref, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens}

    def identity(self) -> str:
        # The weights, not just the name: a retrained model directory must not reuse old paraphrases.
        return key_hash(super().identity(), self.loaded.fingerprint)

    def chat_prompt(self, instruction: str) -> list[int]:
        """Token ids of the instruction as a user turn, ending where the assistant's answer starts."""
        tok = self.loaded.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                           tokenize=False)
        else:
            text = f"{instruction}\n\nAnswer:\n"
        return tok(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def rewrite_batch(self, texts: Sequence[str], prompts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        loaded = self.loaded
        tok, model = loaded.tokenizer, loaded.model
        budget = loaded.max_length
        prompt_ids = [self.chat_prompt(p) for p in prompts]
        longest_text = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        new_tokens = min(self.max_new_tokens, int(1.5 * longest_text) + 16)
        width = max(len(ids) for ids in prompt_ids)
        if width + new_tokens > budget:
            raise TuneguardError(f"a text is too long to paraphrase with {loaded.ref} ({width} prompt tokens + "
                                 f"{new_tokens} new > {budget} context): split long texts first")
        pad = tok.pad_token_id
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        with torch.random.fork_rng():
            torch.manual_seed(int(key_hash(*seeds)[:15], 16))
            out = model.generate(input_ids=input_ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                                 do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0,
                                 max_new_tokens=new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                                 use_cache=True)
        answers = tok.batch_decode(out[:, width:], skip_special_tokens=True)
        return [clean_output(a) or None for a in answers]
