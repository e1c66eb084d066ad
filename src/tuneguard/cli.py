"""The ``tuneguard`` command line: one sub-command per module in ``tuneguard.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tuneguard import __version__
from tuneguard.errors import TuneguardError

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


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all sub-commands registered)."""
    parser = argparse.ArgumentParser(
        prog="tuneguard", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tuneguard {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tuneguard.commands.{name}").register(sub)
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal for tuneguard's own progress bars and results: no per-load bars or deprecation notices."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn user errors into one line on stderr (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except TuneguardError as exc:
        if args.verbose:
            raise
        print(f"tuneguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuneguard: interrupted; finished stages are saved and the next run resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
