"""The paraphraser interface: seeded, batched, cached on disk by (paraphraser id, prompt, text hash, attempt).

Nothing here imports torch, so a paraphraser that needs none (``openai``, ``wordnet``) loads none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Sequence

from tqdm.auto import tqdm

from tuneguard.cache import cache_dir, key_hash, text_hash
from tuneguard.files import atomic_write_json, read_json
from tuneguard.params import Params, param
from tuneguard.plugin import Plugin

# Prompts follow SOFT (soft.md, step 4): keep the meaning, change the surface form as much as possible.
TEXT_PROMPT = (
    "Rewrite the following text so that it says exactly the same thing in different words. Keep its meaning, "
    "facts, numbers and sentence structure, but replace every word you can by a synonym or an expression with a "
    "different root or spelling. Answer with the rewritten text only.\n\nText:\n{text}"
)
CODE_PROMPT = (
    "Rewrite the following code so that it behaves exactly the same. Rename every variable, function and class it "
    "defines, reword every comment and docstring, and keep its logic, structure and output unchanged. Answer with "
    "the rewritten code only.\n\nCode:\n{text}"
)
PROMPT_KINDS = ("auto", "text", "code")

# Small chat models often open with a preamble ("Here is the rewritten text:") or wrap the answer in a code fence.
_PREAMBLE = re.compile(r"^\s*(sure|certainly|here('s| is| are)|rewritten( text| code)?|paraphrase[d]?)\b[^\n]*:\s*\n",
                       re.IGNORECASE)
_FENCE = re.compile(r"^\s*```[\w+-]*\n(.*?)\n```\s*$", re.DOTALL)
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import |return\b|if .*:$|for .*:$|while .*:$|#include|public |private |"
    r"function\b|const |let |var |\}|.*[;{]$|@\w+)"
)


def looks_like_code(text: str) -> bool:
    """Heuristic: at least two non-empty lines and a third or more of them look like source code."""
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) >= 2 and sum(bool(_CODE_LINE.match(line)) for line in lines) >= len(lines) / 3


def clean_output(text: str) -> str:
    """A chat model's answer without a preamble, code fence or surrounding quotes."""
    text = _PREAMBLE.sub("", text.strip(), count=1).strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def attempt_seed(seed: int, text: str, attempt: int) -> int:
    """The seed of ``attempt`` at paraphrasing ``text``: independent of the batch and of the other texts."""
    return int(key_hash("paraphrase", seed, text_hash(text), attempt)[:15], 16)


@dataclass
class ParaphraserParams(Params):
    """What every paraphraser takes."""

    seed: int = param(0, "seed of every attempt (with the text and the attempt number)")
    batch_size: int = param(8, "texts rewritten per batch", ge=1)


@dataclass
class InstructedParams(ParaphraserParams):
    """A paraphraser that follows an instruction (the SOFT prompt for text, or for code)."""

    prompt: str = param("auto", "which instruction: code or text, or auto (code when the text looks like code)",
                        choices=PROMPT_KINDS)


class Paraphraser(Plugin):
    """Base class: a subclass names itself, declares ``Params`` and implements :meth:`rewrite_batch` and
    :meth:`settings`.

    ``paraphrase(texts, attempt=k)`` returns one paraphrase per text (``None`` where the paraphraser produced
    nothing). Attempt ``k`` of a text is drawn with a seed derived from ``(seed, text hash, k)``, so the quality
    gate's retries get fresh samples, and each result is cached on disk: re-runs cost nothing. ``cache`` and
    ``progress`` change where results are kept and what is shown, never the paraphrases.
    """

    kind: ClassVar[str] = "paraphraser"
    Params: ClassVar[type[Params]] = InstructedParams

    def __init__(self, *, cache: bool = True, progress: bool = True, **params: Any) -> None:
        super().__init__(**params)
        self.cache = cache
        self.progress = progress

    # -- what a subclass provides ----------------------------------------------------------------------------------

    def rewrite_batch(self, texts: Sequence[str], prompts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        """One paraphrase per text (``prompts[i]`` is the filled-in instruction for ``texts[i]``)."""
        raise NotImplementedError

    def settings(self) -> dict:
        """What determines the output besides seed and prompt (model, temperature...): part of the cache key."""
        raise NotImplementedError

    def identity(self) -> str:
        """The paraphraser id in cache keys; a subclass adds what ``settings`` cannot name cheaply (weights)."""
        return key_hash(self.name, self.params.seed, sorted(self.settings().items()))

    # -- shared machinery ------------------------------------------------------------------------------------------

    def prompt_template(self, text: str) -> str:
        """The instruction template used for ``text`` (the code prompt for code, else the text prompt)."""
        kind = self.params.prompt
        if kind == "auto":
            kind = "code" if looks_like_code(text) else "text"
        return CODE_PROMPT if kind == "code" else TEXT_PROMPT

    def paraphrase(self, texts: Sequence[str], *, attempt: int = 0) -> list[str | None]:
        """Attempt number ``attempt`` at paraphrasing each text (cached; only missing ones are generated)."""
        texts = list(texts)
        templates = [self.prompt_template(t) for t in texts]
        files = [self._file(t, p) for t, p in zip(texts, templates)]
        records = [read_json(f) if f is not None and f.is_file() else {} for f in files]
        out: list[str | None] = [r.get(str(attempt)) for r in records]
        todo = [i for i, r in enumerate(records) if str(attempt) not in r]
        bar = tqdm(total=len(todo), desc=f"paraphrase ({self.name})", unit="text",
                   disable=not self.progress or not todo)
        size = self.params.batch_size
        for b in range(0, len(todo), size):
            idx = todo[b:b + size]
            got = self.rewrite_batch([texts[i] for i in idx], [templates[i].format(text=texts[i]) for i in idx],
                                     [attempt_seed(self.params.seed, texts[i], attempt) for i in idx])
            for i, para in zip(idx, got, strict=True):
                para = para.strip() if para else None
                out[i] = para or None
                records[i][str(attempt)] = out[i]
                if files[i] is not None:  # saved batch by batch, so an interrupted run resumes
                    atomic_write_json(files[i], records[i])
            bar.update(len(idx))
        bar.close()
        return out

    def _file(self, text: str, template: str) -> Path | None:
        """One JSON file per (paraphraser id, prompt, text): {attempt: paraphrase or null}."""
        if not self.cache:
            return None
        return self.cache_path / f"{key_hash(template)[:12]}-{text_hash(text)}.json"

    @cached_property
    def cache_path(self) -> Path:
        """Directory of this paraphraser's cached outputs."""
        return cache_dir("paraphrases", self.name, self.identity())
