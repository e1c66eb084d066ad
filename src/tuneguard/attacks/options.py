"""How an attack run scores and measures, declared once: the ReCall shots, the scoring batches and window, and the
bootstrap draws. ``run_attacks``' keyword defaults, the options of `attack`, `audit`, `demo` and `defend compare`,
and the experiment file's ``[attack_options]`` (:class:`tuneguard.experiment.schema.AttackSuite`) read these
declarations. Imports no torch: the command line is built from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tuneguard.params import Params, param


@dataclass
class AttackOptions(Params):
    """``run_attacks``' keyword arguments of these names, with their defaults and ranges."""

    n_shots: int = param(7, "ReCall / CON-ReCall shots drawn from the non-members / members (not evaluated)", ge=1)
    batch_size: int = param(8, "texts per forward pass", ge=1)
    batch_tokens: int | None = param(None, "fill each forward pass up to this many padded tokens (longest text x "
                                           "texts) instead of a fixed batch size; on a CUDA out-of-memory error the "
                                           "budget halves and the batch is retried", ge=1)
    max_length: int | None = param(None, "score the first N tokens of each text (default: the window the target was "
                                         "trained on, from its run record, else the model context)", ge=1)
    n_boot: int = param(1000, "bootstrap draws for the CIs", ge=0)


# The declared defaults, for the keyword arguments that take them (run_attacks').
DEFAULTS = AttackOptions()


def attack_option(name: str, **changes: Any) -> Any:
    """AttackOptions' declaration of its field ``name`` (default, help, bounds) for another ``Params`` class that
    takes the same setting (the experiment's ``[attack_options]``); ``changes`` replace what that class means
    otherwise (``help=``, a bound such as ``ge=``)."""
    declared = next(f for f in dataclasses.fields(AttackOptions) if f.name == name)
    unknown = set(changes) - set(declared.metadata)
    if unknown:
        raise TypeError(f"attack_option({name!r}): no declared {', '.join(sorted(unknown))} to replace")
    return dataclasses.field(default=declared.default, metadata={**declared.metadata, **changes})
