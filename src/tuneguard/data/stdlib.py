"""Real text present on every machine: docstrings of the Python standard library (the default demo corpus)."""

from __future__ import annotations

import ast
import functools
import random
import sysconfig
from pathlib import Path


def stdlib_docstrings(n: int | None = None, *, seed: int = 0, min_chars: int = 200,
                      max_chars: int = 1200) -> list[str]:
    """Unique module/class/function docstrings from the standard library's source, shuffled with ``seed``.

    Read with ``ast`` (nothing is imported or executed); tests and vendored packages are skipped. The parse (seconds)
    is done once per process.
    """
    texts = list(_docstrings(min_chars, max_chars))
    random.Random(seed).shuffle(texts)
    return texts[:n] if n is not None else texts


@functools.cache
def _docstrings(min_chars: int, max_chars: int) -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, None] = {}
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and min_chars <= len(doc) <= max_chars:
                    found[doc.strip()] = None
    return tuple(found)
