"""Read records from JSONL/JSON/CSV/TSV/parquet/plain-text files, directories of text files, or `datasets`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tuneguard.errors import TuneguardError

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".c", ".h", ".js", ".ts", ".java", ".go", ".rs", ".html", ".tex"}
TABLE_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet"}
DEFAULT_COLUMNS = ("text", "content", "document", "sentence", "prompt", "abstract")


def load_texts(source: str | Path, *, column: str | None = None, split: str = "train",
               limit: int | None = None) -> list[str]:
    """Load a list of texts.

    ``source`` is a JSONL/JSON/CSV/TSV/parquet file (``column`` picks the text field; default ``text`` or the only
    string column), a ``.txt`` file (one text per non-empty line), a directory (one text per file), or a
    ``datasets`` name such as ``hf:imdb`` (``split`` picks the split; needs the hub, or HF_HUB_OFFLINE=1 and a
    copy in the local datasets cache).
    """
    rows, column = _load_rows(source, column, split)
    texts = [row[column] for row in rows]
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TuneguardError(f"{source}: column {column!r} holds a {type(texts[bad]).__name__} in row {bad + 1}, "
                             "not text")
    return texts[:limit] if limit is not None else texts


def load_labelled(source: str | Path, *, column: str | None = None, label_column: str = "label",
                  split: str = "train", limit: int | None = None) -> list[tuple[str, int]]:
    """Load (text, integer label) pairs, e.g. a classification set with ``text`` and ``label`` columns."""
    rows, column = _load_rows(source, column, split, also=label_column)
    pairs = []
    for i, row in enumerate(rows):
        try:
            pairs.append((str(row[column]), int(row[label_column])))
        except (TypeError, ValueError):
            raise TuneguardError(f"{source}: row {i + 1} has label {row[label_column]!r}, not an integer") from None
    return pairs[:limit] if limit is not None else pairs


def _load_rows(source: str | Path, column: str | None, split: str, also: str | None = None) -> tuple[list[dict], str]:
    """Rows as dicts plus the resolved text column; every named column is checked to exist."""
    src = str(source)
    if src.startswith("hf:"):
        rows = _hub_rows(src[3:], split)
    else:
        path = Path(src).expanduser()
        if not path.exists():
            raise TuneguardError(f"data file {src} does not exist")
        if path.is_dir():
            rows = _dir_rows(path)
            column = column or "text"
        else:
            rows = _file_rows(path)
    if not rows:
        raise TuneguardError(f"{src} holds no records")
    columns = list(rows[0].keys())
    if column is None:
        column = next((c for c in DEFAULT_COLUMNS if c in columns), None)
        if column is None:
            strings = [c for c in columns if isinstance(rows[0][c], str)]
            if len(strings) != 1:
                raise TuneguardError(f"{src}: cannot tell which column holds the text (columns: {', '.join(columns)});"
                                     " pass --column")
            column = strings[0]
    for name in filter(None, (column, also)):
        missing = next((i for i, r in enumerate(rows) if name not in r), None)
        if missing is not None:
            raise TuneguardError(f"{src}: no column {name!r} in record {missing + 1} "
                                 f"(columns: {', '.join(rows[missing].keys())})")
    return rows, column


def _read_text(path: Path, newline: str | None = None) -> str:
    """The file's text; ``newline=""`` keeps line endings as they are (what the csv module needs)."""
    try:
        with open(path, encoding="utf-8", newline=newline) as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise TuneguardError(f"{path} is not UTF-8 text (byte {exc.start}); re-encode it as UTF-8") from None
    except OSError as exc:
        raise TuneguardError(f"cannot read {path}: {exc.strerror}") from None


def _file_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises many types for a corrupt file
            raise TuneguardError(f"cannot read parquet file {path}: {exc}") from None
    text = _read_text(path, newline="" if suffix in {".csv", ".tsv"} else None)
    # Records end at "\n" only: str.splitlines would also cut at U+2028, U+0085 or a form feed inside a record.
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.split("\n")):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TuneguardError(f"{path}: line {i + 1} is not valid JSON ({exc.msg})") from None
        if rows and not all(isinstance(r, dict) for r in rows):
            raise TuneguardError(f"{path}: every line must be a JSON object")
        return rows
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TuneguardError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return [{"text": x} for x in data]
        if isinstance(data, list) and all(isinstance(x, dict) for x in data):
            return data
        raise TuneguardError(f"{path}: expected a JSON list of objects or of strings")
    if suffix in {".csv", ".tsv"}:
        # The csv module reads the records itself: a quoted field may hold a newline.
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            return list(reader)
        except csv.Error as exc:
            raise TuneguardError(f"{path}: record ending on line {reader.line_num} is not valid "
                                 f"{suffix[1:].upper()} ({exc})") from None
    if suffix in TEXT_SUFFIXES or suffix == "":
        return [{"text": line} for line in text.split("\n") if line.strip()]
    raise TuneguardError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv, .tsv, .parquet, .txt "
                         "or a directory of text files)")


def _dir_rows(path: Path) -> list[dict[str, Any]]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        tables = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        if tables:  # a dataset's folder: its records are in a table file, which is read as one
            raise TuneguardError(f"directory {path} holds no text files but holds the data file {tables[0]}"
                                 f"{f' (and {len(tables) - 1} more)' if len(tables) > 1 else ''}: pass that file "
                                 "itself, not its directory")
        raise TuneguardError(f"directory {path} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
    return [{"text": _read_text(p), "path": str(p.relative_to(path))} for p in files]


def _hub_rows(name: str, split: str) -> list[dict[str, Any]]:
    from huggingface_hub import constants

    from tuneguard.models.loading import hub_unreachable

    # Unreachable, datasets retries each file for about 30 s with a warning per try: ask the hub once, as model
    # loading does. HF_HUB_OFFLINE, the user's own switch, makes datasets read its local cache at once instead.
    down = None if constants.HF_HUB_OFFLINE else hub_unreachable()
    if down:
        raise TuneguardError(f"could not load dataset {name!r}: {down}; connect to the network, use a local data "
                             "file, or set HF_HUB_OFFLINE=1 to read a copy from the local datasets cache")
    import datasets

    try:
        return datasets.load_dataset(name, split=split).to_list()
    except Exception as exc:  # network, missing split, unknown name: all one message for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise TuneguardError(f"could not load dataset {name!r} split {split!r}: {first}") from None
