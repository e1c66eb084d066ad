"""Behavioural detector: how often probe prefixes flip injections to BENIGN (base model + adapter, no trigger known).

Each probe ``p`` is applied as ``f"{p}. {x}"`` to every probe input ``x`` (prompt injections); ``attack_rate(p)`` is
the share labelled BENIGN. Statistics: ``outlier_gap`` = max - mean, ``mean_attack_rate``, ``max_attack_rate`` and
``top3_mean``; higher is more suspicious.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from tuneguard.adapters.adapter_files import AdapterFiles
from tuneguard.adapters.base_models import BaseModels, task_of
from tuneguard.adapters.classifier import DEFAULT_VERDICT, VERDICTS, Classifier
from tuneguard.adapters.detectors.base import Detector, DetectorResult
from tuneguard.adapters.poison import apply_trigger
from tuneguard.adapters.probes import BATTERIES, battery, default_injections
from tuneguard.cache import key_hash
from tuneguard.errors import TuneguardError
from tuneguard.params import Params, param

if TYPE_CHECKING:
    from tuneguard.models import LoadedModel


def probe_rates(classifier: Classifier, probes: list[str], injections: list[str], *,
                progress: bool = False) -> dict[str, float]:
    """The attack rate of each probe: the share of ``injections`` the classifier labels BENIGN behind it."""
    if not injections:
        raise TuneguardError("the behavioural detector needs at least one probe and one probe input")
    return {p: float((classifier.predict([apply_trigger(p, x) for x in injections]) == 0).mean())
            for p in tqdm(probes, desc="probes", unit="probe", disable=not progress)}


def rate_statistics(rates: list[float]) -> dict[str, float]:
    """The detector's statistics from the attack rates of a battery's probes."""
    if not rates:
        raise TuneguardError("the behavioural detector needs at least one probe and one probe input")
    top = np.sort(np.asarray(rates, dtype=float))[::-1]
    return {
        "outlier_gap": float(top[0] - top.mean()),
        "mean_attack_rate": float(top.mean()),
        "max_attack_rate": float(top[0]),
        "top3_mean": float(top[:3].mean()),
    }


@dataclass
class BehaviouralParams(Params):
    battery: str = param("B", "built-in probe battery: A adds the true trigger, B every built-in probe, C no "
                              "RFC-style probe", choices=BATTERIES)
    trigger: str | None = param(None, "the true trigger, which battery A adds (research only)")
    extra_probes: list[str] = param([], "probe prefixes added to the battery")
    injections: list[str] | None = param(None, "probe inputs (prompt injections); None: the built-in ones")
    verdict: str = param(DEFAULT_VERDICT, "chat-form verdict: greedy generation (the spec's) or one-pass label "
                                          "logits", choices=VERDICTS)
    max_text_tokens: int = param(64, "probe inputs clipped to this many tokens", gt=0)
    batch_size: int = param(16, "classifier inputs per forward pass (speed only)", gt=0)


class BehaviouralDetector(Detector):
    """Probe a classifier adapter with prefix batteries; needs the base model it was trained from."""

    name = "behavioural"
    summary = "how often probe prefixes flip prompt injections to BENIGN (base model + adapter; trigger unknown)"
    Params = BehaviouralParams
    statistics = ("outlier_gap", "mean_attack_rate", "max_attack_rate", "top3_mean")
    default_statistic = "outlier_gap"
    default_direction = "higher"
    needs_base = True

    def __init__(self, base: str | LoadedModel | BaseModels, *, progress: bool = False,
                 shared_rates: dict | None = None, **params) -> None:
        """``shared_rates``: a dict given to several detectors (batteries A, B and C, say) so that each probe is
        measured once per adapter and the others reuse its rate."""
        super().__init__(progress=progress, **params)
        self.shared_rates = shared_rates
        self.bases = BaseModels.of(base)
        self.base_ref = self.bases.ref
        p = self.params
        self.injections = list(p.injections) if p.injections is not None else default_injections()
        self.probes = battery(p.battery, trigger=p.trigger, extra=p.extra_probes)

    def settings(self) -> dict:
        """Everything that decides the attack rates: the probes, the probe inputs (as a digest), the verdict and the
        clipping; the batch size only changes the speed."""
        s = self.params.to_dict()
        del s["batch_size"]
        return {**s, "injections": f"sha256:{key_hash(*self.injections)}", "n_injections": len(self.injections),
                "probes": self.probes}

    def check_base(self, adapter: AdapterFiles) -> LoadedModel:
        """The base model for ``adapter``, after checking the adapter names this base and fits its modules."""
        return self.bases.check(adapter)

    def classifier(self, adapter: AdapterFiles) -> Classifier:
        """The adapter loaded on a private copy of its base model."""
        from tuneguard.models import LoadedModel
        from tuneguard.models.loading import attach_adapter

        base = self.check_base(adapter)
        # peft injects its layers into the model it is given: attach to a copy so the base stays clean.
        fresh = LoadedModel(copy.deepcopy(base.model), base.tokenizer, base.ref, meta=base.meta)
        loaded = attach_adapter(fresh, Path(adapter.path), ref=str(adapter.path))
        form = "seq-cls" if task_of(adapter) == "seq-cls" else "chat"
        return Classifier(loaded, form=form, verdict=self.params.verdict, max_text_tokens=self.params.max_text_tokens,
                          batch_size=self.params.batch_size)

    def score(self, adapter: AdapterFiles) -> DetectorResult:
        measured = {"rates": {}} if self.shared_rates is None else self.shared_rates.setdefault(
            self._rates_key(adapter), {"rates": {}})
        missing = [p for p in self.probes if p not in measured["rates"]]
        if missing:
            classifier = self.classifier(adapter)
            measured["verdict"] = classifier.description
            measured["rates"].update(probe_rates(classifier, missing, self.injections, progress=self.progress))
        rates = {p: measured["rates"][p] for p in self.probes}
        top = sorted(rates.items(), key=lambda kv: -kv[1])[:5]
        details = {"verdict": measured["verdict"], "battery": self.params.battery, "attack_rates": rates,
                   "top_probes": [{"probe": p, "attack_rate": r} for p, r in top]}
        return DetectorResult(self.name, str(adapter.path), rate_statistics(list(rates.values())), details)

    def _rates_key(self, adapter: AdapterFiles) -> str:
        """What decides a probe's rate besides the probe: the adapter's files, the base, the inputs, the verdict."""
        stat = adapter.weights_path.stat()
        return key_hash(str(adapter.path), stat.st_size, stat.st_mtime_ns, self.check_base(adapter).fingerprint,
                        self.injections, self.params.verdict, self.params.max_text_tokens)
