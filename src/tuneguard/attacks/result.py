"""Typed results of a membership-inference run: one :class:`AttackResult` per attack inside a :class:`MIAResult`.

``to_json()`` gives the plain form written to ``results.json`` (its keys are the report's contract); ``from_json()``
reads it back, so a saved run can be re-rendered or compared without re-scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

@dataclass
class AttackResult:
    """One attack's scores (higher = member), its raw statistic, the labels and the metrics computed from them.

    ``not_applicable`` says why the figure means nothing here (e.g. a reference-model attack whose reference *is*
    the target); such a result is reported but kept out of averages.
    """

    scores: np.ndarray
    raw: np.ndarray
    raw_name: str
    labels: np.ndarray
    params: dict[str, Any]
    metrics: dict[str, Any]
    summary: str = ""
    note: str | None = None
    cost: dict | None = None
    not_applicable: str | None = None

    @property
    def auc(self) -> float:
        return float(self.metrics["auc"])

    def tpr(self, fpr: float) -> float | None:
        """TPR at the FPR level ``fpr`` (None where too few non-members support it)."""
        return self.metrics["tpr"].get(_fpr_key(fpr))

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("cost", "not_applicable"):  # optional keys stay absent, as in results.json before them
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttackResult:
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("scores", "raw"):
            kwargs[key] = np.asarray(kwargs[key], dtype=float)
        kwargs["labels"] = np.asarray(kwargs["labels"], dtype=int)
        return cls(**kwargs)


@dataclass
class MIAResult:
    """Everything a membership-inference run produced: settings, per-attack results, what was skipped and why,
    warnings, the ReCall shots and the cost.

    ``origin[i]`` is where the i-th evaluated text (the i-th score of every attack) came from: its index in the
    members (label 1) or non-members (label 0) given to the run, so a report can name the user's records. Empty in
    results saved before it existed.
    """

    title: str
    settings: dict[str, Any]
    attacks: dict[str, AttackResult]
    skipped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shots: dict[str, list[str]] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    origin: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "settings": self.settings,
                "attacks": {n: a.to_json() for n, a in self.attacks.items()}, "skipped": self.skipped,
                "warnings": self.warnings, "shots": self.shots, "cost": self.cost,
                "origin": self.origin}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MIAResult:
        return cls(title=data["title"], settings=data["settings"],
                   attacks={n: AttackResult.from_json(a) for n, a in data["attacks"].items()},
                   skipped=data.get("skipped", []), warnings=data.get("warnings", []),
                   shots=data.get("shots", {}), cost=data.get("cost", {}),
                   origin=data.get("origin", []))


def _fpr_key(fpr: float) -> str:
    return f"{fpr:g}"
