"""Membership inference attacks, one module each behind a registry; ``run_attacks`` runs a suite.

Adding an attack = a module with a :class:`tuneguard.attacks.base.Attack` subclass (its parameters declared as a
``Params`` dataclass) + one ``ATTACKS.register`` line below.
"""

from __future__ import annotations

from tuneguard.attacks.base import Attack, AttackContext, AttackOutput
from tuneguard.attacks.result import AttackResult, MIAResult
from tuneguard.errors import TuneguardError
from tuneguard.registry import Registry

# The registration order is the run order (the ensemble reads the scores of those before it).
ATTACKS: Registry[Attack] = Registry("attack", "tuneguard.attacks.base:Attack")
ATTACKS.register("loss", "tuneguard.attacks.loss:LossAttack")
ATTACKS.register("zlib", "tuneguard.attacks.zlib:ZlibAttack")
ATTACKS.register("lowercase", "tuneguard.attacks.lowercase:LowercaseAttack")
ATTACKS.register("min-k", "tuneguard.attacks.min_k:MinKAttack")
ATTACKS.register("min-k++", "tuneguard.attacks.min_k_plus_plus:MinKPlusPlusAttack")
ATTACKS.register("dc-pdd", "tuneguard.attacks.dc_pdd:DCPDDAttack")
ATTACKS.register("ratio", "tuneguard.attacks.ratio:RatioAttack")
ATTACKS.register("ez-mia", "tuneguard.attacks.ez_mia:EZMIAAttack")
ATTACKS.register("wbc", "tuneguard.attacks.wbc:WBCAttack")
ATTACKS.register("ht-mia", "tuneguard.attacks.ht_mia:HTMIAAttack")
ATTACKS.register("recall", "tuneguard.attacks.recall:RecallAttack")
ATTACKS.register("con-recall", "tuneguard.attacks.con_recall:ConRecallAttack")
ATTACKS.register("gradnorm", "tuneguard.attacks.gradnorm:GradNormAttack")
ATTACKS.register("neighbourhood", "tuneguard.attacks.neighbourhood:NeighbourhoodAttack")
ATTACKS.register("spv-mia", "tuneguard.attacks.spv_mia:SPVMIAAttack")
ATTACKS.register("bag-of-words", "tuneguard.attacks.bag_of_words:BagOfWordsAttack")
ATTACKS.register("ensemble", "tuneguard.attacks.ensemble:EnsembleAttack")

# What `--attacks all` means: every attack that needs nothing the user must bring (dc-pdd needs a corpus) and costs
# no more than a few passes per text (the neighbour attacks, SPV-MIA and GradNorm's backward passes are opt-in).
# EZ-MIA, WBC and the hard-token comparison read the same two passes as ratio (target and reference): free beside it.
DEFAULT_ATTACKS = ("loss", "zlib", "lowercase", "min-k", "min-k++", "ratio", "ez-mia", "wbc", "ht-mia", "recall",
                   "con-recall", "bag-of-words", "ensemble")


def resolve_attacks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Attack names from a comma-separated string or a list (``all`` = DEFAULT_ATTACKS), in registry order."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for part in names for n in (DEFAULT_ATTACKS if part == "all" else [part]) if n]
    for n in names:
        ATTACKS.check(n)
    return [n for n in ATTACKS if n in names]


def make_attacks(spec: str | list[str] | tuple[str, ...], params: dict[str, dict] | None = None) -> dict[str, Attack]:
    """The attacks of ``spec`` (see :func:`resolve_attacks`) built with their ``params``: every declared parameter
    and each attack's settings checked, with no model or data touched (``audit`` calls it before fine-tuning)."""
    params = params or {}
    names = resolve_attacks(spec)
    unknown = set(params) - set(names)
    if unknown:
        raise TuneguardError(f"parameters given for attack(s) not being run: {', '.join(sorted(unknown))}")
    instances = {n: ATTACKS.make(n, **params.get(n, {})) for n in names}
    for attack in instances.values():
        attack.check_needs(names)
    return instances


def run_attacks(*args, **kwargs) -> MIAResult:
    """See :func:`tuneguard.attacks.runner.run_attacks`."""
    from tuneguard.attacks.runner import run_attacks as run

    return run(*args, **kwargs)


__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackOutput", "AttackResult", "DEFAULT_ATTACKS", "MIAResult",
           "make_attacks", "resolve_attacks", "run_attacks"]
