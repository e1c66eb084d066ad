"""Aligned plain-text tables for the terminal."""

from __future__ import annotations

import math
from typing import Any

DASH = "-"


def cell_text(value: Any) -> str:
    """A table cell: None and non-finite numbers as a dash, floats with 3 decimals, anything else as str()."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(rows: list[dict], columns: list[str], *, title: str | None = None) -> str:
    """Rows as an aligned text table (numeric columns right-aligned); a missing key shows as a dash."""
    cells = [[cell_text(row.get(c)) for c in columns] for row in rows]
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
