"""Paraphrasers (SOFT's obfuscation step), one module each behind a registry, plus the quality gate.

Adding one = a module with a :class:`Paraphraser` subclass (its parameters declared as a ``Params`` dataclass) + one
``PARAPHRASERS.register`` line below.
"""

from __future__ import annotations

from tuneguard.paraphrase.base import (CODE_PROMPT, TEXT_PROMPT, InstructedParams, Paraphraser, ParaphraserParams,
                                       clean_output, looks_like_code)
from tuneguard.paraphrase.gate import GateConfig, GateResult, MiniLMEmbedder, Obfuscation, QualityGate, obfuscate
from tuneguard.registry import Registry

# Imported on use: a paraphraser's heavy dependencies load only when it is chosen.
PARAPHRASERS: Registry[Paraphraser] = Registry("paraphraser", "tuneguard.paraphrase.base:Paraphraser")
PARAPHRASERS.register("local", "tuneguard.paraphrase.local:LocalParaphraser")
PARAPHRASERS.register("openai", "tuneguard.paraphrase.openai_chat:OpenAIParaphraser")
PARAPHRASERS.register("wordnet", "tuneguard.paraphrase.wordnet:WordNetParaphraser")

__all__ = ["CODE_PROMPT", "GateConfig", "GateResult", "InstructedParams", "MiniLMEmbedder", "Obfuscation",
           "PARAPHRASERS", "Paraphraser", "ParaphraserParams", "QualityGate", "TEXT_PROMPT", "clean_output",
           "looks_like_code", "obfuscate"]
