"""Paraphrasers (SOFT's obfuscation step), one module each behind a registry, plus the quality gate.

Adding one = a module with a :class:`Paraphraser` subclass + one line in ``PARAPHRASERS``.
"""

from __future__ import annotations

from tuneguard.paraphrase.base import CODE_PROMPT, TEXT_PROMPT, Paraphraser, looks_like_code
from tuneguard.paraphrase.gate import GateConfig, GateResult, MiniLMEmbedder, Obfuscation, QualityGate, obfuscate
from tuneguard.registry import load_entry

# name -> "module:class" (imported on use: a paraphraser's heavy dependencies load only when it is chosen)
PARAPHRASERS: dict[str, str] = {
    "local": "tuneguard.paraphrase.local:LocalParaphraser",
    "openai": "tuneguard.paraphrase.openai_chat:OpenAIParaphraser",
    "wordnet": "tuneguard.paraphrase.wordnet:WordNetParaphraser",
}


def paraphraser_class(name: str) -> type[Paraphraser]:
    """The class registered under ``name``."""
    return load_entry(PARAPHRASERS, name, "paraphraser")


def make_paraphraser(name: str, **options) -> Paraphraser:
    """Build the paraphraser ``name``: ``local`` takes ``model=`` (default smollm2-135m), ``openai`` takes ``model=``,
    ``base_url=``, ``api_key_env=``, ``wordnet`` takes ``fraction=``, ``top_k=``; all take ``seed=``."""
    return paraphraser_class(name)(**options)


__all__ = ["CODE_PROMPT", "GateConfig", "GateResult", "MiniLMEmbedder", "Obfuscation", "PARAPHRASERS", "Paraphraser",
           "QualityGate", "TEXT_PROMPT", "looks_like_code", "make_paraphraser", "obfuscate", "paraphraser_class"]
