"""User-given names as file-system paths: one safe path component per name, and writes or deletions confined to
the output directory they belong to.

A dataset, regime, adapter or run name comes from a user's file and ends up as a folder name. ``safe_component``
maps it to a single component that cannot climb out of its parent (no separators, no ``.``/``..``, no control
characters, bounded length) and keeps distinct names distinct; ``inside`` refuses a path that resolves outside its
root (a ``..`` that slipped through, a symbolic link pointing elsewhere) before anything is written or removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from tuneguard.errors import TuneguardError

# Bytes of a component before its hash suffix: file systems allow 255 bytes per component; leave room for the
# suffix and for the ".<name>.<random>.tmp" siblings of atomic writes.
MAX_COMPONENT_BYTES = 96
_KEPT = "-_."  # besides letters and digits
_DIGITS = 10
_HASHED = re.compile(rf"-[0-9a-f]{{{_DIGITS}}}$")  # the suffix every rewritten name ends with


def safe_component(name: str) -> str:
    """``name`` as one file-name component that stays inside its parent folder.

    A name made of letters, digits, ``-``, ``_`` and ``.`` (not starting with ``.``) and at most
    ``MAX_COMPONENT_BYTES`` bytes of UTF-8 is kept as it is. Any other name has each other character replaced by
    ``_``, a leading ``.`` escaped, its length bounded, and a hash of the original appended, so two distinct names
    never share a folder (``a b`` and ``a_b`` differ) and ``..`` becomes an ordinary folder name. A safe name that
    already ends like a hash suffix (``-`` and 10 hex digits) is rewritten too, so no kept name equals a rewritten
    one.
    """
    slug = "".join(c if c.isalnum() or c in _KEPT else "_" for c in name)
    if (slug == name and name and not name.startswith(".") and len(name.encode("utf-8")) <= MAX_COMPONENT_BYTES
            and not _HASHED.search(name)):  # a kept name never looks like a hashed one: the two cannot meet
        return name
    slug = "_" + slug[1:] if slug.startswith(".") else slug
    slug = slug.encode("utf-8")[:MAX_COMPONENT_BYTES].decode("utf-8", errors="ignore")  # never a split character
    digest = hashlib.sha256(name.encode("utf-8", errors="surrogatepass")).hexdigest()[:_DIGITS]
    return f"{slug or '_'}-{digest}"


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """``path``, after checking that it resolves to ``root`` or below it (symbolic links followed).

    Raises a TuneguardError naming both otherwise: nothing outside a run's output directory is ever written to or
    deleted.
    """
    root_resolved, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise TuneguardError(f"refusing to touch {what} {path}: it resolves to {resolved}, outside the output "
                             f"directory {root_resolved} (a name with '..' or a symbolic link out of it?)")
    return Path(path)


def remove_tree(root: str | os.PathLike, path: str | os.PathLike, what: str = "folder") -> None:
    """Delete the folder ``path`` after checking it lies strictly inside ``root`` and is not a symbolic link."""
    path = Path(path)
    if path.is_symlink():
        raise TuneguardError(f"refusing to delete {what} {path}: it is a symbolic link; remove it by hand")
    inside(root, path, what)
    if path.resolve() == Path(root).resolve():
        raise TuneguardError(f"refusing to delete {what} {path}: it is the output directory itself")
    shutil.rmtree(path)
