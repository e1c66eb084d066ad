"""Scoring under ``accelerate launch``: the processes a run belongs to, which one writes results, and what they
exchange so that each forwards its share of one plan and every process ends with every score."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tuneguard.scoring.engine import Encoded
    from tuneguard.scoring.token_scores import TokenScores


def launched_processes():
    """The ``accelerate launch`` (torchrun) processes this one belongs to, or None when it runs alone (accelerate is
    then not imported)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    # As the training loop's Accelerator: without a GPU, accelerate joins the processes only when told cpu=True.
    state = PartialState(cpu=not torch.cuda.is_available())
    return state if state.num_processes > 1 else None


def main_process() -> bool:
    """Whether this process writes results: always when it runs alone, else only the main process of an
    ``accelerate launch`` run (every process scores its share and gets every score)."""
    processes = launched_processes()
    return processes is None or processes.is_main_process


def agree_on_inputs(todo: dict[str, Encoded], keys: list[str], texts: list[str], prefixes: list[str],
                    encode: Callable[[str, str], Encoded]) -> dict[str, Encoded]:
    """What every process forwards: the union of the inputs each one is missing, in the texts' order. Each process
    deals itself a share of one plan, so the plans must be equal; but the disk cache is shared, and a process that
    starts later finds scores another has just stored, so its own todo would be shorter and some inputs would fall in
    no process's share."""
    from accelerate.utils import gather_object

    missing = set().union(*gather_object([sorted(todo)]))
    agreed: dict[str, Encoded] = {}
    for key, text, prefix in zip(keys, texts, prefixes):
        if key in missing and key not in agreed:
            agreed[key] = todo[key] if key in todo else encode(text, prefix)
    return agreed


def gather_scores(done: dict[str, TokenScores], forwarded: int,
                  calls: int) -> tuple[dict[str, TokenScores], int, int]:
    """Every process's scores, and the texts forwarded and model calls made summed over the processes, given this
    process's own."""
    from accelerate.utils import gather_object

    shares = gather_object([(done, forwarded, calls)])
    every: dict[str, TokenScores] = {}
    for scores, _, _ in shares:
        every.update(scores)
    return every, sum(n for _, n, _ in shares), sum(c for _, _, c in shares)
