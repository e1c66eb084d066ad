"""CLI sub-commands, one module each, registered in ``tuneguard.cli.COMMANDS``; and the option types they share,
which refuse a value out of range (or an output path that cannot be written) while the command line is parsed,
before any data or model is read; the options made from a ``Params`` declaration (:func:`add_params`, as
transformers' ``HfArgumentParser`` makes them from a dataclass); ``--json [FILE]``; and the device options of every
command that loads a model."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, check_output
from tuneguard.models.device import DEVICE_HELP, DEVICE_MAPS, DTYPE_CHOICES, DeviceSettings, resolve_settings
from tuneguard.params import Params, bound_violation


def number(kind: type[int] | type[float] = int, **bounds: float) -> Callable[[str], int | float]:
    """An argparse ``type``: a finite ``kind`` within ``bounds`` (``gt``/``ge``/``lt``/``le``, as ``param`` takes
    them), e.g. ``number(int, ge=1)``; argparse reports a bad value as ``argument --x: must be >= 1, got 0``."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        problem = bound_violation(value, **bounds) if math.isfinite(value) else "a finite number"
        if problem:
            raise argparse.ArgumentTypeError(f"must be {problem}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def declared(cls: type[Params], name: str) -> Callable[[str], int | float]:
    """:func:`number` with the type and bounds ``cls`` declares for its parameter ``name``, so an option that sets a
    declared parameter is checked against the one declaration."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    hint = typing.get_type_hints(cls)[name]
    kind = float if float in (hint, *typing.get_args(hint)) else int
    return number(kind, **{k: spec.metadata[k] for k in ("gt", "ge", "lt", "le") if spec.metadata.get(k) is not None})


def option_name(field: str) -> str:
    """The command-line option of a declared parameter: ``--warmup-ratio`` for ``warmup_ratio``."""
    return "--" + field.replace("_", "-")


def _arms(hint: Any) -> tuple:
    """The types a hint allows besides None (``int | None`` -> ``(int,)``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)


def add_params(group: argparse._ActionsContainer, cls: type[Params], names: Iterable[str] | None = None, *,
               flags: Mapping[str, str | tuple[str, ...]] | None = None, defaults: Mapping[str, Any] | None = None,
               helps: Mapping[str, str] | None = None, unset: bool = False,
               metavars: Mapping[str, str] | None = None) -> dict[str, str]:
    """Add the parameters ``names`` (all of them when None, in declaration order) that ``cls`` declares to ``group``
    as options, from the declaration alone: ``--field-name`` with the declared help, default (shown as
    ``default: X``), choices and range (:func:`declared`, so a bad value fails while the line is parsed). A bool
    declared False is a flag (``store_true``), one declared True gets ``--no-...`` too; a list or dict is given as
    JSON (read by ``cls.create``). ``flags`` renames an option (a tuple gives it several names), ``defaults``
    replaces a default and ``helps`` a help text where the command means more than the declaration says.
    ``unset``: the options default to None, so that the declaration's default applies where the values are used
    (the help still shows it). Returns ``{field: dest}`` for :func:`params_from_args`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    flags, defaults, helps, metavars = flags or {}, defaults or {}, helps or {}, metavars or {}
    added = {}
    for name in (fields if names is None else names):
        spec, hint = fields[name], hints[name]
        declared_default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
        default = defaults.get(name, declared_default)
        names_ = flags.get(name, option_name(name))
        names_ = (names_,) if isinstance(names_, str) else tuple(names_)
        text = helps.get(name, spec.metadata.get("help", "")).replace("%", "%%")
        kwargs: dict[str, Any] = {"default": None if unset else default}
        arms = _arms(hint)
        if default is dataclasses.MISSING:
            kwargs.update(required=True, default=None)
        elif default is None or arms == (bool,):  # a flag's help says what it does; --no-... shows its default
            pass
        elif unset:
            text += f"; default: {default}".replace("%", "%%")
        else:
            text += "; default: %(default)s"
        choices = spec.metadata.get("choices")
        if arms == (bool,):
            kwargs["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
        elif all(a in (int, float) for a in arms):
            kwargs["type"] = declared(cls, name)
        elif choices is not None and all(isinstance(c, str) for c in choices):
            kwargs["choices"] = choices
        elif not all(a is str for a in arms):
            kwargs["metavar"] = "JSON"  # a list, a dict: read as JSON by cls.create
        if name in metavars:
            kwargs["metavar"] = metavars[name]
        action = group.add_argument(*names_, help=text, **kwargs)
        added[name] = action.dest
    return added


def params_from_args(args: argparse.Namespace, added: Mapping[str, str], *, drop_none: bool = False) -> dict:
    """The values of the options :func:`add_params` added, by parameter name (``drop_none``: only those given)."""
    values = {name: getattr(args, dest) for name, dest in added.items()}
    return {k: v for k, v in values.items() if v is not None} if drop_none else values


def class_attributes(target: str, names: Iterable[str]) -> dict[str, Any]:
    """Literal class attributes (``summary = "..."``) of a registry entry ``"module:Class"``, read from its source
    without importing it (its module may import torch), following base classes defined in the same module; an
    attribute set otherwise (an expression, a base class elsewhere) is read from the imported class."""
    module, _, cls_name = target.partition(":")
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8")) if spec and spec.origin else ast.Module([], [])
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    found: dict[str, Any] = {}
    missing = list(names)
    todo = [cls_name]
    while todo and missing:
        node = classes.get(todo.pop(0))
        if node is None:
            break  # a base class from another module: import
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                key, value = stmt.targets[0].id, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                key, value = stmt.target.id, stmt.value
            else:
                continue
            if key in missing:
                try:
                    found[key] = ast.literal_eval(value)
                except (ValueError, TypeError):  # not a literal: read from the class
                    continue
                missing.remove(key)
        todo += [b.id for b in node.bases if isinstance(b, ast.Name)]
    if missing:
        klass = getattr(importlib.import_module(module), cls_name)
        found |= {key: getattr(klass, key) for key in missing}
    return found


# --json with no FILE: the JSON goes to stdout (as `hf` and `gh` do).
STDOUT = "-"


def add_json_arg(p: argparse._ActionsContainer, what: str) -> None:
    """``--json [FILE]``: write ``what`` to FILE as JSON, or with no FILE to stdout (and the command's other output to
    stderr, so that stdout is valid JSON); written by :func:`json_output`."""
    def parse(text: str) -> str | Path:
        return STDOUT if text == STDOUT else output(directory=False)(text)

    parse.__name__ = "output"
    p.add_argument("--json", nargs="?", const=STDOUT, type=parse, metavar="FILE",
                   help=f"write {what} to FILE as JSON; --json alone: to stdout (the other output then goes to "
                        "stderr)")


@contextlib.contextmanager
def json_output(args: argparse.Namespace) -> Iterator[Callable[[Any], None]]:
    """Yield ``emit(data)``, which writes data where ``--json`` says (nothing without it). While a command whose
    JSON goes to stdout runs inside, what it prints goes to stderr, so its stdout is the JSON alone."""
    target = getattr(args, "json", None)
    if target != STDOUT:
        yield lambda data: None if target is None else atomic_write_json(target, data)
        return
    from tuneguard.files import json_text  # the JSON atomic_write_json writes (numpy values, NaN as null)

    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield lambda data: (stdout.write(json_text(data)), stdout.flush())


def output(*, directory: bool = True) -> Callable[[str], Path]:
    """An argparse ``type`` for an output directory (or file): refused at once when it cannot be written
    (:func:`tuneguard.files.check_output`), not after the training or scoring that precedes the first write."""
    def parse(text: str) -> Path:
        try:
            return check_output(text, directory=directory)
        except TuneguardError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "output"
    return parse


def listed(item: Callable[[str], Any]) -> Callable[[str], tuple]:
    """An argparse ``type``: a non-empty comma-separated list, each value read and checked by ``item``
    (e.g. ``listed(number(float, gt=0))``)."""
    def parse(text: str) -> tuple:
        values = tuple(item(part.strip()) for part in text.split(",") if part.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
        return values

    parse.__name__ = "list"
    return parse


def privacy_target(text: str):
    """An argparse ``type``: a privacy target (``tpr@1%<=0.05``, ``auc<=0.6``;
    :func:`tuneguard.privacy_target.parse_target`), refused while the command line is parsed."""
    from tuneguard.privacy_target import parse_target

    try:
        return parse_target(text)
    except TuneguardError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_args(p: argparse.ArgumentParser, *, train: bool = False) -> None:
    """``--device``, ``--dtype`` and ``--device-map`` (and ``--gradient-checkpointing`` for a command that trains),
    shared by every command that loads a model."""
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", help=f"where models run: {DEVICE_HELP}; default: %(default)s")
    g.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="weights' precision; auto = bfloat16 on a GPU that computes it, else float32 (float16 is "
                        "refused on the CPU); default: %(default)s")
    g.add_argument("--device-map", choices=DEVICE_MAPS,
                   help="spread a model too big for one GPU over every GPU (and the CPU) with Accelerate's big-model "
                        "loading; auto is the usual choice")
    if train:
        g.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in the backward pass: less GPU memory, more compute")


def settings_from_args(args: argparse.Namespace) -> DeviceSettings:
    """The settings ``add_device_args`` options name, checked (one line) before any work."""
    return resolve_settings(args.device, args.dtype, args.device_map,
                            getattr(args, "gradient_checkpointing", False))
