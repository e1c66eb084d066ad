"""Declared parameters: every plug-in (and every typed config) states its parameters once, as a dataclass whose
fields carry a type, a default, the allowed values and a line of help, checked at construction with one wording.

    @dataclass
    class MinKParams(Params):
        k: float = param(0.2, "fraction of lowest-probability tokens averaged", gt=0, le=1)
        rounding: str = param("ceil", "how k·n becomes a count", choices=("ceil", "floor"))

``MinKParams.create("attack 'min-k'", {"k": 5})`` raises ``attack 'min-k': parameter 'k' must be in (0, 1], got 5``;
an unknown key raises ``attack 'min-k' has no parameter 'kk' (parameters: k, rounding); did you mean 'k'?`` (the
one wording of :func:`check_names`, which the experiment file's tables use too). Values given as strings
(command-line ``--param``) are read as JSON first, so ``k=0.1`` and ``normalise=false`` work. The checks run before
any model loads (like scikit-learn's ``_parameter_constraints``); ``describe()`` feeds ``--help`` and the reports.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Self

from tuneguard.errors import TuneguardError

_MISSING = dataclasses.MISSING


def suggestion(name: str, allowed: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the valid name closest to a mistyped ``name``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(allowed), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_names(given: Iterable[str], allowed: Iterable[str], owner: str, what: str = "parameter", *,
                hints: Mapping[str, str] | None = None) -> None:
    """Refuse the first of ``given`` not in ``allowed``, in one wording: ``{owner} has no {what} 'x' ({what}s: ...);
    did you mean 'y'?``. ``hints`` maps a name known to be misplaced to the advice that replaces the suggestion."""
    allowed = list(allowed)
    for name in given:
        if name not in allowed:
            hint = f"; {hints[name]}" if hints and name in hints else suggestion(name, allowed)
            raise TuneguardError(f"{owner} has no {what} {name!r} ({what}s: {', '.join(allowed) or 'none'}){hint}")


def param(default: Any = _MISSING, help: str = "", *, choices: tuple | None = None, gt: float | None = None,
          ge: float | None = None, lt: float | None = None, le: float | None = None) -> Any:
    """A declared parameter: a dataclass field with its help, allowed ``choices`` and numeric bounds.

    A list or dict default is copied per instance. ``default`` omitted = required.
    """
    meta = {"help": help, "choices": choices, "gt": gt, "ge": ge, "lt": lt, "le": le}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamInfo:
    """What ``describe()`` reports of one parameter."""

    name: str
    type: str
    default: Any
    help: str
    allowed: str  # "one of a, b" / "in (0, 1]" / ""

    def line(self) -> str:
        """``name (type, default X; allowed): help`` on one line."""
        extra = f"; {self.allowed}" if self.allowed else ""
        default = "required" if self.default is _MISSING else f"default {self.default!r}"
        return f"{self.name} ({self.type}, {default}{extra}): {self.help}".rstrip(": ")


class Params:
    """Base of every declared-parameter dataclass; subclasses are ``@dataclass`` with :func:`param` fields."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            given = getattr(self, f.name)
            value = _coerce(given, hints[f.name])
            problem = _BAD_TYPE if value is _BAD else _violation(value, f.metadata)
            if problem:
                what = _type_name(hints[f.name]) if problem is _BAD_TYPE else problem
                raise TuneguardError(f"parameter {f.name!r} must be {what}, got {given!r}")
            object.__setattr__(self, f.name, value)  # works for frozen dataclasses too

    @classmethod
    def create(cls, owner: str, values: Mapping[str, Any] | None = None) -> Self:
        """Build from ``values`` (strings read as JSON where they parse); errors start with ``owner``."""
        values = dict(values or {})
        check_names(values, [f.name for f in dataclasses.fields(cls)], owner)
        values = {k: _from_text(v) for k, v in values.items()}
        try:
            return cls(**values)
        except TuneguardError as exc:
            raise TuneguardError(f"{owner}: {exc}") from None
        except TypeError as exc:  # a required parameter is missing
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
                       and f.default is _MISSING and f.default_factory is _MISSING]
            if not missing:
                raise
            raise TuneguardError(f"{owner} needs parameter {missing[0]!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (results.json, run records, cache keys)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> list[ParamInfo]:
        """Every declared parameter with its type, default, allowed values and help."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default_factory is _MISSING else f.default_factory()
            out.append(ParamInfo(f.name, _type_name(hints[f.name], article=False), default, f.metadata.get("help", ""),
                                 _allowed(f.metadata)))
        return out


@dataclass
class NoParams(Params):
    """For plug-ins that take no parameters."""


# -- checking ---------------------------------------------------------------------------------------------------

_BAD = object()
_BAD_TYPE = "type"


def _from_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (an int where a float is declared becomes a float; a JSON list a tuple), or _BAD."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            if arm is type(None) and value is None:
                return None
        for arm in args:
            if arm is not type(None):
                got = _coerce(value, arm)
                if got is not _BAD:
                    return got
        return _BAD
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _BAD
        inner = args[0] if args else Any
        items = [_coerce(v, inner) for v in value]
        return _BAD if any(i is _BAD for i in items) else origin(items)
    if origin is dict or hint is dict:
        return value if isinstance(value, dict) else _BAD
    if origin is typing.Literal:
        return value if value in args else _BAD
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _BAD
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if isinstance(hint, type):
        return value if isinstance(value, hint) else _BAD
    return value


def bound_violation(value: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
                    le: float | None = None) -> str | None:
    """What ``value`` must be when it breaks these bounds (as :func:`param` takes them), else None: the declared
    parameters' wording, for checks outside a Params class such as the command-line option types."""
    return _violation(value, {"gt": gt, "ge": ge, "lt": lt, "le": le})


def _violation(value: Any, meta: Mapping[str, Any]) -> str | None:
    """What ``value`` must be when it breaks its declared choices or bounds, else None."""
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    choices = meta.get("choices")
    if choices is not None and any(v not in choices for v in values):
        return _allowed(meta)
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if any(bound is not None and not ok for bound, ok in (
                    (meta.get("gt"), meta.get("gt") is None or v > meta["gt"]),
                    (meta.get("ge"), meta.get("ge") is None or v >= meta["ge"]),
                    (meta.get("lt"), meta.get("lt") is None or v < meta["lt"]),
                    (meta.get("le"), meta.get("le") is None or v <= meta["le"]))):
                return _allowed(meta)
    return None


def _allowed(meta: Mapping[str, Any]) -> str:
    if meta.get("choices") is not None:
        return "one of " + ", ".join(map(str, meta["choices"]))
    lo = ("(", meta["gt"]) if meta.get("gt") is not None else ("[", meta["ge"]) if meta.get("ge") is not None else None
    hi = (")", meta["lt"]) if meta.get("lt") is not None else ("]", meta["le"]) if meta.get("le") is not None else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {lo[1]:g}"
    if hi:
        return f"{'<' if hi[0] == ')' else '<='} {hi[1]:g}"
    return ""


def _type_name(hint: Any, *, article: bool = True) -> str:
    if isinstance(hint, type):
        words = {"float": "a number", "int": "an integer", "str": "a string", "bool": "true or false"}
        return words.get(hint.__name__, hint.__name__) if article else hint.__name__
    return str(hint).replace("typing.", "")
