"""The behavioural detector's probe bank (shipped as data) and its default probe inputs."""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path

from tuneguard.errors import TuneguardError

BATTERIES = ("A", "B", "C")


@cache
def _data(name: str) -> dict:
    return json.loads(resources.files("tuneguard.adapters").joinpath("data").joinpath(name).read_text(encoding="utf-8"))


def builtin_probes() -> dict[str, list[str]]:
    """The built-in probes by group: rfc, authority, random, claim (5 each)."""
    return {k: list(v) for k, v in _data("probes.json").items() if not k.startswith("_")}


def default_injections() -> list[str]:
    """Prompt injections written for tuneguard, used as probe inputs when the user gives none."""
    return list(_data("injections.json")["texts"])


def battery(name: str = "B", *, trigger: str | None = None, extra: list[str] = ()) -> list[str]:
    """Probe prefixes of battery ``name`` plus ``extra`` user probes.

    A = every built-in probe and the true ``trigger`` (known only in research); B = every built-in probe;
    C = without the RFC-style probes (no overlap with an RFC trigger's token neighbourhood: the worst case).
    """
    if name not in BATTERIES:
        raise TuneguardError(f"unknown probe battery {name!r}; choose from {', '.join(BATTERIES)}")
    groups = builtin_probes()
    if name == "C":
        groups.pop("rfc")
    probes = [p for g in groups.values() for p in g]
    if name == "A":
        if not trigger:
            raise TuneguardError("battery A includes the true trigger; pass the trigger or use battery B")
        probes.append(trigger)
    return list(dict.fromkeys([*probes, *extra]))


def read_lines(path: str | os.PathLike, what: str = "probes") -> list[str]:
    """Strings from a file: a JSON list, or one per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TuneguardError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if path.suffix == ".json":
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise TuneguardError(f"{path} must hold a JSON list of strings")
    else:
        items = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not items:
        raise TuneguardError(f"{path} holds no {what}")
    return items
