"""Scan LoRA adapter directories for backdoors: each detector's statistics, a verdict per detector from the
calibration that matches the adapter (base model, rank, LoRA scale, task, task type, target modules,
modules_to_save), and the combined verdict (flagged when any detector flags, or when a weight is NaN or inf).

A detector's verdict is "flagged" or "clean" from the calibration that applies; "not-comparable" when calibrations
for that detector were given but the adapter is of another kind than each of their cohorts (another base, rank, LoRA
scale, task or task type, or other modules trained), so no threshold measured on them says anything about it (an
adapter trained for another task is neither clean nor backdoored by a classifier cohort's threshold); "unverified"
when there is no calibration for the detector, or the statistic could not be measured. Neither of the last two is a
judgement: both give exit code 3.

One adapter that cannot be read never stops the scan: it gets a row ("error" or, for a pickle, "refused") with the
reason on one line, and the scan goes on. Paths that the search for adapters passes over are rows too ("skipped").
A calibration is refused before anything is scored when it was made with other detector settings than the scan's
(e.g. another verdict form, battery or set of probe inputs): its threshold would not mean anything. So are two
calibrations that would judge the same adapters (same detector, base model, rank, LoRA scale and task): the verdict
would depend on their order.

Statistics count only the LoRA modules that would load: those adapter_config.json targets and, with a base model,
those the base has. Without a base, a module that no other adapter of the same base in the scan has is reported
(not dropped, so that an adapter's statistics never depend on which others are scanned with it).
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuneguard.adapters.adapter_files import AdapterFiles, RefusedAdapter, read_adapter
from tuneguard.adapters.base_models import BaseModels
from tuneguard.adapters.detectors import DETECTORS, Calibration, Detector, DetectorResult, make_detector
from tuneguard.adapters.detectors.base import norm_ref
from tuneguard.adapters.discovery import discover_adapters
from tuneguard.errors import TuneguardError

if TYPE_CHECKING:
    from tuneguard.models import LoadedModel

log = logging.getLogger(__name__)

EXIT_CLEAN, EXIT_FLAGGED, EXIT_UNSCANNED, EXIT_UNVERIFIED = 0, 1, 2, 3
# A finding is never hidden by a neighbour that could not be read, so 1 wins over 2; 2 over 3.
EXIT_CODES = ("0 every adapter scanned and none flagged; 1 some adapter flagged (a detector's threshold, or a NaN/inf "
              "weight), whatever else happened; 2 some path could not be scanned (an unreadable or incomplete "
              "adapter, a pickle, a skipped path) or a usage error; 3 calibrations were given but some adapter was "
              "judged by none of them (not comparable to any, or its statistic unmeasured)")
UNSCANNED = ("error", "refused", "skipped")
NOT_COMPARABLE = "not-comparable"
UNJUDGED = ("unverified", NOT_COMPARABLE)  # scanned, but no threshold spoke
_SHOWN = 3  # modules named in a one-line warning


@dataclass
class DetectorVerdict:
    """One detector on one adapter: flagged / clean / not-comparable / unverified / error, why, and what it
    measured."""

    verdict: str
    note: str
    statistics: dict[str, float]
    details: dict

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "note": self.note, "statistics": self.statistics, "details": self.details}


@dataclass
class AdapterScan:
    """One path's row: its cohort, each detector's verdict and the combined verdict; ``findings`` flag the adapter
    whatever the calibration (non-finite weights); ``warnings`` are reported only. A path that was not scanned has
    verdict error / refused (a pickle) / skipped and a one-line ``reason``."""

    adapter: str
    verdict: str
    reason: str | None = None
    base_model: str | None = None
    rank: int | None = None
    task_type: str | None = None
    findings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    not_loaded: dict[str, str] = field(default_factory=dict)
    detectors: dict[str, DetectorVerdict] = field(default_factory=dict)

    @property
    def note(self) -> str | None:
        """The table's note: why the path was not scanned, else the first finding, else the first detector error."""
        errors = [f"{n}: {d.note}" for n, d in self.detectors.items() if d.verdict == "error"]
        return self.reason or next(iter([*self.findings, *errors]), None)

    def to_json(self) -> dict:
        if self.verdict in UNSCANNED:
            return {"adapter": self.adapter, "verdict": self.verdict, "reason": self.reason}
        return {"adapter": self.adapter, "base_model": self.base_model, "rank": self.rank, "task_type": self.task_type,
                "findings": self.findings, "warnings": self.warnings, "not_loaded": self.not_loaded,
                "detectors": {n: d.to_json() for n, d in self.detectors.items()}, "verdict": self.verdict}


@dataclass
class ScanResult:
    """Every path's row, the statistic each detector is judged (and tabulated) by, and notes for the user."""

    adapters: list[AdapterScan]
    statistics: dict[str, str]  # detector name -> its statistic in the table
    calibrated: bool
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"adapters": [a.to_json() for a in self.adapters], "exit_code": self.exit_code}

    @property
    def exit_code(self) -> int:
        """See EXIT_CODES: 1 if any adapter is flagged; else 2 if some path was not scanned; else 3 if calibrations
        were given but some adapter stayed unjudged (not comparable, unverified); else 0."""
        verdicts = {a.verdict for a in self.adapters}
        if "flagged" in verdicts:
            return EXIT_FLAGGED
        if verdicts & set(UNSCANNED):
            return EXIT_UNSCANNED
        return EXIT_UNVERIFIED if self.calibrated and verdicts & set(UNJUDGED) else EXIT_CLEAN

    def table(self) -> str:
        """The terminal verdict table: per detector, its statistic and its verdict; a note column when some row has
        one."""
        from tuneguard.report.table import format_table

        columns = ["adapter", "r"]
        headers = {}
        for name, stat in self.statistics.items():
            headers[name] = stat if stat not in columns else f"{name}.{stat}"
            columns += [headers[name], name]
        rows = []
        for a in self.adapters:
            row: dict = {"adapter": a.adapter, "r": a.rank, "verdict": a.verdict, "note": a.note}
            for name, d in a.detectors.items():
                value = d.statistics.get(self.statistics[name])
                row[headers[name]] = None if value is None else f"{value:.4g}"
                row[name] = d.verdict
            rows.append(row)
        notes = ["note"] if any(a.note for a in self.adapters) else []
        return format_table(rows, [*columns, "verdict", *notes])


def default_detectors(base: str | LoadedModel | BaseModels | None = None) -> list[Detector]:
    """Every registered detector that runs on the adapter files alone (no base model; those that read the base's
    weight files get ``base``)."""
    return [make_detector(n, base=base) for n in DETECTORS if not DETECTORS.get(n).needs_base]


def scan_adapters(paths: Sequence[str | os.PathLike], calibrations: Sequence[Calibration | str | os.PathLike] = (), *,
                  detectors: Sequence[Detector] | None = None, task: str | None = None,
                  base: str | LoadedModel | BaseModels | None = None) -> ScanResult:
    """Scan every adapter directory in or below ``paths`` with ``detectors`` (default: those needing no model).

    ``calibrations`` are Calibration objects or calibration files. A calibration whose detector settings differ from
    the scan's, or whose statistic the detector lacks, or two that would judge the same adapters (`_overlapping`),
    are refused (TuneguardError) before anything is scored; a path that cannot be scanned is a row, never an
    exception. ``base`` (default: the base of a detector that needs one) is the model whose modules decide which LoRA
    pairs would load.
    """
    detectors = list(detectors) if detectors is not None else default_detectors(base)
    named = [(f"calibration file {c}", Calibration.load(c)) if not isinstance(c, Calibration)
             else (f"the {c.detector} calibration (rank {c.rank})", c) for c in calibrations]
    # The same calibration given twice (one file named twice) judges alike whichever copy is used: keep the first.
    named = [(label, c) for i, (label, c) in enumerate(named) if all(c != d for _, d in named[:i])]
    notes = _check_calibrations(named, detectors)
    _overlapping(named, task)
    cals = [c for _, c in named]
    statistics = {}
    for det in detectors:
        own = {c.statistic for c in cals if c.detector == det.name}
        statistics[det.name] = own.pop() if len(own) == 1 else det.default_statistic
    bases = BaseModels.of(base) or next((d.bases for d in detectors if d.bases is not None), None)
    found, skipped = discover_adapters(list(paths))
    rows, read = [], []
    for path in found:
        row = AdapterScan(str(path), "unverified")
        rows.append(row)
        try:
            adapter = read_adapter(path)
            if bases is not None:
                bases.check(adapter)
        except RefusedAdapter as exc:
            row.verdict, row.reason = "refused", str(exc)
        except Exception as exc:  # noqa: BLE001 - one adapter's failure is its row, never the end of the scan
            row.verdict, row.reason = "error", _failure(exc, path)
        else:
            read.append((row, adapter))
    only_here = {} if bases is not None else _modules_only_here([a for _, a in read])
    for i, (row, adapter) in enumerate(read):
        try:
            _scan_one(row, adapter, detectors, cals, task)
        except Exception as exc:  # noqa: BLE001 - e.g. the file changed or was truncated since its header was read
            row.verdict, row.reason = "error", _failure(exc, adapter.path)
            continue
        if i in only_here:
            row.warnings.append(only_here[i])
    rows += [AdapterScan(str(s.path), "skipped", reason=s.reason) for s in skipped]
    return ScanResult(rows, statistics, calibrated=bool(cals), notes=notes)


def _scan_one(row: AdapterScan, adapter: AdapterFiles, detectors: list[Detector], cals: list[Calibration],
              task: str | None) -> None:
    """Fill ``row`` for one readable adapter: findings, warnings, each detector's verdict, the combined verdict."""
    row.base_model, row.rank, row.task_type = adapter.base_model, adapter.rank, adapter.task_type
    row.findings, unchecked = adapter.non_finite()
    row.not_loaded = dict(adapter.unloaded)
    if adapter.unloaded:
        shown = ", ".join(f"{m} ({why})" for m, why in list(adapter.unloaded.items())[:_SHOWN])
        more = f" and {len(adapter.unloaded) - _SHOWN} more" if len(adapter.unloaded) > _SHOWN else ""
        row.warnings.append(f"{len(adapter.unloaded)} LoRA module(s) would not load, so no statistic counts them: "
                            f"{shown}{more}")
    row.warnings += [w for w in [adapter.rank_mismatch()] if w] + unchecked
    for det in detectors:
        try:
            result = det.score(adapter)
        except Exception as exc:  # noqa: BLE001 - this detector could not score it; the others still may
            row.detectors[det.name] = DetectorVerdict("error", _failure(exc, adapter.path), {}, {})
            continue
        verdict, note = _judge(result, adapter, cals, task)
        row.detectors[det.name] = DetectorVerdict(verdict, note, result.statistics, result.details)
    verdicts = [d.verdict for d in row.detectors.values()]
    # a finding flags whatever the detectors say; else the strongest verdict any detector gave
    row.verdict = "flagged" if row.findings else next(
        (v for v in ("flagged", "error", "clean", NOT_COMPARABLE) if v in verdicts), "unverified")


def _failure(exc: Exception, path: os.PathLike | str) -> str:
    """One line for a row: a TuneguardError's own message, else the exception named (traceback logged with -v)."""
    if isinstance(exc, TuneguardError):
        return str(exc)
    log.info("scanning %s failed", path, exc_info=exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{path}: unexpected {type(exc).__name__}: {first} (rerun with -v for the traceback)"


def _modules_only_here(adapters: list[AdapterFiles]) -> dict[int, str]:
    """Warnings for adapters with LoRA modules that no other adapter naming the same base model has (by index; only
    where that base has two adapters or more in the scan)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(adapters):
        groups[norm_ref(a.base_model or "")].append(i)
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        counts = Counter(p.module for i in members for p in adapters[i].pairs)
        for i in members:
            own = [p.module for p in adapters[i].pairs if counts[p.module] == 1]
            if own:
                base = adapters[i].base_model or "unnamed"
                more = f" and {len(own) - _SHOWN} more" if len(own) > _SHOWN else ""
                out[i] = (f"{len(own)} LoRA module(s) that no other adapter of base {base!r} in this scan has: "
                          f"{', '.join(own[:_SHOWN])}{more}; they are counted, as tuneguard cannot tell without "
                          "--base whether they load")
    return out


def _check_calibrations(named: list[tuple[str, Calibration]], detectors: list[Detector]) -> list[str]:
    """Refuse calibrations that cannot apply to this scan's detectors; notes for those whose detector is not run."""
    running = {d.name: d for d in detectors}
    notes = []
    for label, cal in named:
        if cal.detector not in DETECTORS:
            raise TuneguardError(f"{label} is for detector {cal.detector!r}, which tuneguard does not have "
                                 f"(detectors: {', '.join(DETECTORS)})")
        notes += [f"{label}: {note}" for note in cal.notes]
        det = running.get(cal.detector)
        if det is None:
            needs = " (it needs the base model: --base MODEL)" if DETECTORS.get(cal.detector).needs_base else ""
            notes.append(f"{label} is for detector {cal.detector}, which this scan does not run{needs}")
            continue
        if cal.statistic not in det.statistics:
            raise TuneguardError(f"{label} thresholds {cal.statistic!r}, which {det.label()} does not report "
                                 f"(statistics: {', '.join(det.statistics)}); recalibrate")
        recorded, current = cal.settings, det.settings()
        for key in dict.fromkeys([*recorded, *current]):
            was, now = recorded.get(key, "unset"), current.get(key, "unset")
            if was != now:
                was_text, now_text = _show(was, now), _show(now, was)
                raise TuneguardError(
                    f"{label} was made with {det.label()} {key} {was_text}, but this scan uses {now_text}: scan with "
                    f"the calibration's {key}, or recalibrate with this scan's settings (`tuneguard backdoor "
                    f"calibrate`)")
    return notes


def _overlapping(named: list[tuple[str, Calibration]], task: str | None) -> None:
    """Refuse two calibrations that could judge the same adapter: which one judged it would depend on their order
    (one may flag what the other passes), so the scan would say nothing the user could rely on."""
    for i, (label, cal) in enumerate(named):
        for other_label, other in named[i + 1:]:
            if not cal.overlaps(other, task):
                continue
            base = cal.base_model or other.base_model
            # Tasks are compared only when the scan names one: then these two would not overlap.
            hint = (", or scan with " + " or ".join(f"--task {t}" for t in sorted([cal.task, other.task]))
                    if cal.task and other.task and cal.task != other.task else "")
            raise TuneguardError(
                f"{label} and {other_label} both apply to {cal.detector} adapters of "
                f"{f'base model {base!r}' if base else 'any base model'}, rank {cal.rank}, so the verdict would "
                f"depend on their order: pass one calibration per detector, base model, rank and task{hint}")


def _show(value: object, other: object) -> str:
    """A setting's value, short enough for a one-line error; a list by its length, or its first differing item."""
    if isinstance(value, list):
        if isinstance(other, list) and len(other) == len(value):
            i = next(i for i, (a, b) in enumerate(zip(value, other)) if a != b)
            return f"[{len(value)} items, item {i}: {_show(value[i], None)}]"
        return f"[{len(value)} items]"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:36]}...{text[-1]}"


def _judge(result: DetectorResult, adapter: AdapterFiles, calibrations: list[Calibration],
           task: str | None) -> tuple[str, str]:
    """(verdict, note) for one detector result: flagged / clean / not-comparable / unverified."""
    own = [c for c in calibrations if c.detector == result.detector]
    if not own:
        return "unverified", "no calibration"
    reasons = [cal.mismatch(adapter, task) for cal in own]
    fits = [cal for cal, why in zip(own, reasons) if why is None]
    if not fits:
        return NOT_COMPARABLE, f"not comparable to the calibration: {reasons[0]}"
    if len(fits) > 1:  # only for an adapter naming no base model: calibrations that could share one are refused
        bases = ", ".join(sorted(repr(c.base_model) for c in fits))
        return "unverified", (f"the calibrations for base models {bases} all apply, as the adapter names no base "
                              "model; set base_model_name_or_path in its adapter_config.json")
    (cal,) = fits
    score = result.statistics[cal.statistic]
    why = result.unjudgeable(cal.statistic)
    if why:  # NaN compares false with every threshold: never "clean"
        return "unverified", f"{why}: cannot be judged"
    return ("flagged" if cal.flags(score) else "clean"), f"{cal.statistic}={score:.4g} ({cal.direction})"
