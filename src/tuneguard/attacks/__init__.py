"""Membership inference attacks, one module each, behind a registry; ``run_attacks`` runs a suite.

Adding an attack = a module defining ``ATTACK`` (a :class:`tuneguard.attacks.base.Attack` subclass) + one line in
``REGISTRY``.
"""

from __future__ import annotations

import importlib

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.errors import TuneguardError

# name -> module; the order is the run order (the ensemble reads the scores of those before it).
REGISTRY: dict[str, str] = {
    "loss": "tuneguard.attacks.loss",
    "zlib": "tuneguard.attacks.zlib",
    "lowercase": "tuneguard.attacks.lowercase",
    "min-k": "tuneguard.attacks.min_k",
    "min-k++": "tuneguard.attacks.min_k_plus_plus",
    "dc-pdd": "tuneguard.attacks.dc_pdd",
    "ratio": "tuneguard.attacks.ratio",
    "recall": "tuneguard.attacks.recall",
    "con-recall": "tuneguard.attacks.con_recall",
    "neighbourhood": "tuneguard.attacks.neighbourhood",
    "spv-mia": "tuneguard.attacks.spv_mia",
    "bag-of-words": "tuneguard.attacks.bag_of_words",
    "ensemble": "tuneguard.attacks.ensemble",
}

# What `--attacks all` means: every attack that needs nothing the user must bring (dc-pdd needs a corpus).
DEFAULT_ATTACKS = ("loss", "zlib", "lowercase", "min-k", "min-k++", "ratio", "recall", "con-recall", "bag-of-words",
                   "ensemble")


def attack_class(name: str) -> type[Attack]:
    """The attack class registered under ``name``."""
    if name not in REGISTRY:
        raise TuneguardError(f"unknown attack {name!r}: choose from {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).ATTACK


def resolve_attacks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Attack names from a comma-separated string or a list (``all`` = DEFAULT_ATTACKS), in registry order."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for part in names for n in (DEFAULT_ATTACKS if part == "all" else [part]) if n]
    for n in names:
        attack_class(n)
    return [n for n in REGISTRY if n in names]


def run_attacks(*args, **kwargs):
    """See :func:`tuneguard.attacks.runner.run_attacks`."""
    from tuneguard.attacks.runner import run_attacks as run

    return run(*args, **kwargs)


__all__ = ["Attack", "AttackContext", "AttackOutput", "DEFAULT_ATTACKS", "REGISTRY", "attack_class",
           "resolve_attacks", "run_attacks"]
