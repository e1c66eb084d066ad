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

The every-word ban (:class:`WordBan`, the local paraphraser's ``ban="every-word"``) enforces the SOFT authors'
prompt at decoding: no word of the output may share a stem (:func:`stem`) with a content word of the source, in any
casing, spelt by any tokens. Function words (:data:`tuneguard.wordnet.STOPWORDS`), numbers, punctuation and
one-letter words are never banned: a faithful rewrite keeps them. It works on letters, not token ids: each step, the
word the row is in the middle of (its letters since the last non-letter) is extended by each candidate token, and a
token is banned when the word would then be one of the banned forms. So a multi-token word is banned at the token
that completes it (" Ap" + "on" + "og" + "eton"), never by banning its first sub-token everywhere (" Ap" + "ple"
stays allowed), and " Memorised", "MEMORISED" and "(memorised" are caught as well. A bare stem counts as a word of
its stem ("memor"), so a longer word spelt through it (" memor" + "ial") is closed on that tokenisation path, while
the same word spelt otherwise (" memorial" as one token) is not. A paraphrase cut by its token budget can still end
inside a word.
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Sequence

from tuneguard.errors import TuneguardError
from tuneguard.wordnet import STOPWORDS

BanTable = dict[tuple[int, ...], frozenset[int]]
_ALNUM = re.compile(r"[^\W_]+")
_LETTERS = re.compile(r"[^\W\d_]+")  # a word of the every-word ban: a run of letters (digits never belong to one)

# The stemmer's suffixes, tried longest first; exactly one is stripped, so a stem is always a prefix of its word and
# the words of one stem are that stem followed by one of these (or nothing). Deliberately coarse ("memorise",
# "memorised", "memorisation", "memory" -> "memor"): the authors' prompt asks for terms that share no root.
SUFFIXES = tuple(sorted((
    "isations", "izations", "isation", "ization", "ations", "ation", "ments", "ment", "nesses", "ness", "ities",
    "ity", "ings", "ing", "ised", "ized", "ises", "izes", "ise", "ize", "ers", "er", "ies", "ied", "ed", "es", "ly",
    "al", "s", "e", "y"), key=len, reverse=True))
MIN_STEM = 3  # letters a stem keeps: "uses" is not "u" + "ses"


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


# -- the every-word ban -----------------------------------------------------------------------------------------


def stem(word: str) -> str:
    """``word`` case-folded, less its longest :data:`SUFFIXES` entry that leaves at least :data:`MIN_STEM` letters
    (a final "s" stays after s, u or i: "process", "virus", "analysis")."""
    word = word.casefold()
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= MIN_STEM \
                and not (suffix == "s" and word[-2] in "siu"):
            return word[:-len(suffix)]
    return word


def is_content_word(word: str) -> bool:
    """Whether the every-word ban applies to ``word`` (a run of letters): not a function word, not a single letter."""
    word = word.casefold()
    return len(word) >= 2 and word not in STOPWORDS


def content_stems(text: str) -> frozenset[str]:
    """The stems of ``text``'s content words: what its every-word rewrite may not use."""
    return frozenset(stem(w) for w in _LETTERS.findall(text) if is_content_word(w))


def banned_forms(stems: frozenset[str]) -> frozenset[str]:
    """Every case-folded word whose stem is in ``stems`` (a stem followed by one suffix, or by none), less the
    function words."""
    return frozenset(form for s in stems for form in (s, *(s + x for x in SUFFIXES))
                     if stem(form) == s and is_content_word(form))


def _split_letters(text: str) -> tuple[str, str, list[str]]:
    """``text``'s leading letter run, trailing letter run and the letter runs that follow a non-letter in it."""
    runs = list(_LETTERS.finditer(text))
    lead = runs[0].group() if runs and runs[0].start() == 0 else ""
    tail = runs[-1].group() if runs and runs[-1].end() == len(text) else ""
    return lead, tail, [m.group() for m in runs if m.start() > 0]


class TokenWords:
    """A tokenizer's vocabulary as text, indexed for the every-word ban (built once per tokenizer).

    Each token is decoded after a fixed anchor token and the anchor's text removed, so a leading space survives
    (decoding a SentencePiece token alone drops it). Special tokens count as a word boundary and are never banned.
    """

    def __init__(self, tokenizer) -> None:
        anchor = tokenizer("a", add_special_tokens=False)["input_ids"][-1]
        head = len(tokenizer.decode([anchor], clean_up_tokenization_spaces=False))
        size = len(tokenizer)
        texts = [t[head:].casefold() for t in tokenizer.batch_decode([[anchor, i] for i in range(size)],
                                                                     clean_up_tokenization_spaces=False)]
        special = set(tokenizer.all_special_ids)
        self.size = size
        self.tail: list[str] = []  # the letters a token ends with ("" when it ends with a non-letter)
        self.pure: list[bool] = []  # whether a token is letters only (it continues the word before it)
        self.lead: dict[str, list[int]] = {}  # tokens that start with letters, by that first run
        self.inner: dict[str, list[int]] = {}  # tokens by each run that follows a non-letter inside them
        for i, text in enumerate(texts):
            if i in special:
                text = " "
            lead, tail, inner = _split_letters(text)
            self.tail.append(tail)
            self.pure.append(bool(text) and lead == text)
            if lead:
                self.lead.setdefault(lead, []).append(i)
            for run in inner:
                self.inner.setdefault(run, []).append(i)

    def partial_word(self, ids: Sequence[int]) -> str:
        """The letters of the word ``ids`` end inside of, case-folded ("" when they end with a non-letter)."""
        parts = []
        for token in reversed(ids):
            parts.append(self.tail[token])
            if not self.pure[token]:  # the word starts in this token
                break
        return "".join(reversed(parts))


class WordBanTable:
    """One source's every-word ban: which tokens may not follow a word begun as a given run of letters."""

    def __init__(self, text: str, words: TokenWords) -> None:
        self.words = words
        self.stems = content_stems(text)
        self.forms = banned_forms(self.stems)
        # Each banned form's proper prefixes -> the letters that would complete it (the empty prefix: a new word).
        self._rest: dict[str, set[str]] = {}
        for form in self.forms:
            for k in range(len(form)):
                self._rest.setdefault(form[:k], set()).add(form[k:])
        # Tokens that start a banned word after a non-letter of their own (" cat", "(cat") are banned everywhere.
        self._always = frozenset(i for form in self.forms for i in words.inner.get(form, ()))
        self._cache: dict[str, frozenset[int]] = {}

    def banned(self, partial: str) -> frozenset[int]:
        """The tokens that may not follow generated text ending inside the word ``partial`` ("" at a boundary)."""
        if partial not in self._cache:
            self._cache[partial] = self._always | frozenset(
                i for rest in self._rest.get(partial, ()) for i in self.words.lead.get(rest, ()))
        return self._cache[partial]


class WordBan:
    """A logits processor: row ``r`` may not emit a token that would complete a word of ``tables[r]``'s banned
    forms (a row whose table is None is left alone). Only tokens after column ``start`` count, as in
    :class:`NgramBan`."""

    def __init__(self, tables: Sequence[WordBanTable | None], words: TokenWords, start: int) -> None:
        self.tables, self.words, self.start = list(tables), words, start
        self._index: dict[tuple[int, str], Any] = {}  # (row, partial word) -> the banned ids as a tensor

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.clone()  # the caller's scores are left alone, as NgramBan leaves them
        for row, ids in enumerate(input_ids[:, self.start:].tolist()):
            table = self.tables[row]
            if table is None:
                continue
            partial = self.words.partial_word(ids)
            if (row, partial) not in self._index:
                self._index[row, partial] = torch.tensor(sorted(table.banned(partial)), dtype=torch.long)
            banned = self._index[row, partial]
            if len(banned):
                scores[row, banned.to(scores.device)] = float("-inf")
        return scores
