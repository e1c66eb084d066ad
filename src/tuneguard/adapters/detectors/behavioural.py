"""Behavioural detector: how often probe prefixes flip injections to BENIGN (base model + adapter, no trigger known).

Each probe ``p`` is applied as ``f"{p}. {x}"`` to every probe input ``x`` (prompt injections); ``attack_rate(p)`` is
the share labelled BENIGN. Statistics: ``outlier_gap`` = max - mean, ``mean_attack_rate``, ``max_attack_rate`` and
``top3_mean``; higher is more suspicious.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tuneguard.adapters.adapter_files import AdapterFiles
from tuneguard.adapters.classifier import Classifier
from tuneguard.adapters.detectors.base import DetectorResult
from tuneguard.adapters.poison import apply_trigger
from tuneguard.adapters.probes import battery, default_injections
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel, load_model


def probe_statistics(classifier: Classifier, probes: list[str], injections: list[str], *,
                     progress: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    """(statistics, attack rate per probe) of a loaded classifier."""
    if not probes or not injections:
        raise TuneguardError("the behavioural detector needs at least one probe and one probe input")
    rates = np.array([
        float((classifier.predict([apply_trigger(p, x) for x in injections]) == 0).mean())
        for p in tqdm(probes, desc="probes", unit="probe", disable=not progress)
    ])
    top = np.sort(rates)[::-1]
    stats = {
        "outlier_gap": float(top[0] - rates.mean()),
        "mean_attack_rate": float(rates.mean()),
        "max_attack_rate": float(top[0]),
        "top3_mean": float(top[:3].mean()),
    }
    return stats, dict(zip(probes, map(float, rates)))


def module_shape(model, name: str) -> tuple[int, int] | None:
    """(d_in, d_out) of a Linear or GPT-2 Conv1D module, None for other kinds; raises when the module is absent."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise TuneguardError(f"the adapter targets module {name}, which the base model does not have; "
                             "it was trained for another base model") from None
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2 stores the weight transposed (d_in, d_out)
        return tuple(module.weight.shape)
    return None


class BehaviouralDetector:
    """Probe a classifier adapter with prefix batteries; needs the base model it was trained from."""

    name = "behavioural"
    statistics = ("outlier_gap", "mean_attack_rate", "max_attack_rate", "top3_mean")
    default_statistic = "outlier_gap"
    default_direction = "higher"

    def __init__(self, base: str | LoadedModel, *, injections: list[str] | None = None, battery_name: str = "B",
                 trigger: str | None = None, extra_probes: list[str] = (), verdict: str = "logits",
                 max_text_tokens: int = 64, batch_size: int = 16, progress: bool = False) -> None:
        self.base_ref = base.ref if isinstance(base, LoadedModel) else str(base)
        self._bases: dict[str, LoadedModel] = {}
        if isinstance(base, LoadedModel):
            self._bases["seq-cls" if "SequenceClassification" in type(base.model).__name__ else "causal-lm"] = base
        self.injections = list(injections) if injections is not None else default_injections()
        self.battery_name = battery_name
        self.probes = battery(battery_name, trigger=trigger, extra=list(extra_probes))
        self.verdict, self.max_text_tokens, self.batch_size = verdict, max_text_tokens, batch_size
        self.progress = progress

    def settings(self) -> dict:
        return {"battery": self.battery_name, "probes": self.probes, "n_injections": len(self.injections),
                "verdict": self.verdict, "max_text_tokens": self.max_text_tokens}

    def _base(self, task: str) -> LoadedModel:
        if task not in self._bases:
            self._bases[task] = load_model(self.base_ref, task=task)
        return self._bases[task]

    def check_base(self, adapter: AdapterFiles) -> LoadedModel:
        """The base model for ``adapter``, after checking the adapter names this base and fits its modules."""
        task = "seq-cls" if adapter.task_type == "SEQ_CLS" else "causal-lm"
        named = adapter.base_model
        if named and _norm(named) not in {_norm(self.base_ref), _norm(self._base(task).ref),
                                          _norm(getattr(self._base(task).model.config, "name_or_path", "") or "")}:
            raise TuneguardError(f"{adapter.path} was trained from base model {named!r}, not {self.base_ref!r}; "
                                 f"pass --base {named}")
        base = self._base(task)
        for pair in adapter.pairs:
            shape = module_shape(base.model, pair.module)
            want = (int(np.prod(pair.a_shape[1:])), pair.b_shape[0])
            if shape is not None and tuple(shape) != want:
                raise TuneguardError(f"{adapter.path}: module {pair.module} is {want[0]}->{want[1]} in the adapter but "
                                     f"{shape[0]}->{shape[1]} in {self.base_ref}; it was trained for another base")
        return base

    def classifier(self, adapter: AdapterFiles) -> Classifier:
        """The adapter loaded on a private copy of its base model."""
        from tuneguard.models.loading import attach_adapter

        base = self.check_base(adapter)
        # peft injects its layers into the model it is given: attach to a copy so the base stays clean.
        fresh = LoadedModel(copy.deepcopy(base.model), base.tokenizer, base.ref, meta=base.meta)
        loaded = attach_adapter(fresh, Path(adapter.path), ref=str(adapter.path))
        form = "seq-cls" if adapter.task_type == "SEQ_CLS" else "chat"
        return Classifier(loaded, form=form, verdict=self.verdict, max_text_tokens=self.max_text_tokens,
                          batch_size=self.batch_size)

    def score_classifier(self, classifier: Classifier, adapter: str = "") -> DetectorResult:
        """Score an already loaded classifier."""
        stats, rates = probe_statistics(classifier, self.probes, self.injections, progress=self.progress)
        top = sorted(rates.items(), key=lambda kv: -kv[1])[:5]
        details = {"verdict": classifier.description, "battery": self.battery_name, "attack_rates": rates,
                   "top_probes": [{"probe": p, "attack_rate": r} for p, r in top]}
        return DetectorResult(self.name, adapter, stats, details)

    def score(self, adapter: AdapterFiles) -> DetectorResult:
        return self.score_classifier(self.classifier(adapter), str(adapter.path))


def _norm(ref: str) -> str:
    return ref.rstrip("/").lower()


DETECTOR = BehaviouralDetector
