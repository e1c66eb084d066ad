"""``local``: paraphrase with a local instruction-tuned causal LM (default: the embedded SmolLM2-135M-Instruct).

A small model asked to paraphrase mostly copies, so decoding is anti-copy by default (:mod:`.anticopy`): no token
may complete a 4-token n-gram of the source (``ban_ngram``), or repeat one of the paraphrase's own (``ban_repeats``).
The defaults were chosen with ``python bench/paraphrase_probe.py`` (16 PubMed abstracts cut to 60 words, seed 0,
one attempt each, MiniLM similarity, default gate):

    variant            3-gram overlap  longest run (mean/max)  similarity  passes gate  length
    ban off (T 0.4)    0.560           27.1 / 62               0.891       0.125        0.78
    n 3                0.031            3.3 / 7                0.736       0.812        0.56
    n 4 (default)      0.086            4.1 / 10               0.787       0.875        0.59
    n 5                0.160            5.8 / 11               0.814       0.812        0.71
    n 4, T 0.7         0.066            3.4 / 6                0.640       0.625        0.88
    n 4, no repeat ban 0.079            3.6 / 6                0.797       0.875        0.63

n 4 passes the gate most often: n 3's failures are meaning drift (the model dodges the ban with hyphen-joined or
run-together words) and n 5's are copies (9-11 words in a row). Temperature 0.4, not 0.7: with the ban on, a hotter
sample wanders off (similarity 0.64; without the repeat ban it also loops until its token budget). The repeat ban
moves the averages within noise but stops the loops and self-quotes still seen at T 0.4 ("Children's, Children's,
Children's", an answer followed by "The rewritten text is:" and itself again). ``keep_words`` (n-grams inside one
source word stay allowed, so numbers and rare technical terms split into tokens can be copied) and ``content_only``
changed 1 and 0 of 8 paraphrases at n 4 in a smaller probe (they should matter more at smaller n; not measured).
The ban is on tokens, so a copy spelled with other tokens (another capitalisation) slips through: the word-level
overlap and runs above are measured on the output, not assumed.

``ban="every-word"`` enforces the SOFT authors' prompt (replace every word by a term of another root or spelling):
the prompt asks for it, and decoding forbids every word sharing a stem with a content word of the source, in any
casing and tokenisation (:class:`.anticopy.WordBan`; function words, numbers and punctuation stay allowed). The
n-gram ban stays on beside it (``ban_ngram``), so runs of function words and numbers are not copied wholesale. It
applies to texts rewritten with the text prompt; code keeps its keywords (n-gram ban only). SmolLM2-135M cannot
rewrite every word and keep the meaning: in a probe of 5 PubMed abstracts cut to 60 words (one attempt each, this
prompt) the MiniLM similarity was 0.43-0.68 (mean 0.51) and 1 of 5 passed the default gate (0.6), at about 10 s a
text on one CPU thread; a text that fails every try is trained on as the original unless SOFT's ``on_failure``
says otherwise.

torch and the model load on first use, so declaring or checking this paraphraser's parameters costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

from tuneguard.cache import key_hash
from tuneguard.errors import TuneguardError
from tuneguard.paraphrase.anticopy import NgramBan, TokenWords, WordBan, WordBanTable, source_ban_table
from tuneguard.paraphrase.base import TEXT_PROMPT, InstructedParams, Paraphraser, clean_output
from tuneguard.params import param

BANS = ("ngram", "every-word")
# The authors' word-by-word instruction (soft.md, "What the released code does"). The ban, not the prompt, keeps
# function words, numbers and punctuation allowed: saying so in the prompt led SmolLM2-135M to answer with a plan ("I
# will replace every word ...") for 2 of 2 abstracts in one probe, and to MiniLM similarity 0.38 against this
# wording's 0.51 in another (5 PubMed abstracts cut to 60 words).
EVERY_WORD_PROMPT = (
    "Rewrite the following paragraph by replacing every word with an alternative term that does not share the same "
    "root or spelling, while preserving the meaning and sentence structure as much as possible. Answer with the "
    "rewritten paragraph only.\n\nParagraph:\n{text}"
)


@dataclass
class LocalParams(InstructedParams):
    model: Any = param("smollm2-135m", "the instruction-tuned LM (embedded name, directory, hub id or loaded model)")
    temperature: float = param(0.4, "sampling temperature", gt=0)
    top_p: float = param(0.9, "nucleus sampling mass", gt=0, le=1)
    max_new_tokens: int = param(384, "most new tokens per paraphrase (also capped at 1.5 × the text's tokens + 16)",
                                ge=1)
    ban_ngram: int | None = param(4, "anti-copy decoding: forbid every token that would complete an n-gram (in "
                                     "tokens) of the source text (null or 0: off)", ge=0)
    keep_words: bool = param(True, "the ban spares n-grams inside one source word, so numbers and technical terms "
                                   "split into several tokens can still be copied")
    content_only: bool = param(False, "the ban spares n-grams of function words and punctuation only (\"of the\")")
    ban_repeats: bool = param(True, "the ban also forbids repeating an n-gram of the paraphrase itself (a small "
                                    "model kept from copying tends to loop)")
    ban: str = param("ngram", "ngram: decoding forbids the source's n-grams (ban_ngram); every-word: it also forbids "
                              "every word sharing a stem with a source content word, in any casing, and the prompt "
                              "asks for the every-word rewrite (function words, numbers and punctuation stay "
                              "allowed; texts only, not code)", choices=BANS)


class LocalParaphraser(Paraphraser):
    """Sample a paraphrase from a causal LM through its chat template (a plain instruction format without one).

    Prompts of a batch are left-padded and decoded together with the KV cache. The n-gram ban (see the module) is a
    logits processor run before sampling, built from each text alone for its own row. Each text samples with its own
    random stream, seeded by its attempt seed (temperature, then nucleus ``top_p``), and gets its own budget of
    new tokens (``max_new_tokens``, at most 1.5 × its length + 16), so its paraphrase does not depend on the other
    texts of its batch or on the batch size (up to the rounding of batched matrix products, which can move a sample
    only where two tokens' cumulative probabilities nearly touch).
    """

    name = "local"
    summary = "a local instruction-tuned causal LM with the SOFT prompt (default: embedded SmolLM2-135M-Instruct)"
    Params = LocalParams

    @cached_property
    def loaded(self):
        """The model (a LoadedModel), loaded on first use (a cached run never loads it)."""
        from tuneguard.models import as_loaded

        return as_loaded(self.params.model)

    def settings(self) -> dict:
        p = self.params
        ref = p.model if isinstance(p.model, str) else p.model.ref
        # "sampling" names the per-text streams: paraphrases cached by the earlier per-batch seeding are not reused.
        # ``ban`` joins the settings only when it is not the n-gram default, so paraphrases cached before it existed
        # keep their identity (they cost 10-14 s a text on a CPU).
        return {"model": ref, "temperature": p.temperature, "top_p": p.top_p, "max_new_tokens": p.max_new_tokens,
                "sampling": "per-text", "ban_ngram": p.ban_ngram or 0, "keep_words": p.keep_words,
                "content_only": p.content_only, "ban_repeats": p.ban_repeats,
                **({"ban": p.ban} if p.ban != "ngram" else {})}

    def prompt_template(self, text: str) -> str:
        """The every-word prompt for a text under ``ban="every-word"``, else the usual one (code keeps its own)."""
        template = super().prompt_template(text)
        return EVERY_WORD_PROMPT if self.params.ban == "every-word" and template == TEXT_PROMPT else template

    @cached_property
    def token_words(self) -> TokenWords:
        """The tokenizer's vocabulary indexed for the every-word ban (built on first use)."""
        return TokenWords(self.loaded.tokenizer)

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

    def rewrite_batch(self, texts: Sequence[str], prompts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        loaded = self.loaded
        tok = loaded.tokenizer
        prompt_ids = [self.chat_prompt(p) for p in prompts]
        budgets = [min(self.params.max_new_tokens, int(1.5 * len(tok(t, add_special_tokens=False)["input_ids"])) + 16)
                   for t in texts]
        for ids, budget in zip(prompt_ids, budgets):
            if len(ids) + budget > loaded.max_length:
                raise TuneguardError(f"a text is too long to paraphrase with {loaded.ref} ({len(ids)} prompt tokens + "
                                     f"{budget} new > {loaded.max_length} context): split long texts first")
        if len(texts) > 1 and max(map(len, prompt_ids)) + max(budgets) > loaded.max_length:
            # Left padding runs every row to the longest prompt plus the largest budget: past the context, one by one
            # (each text's stream is its own, so the paraphrases are the same).
            return [out for k in range(len(texts))
                    for out in self.rewrite_batch(texts[k:k + 1], prompts[k:k + 1], seeds[k:k + 1])]
        return self._generate(texts, prompt_ids, budgets, seeds)

    def _generate(self, texts: Sequence[str], prompt_ids: list[list[int]], budgets: list[int],
                  seeds: Sequence[int]) -> list[str | None]:
        import torch
        from transformers import LogitsProcessorList

        loaded = self.loaded
        tok, model = loaded.tokenizer, loaded.model
        width = max(len(ids) for ids in prompt_ids)
        pad = tok.pad_token_id
        input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        # Greedy decoding over a processor that leaves only each row's own sample: the sampling is ours, per row.
        # The bans run first, so a banned token is never sampled.
        processors = LogitsProcessorList([_RowSampler(seeds, temperature=self.params.temperature,
                                                      top_p=self.params.top_p)])
        n = self.params.ban_ngram
        if n:
            tables = [source_ban_table(t, tok, n, keep_words=self.params.keep_words,
                                       content_only=self.params.content_only) for t in texts]
            processors.insert(0, NgramBan(tables, n, start=width, repeats=self.params.ban_repeats))
        if self.params.ban == "every-word":
            words = self.token_words
            processors.insert(0, WordBan([WordBanTable(t, words) if self.prompt_template(t) == EVERY_WORD_PROMPT
                                          else None for t in texts], words, start=width))
        with torch.no_grad():
            out = model.generate(input_ids=input_ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                                 do_sample=False, logits_processor=processors,
                                 max_new_tokens=max(budgets), pad_token_id=pad, eos_token_id=tok.eos_token_id,
                                 use_cache=True)
        # A row's tokens past its own budget are dropped: it is as if it had stopped there.
        answers = [tok.decode(out[row, width:width + budget], skip_special_tokens=True)
                   for row, budget in enumerate(budgets)]
        return [clean_output(a) or None for a in answers]


class _RowSampler:
    """A logits processor that samples each row from its own seeded stream (one uniform per row and step) and
    returns scores that keep only the sampled token, so greedy decoding emits it."""

    def __init__(self, seeds: Sequence[int], *, temperature: float, top_p: float) -> None:
        import numpy as np

        self.streams = [np.random.default_rng(seed) for seed in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        from tuneguard.neighbours.sampling import sample_tokens

        uniforms = torch.tensor([stream.random() for stream in self.streams])
        picked = sample_tokens(scores.float().cpu(), uniforms, top_p=self.top_p, temperature=self.temperature)
        keep = torch.full_like(scores, float("-inf"))
        keep[torch.arange(len(picked)), picked.to(scores.device)] = 0.0
        return keep
