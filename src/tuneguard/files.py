"""Atomic file output: a stage's result is either complete on disk or absent, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from tuneguard.errors import TuneguardError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are meant to be shared like any other file
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN written as null)."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Atomically write one JSON object per line."""
    body = "".join(json.dumps(_jsonable(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    return atomic_write_text(path, body)


REMAKE = "delete it and run again to recompute it"  # the fix for a corrupt file tuneguard wrote itself


def read_json(path: str | os.PathLike, *, fix: str = REMAKE, expect: type = object) -> Any:
    """Read a JSON file; an unreadable, truncated or corrupt one (or, with ``expect``, one holding another JSON
    type) raises a one-line TuneguardError naming the file and ``fix``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise TuneguardError(f"cannot read {path}: {exc.strerror}; {fix}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise TuneguardError(f"{path} is not valid JSON (truncated or corrupted: {_first_line(exc)}); {fix}") from None
    if not isinstance(data, expect):
        raise TuneguardError(f"{path} holds a JSON {type(data).__name__}, not {_JSON_NAMES.get(expect, expect)}; "
                             f"{fix}")
    return data


def read_jsonl(path: str | os.PathLike, *, fix: str = REMAKE) -> list[dict]:
    """Read a JSON Lines file of objects (blank lines skipped); a bad line raises a TuneguardError naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise TuneguardError(f"cannot read {path}: {exc.strerror}; {fix}") from None
    except ValueError as exc:
        raise TuneguardError(f"{path} is not UTF-8 JSON Lines ({_first_line(exc)}); {fix}") from None
    rows = []
    # Lines end at "\n" only: U+2028 and friends are valid inside a JSON string (str.splitlines would cut there).
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise TuneguardError(f"{path}: line {n} is not valid JSON (truncated or corrupted: "
                                     f"{_first_line(exc)}); {fix}") from None
            if not isinstance(row, dict):
                raise TuneguardError(f"{path}: line {n} holds a JSON {type(row).__name__}, not an object; {fix}")
            rows.append(row)
    return rows


_JSON_NAMES = {dict: "an object", list: "a list"}


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def check_output(path: str | os.PathLike, *, directory: bool = True) -> Path:
    """Refuse, before any work, an output path that cannot be written: a directory output naming an existing file
    (or a file output naming a directory), or a place this process may not create files in. Creates nothing."""
    path = Path(path).expanduser()
    if directory and path.exists() and not path.is_dir():
        raise TuneguardError(f"output directory {path} is an existing file; name a directory or a new path")
    if not directory and path.is_dir():
        raise TuneguardError(f"output file {path} is an existing directory; name a file")
    where = path if directory and path.is_dir() else path.parent
    while not where.exists():  # the nearest directory that exists is where the first new entry is made
        where = where.parent
    if not where.is_dir():
        raise TuneguardError(f"cannot create {path}: {where} is a file, not a directory")
    try:  # a probe, not os.access: it also sees read-only mounts, ACLs and root's rights as they are
        fd, probe = tempfile.mkstemp(dir=where, prefix=".tuneguard-probe.")
    except OSError as exc:
        raise TuneguardError(f"cannot write to {where} ({exc.strerror}); choose an output path you can write to") \
            from None
    os.close(fd)
    os.unlink(probe)
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename.

    A crash inside the block leaves any previous ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths and non-finite floats to plain JSON values."""
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(obj.tolist())
    return obj
