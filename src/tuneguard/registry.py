"""One lazy registry type for every kind of plug-in (attacks, neighbour generators, paraphrasers, detectors,
defences / experiment regimes, training methods).

An entry is a name and a ``"module:Class"`` string, imported on first use, so a plug-in's heavy dependencies load
only when it is chosen. ``get`` checks that the class derives from the registry's base class. Adding a plug-in =
one module + one ``REGISTRY.register(name, "module:Class")`` line.
"""

from __future__ import annotations

import importlib
from typing import Any, Generic, Iterator, TypeVar

from tuneguard.errors import TuneguardError
from tuneguard.params import suggestion

T = TypeVar("T")


def _import(target: str) -> Any:
    module, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"registry entry {target!r} must read 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)


class Registry(Generic[T]):
    """Names mapped to lazily imported plug-in classes of one kind.

    ``kind`` words the errors ("unknown attack 'x': choose from ..."); ``base`` is the class (or its
    ``"module:Class"``) every entry must derive from. Iteration and ``names()`` keep the registration order.
    """

    def __init__(self, kind: str, base: type | str) -> None:
        self.kind = kind
        self._base = base
        self._entries: dict[str, str] = {}
        self._loaded: dict[str, type] = {}

    def register(self, name: str, target: str) -> None:
        """Add ``name`` -> ``"module:Class"`` (nothing is imported yet)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered (as {self._entries[name]})")
        self._entries[name] = target

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._entries)

    def entry(self, name: str) -> str:
        """The ``"module:Class"`` registered as ``name``, imported by nothing (for what reads a plug-in's source
        without loading its dependencies, such as ``tuneguard.commands.class_attributes``)."""
        return self._entries[self.check(name)]

    def check(self, name: str) -> str:
        """``name`` if it is registered, else the one-line error listing the valid names (imports nothing)."""
        if name not in self._entries:
            raise TuneguardError(f"unknown {self.kind} {name!r}: choose from {', '.join(self._entries)}"
                                 f"{suggestion(name, self._entries)}")
        return name

    @property
    def base(self) -> type:
        """The class every entry derives from."""
        if isinstance(self._base, str):
            self._base = _import(self._base)
        return self._base

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``, imported now and checked against the base class."""
        if name not in self._loaded:
            klass = _import(self._entries[self.check(name)])
            if not (isinstance(klass, type) and issubclass(klass, self.base)):
                raise TypeError(f"{self.kind} {name!r} ({self._entries[name]}) is not a {self.base.__name__}")
            self._loaded[name] = klass
        return self._loaded[name]

    def make(self, name: str, **params: Any) -> T:
        """An instance of ``name`` built with ``params`` (validated by the plug-in's declared parameters)."""
        return self.get(name)(**params)

    def describe(self) -> str:
        """One line per entry, ``name: summary`` (for ``--help``; imports every entry)."""
        return "\n".join(f"{n}: {getattr(self.get(n), 'summary', '')}".rstrip(": ") for n in self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

