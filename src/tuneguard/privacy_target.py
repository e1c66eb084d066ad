"""A privacy target on the strongest attack (``tpr@1%<=0.05``, ``auc<=0.6``): what ``defend compare`` selects a
regime by and what the leak monitor's budget stops training at."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tuneguard.errors import TuneguardError

DEFAULT_TARGET = "tpr@1%<=0.05"
SMALL_SPLIT_TARGET = "auc<=0.6"  # the target to suggest when the split has too few non-members for TPR at 1% FPR

_TARGET = re.compile(r"^\s*(?:(tpr)\s*@\s*([0-9]*\.?[0-9]+)\s*%|(auc))\s*<=\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$",
                     re.IGNORECASE)


def pct(x: float) -> str:
    """A share as a percentage, as targets and reports print one: whole numbers from 10% up or when exact, else one
    decimal (0.1%, 5.6%)."""
    v = 100 * x
    return f"{v:.0f}%" if v >= 10 or v == round(v) else f"{v:.1f}%"


@dataclass(frozen=True)
class Target:
    """A privacy target on a regime's strongest attack: its TPR at FPR ``fpr`` (``metric`` "tpr") or its AUC
    (``metric`` "auc") at most ``bound``. Lower is more private for both; guessing gives TPR = FPR and AUC = 0.5."""

    metric: str
    bound: float
    fpr: float | None = None

    @property
    def text(self) -> str:
        """The target as ``--target`` takes it: ``tpr@1%<=0.05``, ``auc<=0.6``."""
        head = f"tpr@{100 * self.fpr:g}%" if self.metric == "tpr" else "auc"
        return f"{head}<={self.bound:g}"

    @property
    def label(self) -> str:
        """The measured quantity in words: ``TPR at 1% FPR``, ``AUC``."""
        return f"TPR at {100 * self.fpr:g}% FPR" if self.metric == "tpr" else "AUC"

    @property
    def nonmembers_needed(self) -> int:
        """Evaluated non-members the split must hold before the target is measurable: 1/FPR for a TPR (the lowest
        non-zero FPR n non-members measure is 1/n, as :func:`tuneguard.metrics.evaluate` counts it), 2 for an AUC."""
        from tuneguard.metrics import nonmembers_needed

        return nonmembers_needed(self.fpr) if self.metric == "tpr" else 2

    def met(self, value: float | None) -> bool:
        """Whether a strongest-attack figure meets the target (a figure that could not be measured never does)."""
        return value is not None and math.isfinite(value) and value <= self.bound

    def format(self, value: float | None) -> str:
        """A figure of this target's metric: a TPR as a percentage, an AUC with 3 decimals."""
        if value is None or not math.isfinite(value):
            return "not measured"
        return pct(value) if self.metric == "tpr" else f"{value:.3f}"

    def to_json(self) -> dict:
        return {"text": self.text, "metric": self.metric, "fpr": self.fpr, "bound": self.bound, "label": self.label}

    @classmethod
    def from_json(cls, saved: dict) -> Target:
        """The target a compare.json records (:meth:`to_json`)."""
        return cls(saved["metric"], saved["bound"], saved.get("fpr"))


def parse_target(text: str) -> Target:
    """``tpr@1%<=0.05`` (TPR at 1% FPR at most 5%; the bound may be written 5%) or ``auc<=0.6``. The FPR must be one
    the metrics measure (0.1%, 1%, 10%)."""
    from tuneguard.metrics import ALPHAS

    match = _TARGET.match(text)
    if match is None:
        raise TuneguardError(f"privacy target {text!r} must read tpr@FPR%<=BOUND or auc<=BOUND, e.g. "
                             f"{DEFAULT_TARGET!r} or {SMALL_SPLIT_TARGET!r}")
    tpr, fpr_pct, _, bound_text, percent = match.groups()
    bound = float(bound_text) / (100 if percent else 1)
    if tpr:
        fpr = float(fpr_pct) / 100
        if not any(math.isclose(fpr, a) for a in ALPHAS):
            raise TuneguardError(f"privacy target {text!r}: TPR is measured at FPR "
                                 f"{', '.join(f'{100 * a:g}%' for a in ALPHAS)}; use one of them")
        fpr = next(a for a in ALPHAS if math.isclose(fpr, a))
        if not 0 <= bound < 1:
            raise TuneguardError(f"privacy target {text!r}: the TPR bound must be in [0, 1), got {bound:g}")
        return Target("tpr", bound, fpr)
    if not 0 < bound <= 1:
        raise TuneguardError(f"privacy target {text!r}: the AUC bound must be in (0, 1], got {bound:g}")
    return Target("auc", bound)


def suggested_target(n_nonmembers: int) -> str:
    """The target to suggest for a split with ``n_nonmembers`` non-members: TPR at 1% FPR where they can measure
    it, else the AUC."""
    return DEFAULT_TARGET if n_nonmembers >= parse_target(DEFAULT_TARGET).nonmembers_needed else SMALL_SPLIT_TARGET
