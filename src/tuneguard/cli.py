"""The ``tuneguard`` command line: one sub-command per module in ``tuneguard.commands``."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Collection

from tuneguard import __version__
from tuneguard.errors import TuneguardError
from tuneguard.files import DISK_ERRORS
from tuneguard.report.table import printable


# Each entry names a module in tuneguard.commands exposing ``register(subparsers)``; the parser it adds sets
# ``func(args) -> int``. Adding a command = one module + one line here.
COMMANDS = [
    "models",
    "finetune",
    "attack",
    "audit",
    "run",
    "demo",
    "scan",
    "backdoor",
    "defend",
    "audit_dp",
]

DESCRIPTION = """\
Audit and protect the fine-tuning of large language models.

  tuneguard models                      list the embedded models (no download needed)
  tuneguard finetune --model smollm2-135m --data notes.jsonl --method lora --out runs/lora
  tuneguard attack --target runs/lora --members train.jsonl --nonmembers heldout.jsonl --out runs/lora/mia
  tuneguard audit --model smollm2-135m --data notes.jsonl --out runs/audit   (split + fine-tune + attack)
  tuneguard scan adapters/                 flag backdoored LoRA adapters (exit 1 when one is flagged)
  tuneguard <command> --help            options of one command
"""


def command_name(module: str) -> str:
    """The command a module in tuneguard.commands adds (``audit_dp`` -> ``audit-dp``)."""
    return module.replace("_", "-")


def _summary(module: str) -> str:
    """A command's one-line help, read from its module docstring without importing it ("`tuneguard X`: what")."""
    spec = importlib.util.find_spec(f"tuneguard.commands.{module}")
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    first = doc.split("\n\n")[0].replace("\n", " ")
    return first.split(": ", 1)[-1].rstrip(".")


def build_parser(commands: Collection[str] | None = None, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only the modules of ``commands`` are imported and registered (all of them when None);
    the others appear in the listing with their summary, so ``--help`` and ``--version`` import no heavy library.
    A command with sub-commands of its own whose ``register`` takes ``argv`` (the command line) builds only the one
    it names, for the same reason. ``-v`` / ``--verbose`` is taken before or after a (sub-)command."""
    parser = argparse.ArgumentParser(
        prog="tuneguard", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tuneguard {__version__}")
    parser.add_argument(*VERBOSE, action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        if commands is None or command_name(module) in commands:
            register = importlib.import_module(f"tuneguard.commands.{module}").register
            if argv is not None and "argv" in inspect.signature(register).parameters:
                register(sub, argv=argv)
            else:
                register(sub)
        else:
            sub.add_parser(command_name(module), help=_summary(module), add_help=False)
    _verbose_everywhere(sub)
    return parser


VERBOSE = ("-v", "--verbose")
VERBOSE_HELP = "log more, and show tracebacks on errors"


def _verbose_everywhere(sub: argparse._SubParsersAction) -> None:
    """``-v`` on every (sub-)command too, so ``tuneguard attack -v ...`` means ``tuneguard -v attack ...``: unset
    there (SUPPRESS), it leaves the value given before the command as it is."""
    for parser in sub.choices.values():
        if not any(o in parser._option_string_actions for o in VERBOSE):
            parser.add_argument(*VERBOSE, action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbose_everywhere(action)


def _quiet_libraries() -> None:
    """Keep the terminal for tuneguard's own progress bars and results: no per-load bars or deprecation notices.
    Set through the environment, read when the libraries load, so that nothing is imported here."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _call(args: argparse.Namespace) -> int:
    """Run the command; one that loads models (``add_device_args``) runs with its --device / --dtype settings as
    every load's default, checked before any work. A command that loads models only with some options says when
    (``loads_models``): resolving the device imports torch, seconds that a weight-only scan would wait for nothing."""
    loads_models = getattr(args, "loads_models", None)
    if getattr(args, "device", None) is None or (loads_models is not None and not loads_models(args)):
        return int(args.func(args) or 0)
    from tuneguard.commands import settings_from_args
    from tuneguard.models.device import use_device

    with use_device(settings_from_args(args)):
        return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn user errors into one line on stderr (exit 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    names = {command_name(m) for m in COMMANDS}
    parser = build_parser([a for a in argv if a in names][:1], argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return _call(args)
    except TuneguardError as exc:
        if args.verbose:
            raise
        print(f"tuneguard: error: {printable(str(exc))}", file=sys.stderr)  # a name in it may hold a newline
        return 2
    except OSError as exc:
        # A full disk or a directory that became unwritable mid-run: the user's problem, not a bug; what finished
        # was written atomically and is kept.
        if args.verbose or exc.errno not in DISK_ERRORS:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"tuneguard: error: {os.strerror(exc.errno).lower()}{where}: free some space or choose another "
              "--out / $TUNEGUARD_CACHE; finished stages are saved and the next run resumes from them", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuneguard: interrupted; finished stages are saved and the next run resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
