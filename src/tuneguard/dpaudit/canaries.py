"""Canaries for a privacy audit: random texts built from the model's own vocabulary, each included in training
independently with probability 1/2 by a seeded draw that is saved with them (``canaries.jsonl``).

Kinds (all ``length`` tokens long, drawn uniformly with replacement from a pool of vocabulary entries):

- ``random-tokens``: any token that decodes to printable text and encodes back to itself alone;
- ``random-words``: whole-word tokens (a space and at least three lowercase ASCII letters), so the canary reads as a
  sequence of random English words;
- ``rare-tokens`` (after Panda et al., ICLR 2025, "Privacy Auditing of Large Language Models"): the ``rare_pool``
  highest-id such tokens that never occur in the real training data. A BPE vocabulary is numbered in merge order,
  so its last entries are the merges made last, the rarest in the tokenizer's own training corpus; excluding the
  user's data keeps them rare in this fine-tuning set too. A canary made of them is far from anything the model
  predicts, so being trained on it moves its likelihood the most.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_jsonl, read_jsonl
from tuneguard.params import Params, param

KINDS = ("rare-tokens", "random-tokens", "random-words")
_VOCABULARY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (its size, usable tokens)


@dataclass
class CanaryParams(Params):
    """What canaries to make."""

    count: int = param(1000, "number of canaries (each included with probability 1/2)", ge=2)
    kinds: tuple[str, ...] = param(("rare-tokens",), "canary kinds, shared out in turn", choices=KINDS)
    length: int = param(24, "tokens per canary", ge=4, le=512)
    rare_pool: int = param(2000, "how many of the rarest tokens rare-token canaries draw from", ge=16)
    seed: int = param(0, "seed of the canary texts and of the inclusion draw")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.kinds:
            raise TuneguardError(f"name at least one canary kind ({', '.join(KINDS)})")


@dataclass
class Canary:
    """One canary: its text, its kind, and whether the seeded draw put it in the training set."""

    text: str
    kind: str
    included: bool

    def to_json(self) -> dict:
        """A line of canaries.jsonl."""
        return asdict(self)


def draw_inclusion(count: int, seed: int) -> np.ndarray:
    """Independent fair coins, one per canary: True = trained on. Its own stream, apart from the texts' one."""
    return np.random.default_rng([seed, 1]).random(count) < 0.5


def make_canaries(tokenizer, params: CanaryParams | None = None, *, avoid_texts: list[str] = ()) -> list[Canary]:
    """``params.count`` distinct canaries (kinds in turn) and their inclusion draw, all fixed by ``params.seed``.

    ``avoid_texts`` (the real training data) is what rare tokens must not occur in.
    """
    params = params or CanaryParams()
    pools = {kind: token_pool(tokenizer, kind, rare_pool=params.rare_pool, avoid_texts=avoid_texts)
             for kind in params.kinds}
    rng = np.random.default_rng([params.seed, 0])
    included = draw_inclusion(params.count, params.seed)
    seen: set[str] = set(avoid_texts)
    canaries = []
    for i in range(params.count):
        kind = params.kinds[i % len(params.kinds)]
        for _ in range(100):  # a repeat is astronomically rare with any useful pool; never loop forever
            text = tokenizer.decode(rng.choice(pools[kind], size=params.length).tolist())
            if text not in seen:
                break
        else:
            raise TuneguardError(f"cannot make {params.count} distinct {kind} canaries from a pool of "
                                 f"{len(pools[kind])} tokens: lengthen them")
        seen.add(text)
        canaries.append(Canary(text, kind, bool(included[i])))
    return canaries


def token_pool(tokenizer, kind: str, *, rare_pool: int = 2000, avoid_texts: list[str] = ()) -> np.ndarray:
    """The token ids a canary of ``kind`` is drawn from (see the module docstring)."""
    if kind not in KINDS:
        raise TuneguardError(f"unknown canary kind {kind!r}: choose from {', '.join(KINDS)}")
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    if kind == "rare-tokens":
        used = {t for row in tokenizer(list(avoid_texts), add_special_tokens=False)["input_ids"] for t in row} \
            if avoid_texts else set()
        candidates = [i for i in ids if i not in used]
        pool: list[int] = []
        # From the last merge backwards, in chunks: only as much of the vocabulary as the pool needs is checked.
        while candidates and len(pool) < rare_pool:
            chunk, candidates = candidates[-2 * rare_pool:], candidates[:-2 * rare_pool]
            pool = [i for i, _ in _usable(tokenizer, chunk)] + pool
        pool = pool[-rare_pool:]
    else:
        usable = _whole_vocabulary(tokenizer, ids)
        if kind == "random-words":
            usable = [(i, p) for i, p in usable if p[0] == " " and len(p) >= 4 and p[1:].isascii()
                      and p[1:].isalpha() and p[1:].islower()]
        pool = [i for i, _ in usable]
    if len(pool) < 16:
        raise TuneguardError(f"the tokenizer offers only {len(pool)} tokens for {kind} canaries: choose another kind")
    return np.array(pool, dtype=np.int64)


def _whole_vocabulary(tokenizer, ids: list[int]) -> list[tuple[int, str]]:
    """``_usable`` over the whole vocabulary, kept per tokenizer: checking 50k tokens costs seconds."""
    key = (len(tokenizer), tuple(sorted(tokenizer.all_special_ids)))
    cached = _VOCABULARY.get(tokenizer)
    if cached is None or cached[0] != key:
        cached = _VOCABULARY[tokenizer] = (key, _usable(tokenizer, ids))
    return cached[1]


def _usable(tokenizer, ids: list[int]) -> list[tuple[int, str]]:
    """(id, text) of the tokens that decode to printable text and encode back to themselves alone: a partial UTF-8
    byte or a control character would not be the token the model is trained on."""
    pieces = tokenizer.batch_decode([[i] for i in ids])
    back = tokenizer(pieces, add_special_tokens=False)["input_ids"]
    return [(i, p) for i, p, b in zip(ids, pieces, back) if b == [i] and p.strip() and p.isprintable()]


def save_canaries(path: str | Path, canaries: list[Canary]) -> Path:
    """Write canaries.jsonl (text, kind, included per line)."""
    return atomic_write_jsonl(path, [c.to_json() for c in canaries])


def load_canaries(path: str | Path) -> list[Canary]:
    """Read canaries.jsonl back."""
    canaries = []
    for n, row in enumerate(read_jsonl(path), 1):
        if not (isinstance(row.get("text"), str) and row.get("kind") in KINDS
                and isinstance(row.get("included"), bool)):
            raise TuneguardError(f"{path}: line {n} is not a canary (needs text, kind, included true/false)")
        canaries.append(Canary(row["text"], row["kind"], row["included"]))
    return canaries
