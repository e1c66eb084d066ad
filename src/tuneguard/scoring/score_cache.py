"""The scoring engine's disk cache: one ``<key>.npz`` per scored text in a folder the engine names after everything
that decides its scores (model fingerprint, tokenizer, device type, dtype, max_length). Entries are written
atomically; one written by an older engine (another ``SCHEMA``, e.g. one without the top-1 arrays) or damaged outside
those writes is not read, so the engine recomputes and overwrites it. A disk that cannot be written costs the reuse of
scores, not the run: the cache stops writing, with one warning.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np

from tuneguard.files import atomic_write_bytes
from tuneguard.scoring.token_scores import TokenScores

log = logging.getLogger(__name__)

SCHEMA = 2  # of a cache entry: 1 = token ids, lp, mu, sigma; 2 = also the top-1 token and its log-prob


class ScoreCache:
    """Scores on disk in ``directory``, by key; None: no disk cache (nothing read or written)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def read(self, key: str) -> TokenScores | None:
        """The scores saved under ``key``, or None when there are none this engine can use."""
        if self.directory is None:
            return None
        path = self.directory / f"{key}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if "schema" not in z.files or int(z["schema"]) != SCHEMA:
                    return None  # an older engine's entry lacks arrays this one keeps: recompute it
                return TokenScores(z["token_ids"], z["logprobs"], z["mu"], z["sigma"], z["argmax"],
                                   z["max_logprob"], bool(z["truncated"]))
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            # Damaged outside our atomic writes (a disk fault, a cut copy): recomputing overwrites it.
            log.warning("score cache entry %s is unreadable (%s); recomputing it", path, exc)
            return None

    def write(self, key: str, scores: TokenScores) -> None:
        """Save ``scores`` under ``key``; on a write error, warn once and stop using the disk."""
        if self.directory is None:
            return
        buf = io.BytesIO()
        np.savez(buf, schema=np.array(SCHEMA), token_ids=scores.token_ids, logprobs=scores.logprobs, mu=scores.mu,
                 sigma=scores.sigma, argmax=scores.argmax, max_logprob=scores.max_logprob,
                 truncated=np.array(scores.truncated))
        try:
            atomic_write_bytes(self.directory / f"{key}.npz", buf.getvalue())
        except OSError as exc:  # a full or read-only cache disk costs the reuse of scores, not the run
            log.warning("cannot write the score cache in %s (%s): the rest of this run keeps its scores in "
                        "memory only; free space there or point $TUNEGUARD_CACHE elsewhere", self.directory,
                        exc.strerror or exc)
            self.directory = None
