"""Self-contained HTML pages: inline CSS, images as data URIs, nothing fetched from elsewhere."""

from __future__ import annotations

import base64
import json
import math
import mimetypes
from html import escape
from pathlib import Path
from typing import Any

from tuneguard.errors import TuneguardError
from tuneguard.report.table import cell_text

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1b1f23; line-height: 1.45; }
h1 { font-size: 1.5rem; border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; vertical-align: top; }
td { white-space: pre-line; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; padding: .6rem .8rem; border-radius: 4px; }
.alert { background: #ffebe9; border: 2px solid #cf222e; padding: .8rem 1rem; border-radius: 4px; font-weight: 600; }
.note { color: #57606a; font-size: .85rem; }
img { display: block; max-width: 100%; margin: .5rem 0; }
.verdict { border: 1px solid #d0d7de; border-left: 8px solid #8c959f; padding: .2rem 1rem .6rem; border-radius: 4px; }
.verdict h2 { margin-top: .6rem; }
.verdict.strong { border-left-color: #cf222e; background: #fff5f5; }
.verdict.some { border-left-color: #d4a72c; background: #fffbeb; }
.verdict.none { border-left-color: #1a7f37; }
.verdict .sentence { font-size: 1.05rem; }
code { font-size: .85rem; background: #f6f8fa; padding: .1rem .3rem; border-radius: 3px; }
pre { margin: 0; white-space: pre-wrap; font-size: .8rem; }
"""


def img_tag(path: str | Path, *, alt: str | None = None) -> str:
    """An <img> with the file embedded as a base64 data URI, so the page needs nothing beside it."""
    path = Path(path)
    if not path.is_file():
        raise TuneguardError(f"image {path} does not exist: write the figure before building the page")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:{mime};base64,{data}" alt="{escape(alt or path.stem)}">'


def html_table(rows: list[dict], columns: list[str], *, highlight: dict[str, str] | None = None) -> str:
    """Rows as an HTML table (values escaped). ``highlight`` maps a column to "max" or "min": its best cell is bold.

    A cell's number for highlighting is the value itself or, for text such as "0.61 [0.55, 0.67]", its first word.
    """
    best = {}
    for column, how in (highlight or {}).items():
        if how not in ("max", "min"):
            raise TuneguardError(f"highlight for column {column!r} must be 'max' or 'min', got {how!r}")
        values = [v for v in (_leading_number(r.get(column)) for r in rows) if v is not None]
        if values:
            best[column] = max(values) if how == "max" else min(values)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            number = _leading_number(row.get(c))
            classes = [k for k, on in (("num", number is not None), ("best", c in best and number == best[c])) if on]
            cls = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{cls}>{escape(cell_text(row.get(c)))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(title: str, sections: list[tuple[str, str]], *, settings: dict | None = None,
              lead: str | None = None) -> str:
    """A complete page: the title, ``lead`` (html shown first, e.g. a verdict), each (heading, html body) section in
    order, then ``settings`` as a table."""
    parts = [f"<h1>{escape(title)}</h1>", *([lead] if lead else [])]
    parts += [f"<section><h2>{escape(heading)}</h2>\n{body}\n</section>" for heading, body in sections]
    if settings:
        rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{_setting(v)}</td></tr>" for k, v in settings.items())
        parts.append(f"<section><h2>Settings</h2>\n<table>{rows}</table>\n</section>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{escape(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _setting(value: Any) -> str:
    """Scalars as text; lists and dicts as indented JSON."""
    if isinstance(value, (dict, list, tuple)):
        return f"<pre>{escape(json.dumps(value, indent=1, default=str))}</pre>"
    return escape(cell_text(value))


def _leading_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        words = str(value).split()
        try:
            number = float(words[0].rstrip("%")) if words else math.nan
        except ValueError:
            return None
    return number if math.isfinite(number) else None
