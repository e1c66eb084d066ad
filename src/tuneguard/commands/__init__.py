"""CLI sub-commands, one module each, registered in ``tuneguard.cli.COMMANDS``; and the option types they share,
which refuse a value out of range (or an output path that cannot be written) while the command line is parsed,
before any data or model is read, and the device options of every command that loads a model."""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Callable

from tuneguard.errors import TuneguardError
from tuneguard.files import check_output
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
    :func:`tuneguard.defenses.compare.parse_target`), refused while the command line is parsed."""
    from tuneguard.defenses.compare import parse_target

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
