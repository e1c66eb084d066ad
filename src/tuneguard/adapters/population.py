"""Populations of clean and poisoned classifier adapters, and detector AUROC / TPR@FPR over them."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm.auto import tqdm

from tuneguard.adapters.adapter_files import read_adapter
from tuneguard.adapters.classifier import train_classifier
from tuneguard.adapters.detectors.base import Detector, DetectorResult, calibrate
from tuneguard.adapters.poison import poison, write_poisoned
from tuneguard.adapters.triggers import MAIN_TRIGGER
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, read_json

FPRS = (0.0, 0.05, 0.1)
MEMBERS_FILE = "population.json"


@dataclass(frozen=True)
class AdapterSpec:
    """One member of a population: clean (k = 0) or poisoned with ``trigger`` at count ``k``."""

    name: str
    seed: int
    rank: int
    k: int = 0
    trigger: str | None = None

    @property
    def poisoned(self) -> bool:
        return self.k > 0


def population_specs(n_clean: int, n_poisoned: int, *, ranks: tuple[int, ...] = (16,), ks: tuple[int, ...] = (25,),
                     triggers: tuple[str, ...] = (MAIN_TRIGGER,), seed: int = 0) -> list[AdapterSpec]:
    """Clean adapters cycle over ranks; poisoned ones over ranks, poison counts and triggers; seeds differ."""
    specs = [AdapterSpec(f"clean-{i:02d}-r{ranks[i % len(ranks)]}", seed + i, ranks[i % len(ranks)])
             for i in range(n_clean)]
    for i in range(n_poisoned):
        r, k = ranks[i % len(ranks)], ks[(i // len(ranks)) % len(ks)]
        trig = triggers[i % len(triggers)]
        specs.append(AdapterSpec(f"poison-{i:02d}-r{r}-k{k}", seed + 1000 + i, r, k, trig))
    return specs


def train_population(base, train_rows: list[tuple[str, int]], specs: list[AdapterSpec], out_dir: str | os.PathLike,
                     config, *, form: str = "chat", max_text_tokens: int = 64, progress: bool = True) -> list[dict]:
    """Train every spec into ``out_dir/<name>`` (alpha = r, as in the spec; finished adapters are reused) and
    record the members in ``out_dir/population.json``."""
    out_dir = Path(out_dir)
    members = []
    for spec in tqdm(specs, desc="population", unit="adapter", disable=not progress):
        rows, manifest = poison(train_rows, spec.trigger or MAIN_TRIGGER, k=spec.k, seed=spec.seed)
        cfg = dataclasses.replace(config, lora_r=spec.rank, lora_alpha=spec.rank, seed=spec.seed)
        adapter_dir = out_dir / spec.name
        result = train_classifier(base, rows, adapter_dir, cfg, form=form, max_text_tokens=max_text_tokens,
                                  progress=False)
        if spec.poisoned:
            write_poisoned(out_dir / "data" / spec.name, rows, manifest)
        members.append({**asdict(spec), "poisoned": spec.poisoned, "path": str(adapter_dir),
                        "train_seconds": result.record.get("train_seconds")})
        atomic_write_json(out_dir / MEMBERS_FILE, {"form": form, "members": members})
    return members


def read_population(path: str | os.PathLike) -> list[dict]:
    """Members (path, poisoned, ...) from a ``population.json`` written by ``train_population``."""
    file = Path(path) / MEMBERS_FILE if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise TuneguardError(f"{path} has no {MEMBERS_FILE}; build one with `tuneguard backdoor population`")
    return read_json(file)["members"]


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_max: float) -> float:
    """Largest TPR whose FPR is at most ``fpr_max`` (scores oriented higher = poisoned)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= fpr_max + 1e-12].max())


def score_population(members: list[dict], detectors: list[Detector], *, progress: bool = True) -> dict:
    """Each detector's statistics over the population: AUROC with the learned direction, TPR at FPR 0/5/10%, and
    the misses and false alarms at the zero-FPR threshold; plus the combined verdict (either detector flags).

    Thresholds are fitted on this same population (in-sample), as the paper's cohort figures are.
    """
    labels = np.array([bool(m["poisoned"]) for m in members], dtype=int)
    if labels.min() == labels.max():
        raise TuneguardError("a population needs both clean and poisoned adapters")
    report: dict = {"n_clean": int((labels == 0).sum()), "n_poisoned": int(labels.sum()), "detectors": {}}
    flagged_any = np.zeros(len(members), dtype=bool)
    for det in detectors:
        results: list[DetectorResult] = []
        for m in tqdm(members, desc=det.name, unit="adapter", disable=not progress):
            results.append(det.score(read_adapter(m["path"])))
        per_stat = {}
        for stat in det.statistics:
            scores = np.array([r.statistics[stat] for r in results])
            cal = calibrate(det, [r for r, y in zip(results, labels) if not y],
                            [r for r, y in zip(results, labels) if y], statistic=stat, base_model=None,
                            rank=0, task=None)
            oriented = scores if cal.direction == "higher" else -scores
            flags = np.array([cal.flags(s) for s in scores])
            if stat == det.default_statistic:
                flagged_any |= flags
            per_stat[stat] = {
                "direction": cal.direction,
                "auroc": float(roc_auc_score(labels, oriented)),
                **{f"tpr_at_fpr_{f:g}": tpr_at_fpr(labels, oriented, f) for f in FPRS},
                "threshold": cal.high if cal.direction == "higher" else cal.low,
                "misses": [m["name"] for m, y, f in zip(members, labels, flags) if y and not f],
                "false_alarms": [m["name"] for m, y, f in zip(members, labels, flags) if not y and f],
                "scores": {m["name"]: float(s) for m, s in zip(members, scores)},
            }
        report["detectors"][det.name] = per_stat
    report["combined"] = {
        "rule": "flagged when any detector's default statistic is beyond its zero-FPR threshold",
        "tpr": float(flagged_any[labels == 1].mean()),
        "fpr": float(flagged_any[labels == 0].mean()),
        "misses": [m["name"] for m, y, f in zip(members, labels, flagged_any) if y and not f],
    }
    return report
