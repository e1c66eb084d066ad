"""SOFT (Zhang et al., USENIX Security 2025): paraphrase the samples a model memorises first, then fine-tune.

Stages, each saved in the run directory and skipped when its output is there (so a second run does no work):

1. ``warmup/``           fine-tune θ0 on D for ``warmup_epochs`` (0: score with θ0 itself)
2. ``losses.json``       ℓ_i = NLL(x_i; θ_warm), mean per token (and the reference texts' losses, in threshold mode)
3. ``selection.json``    the ⌊ρ·|D|⌋ lowest-loss samples, or those below the q-quantile of the reference losses
4. ``paraphrases.jsonl`` each selected sample's paraphrase through the quality gate (retried, failures reported)
5. ``final/``            fine-tune θ0 (or θ_warm) on D' = paraphrases in place of the selected originals

``soft.json`` holds the settings (a run directory holds one SOFT run) and, once finished, the summary.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tuneguard.cache import key_hash
from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_directory, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from tuneguard.models import LoadedModel, load_model
from tuneguard.paraphrase import GateConfig, Paraphraser, QualityGate, make_paraphraser, obfuscate
from tuneguard.scoring import ScoringEngine
from tuneguard.train import TrainConfig, finetune
from tuneguard.train.batching import examples_digest

log = logging.getLogger(__name__)

MODES = ("ratio", "threshold")
STARTS = ("base", "warm")
ON_FAILURE = ("drop", "original")


@dataclass
class SoftResult:
    """The protected model, its run directory, the summary, the training set D' and the paraphrase records."""

    model: LoadedModel
    out_dir: Path
    summary: dict
    train_texts: list[str]
    records: list[dict]


def select_by_ratio(losses: Sequence[float], ratio: float) -> list[int]:
    """Indices of the ⌊ratio·n⌋ lowest losses (ties broken by index), in ascending index order."""
    if not 0 <= ratio <= 1:
        raise TuneguardError(f"SOFT ratio must be between 0 and 1 (got {ratio})")
    k = math.floor(ratio * len(losses) + 1e-9)  # 0.3 * 10 is 2.9999999999999996 in floating point
    order = sorted(range(len(losses)), key=lambda i: (losses[i], i))
    return sorted(order[:k])


def select_by_threshold(losses: Sequence[float], reference: Sequence[float], quantile: float) -> tuple[list[int], float]:
    """Indices whose loss lies strictly below the ``quantile`` of the reference losses, and that threshold."""
    if not 0 <= quantile <= 1:
        raise TuneguardError(f"SOFT threshold quantile must be between 0 and 1 (got {quantile})")
    finite = [r for r in reference if math.isfinite(r)]
    if not finite:
        raise TuneguardError("threshold mode needs reference texts with at least one token: pass --reference FILE")
    threshold = float(np.quantile(finite, quantile))
    return [i for i, loss in enumerate(losses) if loss < threshold], threshold


def training_set(texts: Sequence[str], records: Sequence[dict], on_failure: str = "drop") -> list[str]:
    """D': each selected text replaced by its accepted paraphrase; a failed one dropped or kept as ``on_failure``
    says; every other text unchanged and in place."""
    if on_failure not in ON_FAILURE:
        raise TuneguardError(f"unknown on_failure {on_failure!r}: use one of {', '.join(ON_FAILURE)}")
    by_index = {r["index"]: r for r in records}
    out = []
    for i, text in enumerate(texts):
        record = by_index.get(i)
        if record is None:
            out.append(text)
        elif record["status"] == "ok":
            out.append(record["paraphrase"])
        elif on_failure == "original":
            out.append(text)
    return out


def run_soft(model: LoadedModel | str, texts: Sequence[str], out_dir: str | Path, *, ratio: float = 0.5,
             mode: str = "ratio", quantile: float = 0.5, reference_texts: Sequence[str] | None = None,
             paraphraser: str | Paraphraser = "local", paraphraser_options: dict | None = None,
             gate: QualityGate | GateConfig | None = None, train: TrainConfig | None = None, warmup_epochs: int = 1,
             start: str = "base", on_failure: str = "drop", progress: bool = True) -> SoftResult:
    """Run SOFT on ``texts`` (the private set D) and return the protected model (saved in ``out_dir/final``).

    ``mode="ratio"`` paraphrases the ⌊ratio·|D|⌋ lowest-loss texts; ``mode="threshold"`` those whose loss is below the
    ``quantile`` of the losses of ``reference_texts`` (held-out public text). ``paraphraser`` is a registered name
    (built with ``paraphraser_options``) or an instance; ``gate`` a :class:`QualityGate` or its config. The warm-up
    uses ``train`` with ``warmup_epochs`` epochs; the final run uses ``train`` unchanged, from θ0 (``start="base"``)
    or θ_warm (``"warm"``). A paraphrase that still fails the gate after its retries is dropped from D' (or, with
    ``on_failure="original"``, left unprotected) and counted in the summary.
    """
    texts = list(texts)
    train = train or TrainConfig()
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TuneguardError("SOFT needs a non-empty list of texts")
    if mode not in MODES:
        raise TuneguardError(f"unknown SOFT mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "threshold" and not reference_texts:
        raise TuneguardError("SOFT threshold mode needs reference texts (held-out public text): pass --reference FILE")
    if start not in STARTS:
        raise TuneguardError(f"unknown SOFT start {start!r}: use one of {', '.join(STARTS)}")
    if on_failure not in ON_FAILURE:
        raise TuneguardError(f"unknown on_failure {on_failure!r}: use one of {', '.join(ON_FAILURE)}")
    if warmup_epochs < 0 or (start == "warm" and warmup_epochs == 0):
        raise TuneguardError("warmup_epochs must be >= 0, and >= 1 when the final run starts from the warm model")
    if not isinstance(gate, QualityGate):
        gate = QualityGate(gate)
    out = Path(out_dir)
    base = load_model(model) if isinstance(model, str) else model
    para_label = paraphraser if isinstance(paraphraser, str) else paraphraser.name
    para_key = key_hash(para_label, sorted((paraphraser_options or {}).items())) if isinstance(paraphraser, str) \
        else paraphraser.identity()
    settings = {"base": base.ref, "data_digest": examples_digest(texts), "n": len(texts), "mode": mode,
                "ratio": ratio if mode == "ratio" else None, "quantile": quantile if mode == "threshold" else None,
                "reference_digest": examples_digest(list(reference_texts)) if mode == "threshold" else None,
                "paraphraser": para_label, "paraphraser_key": para_key, "gate": asdict(gate.config),
                "embedder": getattr(gate.embedder, "name", type(gate.embedder).__name__), "train": train.to_dict(),
                "warmup_epochs": warmup_epochs, "start": start, "on_failure": on_failure}
    _claim(out, settings)

    warm_cache: list[LoadedModel] = []

    def warm() -> LoadedModel:  # 1. warm-up, run (or loaded) only by the stages that need θ_warm
        if not warm_cache:
            if warmup_epochs == 0:
                warm_cache.append(base)
            else:
                warm_cfg = TrainConfig(**{**train.to_dict(), "epochs": warmup_epochs})
                warm_cache.append(finetune(base, texts, out / "warmup", warm_cfg, progress=progress).model)
        return warm_cache[0]

    # 2. influence scores
    losses_path = out / "losses.json"
    if not losses_path.is_file():
        engine = ScoringEngine(warm(), max_length=train.max_length, cache=False, progress=progress)
        atomic_write_json(losses_path, {"model": warm().ref, "losses": _nll(engine, texts),
                                        "reference": _nll(engine, list(reference_texts))
                                        if mode == "threshold" else None})
    scored = read_json(losses_path)
    losses = [math.inf if v is None else v for v in scored["losses"]]  # a text with no token is never selected

    # 3. selection
    selection_path = out / "selection.json"
    if not selection_path.is_file():
        threshold = None
        if mode == "ratio":
            selected = select_by_ratio(losses, ratio)
        else:
            selected, threshold = select_by_threshold(losses, scored["reference"], quantile)
        atomic_write_json(selection_path, {"mode": mode, "ratio": settings["ratio"], "quantile": settings["quantile"],
                                           "threshold": threshold, "n": len(texts), "selected": selected})
    selection = read_json(selection_path)
    selected = selection["selected"]

    # 4. obfuscation through the quality gate
    para_path = out / "paraphrases.jsonl"
    if not para_path.is_file():
        if isinstance(paraphraser, str):
            paraphraser = make_paraphraser(paraphraser, progress=progress, **(paraphraser_options or {}))
        outcomes = obfuscate([texts[i] for i in selected], paraphraser, gate)
        atomic_write_jsonl(para_path, [{"index": i, "loss": losses[i], **o.to_dict()}
                                       for i, o in zip(selected, outcomes, strict=True)])
    records = read_jsonl(para_path)

    # 5. final fine-tuning on D'
    d_prime = training_set(texts, records, on_failure)
    if not d_prime:
        raise TuneguardError("every text was selected and every paraphrase failed the quality gate: nothing left to "
                             "train on; loosen the gate or use on_failure='original'")
    start_model = base if start == "base" else _warm_start(warm(), out, train)
    final = finetune(start_model, d_prime, out / "final", train, progress=progress)

    failed = sum(r["status"] != "ok" for r in records)
    sims = [r["similarity"] for r in records if r["status"] == "ok"]
    summary = {"ratio": settings["ratio"], "mode": mode, "quantile": settings["quantile"],
               "threshold": selection["threshold"], "n": len(texts), "selected": len(selected),
               "paraphrased": len(records) - failed, "failed": failed,
               "failed_kept_original" if on_failure == "original" else "failed_dropped": failed,
               "train_size": len(d_prime), "mean_similarity": float(np.mean(sims)) if sims else None,
               "paraphraser": para_label, "warmup_epochs": warmup_epochs, "start": start,
               "final": str(out / "final"), "paraphrases": str(para_path)}
    if failed:
        log.warning("SOFT: %d of %d selected text(s) failed the quality gate and were %s (see %s)", failed,
                    len(records), "left unprotected" if on_failure == "original" else "dropped", para_path)
    atomic_write_json(out / "soft.json", {"settings": settings, "summary": summary})
    return SoftResult(final.model, out, summary, d_prime, records)


def _claim(out: Path, settings: dict) -> None:
    """Record the settings in ``soft.json``; refuse a directory that holds a SOFT run with other settings."""
    path = out / "soft.json"
    if path.is_file():
        old = read_json(path)["settings"]
        differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if differ:
            raise TuneguardError(f"{out} holds a SOFT run with other settings ({', '.join(differ)}): choose another "
                                 "output directory or delete it")
        return
    atomic_write_json(path, {"settings": settings, "summary": None})


def _nll(engine: ScoringEngine, texts: list[str]) -> list[float | None]:
    """Mean per-token negative log-likelihood of each text (None for a text with no scored token)."""
    return [None if math.isnan(ll) else -float(ll) for ll in engine.ll(texts, desc="SOFT losses")]


def _warm_start(warm: LoadedModel, out: Path, train: TrainConfig) -> LoadedModel:
    """θ_warm as a plain model to start the final run from: a full warm-up as is; LoRA / (IA)^3 merged and saved
    once in ``warm_merged/`` (so the final adapter has a base to load from)."""
    if not hasattr(warm.model, "peft_config"):
        return warm
    if train.method == "prefix":
        raise TuneguardError("a prefix-tuning warm-up cannot be merged into the weights: use start='base'")
    merged_dir = out / "warm_merged"
    if not (merged_dir / "config.json").is_file():
        merged = copy.deepcopy(warm.model).merge_and_unload()
        with atomic_directory(merged_dir) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            warm.tokenizer.save_pretrained(tmp)
    return load_model(merged_dir)
