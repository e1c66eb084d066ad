"""The attack interface: what an attack declares, what it receives, what it returns.

An attack is a class with a ``name``, the ``needs`` it declares, its default ``params``, and ``run(ctx)``. It gets an
:class:`AttackContext` holding the evaluation texts and labels, the target's scoring engine, and whatever it declared
(a reference engine, ReCall shots, a token-frequency corpus, the other attacks' outputs). It returns an
:class:`AttackOutput` whose ``scores`` are oriented higher = member, plus the raw statistic (for comparison with
toolkits that use the opposite sign, e.g. MIMIR's loss-like scores).

Adding an attack = one module defining ``ATTACK = MyAttack`` + one line in ``tuneguard.attacks.REGISTRY``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tuneguard.errors import TuneguardError
from tuneguard.scoring import ScoringEngine, TokenScores

# What an attack may declare in ``needs``.
NEEDS = frozenset({"reference", "nonmember_shots", "member_shots", "corpus", "results"})


@dataclass
class AttackOutput:
    """Per evaluated text: ``scores`` (higher = member; NaN where the attack could not score) and ``raw``."""

    scores: np.ndarray
    raw: np.ndarray
    raw_name: str
    note: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class AttackContext:
    """Everything an attack may use. ``results`` holds the outputs of the attacks that ran before it."""

    texts: list[str]
    labels: np.ndarray
    target: ScoringEngine
    reference: ScoringEngine | None = None
    nonmember_shots: list[str] = field(default_factory=list)
    member_shots: list[str] = field(default_factory=list)
    corpus: list[str] | None = None
    seed: int = 0
    results: dict[str, AttackOutput] = field(default_factory=dict)
    progress: bool = True

    def target_scores(self) -> list[TokenScores]:
        """The target's token scores of the evaluation texts (one shared, cached pass)."""
        return self.target.score(self.texts, desc="target")

    def target_ll(self) -> np.ndarray:
        """``LL(x)`` under the target for every evaluation text."""
        return np.array([s.ll for s in self.target_scores()])


class Attack:
    """Base class; see the module docstring."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    defaults: ClassVar[dict[str, Any]] = {}
    summary: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise TuneguardError(f"attack {self.name!r} has no parameter {sorted(unknown)[0]!r} (it takes: {known})")
        self.params = {**self.defaults, **params}

    def run(self, ctx: AttackContext) -> AttackOutput:
        """Score every text of ``ctx`` (higher = member)."""
        raise NotImplementedError


def lowest_k_mean(values: np.ndarray, k: float, *, rounding: str = "ceil") -> float:
    """Mean of the lowest ⌈k·n⌉ values (``rounding="floor"``: int(k·n), MIMIR's choice); NaN for no values."""
    n = len(values)
    if n == 0:
        return float("nan")
    count = math.ceil(k * n) if rounding == "ceil" else int(k * n)
    if count < 1:
        return float("nan")
    return float(np.sort(values)[:count].mean())
