"""`tuneguard models`: list the embedded models."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the embedded models (usable offline)",
                       description="Embedded models need no hub. Any local model directory, PEFT adapter directory, "
                                   ".gguf file or Hugging Face hub id works wherever a MODEL is asked for too.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tuneguard.models.embedded import EMBEDDED, embedded_is_cached

    width = max(map(len, EMBEDDED))
    for name, description in EMBEDDED.items():
        state = "ready" if embedded_is_cached(name) else "fetched on first use"
        print(f"{name:<{width}}  {description} [{state}]")
    return 0
