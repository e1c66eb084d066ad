"""Where tuneguard keeps big artefacts (converted models, score caches), outside any repository."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "TUNEGUARD_CACHE"


def cache_dir(*parts: str) -> Path:
    """Return (and create) ``$TUNEGUARD_CACHE/<parts>``; default ``~/.cache/tuneguard`` (XDG_CACHE_HOME honoured)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "tuneguard")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def text_hash(text: str) -> str:
    """A stable short hash of a text (its UTF-8 bytes), used as a cache key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def key_hash(*parts: object) -> str:
    """A stable hash of several values (their ``repr`` joined), for cache keys made of settings."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:32]
