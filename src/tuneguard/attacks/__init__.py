"""Membership inference attacks, one module each behind a registry; ``run_attacks`` runs a suite.

Adding an attack = a module with a :class:`tuneguard.attacks.base.Attack` subclass (its parameters declared as a
``Params`` dataclass) + one ``ATTACKS.register`` line below. Named suites (``--attacks fast|all|soft-table``) expand
where names are resolved; ``fast`` is derived from each attack's declared passes, so a new attack reading only the
target's and the reference's pass joins it by its declaration. The attacks over shadow models (``needs`` "shadows")
join whatever suite a run names when it trains shadows (``--shadows K --population FILE``), and no suite otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

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
# RMIA first: its one request scores the evaluated texts and the population under each shadow, which LiRA then reads.
ATTACKS.register("rmia", "tuneguard.attacks.rmia:RMIAAttack")
ATTACKS.register("lira", "tuneguard.attacks.lira:LiRAAttack")
ATTACKS.register("ensemble", "tuneguard.attacks.ensemble:EnsembleAttack")
ATTACKS.register("ensemble-extended", "tuneguard.attacks.ensemble_extended:EnsembleExtendedAttack")

# What `--attacks all` means: every attack that needs nothing the user must bring (dc-pdd needs a corpus) and costs
# no more than a few passes per text (the neighbour attacks, SPV-MIA and GradNorm's backward passes are opt-in).
# EZ-MIA, WBC and the hard-token comparison read the same two passes as ratio (target and reference): free beside it.
# Both ensembles: SOFT's features (its Table 1) and the extended ones as a row of their own (`all` always has a
# reference model, which the extended features read).
ALL_ATTACKS = ("loss", "zlib", "lowercase", "min-k", "min-k++", "ratio", "ez-mia", "wbc", "ht-mia", "recall",
               "con-recall", "bag-of-words", "ensemble", "ensemble-extended")
# The ten attacks of SOFT's Table 1 (the average AUC over them is the paper's privacy figure).
SOFT_TABLE = ("loss", "zlib", "lowercase", "min-k", "min-k++", "ratio", "recall", "con-recall", "bag-of-words",
              "ensemble")
# Resources only the user can bring: an attack needing one is never in a suite chosen for it (the shadow attacks
# join a run that trains shadows: resolve_suite(shadows=True)).
USER_NEEDS = frozenset({"corpus", "shadows"})
NO_REFERENCE = "needs a reference model, and none was given or recorded with the target"


def fast_attacks() -> tuple[str, ...]:
    """Every attack that needs nothing only the user can bring and reads no forward pass beyond the target's and the
    reference's pass of each text (by its declared :meth:`Attack.passes`), in registry order: a new such attack
    joins by its declaration alone. Imports every attack."""
    # ensemble-extended is fast's own ensemble (features=extended) under another name: once is enough.
    return tuple(n for n in ATTACKS if not ATTACKS.get(n).needs & USER_NEEDS and n != "ensemble-extended" and
                 ATTACKS.make(n).reads_shared_passes_only())


def shadow_attacks() -> tuple[str, ...]:
    """The attacks reading shadow models (``needs`` "shadows"), in registry order. Imports every attack."""
    return tuple(n for n in ATTACKS if "shadows" in ATTACKS.get(n).needs)


@dataclass(frozen=True)
class NamedSuite:
    """A set of attacks named on ``--attacks``: what it is, its members (resolved when used), the parameters it sets
    (the user's override them), and whether it runs without a reference model by leaving out the attacks needing
    one (else those attacks are refused)."""

    summary: str
    members: Callable[[], tuple[str, ...]]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference_optional: bool = False


SUITES: dict[str, NamedSuite] = {
    "fast": NamedSuite("every attack reading only the target's and the reference's pass of each text, and the "
                       "ensemble over them (features=extended); without a reference model, the single-pass ones",
                       fast_attacks, {"ensemble": {"features": "extended"}}, reference_optional=True),
    "all": NamedSuite("every attack needing nothing the user must bring and at most a few passes per text, with "
                      "both ensembles (SOFT's features; the extended ones as ensemble-extended)", lambda: ALL_ATTACKS),
    "soft-table": NamedSuite("the ten attacks of SOFT's Table 1", lambda: SOFT_TABLE),
}
DEFAULT_SUITE = "fast"  # of `attack`, `audit` and `demo`
DEFAULT_SHADOWS = 4  # shadow models a run trains when it is given a population and no count


@dataclass(frozen=True)
class Suite:
    """A resolved attack list: the names in run order, the parameters the named suites in it set, and the attacks a
    suite left out (name -> why)."""

    names: list[str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)


def resolve_suite(spec: str | list[str] | tuple[str, ...], *, reference: bool = True, shadows: bool = False) -> Suite:
    """Attack names and suite names (:data:`SUITES`), comma-separated or a list, as a :class:`Suite` in registry
    order. ``reference=False`` (no reference model) leaves out of a ``reference_optional`` suite the attacks that
    need one; an attack named on its own is kept (and refused by the runner). ``shadows=True`` (the run trains
    shadow models) adds the attacks over them. A later suite's parameters win."""
    parts = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    params: dict[str, dict[str, Any]] = {}
    left_out: dict[str, str] = {}
    for part in filter(None, parts):
        suite = SUITES.get(part)
        if suite is None:
            if part not in ATTACKS:
                raise TuneguardError(f"unknown attack {part!r}: choose from {', '.join(ATTACKS)}, or a suite: "
                                     f"{', '.join(SUITES)}")
            names.append(part)
            continue
        members = list(suite.members())
        if not reference and suite.reference_optional:
            left_out |= {n: NO_REFERENCE for n in members if "reference" in ATTACKS.get(n).needs}
            members = [n for n in members if n not in left_out]
        names += members
        for name, values in suite.params.items():
            params[name] = {**params.get(name, {}), **values}
    if shadows:
        names += shadow_attacks()
    ordered = [n for n in ATTACKS if n in names]
    return Suite(ordered, {n: p for n, p in params.items() if n in ordered},
                 {n: why for n, why in left_out.items() if n not in ordered})


def resolve_attacks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Attack names from a comma-separated string or a list of attack and suite names, in registry order."""
    return resolve_suite(spec).names


def make_attacks(spec: str | list[str] | tuple[str, ...] | Suite,
                 params: dict[str, dict] | None = None) -> dict[str, Attack]:
    """The attacks of ``spec`` (see :func:`resolve_suite`) built with the suites' parameters overridden by
    ``params``: every declared parameter and each attack's settings checked, with no model or data touched
    (``audit`` calls it before fine-tuning)."""
    suite = spec if isinstance(spec, Suite) else resolve_suite(spec)
    params = params or {}
    unknown = set(params) - set(suite.names)
    if unknown:
        raise TuneguardError(f"parameters given for attack(s) not being run: {', '.join(sorted(unknown))}")
    instances = {n: ATTACKS.make(n, **{**suite.params.get(n, {}), **params.get(n, {})}) for n in suite.names}
    for attack in instances.values():
        attack.check_needs(suite.names)
    return instances


def __getattr__(name: str) -> Any:
    # run_attacks (tuneguard.attacks.runner) imports torch and the scoring engine: only when it is used, so that
    # building the command line or reading the registry stays light.
    if name == "run_attacks":
        from tuneguard.attacks.runner import run_attacks

        return run_attacks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALL_ATTACKS", "ATTACKS", "Attack", "AttackContext", "AttackOutput", "AttackResult", "DEFAULT_SHADOWS",
           "DEFAULT_SUITE", "MIAResult", "SOFT_TABLE", "SUITES", "Suite", "fast_attacks", "make_attacks",
           "resolve_attacks", "resolve_suite", "run_attacks", "shadow_attacks"]
