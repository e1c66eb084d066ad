"""Cleaning: strip, drop empty texts, drop exact duplicates, warn about near-duplicates."""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field

from tuneguard.errors import TuneguardError

log = logging.getLogger(__name__)


@dataclass
class CleanReport:
    """The cleaned texts (first occurrence order kept) and what was removed or flagged."""

    texts: list[str]
    n_input: int
    n_empty: int = 0
    n_duplicates: int = 0
    near_duplicates: list[tuple[int, int]] = field(default_factory=list)  # index pairs into ``texts``

    def summary(self) -> str:
        """One line for logs and reports."""
        return (f"{len(self.texts)} texts kept of {self.n_input}: {self.n_empty} empty, {self.n_duplicates} exact "
                f"duplicates dropped, {len(self.near_duplicates)} near-duplicate pairs kept")


def _normal_form(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form, for near-duplicate detection."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.findall(r"\w+", text))


def _visible_length(text: str) -> int:
    """Length of a stripped ``text`` without the invisible format characters ``str.strip`` keeps (zero-width space
    and joiners, BOM, soft hyphen: category Cf) and the whitespace they hid: text of them alone is empty to a
    reader, though not to the tokenizer."""
    if text.isascii():  # no format character is ASCII
        return len(text)
    return len("".join(c for c in text if unicodedata.category(c) != "Cf").strip())


def clean_texts(texts: list[str], *, min_chars: int = 1, name: str = "data") -> CleanReport:
    """Strip texts, drop empty ones (invisible characters only count as empty) and exact duplicates, and report
    texts equal up to case/spacing/punctuation.

    Raises when nothing is left, since every later stage needs texts.
    """
    kept: list[str] = []
    seen: set[str] = set()
    first_by_form: dict[str, int] = {}
    report = CleanReport(texts=kept, n_input=len(texts))
    for raw in texts:
        text = raw.strip()
        if _visible_length(text) < min_chars:
            report.n_empty += 1
            continue
        if text in seen:
            report.n_duplicates += 1
            continue
        seen.add(text)
        form = _normal_form(text)
        if form in first_by_form:
            report.near_duplicates.append((first_by_form[form], len(kept)))
        else:
            first_by_form[form] = len(kept)
        kept.append(text)
    if not kept:
        raise TuneguardError(f"{name}: no texts left after cleaning ({report.n_input} read, {report.n_empty} empty, "
                             f"{report.n_duplicates} duplicates)")
    if report.near_duplicates:
        i, j = report.near_duplicates[0]
        log.warning("%s: %d pairs of texts differ only in case, spacing or punctuation, e.g. #%d and #%d: %.60r",
                    name, len(report.near_duplicates), i, j, kept[j])
    return report
