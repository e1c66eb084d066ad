"""The base of every plug-in: a registered name, a one-line summary, and declared parameters."""

from __future__ import annotations

from typing import Any, ClassVar

from tuneguard.params import NoParams, Params


class Plugin:
    """Subclass per kind (Attack, Detector, Paraphraser, ...); set ``name``, ``summary`` and ``Params``.

    ``__init__`` validates the keyword parameters against ``Params`` (unknown names, types, choices, bounds) before
    any work, so a typo fails in milliseconds with the same wording for every kind of plug-in.
    """

    kind: ClassVar[str] = "plug-in"
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = NoParams

    def __init__(self, **params: Any) -> None:
        self.params = self.Params.create(self.label(), params)

    @classmethod
    def label(cls) -> str:
        """How errors and reports name this plug-in, e.g. ``attack 'min-k'``."""
        return f"{cls.kind} {cls.name!r}"

    @classmethod
    def help(cls) -> str:
        """The summary and one line per declared parameter (for ``--help`` and the reports)."""
        lines = [f"{cls.name}: {cls.summary}".rstrip(": ")]
        lines += [f"  {p.line()}" for p in cls.Params.describe()]
        return "\n".join(lines)
