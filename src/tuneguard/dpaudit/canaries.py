"""Canaries for a privacy audit, each included in training independently with probability 1/2 by a seeded draw that
is saved with them (``canaries.jsonl``).

A canary's ``text`` is what is trained on and scored: ``length`` tokens drawn from its kind's pool **without
replacement across canaries**, so no two canaries share a token. Shared tokens blur the audit: training on the
included canaries raises the excluded ones that share their tokens (issue 28's toy: AUC 0.886 when each pool token
sat in ~12 canaries, 1.000 when canaries shared ~2), and the model learns "canary-like text" instead of each canary.
The pool is therefore scaled to count × length, and a vocabulary that cannot supply it is refused.

Kinds:

- ``secret`` (default; after Panda et al., ICLR 2025, "Privacy Auditing of Large Language Models"): an
  in-distribution prefix, the first ``prefix_length`` tokens of one of the user's real training texts, followed by a
  short random secret of rare tokens. The canary is trained on as a (prompt, completion) pair, so only the secret's
  tokens are in the loss, and only they are scored (behind the same prefix): the model is asked to memorise one
  unpredictable continuation of ordinary text, one canary at a time, rather than a kind of text.
- ``rare-tokens``: a whole canary of rare tokens: the highest-id tokens that never occur in the real data. A BPE
  vocabulary is numbered in merge order, so its last entries are the merges made last, the rarest in the tokenizer's
  own corpus; excluding the user's data keeps them rare in this fine-tuning set too.
- ``random-tokens``: any token that decodes to printable text and encodes back to itself alone;
- ``random-words``: whole-word tokens (a space and at least three lowercase ASCII letters).

Not built: Panda et al.'s *new-token* canaries (tokens added to the vocabulary with fresh embeddings, the strongest
in their paper). With LoRA they need the new embedding rows (and the tied output rows) trainable: peft's
``trainable_token_indices`` (in the installed peft 0.21) or ``modules_to_save=["embed_tokens", "lm_head"]``, which
trains the full 49k-row matrices and defeats LoRA. They also need the resized vocabulary and tokenizer saved with the
adapter and restored on the base at every load, the base model's score taken on the same resized vocabulary, and,
for DP-SGD, a per-sample-gradient rule for peft's trainable-token layer, which Opacus does not have. That is a change
to the training methods and the model loader, not to the audit, so it is left out.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_jsonl, read_jsonl
from tuneguard.params import Params, param

KINDS = ("secret", "rare-tokens", "random-tokens", "random-words")
PREFIXED = ("secret",)  # kinds that sit behind a real text's beginning
# The token pool each kind draws from: a secret is made of rare tokens.
POOLS = {"secret": "rare-tokens", "rare-tokens": "rare-tokens", "random-tokens": "random-tokens",
         "random-words": "random-words"}
_VOCABULARY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (its size, usable tokens)


@dataclass
class CanaryParams(Params):
    """What canaries to make."""

    count: int = param(1000, "number of canaries (each included with probability 1/2)", ge=2)
    kinds: tuple[str, ...] = param(("secret",), "canary kinds, shared out in turn", choices=KINDS)
    length: int = param(8, "tokens trained on and scored per canary: the secret, or the whole canary of the other "
                        "kinds", ge=2, le=512)
    prefix_length: int = param(32, "secret canaries: tokens of a real training text's beginning put before the "
                               "secret (the prompt: neither trained on nor scored)", ge=1, le=512)
    seed: int = param(0, "seed of the canary texts and of the inclusion draw")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.kinds:
            raise TuneguardError(f"name at least one canary kind ({', '.join(KINDS)})")


@dataclass
class Canary:
    """One canary: its text (the trained and scored tokens), its kind, whether the seeded draw put it in the
    training set, and the real-text prefix it sits behind ("" for whole-text kinds)."""

    text: str
    kind: str
    included: bool
    prefix: str = ""

    @property
    def example(self) -> str | tuple[str, str]:
        """What training gets: the text, or the (prompt, completion) pair whose loss is on the completion only."""
        return (self.prefix, self.text) if self.prefix else self.text

    def to_json(self) -> dict:
        """A line of canaries.jsonl."""
        return asdict(self)


def draw_inclusion(count: int, seed: int) -> np.ndarray:
    """Independent fair coins, one per canary: True = trained on. Its own stream, apart from the texts' one."""
    return np.random.default_rng([seed, 1]).random(count) < 0.5


def make_canaries(tokenizer, params: CanaryParams | None = None, *, avoid_texts: list[str] = (),
                  prefix_texts: list[str] = ()) -> list[Canary]:
    """``params.count`` canaries (kinds in turn) and their inclusion draw, all fixed by ``params.seed``.

    ``avoid_texts`` (the real training data) is what rare tokens must not occur in; ``prefix_texts`` (the real
    training texts) are where secret canaries take their prefixes from, each from a different text while they last.
    """
    params = params or CanaryParams()
    kinds = [params.kinds[i % len(params.kinds)] for i in range(params.count)]
    rng = np.random.default_rng([params.seed, 0])
    # Every canary drawing on one pool takes its tokens from one permutation of it: no token in two canaries.
    tokens: dict[int, list[int]] = {}
    for pool_kind in dict.fromkeys(POOLS[k] for k in kinds):
        members = [i for i, k in enumerate(kinds) if POOLS[k] == pool_kind]
        need = len(members) * params.length
        pool = token_pool(tokenizer, pool_kind, size=need, avoid_texts=avoid_texts)
        if len(pool) < need:
            raise TuneguardError(f"the tokenizer offers {len(pool)} {pool_kind} tokens, fewer than the {need} that "
                                 f"{len(members)} canaries of {params.length} tokens drawn without sharing a token "
                                 "need: lower --canaries or --canary-length")
        drawn = rng.permutation(pool)[:need].reshape(len(members), params.length).tolist()
        tokens.update((i, _word_first(tokenizer, ids) if kinds[i] in PREFIXED else ids)
                      for i, ids in zip(members, drawn))
    prefixes = _prefixes(tokenizer, kinds, params, prefix_texts, rng)
    included = draw_inclusion(params.count, params.seed)
    seen = set(avoid_texts)
    canaries = []
    for i, kind in enumerate(kinds):
        text = tokenizer.decode(tokens[i])
        if text in seen:  # disjoint tokens make two canaries differ; only a real text could coincide
            raise TuneguardError(f"canary {i + 1} repeats a text of the data: change the seed")
        seen.add(text)
        canaries.append(Canary(text, kind, bool(included[i]), prefixes[i]))
    return canaries


def token_pool(tokenizer, kind: str, *, size: int = 2000, avoid_texts: list[str] = ()) -> np.ndarray:
    """The token ids a canary of ``kind`` is drawn from: for rare tokens the ``size`` rarest (see the module
    docstring; fewer when the vocabulary has no more), for the other kinds every usable one."""
    if kind not in KINDS:
        raise TuneguardError(f"unknown canary kind {kind!r}: choose from {', '.join(KINDS)}")
    kind = POOLS[kind]
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    if kind == "rare-tokens":
        used = {t for row in tokenizer(list(avoid_texts), add_special_tokens=False)["input_ids"] for t in row} \
            if avoid_texts else set()
        candidates = [i for i in ids if i not in used]
        pool: list[int] = []
        # From the last merge backwards, in chunks: only as much of the vocabulary as the pool needs is checked.
        while candidates and len(pool) < size:
            chunk, candidates = candidates[-2 * size:], candidates[:-2 * size]
            pool = [i for i, _ in _usable(tokenizer, chunk)] + pool
        pool = pool[-size:]
    else:
        usable = _whole_vocabulary(tokenizer, ids)
        if kind == "random-words":
            usable = [(i, p) for i, p in usable if p[0] == " " and len(p) >= 4 and p[1:].isascii()
                      and p[1:].isalpha() and p[1:].islower()]
        pool = [i for i, _ in usable]
    if len(pool) < 16:
        raise TuneguardError(f"the tokenizer offers only {len(pool)} tokens for {kind} canaries: choose another kind")
    return np.array(pool, dtype=np.int64)


def _prefixes(tokenizer, kinds: list[str], params: CanaryParams, texts: list[str], rng: np.random.Generator
              ) -> list[str]:
    """Each canary's prefix: for a secret canary the first ``prefix_length`` tokens of a real text (a seeded order of
    the texts, each used once while they last), else ""."""
    wanted = [i for i, k in enumerate(kinds) if k in PREFIXED]
    out = [""] * len(kinds)
    if not wanted:
        return out
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise TuneguardError("secret canaries sit behind the beginning of a real text: pass the training texts "
                             "(prefix_texts)")
    order = rng.permutation(len(texts))
    for n, i in enumerate(wanted):
        ids = tokenizer(texts[order[n % len(texts)]], add_special_tokens=False)["input_ids"][:params.prefix_length]
        # A cut through a multi-byte character decodes to U+FFFD: drop it rather than train on a replacement mark;
        # trailing whitespace would join the secret's first word when the two are tokenized as one text.
        out[i] = tokenizer.decode(ids).rstrip("\ufffd").rstrip()
    return out


def _word_first(tokenizer, ids: list[int]) -> list[int]:
    """A secret's tokens with the first that starts a word (a space, then a non-space) moved to the front, when it
    has one (1 - 2^-8 of 8-token secrets drawn from a byte-level BPE vocabulary do). The secret then opens a word of
    its own, so a byte-level BPE tokenizes prefix + secret as the prefix's tokens followed by the secret's, exactly as
    training sees them, and the audit scores it as one text (``dpaudit.audit.trained_log_likelihood``)."""
    pieces = tokenizer.batch_decode([[i] for i in ids])
    first = next((k for k, p in enumerate(pieces) if len(p) > 1 and p[0] == " " and not p[1].isspace()), 0)
    return [ids[first]] + ids[:first] + ids[first + 1:]


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
    """Write canaries.jsonl (text, kind, included, prefix per line)."""
    return atomic_write_jsonl(path, [c.to_json() for c in canaries])


def load_canaries(path: str | Path) -> list[Canary]:
    """Read canaries.jsonl back."""
    canaries = []
    for n, row in enumerate(read_jsonl(path), 1):
        prefix = row.get("prefix", "")
        if not (isinstance(row.get("text"), str) and row.get("kind") in KINDS
                and isinstance(row.get("included"), bool) and isinstance(prefix, str)):
            raise TuneguardError(f"{path}: line {n} is not a canary (needs text, kind, included true/false, and a "
                                 "prefix string if any)")
        canaries.append(Canary(row["text"], row["kind"], row["included"], prefix))
    return canaries
