"""Anti-copy decoding: forbid every token that would complete a token n-gram of the source text.

A small instruction-tuned LM asked to paraphrase mostly copies its input (issue 13: word 3-gram overlap 0.57-0.77
with SmolLM2-135M). Banning the source's n-grams during decoding makes copying impossible while leaving each
word, and every shorter run, available. Two exemptions keep facts intact:

- ``keep_words``: an n-gram whose tokens all lie inside one whitespace-delimited source word is not banned. Numbers
  ("0.95" is four tokens), abbreviations and rare technical terms ("Aponogeton") are split into several tokens; a
  ban inside them would force the model to misspell them.
- ``content_only``: an n-gram made only of function words and punctuation (", and the", "of the") is not banned.

The ban table is built from the source alone and applied to each row's own generated tokens, so a text's output
does not depend on the other texts of its batch.
"""

from __future__ import annotations

import bisect
import re
from typing import Sequence

from tuneguard.errors import TuneguardError
from tuneguard.wordnet import STOPWORDS

BanTable = dict[tuple[int, ...], frozenset[int]]
_ALNUM = re.compile(r"[^\W_]+")


def ban_table(ids: Sequence[int], n: int, *, exempt: Sequence[bool] | None = None) -> BanTable:
    """(n-1)-token prefix -> the tokens that would complete an n-gram of ``ids`` after it.

    ``exempt[i]`` True leaves the n-gram starting at token ``i`` allowed.
    """
    if n < 1:
        raise TuneguardError(f"an n-gram ban needs n >= 1 (got {n})")
    table: dict[tuple[int, ...], set[int]] = {}
    for i in range(len(ids) - n + 1):
        if exempt is None or not exempt[i]:
            table.setdefault(tuple(ids[i:i + n - 1]), set()).add(ids[i + n - 1])
    return {prefix: frozenset(tokens) for prefix, tokens in table.items()}


def source_ban_table(text: str, tokenizer, n: int, *, keep_words: bool = True,
                     content_only: bool = False) -> BanTable:
    """The ban table of ``text`` as ``tokenizer`` splits it (no special tokens), with the module's exemptions.

    The text is split twice, as it starts an answer and after a space (byte-level BPE spells "The" and " The" with
    different tokens), so its first words are banned wherever the paraphrase puts them.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TuneguardError("the n-gram ban needs a fast tokenizer (token offsets): load the model's "
                             "tokenizer with use_fast=True, or set ban_ngram=0")
    merged: dict[tuple[int, ...], frozenset[int]] = {}
    for variant in (text.strip(), " " + text.strip()):
        ids, exempt = _exemptions(variant, tokenizer, n, keep_words=keep_words, content_only=content_only)
        for prefix, tokens in ban_table(ids, n, exempt=exempt).items():
            merged[prefix] = merged.get(prefix, frozenset()) | tokens
    return merged


def _exemptions(text: str, tokenizer, n: int, *, keep_words: bool, content_only: bool) -> tuple[list[int], list[bool]]:
    """``text``'s token ids, and for each n-gram start whether the n-gram is exempt from the ban."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    starts = [a for a, _ in spans]
    word_of: list[int | None] = []  # the source word each token's first visible character lies in
    for start, end in offsets:
        visible = next((c for c in range(start, end) if not text[c].isspace()), None)
        word_of.append(None if visible is None else bisect.bisect_right(starts, visible) - 1)
    content_words = {w for w, (a, b) in enumerate(spans)
                     if any(part not in STOPWORDS for part in _ALNUM.findall(text[a:b].lower()))}
    # A token is content when it carries letters or digits of a content word (not the word's punctuation).
    content = [w in content_words and bool(_ALNUM.search(text[s:e])) for w, (s, e) in zip(word_of, offsets)]
    exempt = []
    for i in range(max(len(ids) - n + 1, 0)):
        words = word_of[i:i + n]
        exempt.append((keep_words and words[0] is not None and len(set(words)) == 1)
                      or (content_only and not any(content[i:i + n])))
    return ids, exempt


class NgramBan:
    """A logits processor: in row ``r``, every token completing an n-gram of ``tables[r]`` gets score -inf; with
    ``repeats``, so does every token that would repeat an n-gram the row has already generated.

    Only the tokens generated after column ``start`` (the padded prompt width) count, so the prompt, which quotes
    the source, never bans anything by itself.
    """

    def __init__(self, tables: Sequence[BanTable], n: int, start: int, *, repeats: bool = False) -> None:
        self.tables, self.n, self.start, self.repeats = list(tables), n, start, repeats
        # Each row's own n-grams so far (prefix -> next tokens) and how many of its tokens they cover.
        self._own: list[dict[tuple[int, ...], set[int]]] = [{} for _ in self.tables]
        self._indexed = [0] * len(self.tables)

    def banned(self, row: int, generated: Sequence[int]) -> frozenset[int]:
        """The tokens row ``row`` may not emit after its ``generated`` tokens."""
        n = self.n
        if len(generated) < n - 1:
            return frozenset()
        prefix = tuple(generated[len(generated) - n + 1:])
        out = self.tables[row].get(prefix, frozenset())
        if self.repeats:
            own = self._own[row]
            if len(generated) < self._indexed[row]:  # another sequence: start over
                own.clear()
                self._indexed[row] = 0
            for end in range(max(self._indexed[row], n), len(generated) + 1):
                own.setdefault(tuple(generated[end - n:end - 1]), set()).add(generated[end - 1])
            self._indexed[row] = len(generated)
            out = out | own.get(prefix, set())
        return frozenset(out)

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.start:].tolist()
        rows, cols = [], []
        for row, ids in enumerate(generated):
            for token in self.banned(row, ids):
                rows.append(row)
                cols.append(token)
        if rows:
            scores = scores.clone()
            scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
        return scores
