"""Populations of clean and poisoned classifier adapters, and detector AUROC / TPR@FPR over them, with one
threshold per LoRA rank (backdoor.md: a weight statistic's scale and even its direction change with the rank)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.polynomial import Polynomial
from tqdm.auto import tqdm

from tuneguard.adapters.adapter_files import AdapterFiles, read_adapter
from tuneguard.adapters.classifier import train_classifier
from tuneguard.adapters.detectors.base import Detector, DetectorResult, calibrate
from tuneguard.adapters.poison import poison, write_poisoned
from tuneguard.adapters.triggers import MAIN_TRIGGER
from tuneguard.cache import key_hash
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_write_json, read_json
from tuneguard.metrics import mann_whitney_auc, tpr_at_fpr
from tuneguard.paths import safe_component

FPRS = (0.0, 0.05, 0.1)
MEMBERS_FILE = "population.json"
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals
AUROC_CI = "95% score interval (Newcombe 2006, method 5; ranks pooled by pair count)"


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
    """Clean adapters cycle over ranks; poisoned ones over ranks, poison counts and triggers; seeds differ.

    Each rank is thresholded on its own clean adapters, so each rank needs two, and the detectors are measured on
    poisoned ones, so there must be one: both refused before any training.
    """
    if n_poisoned < 1:
        raise TuneguardError(f"a population needs at least 1 poisoned adapter to measure the detectors on, got "
                             f"{n_poisoned}; ask for 1 or more")
    if n_clean < 2 * len(ranks):
        raise TuneguardError(f"{n_clean} clean adapters over {len(ranks)} rank(s) leave some rank with fewer than 2; "
                             f"each rank is thresholded on its own clean adapters: use at least {2 * len(ranks)}")
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


def score_population(members: list[dict], detectors: Sequence[Detector] | Mapping[str, Detector], *,
                     progress: bool = True, cache: str | os.PathLike | None = None) -> dict:
    """Each detector's statistics over the population, thresholded per LoRA rank: per rank, the zero-FPR threshold
    and direction fitted on that rank's clean and poisoned adapters, its AUROC and TPR at FPR 0/5/10%; pooled over
    ranks, the AUROC over same-rank (clean, poisoned) pairs, the TPR with every rank at its own threshold, and the
    misses and false alarms; plus the combined verdict (either detector flags). ``detectors`` given as a mapping are
    reported under its keys (e.g. one behavioural detector per battery).

    Thresholds are fitted on this same population (in-sample), as the paper's cohort figures are. AUROCs come with
    95% score intervals (`auroc_ci`: Newcombe's, which stay wide at a perfect split of a small cohort); the direction
    is held at the one learned on the whole population, so the intervals leave out the uncertainty of that choice.

    With ``cache`` (a directory), each adapter's score is saved there as it finishes and reused while the detector,
    its settings, its base model and the adapter's files are the same: an interrupted scoring resumes.
    """
    labels = np.array([bool(m["poisoned"]) for m in members], dtype=int)
    if labels.min() == labels.max():
        raise TuneguardError("a population needs both clean and poisoned adapters")
    named = dict(detectors) if isinstance(detectors, Mapping) else {d.name: d for d in detectors}
    adapters = [read_adapter(m["path"]) for m in members]
    ranks = np.array([a.rank for a in adapters])
    names = [m["name"] for m in members]
    report: dict = {"n_clean": int((labels == 0).sum()), "n_poisoned": int(labels.sum()),
                    "ranks": sorted(map(int, set(ranks))), "auroc_ci_method": AUROC_CI, "detectors": {}}
    flagged_any = np.zeros(len(members), dtype=bool)
    for label, det in named.items():
        folder = Path(cache, safe_component(label)) if cache else None  # names from a file: one safe component each
        results = [_score(det, a, folder / f"{safe_component(name)}.json" if folder else None)
                   for a, name in zip(tqdm(adapters, desc=label, unit="adapter", disable=not progress), names)]
        per_stat = {}
        for stat in det.statistics:
            per_stat[stat], flags = _rank_wise(det, stat, results, labels, ranks, names)
            if stat == det.default_statistic:
                flagged_any |= flags
        report["detectors"][label] = per_stat
    report["combined"] = {
        "rule": "flagged when any detector's default statistic is beyond its rank's zero-FPR threshold",
        "tpr": float(flagged_any[labels == 1].mean()),
        "fpr": float(flagged_any[labels == 0].mean()),
        "misses": [n for n, y, f in zip(names, labels, flagged_any) if y and not f],
    }
    return report


def _score(det: Detector, adapter: AdapterFiles, path: Path | None) -> DetectorResult:
    """``det.score(adapter)``, saved at ``path`` and reused from it while everything that decided it matches."""
    if path is None:
        return det.score(adapter)
    h = hashlib.sha256()
    for f in sorted(adapter.path.iterdir()):
        if f.is_file() and f.name.startswith("adapter_"):  # the config and the weights
            h.update(f.name.encode() + b"\x00" + f.read_bytes())
    # the base decides a score: the loaded one's fingerprint, or the weight files a detector reads when given one
    base = det.bases.check(adapter).fingerprint if det.needs_base else getattr(det, "base_ref", None)
    key = key_hash(det.name, det.settings(), h.hexdigest(), base)
    if path.exists():
        try:
            saved = read_json(path, expect=dict)
        except TuneguardError:  # unreadable: scored again and rewritten
            saved = {}
        if saved.get("key") == key:
            return DetectorResult(det.name, str(adapter.path), saved["statistics"], saved["details"])
    result = det.score(adapter)
    atomic_write_json(path, {"key": key, "statistics": result.statistics, "details": result.details})
    return result


def _rank_wise(det: Detector, stat: str, results: list[DetectorResult], labels: np.ndarray, ranks: np.ndarray,
               names: list[str]) -> tuple[dict, np.ndarray]:
    """One statistic's report with a threshold per rank, and which adapters those thresholds flag."""
    scores = np.array([r.statistics[stat] for r in results], dtype=float)
    flags = np.zeros(len(results), dtype=bool)
    per_rank: dict[str, dict] = {}
    groups: list[tuple[np.ndarray, np.ndarray]] = []  # per measured rank: (clean, poisoned), higher = suspicious
    for rank in sorted(set(ranks.tolist())):
        idx = np.flatnonzero(ranks == rank)
        clean = [results[i] for i in idx if not labels[i]]
        poisoned = [results[i] for i in idx if labels[i]]
        if len(clean) < 2:
            raise TuneguardError(f"rank {rank} has {len(clean)} clean adapter(s); each rank gets its own threshold, "
                                 f"which needs at least 2 clean adapters of that rank")
        cal = calibrate(det, clean, poisoned, statistic=stat, base_model=None, rank=rank, lora_alpha=None,
                        use_rslora=False, task=None)
        flags[idx] = [cal.flags(s) for s in scores[idx]]
        oriented = scores[idx] if cal.direction == "higher" else -scores[idx]
        group = (oriented[labels[idx] == 0], oriented[labels[idx] == 1])
        if poisoned:
            groups.append(group)
        entry = {"direction": cal.direction, "n_clean": len(clean), "n_poisoned": len(poisoned),
                 "threshold": {"higher": cal.high, "lower": cal.low}.get(cal.direction, [cal.low, cal.high]),
                 "auroc": cal.auroc,
                 "auroc_ci": auroc_ci([group]) if poisoned else None,
                 # FPR 0 is the calibration's own threshold; tuneguard.metrics measures the others (it needs 2 of each)
                 "tpr_at_fpr_0": float(flags[idx][labels[idx] == 1].mean()) if poisoned else None}
        for f in FPRS[1:]:
            entry[f"tpr_at_fpr_{f:g}"] = tpr_at_fpr(labels[idx], oriented, f) if len(poisoned) >= 2 else None
        per_rank[str(rank)] = entry
    measured = [e for e in per_rank.values() if e["n_poisoned"]]
    pairs = np.array([e["n_clean"] * e["n_poisoned"] for e in measured], dtype=float)
    weights = np.array([e["n_poisoned"] for e in measured], dtype=float)
    directions = {e["direction"] for e in per_rank.values()}
    out = {
        "direction": directions.pop() if len(directions) == 1 else
        ", ".join(f"r{r} {e['direction']}" for r, e in per_rank.items()),
        # the AUROC over same-rank (clean, poisoned) pairs: the per-rank AUROCs weighted by their pair counts
        "auroc": float(np.dot([e["auroc"] for e in measured], pairs) / pairs.sum()),
        "auroc_ci": auroc_ci(groups),
        **{f"tpr_at_fpr_{f:g}": _pooled([e[f"tpr_at_fpr_{f:g}"] for e in measured], weights) for f in FPRS},
        "misses": [n for n, y, f in zip(names, labels, flags) if y and not f],
        "false_alarms": [n for n, y, f in zip(names, labels, flags) if not y and f],
        "scores": {n: float(s) for n, s in zip(names, scores)},
        "per_rank": per_rank,
    }
    return out, flags


def auroc_ci(groups: list[tuple[np.ndarray, np.ndarray]], *, z: float = Z95) -> list[float]:
    """95% score interval of the pair-weighted AUROC over ``groups`` of (clean, poisoned) oriented scores (one group
    per rank): Newcombe's method 5 (Stat. Med. 2006, 25:559-573), extended to several groups.

    For one group of m clean and n poisoned adapters it is the set of AUCs t with ``(auc - t)^2 <= z^2 V(t)``, where
    V is Hanley and McNeil's variance written as a function of t alone, with both sample sizes replaced by
    N* = (m + n) / 2 - 1: ``V(t) = t (1 - t) [1 + N* ((1 - t) / (2 - t) + t / (1 + t))] / (m n)``. V is evaluated at
    the hypothesised t, not at the estimate, so a perfect split does not give V = 0 and the interval stays wide
    where the cohort is small (4 clean / 8 poisoned separated: [0.662, 1]); a percentile bootstrap collapses to
    [1, 1] there, since every resample separates too. Over several groups the pooled estimate's variance is
    ``sum(w_g^2 V_g(t)) / W^2`` with w_g = m_g n_g pairs and W their sum. Multiplied by (2 - t)(1 + t) the condition is
    a quartic in t, so the bounds are its real roots nearest the estimate on either side (0 or 1 when there is none).
    """
    sizes = np.array([(len(c), len(p)) for c, p in groups], dtype=float)
    pairs = sizes.prod(axis=1)
    total = pairs.sum()
    point = float(np.dot([mann_whitney_auc(c, p) for c, p in groups], pairs) / total)
    n_star = sizes.sum(axis=1) / 2 - 1
    # sum(w^2 V_g) / W^2 = t (1 - t) [C + K ((1 - t) / (2 - t) + t / (1 + t))] with:
    c_term, k_term = 1 / total, float(np.dot(pairs, n_star)) / total**2
    t = Polynomial([0.0, 1.0])
    d = (2 - t) * (1 + t)  # > 0 on [0, 1], so the quartic has the sign of the condition there
    quartic = (point - t) ** 2 * d - z**2 * t * (1 - t) * (c_term * d + k_term * (1 + 2 * t - 2 * t**2))
    roots = [r.real for r in quartic.roots() if abs(r.imag) < 1e-9 and -1e-9 <= r.real <= 1 + 1e-9]
    # the estimate itself is a root only at 0 or 1 (where V = 0): the bounds lie strictly beyond it
    low = max((r for r in roots if r < point - 1e-9), default=0.0)
    high = min((r for r in roots if r > point + 1e-9), default=1.0)
    return [float(np.clip(low, 0.0, 1.0)), float(np.clip(high, 0.0, 1.0))]


def _pooled(rates: list[float | None], weights: np.ndarray) -> float | None:
    """The TPR over all poisoned adapters when every rank is at its own threshold (None when a rank cannot say)."""
    if any(r is None for r in rates):
        return None
    return float(np.dot(rates, weights) / weights.sum())
