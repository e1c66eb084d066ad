"""The neighbour-generator interface: seeded, batched, cached on disk, with a capped retry loop."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Sequence

from tqdm.auto import tqdm

from tuneguard.cache import cache_dir, key_hash, text_hash
from tuneguard.files import atomic_write_json, read_json
from tuneguard.params import Params, param
from tuneguard.plugin import Plugin

log = logging.getLogger(__name__)


def item_seed(seed: int, text: str, j: int, attempt: int) -> int:
    """The seed of neighbour ``j`` of ``text`` at retry ``attempt``: independent of batching and of other texts."""
    return int(key_hash(seed, text_hash(text), j, attempt)[:15], 16)


@dataclass
class NeighbourSet:
    """Neighbours of each text: ``neighbours[i][j]`` is neighbour j of text i, ``None`` where every try failed."""

    texts: list[str]
    neighbours: list[list[str | None]]
    generator: str
    failures: list[tuple[int, int]] = field(default_factory=list)  # (text index, j) that hit the retry cap

    def of(self, i: int) -> list[str]:
        """The neighbours of text ``i`` that exist."""
        return [n for n in self.neighbours[i] if n is not None]


@dataclass
class NeighbourParams(Params):
    """What every neighbour generator takes."""

    seed: int = param(0, "seed of every neighbour (with the text and the neighbour's number)")
    batch_size: int = param(16, "neighbours made per batch", ge=1)
    max_tries: int = param(5, "attempts per neighbour before it is reported as failed", ge=1)


class NeighbourGenerator(Plugin):
    """Base class: a subclass names itself, declares ``Params`` and implements :meth:`perturb_batch`; this class does
    the rest.

    ``generate(texts, n)`` returns ``n`` neighbours per text. Neighbour ``j`` of a text is drawn with a seed derived
    from ``(seed, text hash, j, attempt)``, so it does not depend on the batch it was made in or on the other texts,
    and asking for more neighbours later re-uses the first ones. A neighbour equal to its text, or one the generator
    failed to make, is retried with the next attempt seed up to ``max_tries`` times, then reported as ``None``.
    ``cache`` and ``progress`` change where results are kept and what is shown, never the neighbours.
    """

    kind: ClassVar[str] = "neighbour generator"
    Params: ClassVar[type[Params]] = NeighbourParams

    def __init__(self, *, cache: bool = True, progress: bool = True, **params: Any) -> None:
        super().__init__(**params)
        self.cache = cache
        self.progress = progress

    @classmethod
    def takes_model(cls) -> bool:
        """True when the generator declares a ``model`` parameter (a model that writes the fills)."""
        return any(f.name == "model" for f in fields(cls.Params))

    def perturb_batch(self, texts: Sequence[str], seeds: Sequence[int]) -> list[str | None]:
        """One neighbour per text, drawn with the matching seed; ``None`` where the fill failed."""
        raise NotImplementedError

    def settings(self) -> dict:
        """What determines this generator's output besides the seed (model fingerprint, masking...): the cache key."""
        raise NotImplementedError

    def cache_path(self) -> Path:
        """Directory of this generator's cached neighbours (one JSON file per text)."""
        return cache_dir("neighbours", self.name, key_hash(self.name, self.params.seed,
                                                           sorted(self.settings().items())))

    def generate(self, texts: Sequence[str], n: int = 10) -> NeighbourSet:
        """``n`` neighbours for each text (cached; only the missing ones are generated)."""
        texts = list(texts)
        store = self.cache_path() if self.cache else None
        records = [self._load(store, t) for t in texts]
        neighbours = [(r["neighbours"] + [None] * n)[:n] for r in records]
        # An earlier run that gave up on a neighbour after t tries resumes at try t, and only if the cap is higher now.
        spent = [{int(j): t for j, t in r["gave_up"].items()} for r in records]
        todo = [(i, j, spent[i].get(j, 0)) for i in range(len(texts)) for j in range(n)
                if neighbours[i][j] is None and spent[i].get(j, 0) < self.params.max_tries]
        failures = [(i, j) for i in range(len(texts)) for j, t in spent[i].items()
                    if j < n and t >= self.params.max_tries]
        bar = tqdm(total=len(todo), desc=f"neighbours ({self.name})", disable=not self.progress or not todo)
        size = self.params.batch_size
        for b in range(0, len(todo), size):
            pending = todo[b:b + size]
            while pending:
                out = self.perturb_batch([texts[i] for i, _, _ in pending],
                                         [item_seed(self.params.seed, texts[i], j, t) for i, j, t in pending])
                retry = []
                for (i, j, t), neighbour in zip(pending, out, strict=True):
                    if neighbour is not None and neighbour != texts[i]:
                        neighbours[i][j] = neighbour
                        spent[i].pop(j, None)
                    elif t + 1 < self.params.max_tries:
                        retry.append((i, j, t + 1))
                    else:
                        spent[i][j] = t + 1
                        failures.append((i, j))
                pending = retry
            # Saved batch by batch, so an interrupted run resumes from what it finished.
            if store is not None:
                for i in sorted({i for i, _, _ in todo[b:b + size]}):
                    self._save(store, texts[i], records[i], neighbours[i], spent[i])
            bar.update(len(todo[b:b + size]))
        bar.close()
        if failures:
            log.warning("%s: %d neighbour(s) of %d text(s) failed (identical to the text or not filled) after %d "
                        "tries; they are left out", self.name, len(failures), len({i for i, _ in failures}),
                        self.params.max_tries)
        return NeighbourSet(texts=texts, neighbours=neighbours, generator=self.name, failures=sorted(set(failures)))

    # One small JSON file per text: {"neighbours": [str | null, ...], "gave_up": {j: tries spent}}.
    @staticmethod
    def _file(store: Path, text: str) -> Path:
        return store / f"{text_hash(text)}.json"

    def _load(self, store: Path | None, text: str) -> dict:
        if store is None or not self._file(store, text).is_file():
            return {"neighbours": [], "gave_up": {}}
        return read_json(self._file(store, text))

    def _save(self, store: Path, text: str, record: dict, neighbours: list[str | None], spent: dict[int, int]) -> None:
        old = record["neighbours"]
        merged = [a if a is not None else b for a, b in zip(neighbours, old + [None] * len(neighbours))]
        record["neighbours"] = merged + old[len(merged):]
        record["gave_up"] = {str(j): t for j, t in sorted(spent.items())}
        atomic_write_json(self._file(store, text), record)
