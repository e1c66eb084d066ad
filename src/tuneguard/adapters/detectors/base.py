"""The detector plug-in base, what every detector returns, and the calibration that turns its score into a verdict."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tuneguard.adapters.adapter_files import AdapterFiles
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, read_json
from tuneguard.params import Params, param
from tuneguard.plugin import Plugin

if TYPE_CHECKING:
    from tuneguard.adapters.base_models import BaseModels

# /3 records what the cohort's adapters train (task type, LoRA target modules, modules_to_save), so that a scan can
# call an adapter of another kind not comparable; /2 files (the LoRA scale and a digest of the probe inputs, but none
# of that) still load, with those unknown and not checked; /1 files lack the LoRA scale too, so a scan could not check
# that they apply at all.
CALIBRATION_FORMAT = "tuneguard-backdoor-calibration/3"
_UPGRADED = "tuneguard-backdoor-calibration/2"
_OLD_FORMATS = ("tuneguard-backdoor-calibration/1",)


@dataclass
class DetectorResult:
    """One detector's statistics for one adapter (higher-is-suspicious is not assumed; see Calibration). A statistic
    the detector could not measure is NaN, with the reason under ``details["not_measured"][statistic]``."""

    detector: str
    adapter: str
    statistics: dict[str, float]
    details: dict = field(default_factory=dict)

    def unjudgeable(self, statistic: str) -> str | None:
        """Why ``statistic`` cannot be compared with a threshold (not measured, or non-finite), or None."""
        value = self.statistics[statistic]
        if np.isfinite(value):
            return None
        why = self.details.get("not_measured", {}).get(statistic)
        return f"{statistic} was not measured ({why})" if why else f"{statistic}={value} (non-finite weights?)"


class Detector(Plugin):
    """A backdoor detector: ``score`` one adapter. Subclasses set ``name``, ``summary``, ``Params`` and what they
    report; register them in ``tuneguard.adapters.detectors.DETECTORS``.

    ``settings()`` is what decides the score besides the adapter; calibration files record it and a scan refuses a
    calibration made with other settings. A detector with ``needs_base`` is built as ``Detector(base, **params)``.
    """

    kind: ClassVar[str] = "detector"
    statistics: ClassVar[tuple[str, ...]] = ()
    default_statistic: ClassVar[str] = ""
    # used when calibration has no poisoned adapters to learn the direction from: higher, lower or two-sided
    default_direction: ClassVar[str] = "higher"
    needs_base: ClassVar[bool] = False
    # takes the base model (``Detector(base, **params)``, base possibly None) and uses it when given, without needing it
    reads_base: ClassVar[bool] = False
    bases: BaseModels | None = None  # set by a detector that needs_base; `scan` checks modules against it

    def __init__(self, *, progress: bool = False, **params: Any) -> None:
        super().__init__(**params)
        self.progress = progress

    def score(self, adapter: AdapterFiles) -> DetectorResult:
        raise NotImplementedError

    def settings(self) -> dict:
        """The settings that decide the score (recorded in calibration files and compared by `scan`)."""
        return self.params.to_dict()


@dataclass
class Calibration(Params):
    """A threshold for one detector statistic, valid for one (base model, rank, LoRA scale, task, task type, target
    modules, modules_to_save) and the detector settings it was made with; an adapter of another kind is not
    comparable to it (``mismatch``). The adapter kinds a field leaves unrecorded (None) are not checked.

    The threshold is the most extreme score among clean adapters (FPR 0 on that cohort). ``direction`` is learned
    from poisoned adapters when some were given ("higher"/"lower" = the side on which they lie); with clean adapters
    only, it is the detector's default, and "two-sided" flags anything outside the clean range.
    """

    detector: str = param(help="the detector's registered name")
    statistic: str = param(help="the thresholded statistic")
    base_model: str | None = param(help="base model the cohort was trained from")
    rank: int = param(help="LoRA rank of the cohort", ge=0)
    lora_alpha: float | None = param(help="lora_alpha of the cohort (None: not recorded, not compared)")
    use_rslora: bool = param(help="whether the cohort scales by alpha/sqrt(r) (rsLoRA)")
    task: str | None = param(help="task of the cohort")
    direction: str = param(help="side on which poisoned adapters lie", choices=("higher", "lower", "two-sided"))
    low: float = param(help="lowest clean score")
    high: float = param(help="highest clean score")
    clean_scores: list[float] = param(help="the clean cohort's scores")
    poisoned_scores: list[float] = param([], "the poisoned cohort's scores")
    auroc: float | None = param(None, "on the calibration cohort, oriented by direction")
    settings: dict = param({}, "the detector settings the scores were made with")
    task_type: str | None = param(None, "PEFT task type of the cohort (CAUSAL_LM, SEQ_CLS; None: not recorded)")
    target_modules: list[str] | None = param(None, "kinds of module given LoRA in the cohort, e.g. q_proj (None: not "
                                                   "recorded)")
    modules_to_save: list[str] | None = param(None, "modules the cohort saves as full copies (None: not recorded)")
    notes: list[str] = param([], "what a scan should say about this calibration (e.g. read from an older format)")
    format: str = param(CALIBRATION_FORMAT, "file format", choices=(CALIBRATION_FORMAT,))

    def flags(self, score: float) -> bool:
        """True when ``score`` lies beyond the clean cohort on the suspicious side."""
        if self.direction == "higher":
            return score > self.high
        if self.direction == "lower":
            return score < self.low
        return score > self.high or score < self.low

    def mismatch(self, adapter: AdapterFiles, task: str | None = None) -> str | None:
        """Why this calibration does not apply to ``adapter`` (None when it does)."""
        if self.base_model and adapter.base_model and norm_ref(adapter.base_model) != norm_ref(self.base_model):
            return f"base model {adapter.base_model!r} is not the calibrated {self.base_model!r}"
        if adapter.rank != self.rank:
            return f"rank {adapter.rank} is not the calibrated rank {self.rank}"
        # The statistic includes the LoRA scale, and a cohort trained at another scale has other clean scores.
        if self.lora_alpha is not None and adapter.lora_alpha != self.lora_alpha:
            return f"lora_alpha {adapter.lora_alpha:g} is not the calibrated lora_alpha {self.lora_alpha:g}"
        if adapter.use_rslora != self.use_rslora:
            return f"use_rslora {adapter.use_rslora} is not the calibrated use_rslora {self.use_rslora}"
        if task and self.task and task != self.task:
            return f"task {task!r} is not the calibrated task {self.task!r}"
        # What the adapter trains decides what every statistic measures: an adapter of another task type or with
        # other modules trained has other clean scores, whatever its threshold would say.
        if self.task_type and adapter.task_type and adapter.task_type != self.task_type:
            return f"task type {adapter.task_type} is not the calibrated {self.task_type}"
        if self.target_modules is not None and adapter.target_modules != sorted(self.target_modules):
            return (f"target modules {','.join(adapter.target_modules)} are not the calibrated "
                    f"{','.join(sorted(self.target_modules))}")
        if self.modules_to_save is not None and adapter.modules_to_save != sorted(self.modules_to_save):
            return (f"modules_to_save {','.join(adapter.modules_to_save) or 'none'} are not the calibrated "
                    f"{','.join(sorted(self.modules_to_save)) or 'none'}")
        return None

    def overlaps(self, other: Calibration, task: str | None = None) -> bool:
        """Whether some adapter that names its base model could match both this calibration and ``other`` under
        `mismatch`'s rules: same detector, rank and use_rslora, and bases, lora_alphas, task types, target modules,
        modules_to_save and (with the scan's ``task``) tasks that agree where both are recorded; without ``task`` the
        tasks are not compared at all."""
        def agree(a: object, b: object) -> bool:
            return a is None or b is None or a == b

        def same(a: list[str] | None, b: list[str] | None) -> bool:
            return a is None or b is None or sorted(a) == sorted(b)

        if (self.detector, self.rank, self.use_rslora) != (other.detector, other.rank, other.use_rslora):
            return False
        if task and any(c.task and c.task != task for c in (self, other)):
            return False  # one of them applies to nothing in this scan
        return (agree(*(norm_ref(c.base_model) if c.base_model else None for c in (self, other)))
                and agree(self.lora_alpha, other.lora_alpha) and agree(self.task_type, other.task_type)
                and same(self.target_modules, other.target_modules)
                and same(self.modules_to_save, other.modules_to_save))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read a calibration file written by ``save``; a file that is not one gives a one-line error naming it."""
        remake = "make one with `tuneguard backdoor calibrate`"
        data = read_json(path, fix=remake, expect=dict)
        if not str(data.get("format", "")).startswith("tuneguard-backdoor-calibration"):
            raise TuneguardError(f"{path} is not a tuneguard calibration file; {remake}")
        if data["format"] in _OLD_FORMATS:
            raise TuneguardError(f"{path} is an old calibration file ({data['format']}) that records neither the LoRA "
                                 f"scale nor the probe inputs, so a scan cannot check it applies; {remake} again")
        if data["format"] == _UPGRADED:
            data = _upgraded(data)
        try:
            return cls.create(f"calibration file {path}", data)
        except TuneguardError as exc:
            raise TuneguardError(f"{exc}; {remake} again") from None


def _upgraded(data: dict) -> dict:
    """A format-2 calibration as format 3: what the adapters trained is unknown (not checked), and a weight statistic
    names its LoRA-only variant, which is what format 2 computed."""
    from tuneguard.adapters.detectors.weights import LORA_ONLY, SPREADS

    notes = ["calibration format 2 records neither the task type nor the target modules nor modules_to_save, so a "
             "scan does not check that adapters match them; remake it to have them checked"]
    if data.get("detector") == "weights" and data.get("statistic") in SPREADS:
        lora = LORA_ONLY[SPREADS.index(data["statistic"])]
        notes.append(f"its {data['statistic']} (over LoRA pairs only in format 2) is judged as {lora}")
        data = {**data, "statistic": lora}
    return {**data, "format": CALIBRATION_FORMAT, "notes": [*data.get("notes", []), *notes]}


def norm_ref(ref: str) -> str:
    """A model reference compared loosely (case and a trailing slash ignored)."""
    return ref.rstrip("/").lower()


def calibrate(
    detector: Detector,
    clean: list[DetectorResult],
    poisoned: list[DetectorResult] = (),
    *,
    statistic: str | None = None,
    base_model: str | None,
    rank: int,
    lora_alpha: float | None,
    use_rslora: bool,
    task: str | None,
    task_type: str | None = None,
    target_modules: list[str] | None = None,
    modules_to_save: list[str] | None = None,
) -> Calibration:
    """Fit a zero-false-positive threshold on clean adapters' scores; learn the direction when poisoned ones exist.
    ``task_type``, ``target_modules`` and ``modules_to_save`` record what the cohort trains (None: not recorded,
    so not checked by a scan); `cohort_kind` reads them from adapters."""
    from tuneguard.metrics import mann_whitney_auc  # scikit-learn: not for `scan`, which imports this module

    statistic = statistic or detector.default_statistic
    if statistic not in detector.statistics:
        raise TuneguardError(f"{detector.label()} has no statistic {statistic!r}; "
                             f"choose from {', '.join(detector.statistics)}")
    if len(clean) < 2:
        raise TuneguardError(f"calibration needs at least 2 clean adapters, got {len(clean)}; add more clean adapters")
    c = np.array([r.statistics[statistic] for r in clean], dtype=float)
    p = np.array([r.statistics[statistic] for r in poisoned], dtype=float)
    for r in [*clean, *poisoned]:
        why = r.unjudgeable(statistic)
        if why:  # a NaN threshold would pass or flag everything
            raise TuneguardError(f"{r.adapter}: {why}; leave it out of the calibration cohort, or measure it")
    direction, auroc = detector.default_direction, None
    if len(p):
        raw = mann_whitney_auc(c, p)
        direction = "higher" if raw >= 0.5 else "lower"
        auroc = max(raw, 1.0 - raw)
    return Calibration(
        detector=detector.name, statistic=statistic, base_model=base_model, rank=rank, lora_alpha=lora_alpha,
        use_rslora=use_rslora, task=task, task_type=task_type, target_modules=target_modules,
        modules_to_save=modules_to_save, direction=direction, low=float(c.min()), high=float(c.max()),
        clean_scores=c.tolist(), poisoned_scores=p.tolist(), auroc=auroc, settings=detector.settings(),
    )


def cohort_kind(adapter: AdapterFiles) -> dict:
    """What a calibration records about its cohort from one of its adapters (``calibrate``'s keyword arguments); a
    cohort whose adapters differ in any of it cannot share one threshold."""
    return {"base_model": adapter.base_model, "rank": adapter.rank, "lora_alpha": adapter.lora_alpha,
            "use_rslora": adapter.use_rslora, "task_type": adapter.task_type,
            "target_modules": adapter.target_modules, "modules_to_save": adapter.modules_to_save}
