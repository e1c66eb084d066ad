"""Atomic file output: a stage's result is either complete on disk or absent, never half-written."""

from __future__ import annotations

import errno
import json
import os
import re
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
# The modes open() and mkdir() give under the user's umask. Outputs are meant to be shared like any other file, but
# mkstemp makes 0600 files, mkdtemp 0700 directories, and safetensors writes through a temporary file of its own
# (0600): every output gets these modes before it is renamed into place.
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK
# OSError numbers that mean the disk or the output location, not tuneguard, stopped a write.
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})


def disk_errno(exc: BaseException) -> int | None:
    """The OSError number behind a failed write, wherever the writer left it: the OSError itself, the one torch.save
    turns into a RuntimeError ("unexpected pos": the OSError is its context), or a safetensors error's "(os error N)"
    (raised from Rust, with no OSError at all). None when there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if found:
            return int(found.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Raise a write in the block that the disk stopped (full, over quota, read-only, not permitted) as an OSError
    naming ``path``, whichever library wrote: the command line prints that as one line with the fix."""
    try:
        yield
    except Exception as exc:
        code = disk_errno(exc)
        if code not in DISK_ERRORS:
            raise
        raise OSError(code, os.strerror(code), os.fspath(path)) from exc


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path``, and for a directory everything under it, ``FILE_MODE`` / ``DIR_MODE`` (symbolic links are
    left alone: chmod would follow them out of the tree)."""
    path = Path(path)
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not item.is_symlink():
            os.chmod(item, DIR_MODE if item.is_dir() else FILE_MODE)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory (given ``FILE_MODE``) and an
    atomic rename; a write the disk stopped is an OSError naming ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)
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


def json_text(obj: Any) -> str:
    """``obj`` as the indented JSON :func:`atomic_write_json` writes, final newline included: numpy values and paths
    as plain values, NaN and infinities as null (for JSON written elsewhere, such as stdout)."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN written as null): :func:`json_text`."""
    return atomic_write_text(path, json_text(obj))


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
    """Yield a temporary sibling directory; on success its contents get ``FILE_MODE`` / ``DIR_MODE`` and it
    replaces ``path`` in one rename.

    A crash inside the block leaves any previous ``path`` untouched; a write the disk stopped, whichever library
    wrote, is an OSError naming ``path``.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            yield tmp
            apply_umask(tmp)
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
