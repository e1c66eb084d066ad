"""Aligned plain-text tables for the terminal."""

from __future__ import annotations

import math
from typing import Any

DASH = "-"


def printable(text: str) -> str:
    """``text`` with every non-printable character (newline, tab, escape, U+2028, ...) escaped as repr escapes it,
    without quotes: a user-given name (a directory, a tensor, a model) can then never start a line of its own, nor
    move the cursor, on the terminal. Printable text, backslashes included, is unchanged, so escaping twice is
    escaping once."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cell_text(value: Any) -> str:
    """A table cell: None and non-finite numbers as a dash, floats with 3 decimals, anything else as str()."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(rows: list[dict], columns: list[str], *, title: str | None = None) -> str:
    """Rows as an aligned text table (numeric columns right-aligned); a missing key shows as a dash. Cells are
    escaped with `printable`, so each row is one line; ``title`` is the caller's own text and may span lines, so a
    name in it is the caller's to escape."""
    # Escaped here, not in cell_text: the HTML tables share cell_text and break a cell's lines on purpose.
    cells = [[printable(cell_text(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(_is_number(row.get(c)) or row.get(c) is None for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    lines = [title] if title else []
    lines += [line(list(columns)), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in cells]
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
