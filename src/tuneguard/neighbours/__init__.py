"""Neighbour generators (perturbations of a text), one module each behind a registry.

Adding one = a module with a :class:`NeighbourGenerator` subclass + one line in ``GENERATORS``.
"""

from __future__ import annotations

import inspect
from typing import Iterable

from tuneguard.errors import TuneguardError
from tuneguard.neighbours.base import NeighbourGenerator, NeighbourSet, item_seed
from tuneguard.registry import load_entry

# name -> "module:class" (imported on use, so a generator's heavy dependencies load only when it is chosen)
GENERATORS: dict[str, str] = {
    "t5": "tuneguard.neighbours.t5:T5Neighbours",
    "lm-fill": "tuneguard.neighbours.lm_fill:LMFillNeighbours",
    "wordnet": "tuneguard.neighbours.wordnet:WordNetNeighbours",
    "random-fill": "tuneguard.neighbours.random_fill:RandomFillNeighbours",
}


def generator_class(name: str) -> type[NeighbourGenerator]:
    """The class registered under ``name``."""
    return load_entry(GENERATORS, name, "neighbour generator")


def generator_parameters(name: str) -> tuple[set[str], set[str]]:
    """(all keyword parameters, the required ones) that generator ``name`` takes, read from its constructors."""
    accepted, required = set(), set()
    for klass in generator_class(name).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                accepted.add(p.name)
                if p.default is p.empty:
                    required.add(p.name)
    return accepted, required


def check_params(name: str, keys: Iterable[str]) -> None:
    """Raise TuneguardError when the option names ``keys`` hold one generator ``name`` does not take, or lack one it
    needs."""
    keys = set(keys)
    accepted, required = generator_parameters(name)
    unknown = sorted(keys - accepted)
    if unknown:
        raise TuneguardError(f"neighbour generator {name!r} takes no option {unknown[0]!r} (it takes: "
                             f"{', '.join(sorted(accepted))})")
    missing = sorted(required - keys)
    if missing:
        raise TuneguardError(f"neighbour generator {name!r} needs {missing[0]}= (e.g. a model directory)")


def make_generator(name: str, **params) -> NeighbourGenerator:
    """Build the generator ``name``: ``t5`` and ``lm-fill`` need ``model=``, ``random-fill`` takes ``corpus=``."""
    check_params(name, params)  # a dict iterates over its keys
    return generator_class(name)(**params)


__all__ = ["GENERATORS", "NeighbourGenerator", "NeighbourSet", "check_params", "generator_class",
           "generator_parameters", "item_seed", "make_generator"]
