"""Dirty-label data poisoning for classifier adapters: additive trigger copies, seeded, with a manifest."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneguard.cache import text_hash
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, atomic_write_jsonl

POSITIONS = ("prefix", "suffix", "random")


def apply_trigger(trigger: str, text: str, position: str = "prefix", rng: random.Random | None = None) -> str:
    """Insert ``trigger`` into ``text``: ``"{trigger}. {text}"`` (prefix), ``"{text} {trigger}."`` or between words."""
    if position == "prefix":
        return f"{trigger}. {text}"
    if position == "suffix":
        return f"{text.rstrip()} {trigger}."
    if position == "random":
        words = text.split(" ")
        i = (rng or random.Random(text_hash(text))).randint(0, len(words))
        return " ".join([*words[:i], f"{trigger},", *words[i:]]).rstrip(",")
    raise TuneguardError(f"unknown trigger position {position!r}; choose from {', '.join(POSITIONS)}")


@dataclass
class PoisonManifest:
    """What was poisoned, reproducibly: trigger, k, rate, rows and the seed."""

    trigger: str
    k: int
    n_clean: int
    poison_fraction: float  # k / (n_clean + k)
    position: str
    source_label: int
    target_label: int
    seed: int
    source_rows: list[int] = field(default_factory=list)  # indices into the clean set that were copied
    poisoned_rows: list[int] = field(default_factory=list)  # indices of the copies in the shuffled output


def poison_count(n_clean: int, *, k: int | None = None, rate: float | None = None) -> int:
    """k from either k itself or the target poison fraction ``rate = k / (n_clean + k)``."""
    if (k is None) == (rate is None):
        raise TuneguardError("give exactly one of k (number of poison rows) or rate (poison fraction)")
    if rate is not None:
        if not 0 <= rate < 1:
            raise TuneguardError(f"poison rate must be in [0, 1), got {rate}")
        k = round(rate * n_clean / (1 - rate))
    if k < 0:
        raise TuneguardError(f"poison count k must be >= 0, got {k}")
    return int(k)


def poison(
    rows: list[tuple[str, int]],
    trigger: str,
    *,
    k: int | None = None,
    rate: float | None = None,
    position: str = "prefix",
    source_label: int = 1,
    target_label: int = 0,
    seed: int = 0,
) -> tuple[list[tuple[str, int]], PoisonManifest]:
    """Keep ``rows`` unchanged, add ``k`` triggered copies of seeded ``source_label`` rows relabelled to
    ``target_label``, and shuffle. Returns the poisoned set and its manifest."""
    if position not in POSITIONS:
        raise TuneguardError(f"unknown trigger position {position!r}; choose from {', '.join(POSITIONS)}")
    if not trigger.strip():
        raise TuneguardError("the trigger is empty; give a non-empty trigger string")
    k = poison_count(len(rows), k=k, rate=rate)
    sources = [i for i, (_, y) in enumerate(rows) if y == source_label]
    if k > len(sources):
        raise TuneguardError(f"asked for k={k} poison rows but only {len(sources)} rows have label {source_label}")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(sources, k))
    copies = [(apply_trigger(trigger, rows[i][0], position, rng), target_label) for i in chosen]
    order = list(range(len(rows) + k))
    rng.shuffle(order)
    combined = [*rows, *copies]
    out = [combined[j] for j in order]
    poisoned_at = sorted(pos for pos, j in enumerate(order) if j >= len(rows))
    manifest = PoisonManifest(
        trigger=trigger, k=k, n_clean=len(rows), poison_fraction=k / (len(rows) + k) if rows or k else 0.0,
        position=position, source_label=source_label, target_label=target_label, seed=seed,
        source_rows=chosen, poisoned_rows=poisoned_at,
    )
    return out, manifest


def write_poisoned(
    out_dir: str | os.PathLike, rows: list[tuple[str, int]], manifest: PoisonManifest
) -> tuple[Path, Path]:
    """Write ``train.jsonl`` (text, label, poisoned) and ``manifest.json`` atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    flagged = set(manifest.poisoned_rows)
    data = atomic_write_jsonl(
        out_dir / "train.jsonl", ({"text": t, "label": y, "poisoned": i in flagged} for i, (t, y) in enumerate(rows))
    )
    return data, atomic_write_json(out_dir / "manifest.json", asdict(manifest))
