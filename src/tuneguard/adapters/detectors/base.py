"""What every detector returns, and the calibration that turns its score into a verdict."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
from sklearn.metrics import roc_auc_score

from tuneguard.adapters.adapter_files import AdapterFiles
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, read_json

DIRECTIONS = ("higher", "lower", "two-sided")
CALIBRATION_FORMAT = "tuneguard-backdoor-calibration/1"


@dataclass
class DetectorResult:
    """One detector's statistics for one adapter (higher-is-suspicious is not assumed; see Calibration)."""

    detector: str
    adapter: str
    statistics: dict[str, float]
    details: dict = field(default_factory=dict)


class Detector(Protocol):
    """A backdoor detector: ``score`` one adapter; ``statistics`` names what it reports."""

    name: str
    statistics: tuple[str, ...]
    default_statistic: str
    default_direction: str  # used when calibration has no poisoned adapters to learn the direction from

    def score(self, adapter: AdapterFiles) -> DetectorResult: ...

    def settings(self) -> dict: ...


@dataclass
class Calibration:
    """A threshold for one detector statistic, valid for one (base model, rank, task).

    The threshold is the most extreme score among clean adapters (FPR 0 on that cohort). ``direction`` is learned
    from poisoned adapters when some were given ("higher"/"lower" = the side on which they lie); with clean adapters
    only, it is the detector's default, and "two-sided" flags anything outside the clean range.
    """

    detector: str
    statistic: str
    base_model: str | None
    rank: int
    task: str | None
    direction: str
    low: float
    high: float
    clean_scores: list[float]
    poisoned_scores: list[float] = field(default_factory=list)
    auroc: float | None = None  # on the calibration cohort, oriented by ``direction``
    settings: dict = field(default_factory=dict)
    format: str = CALIBRATION_FORMAT

    def flags(self, score: float) -> bool:
        """True when ``score`` lies beyond the clean cohort on the suspicious side."""
        if self.direction == "higher":
            return score > self.high
        if self.direction == "lower":
            return score < self.low
        return score > self.high or score < self.low

    def mismatch(self, adapter: AdapterFiles, task: str | None = None) -> str | None:
        """Why this calibration does not apply to ``adapter`` (None when it does)."""
        if self.base_model and adapter.base_model and _norm_ref(adapter.base_model) != _norm_ref(self.base_model):
            return f"base model {adapter.base_model!r} is not the calibrated {self.base_model!r}"
        if adapter.rank != self.rank:
            return f"rank {adapter.rank} is not the calibrated rank {self.rank}"
        if task and self.task and task != self.task:
            return f"task {task!r} is not the calibrated task {self.task!r}"
        return None

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read a calibration file written by ``save``."""
        try:
            data = read_json(path)
        except (OSError, ValueError) as exc:
            raise TuneguardError(f"cannot read calibration file {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise TuneguardError(f"{path} is not a tuneguard calibration file; "
                                 "make one with `tuneguard backdoor calibrate`")
        return cls(**data)


def _norm_ref(ref: str) -> str:
    return ref.rstrip("/").lower()


def calibrate(
    detector: Detector,
    clean: list[DetectorResult],
    poisoned: list[DetectorResult] = (),
    *,
    statistic: str | None = None,
    base_model: str | None,
    rank: int,
    task: str | None,
) -> Calibration:
    """Fit a zero-false-positive threshold on clean adapters' scores; learn the direction when poisoned ones exist."""
    statistic = statistic or detector.default_statistic
    if statistic not in detector.statistics:
        raise TuneguardError(f"detector {detector.name} has no statistic {statistic!r}; "
                             f"choose from {', '.join(detector.statistics)}")
    if len(clean) < 2:
        raise TuneguardError(f"calibration needs at least 2 clean adapters, got {len(clean)}; add more clean adapters")
    c = np.array([r.statistics[statistic] for r in clean], dtype=float)
    p = np.array([r.statistics[statistic] for r in poisoned], dtype=float)
    direction, auroc = detector.default_direction, None
    if len(p):
        labels = np.r_[np.zeros(len(c)), np.ones(len(p))]
        raw = float(roc_auc_score(labels, np.r_[c, p]))
        direction = "higher" if raw >= 0.5 else "lower"
        auroc = max(raw, 1.0 - raw)
    return Calibration(
        detector=detector.name, statistic=statistic, base_model=base_model, rank=rank, task=task,
        direction=direction, low=float(c.min()), high=float(c.max()), clean_scores=c.tolist(),
        poisoned_scores=p.tolist(), auroc=auroc, settings=detector.settings(),
    )
