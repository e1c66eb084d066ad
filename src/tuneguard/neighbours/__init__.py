"""Neighbour generators (perturbations of a text), one module each behind a registry.

Adding one = a module with a :class:`NeighbourGenerator` subclass (its parameters declared as a ``Params``
dataclass) + one ``NEIGHBOURS.register`` line below.
"""

from __future__ import annotations

from tuneguard.neighbours.base import NeighbourGenerator, NeighbourParams, NeighbourSet, item_seed
from tuneguard.registry import Registry

# Imported on use, so a generator's heavy dependencies load only when it is chosen.
NEIGHBOURS: Registry[NeighbourGenerator] = Registry("neighbour generator",
                                                   "tuneguard.neighbours.base:NeighbourGenerator")
NEIGHBOURS.register("t5", "tuneguard.neighbours.t5:T5Neighbours")
NEIGHBOURS.register("lm-fill", "tuneguard.neighbours.lm_fill:LMFillNeighbours")
NEIGHBOURS.register("wordnet", "tuneguard.neighbours.wordnet:WordNetNeighbours")
NEIGHBOURS.register("random-fill", "tuneguard.neighbours.random_fill:RandomFillNeighbours")

__all__ = ["NEIGHBOURS", "NeighbourGenerator", "NeighbourParams", "NeighbourSet", "item_seed"]
