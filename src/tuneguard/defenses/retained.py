"""Retained-token share: how much of each member the model was trained on, token by token. It is the quantity a
SOFT model's membership leak follows (``bench/soft_leak.py``), so SOFT reports it per sample and per run.

A member's tokens are those of its trained window: its first ``max_length`` tokens as training reads them (special
tokens left out), which is also what the attacks score. One of them is *retained* when its token id also occurs in
the trained window of a text the member was trained as (its paraphrase, its rewritten second half, or itself); a
member never trained on retains nothing, and the tokens of a replacement beyond its own window were never seen.
Ids, not positions: a paraphrase that keeps "the", "of" and a technical term retains them wherever they stand.

The chance baseline is the same share against unrelated texts cut to as many tokens as the member was trained on:
what any text of the domain would "retain" (about a quarter to a third of an abstract's tokens occur in another).
"""

from __future__ import annotations

from typing import Sequence

from tuneguard.errors import TuneguardError

CHANCE_TEXTS = 32  # unrelated texts averaged per member for the chance baseline


def trained_window(text: str, tokenizer, max_length: int, *, offsets: bool = False) -> list:
    """The token ids training reads from ``text`` (its first ``max_length`` tokens, special tokens left out); with
    ``offsets``, (id, (start, end)) pairs locating each token in ``text`` (a fast tokenizer is needed)."""
    enc = tokenizer(text, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                    return_offsets_mapping=offsets)
    keep = [k for k, special in enumerate(enc["special_tokens_mask"]) if not special]
    if offsets:
        return [(enc["input_ids"][k], tuple(enc["offset_mapping"][k])) for k in keep]
    return [enc["input_ids"][k] for k in keep]


def retained_shares(members: Sequence[str], trained_as: Sequence[Sequence[str]], tokenizer, max_length: int, *,
                    pool: Sequence[str] | None = None, chance_texts: int = CHANCE_TEXTS) -> list[dict]:
    """Per member ``i``: ``tokens`` (of its trained window), ``retained`` (how many of them occur in the trained
    windows of ``trained_as[i]``, the texts it was trained as: none = never trained on), ``share`` (retained /
    tokens) and ``chance`` (the mean share against up to ``chance_texts`` texts of ``pool`` other than the member,
    each cut to the number of tokens the member was trained as, and at least that long where enough are).

    ``pool`` defaults to the members themselves; its texts are taken in turn from the member's own position, so the
    baseline is deterministic.
    """
    if len(trained_as) != len(members):
        raise TuneguardError(f"retained_shares needs one list of trained texts per member ({len(trained_as)} for "
                             f"{len(members)} members)")
    pool = list(members if pool is None else pool)
    window: dict[str, list[int]] = {}
    full: dict[str, list[int]] = {}

    def ids(text: str) -> list[int]:
        if text not in window:
            window[text] = trained_window(text, tokenizer, max_length)
        return window[text]

    def all_ids(text: str) -> list[int]:  # an unrelated text may have to be cut longer than one window
        if text not in full:
            full[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return full[text]

    rows = []
    for i, (member, texts) in enumerate(zip(members, trained_as, strict=True)):
        tokens = ids(member)
        seen = {t for text in texts for t in ids(text)}
        length = sum(len(ids(text)) for text in texts)
        row = {"tokens": len(tokens), "retained": sum(t in seen for t in tokens),
               "share": _share(tokens, seen), "chance": 0.0}
        if length and tokens:
            others = [pool[(i + k) % len(pool)] for k in range(len(pool))]
            others = [u for u in others if u != member]
            long_enough = [u for u in others if len(all_ids(u)) >= length]
            picked = (long_enough or others)[:chance_texts]
            if picked:
                row["chance"] = sum(_share(tokens, set(all_ids(u)[:length])) for u in picked) / len(picked)
        rows.append(row)
    return rows


def pooled(rows: Sequence[dict]) -> dict:
    """Token-weighted figures over ``rows`` of :func:`retained_shares`: ``members``, ``tokens``, ``share``,
    ``chance``, and ``never_trained`` (share of the tokens) where the rows count ``never_trained`` tokens."""
    tokens = sum(r["tokens"] for r in rows)
    out = {"members": len(rows), "tokens": tokens,
           "share": sum(r["retained"] for r in rows) / tokens if tokens else None,
           "chance": sum(r["chance"] * r["tokens"] for r in rows) / tokens if tokens else None}
    if rows and all("never_trained" in r for r in rows):
        out["never_trained"] = sum(r["never_trained"] for r in rows) / tokens if tokens else None
    return out


def _share(tokens: Sequence[int], seen: set[int]) -> float:
    return sum(t in seen for t in tokens) / len(tokens) if tokens else 0.0
