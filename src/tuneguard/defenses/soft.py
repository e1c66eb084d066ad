"""SOFT (Zhang et al., USENIX Security 2025): paraphrase the samples a model memorises first, then fine-tune.

Stages, each saved in the run directory and skipped when its output is there (so a second run does no work):

1. ``warmup/``           fine-tune θ0 on D for ``warmup_epochs`` (0: score with θ0 itself)
2. ``losses.json``       ℓ_i = NLL(x_i; θ_warm), mean per token (and the reference texts' losses, in threshold mode)
3. ``selection.json``    the ⌊ρ·|D|⌋ lowest-loss samples, or those below the q-quantile of the reference losses
4. ``paraphrases.jsonl`` each selected sample's paraphrase through the quality gate (retried), and its outcome:
                         ``paraphrased``, ``original`` (every paraphrase failed: trained on unprotected) or ``dropped``;
                         ``paraphrase_time.json`` the stage's wall time (paraphrases per second in the summary)
5. ``final/``            fine-tune θ0 (or θ_warm) on D' = paraphrases in place of the selected originals

``soft.json`` holds the settings (a run directory holds one SOFT run) and, once finished, the summary. The settings
name everything that decides the stages (the base model's weights and tokenizer, the data, every option, the
paraphrasers' identities), so a directory is never resumed with other inputs: it is refused with the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_directory, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from tuneguard.models import LoadedModel, as_loaded, load_model
from tuneguard.models.loading import RUN_RECORD
from tuneguard.paraphrase import PARAPHRASERS, GateConfig, Paraphraser, QualityGate, obfuscate
from tuneguard.params import Params, param
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring.engine import tokenizer_digest
from tuneguard.train import TrainConfig, finetune
from tuneguard.train.batching import examples_digest

log = logging.getLogger(__name__)

MODES = ("ratio", "threshold")
STARTS = ("base", "warm")
ON_FAILURE = ("original", "fallback", "drop")
DEFAULT_FALLBACK = "wordnet"
SCHEMA = 2  # of soft.json's settings: a run directory written under another schema is refused, never reused


@dataclass
class SoftConfig(Params):
    """Every SOFT option, checked at construction (before any model loads).

    ``paraphraser`` / ``fallback_paraphraser`` are registered names (their ``*_options`` checked against the
    paraphraser's declared parameters) or, from Python, ready instances. ``gate`` may be given as a dict of
    :class:`GateConfig` fields (a TOML table).
    """

    mode: str = param("ratio", "ratio: paraphrase the ⌊ratio·|D|⌋ lowest-loss texts; threshold: those whose loss "
                               "is below the quantile of the reference texts' losses", choices=MODES)
    ratio: float = param(0.5, "ρ, the fraction of the texts paraphrased (mode ratio)", ge=0, le=1)
    quantile: float = param(0.5, "q of the reference losses (mode threshold)", ge=0, le=1)
    reference: str | list[str] | None = param(None, "held-out public texts, or a file of them (mode threshold)")
    warmup_epochs: int = param(1, "warm-up epochs before the losses are scored (0: score with θ0)", ge=0)
    start: str = param("base", "the final run starts from θ0 (base) or from θ_warm (warm)", choices=STARTS)
    paraphraser: str | Paraphraser = param("local", "the paraphraser (a registered name)")
    paraphraser_options: dict = param({}, "the paraphraser's parameters (its seed is seed)")
    gate: GateConfig = param(GateConfig(), "the quality gate's thresholds and tries per paraphraser")
    embedder: Any = param(None, "the gate's sentence embedder (default all-MiniLM-L6-v2)")
    on_failure: str = param("original", "a text whose paraphrases all fail the gate: original (train on it "
                                        "unprotected, counted), fallback (try fallback_paraphraser first), drop",
                            choices=ON_FAILURE)
    fallback_paraphraser: str | Paraphraser | None = param(None, f"on_failure=fallback: the second paraphraser "
                                                                 f"(default {DEFAULT_FALLBACK})")
    fallback_options: dict = param({}, "the fallback paraphraser's parameters")
    seed: int = param(0, "the paraphrasers' seed")

    def __post_init__(self) -> None:
        if isinstance(self.gate, dict):
            self.gate = GateConfig.create("gate", self.gate)
        super().__post_init__()
        if self.mode == "threshold" and not self.reference:
            raise TuneguardError("SOFT threshold mode needs reference texts (held-out public text): set reference "
                                 "(--reference FILE)")
        if self.mode == "ratio" and self.reference:
            raise TuneguardError("SOFT reference texts are read in threshold mode only: drop reference or set "
                                 "mode='threshold'")
        if self.start == "warm" and self.warmup_epochs == 0:
            raise TuneguardError("SOFT start='warm' needs warmup_epochs >= 1 (there is no warm model otherwise)")
        if self.on_failure != "fallback" and (self.fallback_paraphraser is not None or self.fallback_options):
            raise TuneguardError("fallback_paraphraser and fallback_options are used with on_failure='fallback' "
                                 "only: set it, or drop them")
        self.paraphraser_options = _checked(self.paraphraser, self.paraphraser_options, self.seed,
                                            "paraphraser_options")
        if self.on_failure == "fallback":
            self.fallback_options = _checked(self.fallback, self.fallback_options, self.seed, "fallback_options")

    @property
    def fallback(self) -> str | Paraphraser | None:
        """The paraphraser tried second (None unless ``on_failure='fallback'``)."""
        if self.on_failure != "fallback":
            return None
        return self.fallback_paraphraser if self.fallback_paraphraser is not None else DEFAULT_FALLBACK


def _checked(spec: str | Paraphraser, options: dict, seed: int, field: str) -> dict:
    """``options`` as the paraphraser ``spec`` reads them (``"0.9"`` -> 0.9); an unknown name, or an option it does
    not declare, is refused. Nothing is built or loaded."""
    if isinstance(spec, Paraphraser):
        if options:
            raise TuneguardError(f"SOFT {field} configure a paraphraser given by name, not an instance")
        return {}
    if "seed" in options:
        raise TuneguardError(f"SOFT {field}: give the paraphrasers' seed as seed, not as an option")
    klass = PARAPHRASERS.get(spec)
    params = klass.Params.create(klass.label(), {**options, "seed": seed})
    return {key: getattr(params, key) for key in options}


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


def training_set(texts: Sequence[str], records: Sequence[dict]) -> list[str]:
    """D': each selected text replaced by its accepted paraphrase, kept or left out as its record's ``outcome``
    says; every other text unchanged and in place."""
    by_index = {r["index"]: r for r in records}
    out = []
    for i, text in enumerate(texts):
        outcome = by_index[i]["outcome"] if i in by_index else "original"
        if outcome == "paraphrased":
            out.append(by_index[i]["paraphrase"])
        elif outcome == "original":
            out.append(text)
    return out


def summary_line(summary: dict) -> str:
    """One line with what became of the selected texts (for the terminal)."""
    fallback = (f" ({summary['fallback_paraphrased']} by the fallback {summary['fallback_paraphraser']})"
                if summary["fallback_paraphrased"] else "")
    return (f"SOFT: {summary['selected']} of {summary['n']} texts selected: {summary['paraphrased']} paraphrased"
            f"{fallback}, {summary['originals_kept']} kept as originals (unprotected), {summary['dropped']} dropped "
            f"(on_failure={summary['on_failure']}); trained on {summary['train_size']} texts")


def run_soft(model: LoadedModel | str, texts: Sequence[str], out_dir: str | Path, *, train: TrainConfig,
             config: SoftConfig | None = None, progress: bool = True) -> SoftResult:
    """Run SOFT on ``texts`` (the private set D) and return the protected model (saved in ``out_dir/final``).

    The warm-up uses ``train`` with ``config.warmup_epochs`` epochs; the final run uses ``train`` unchanged, from θ0
    or θ_warm. Either way the protected model's recorded base is θ0, the pretrained model (θ_warm trained on every
    member, so it is no reference for an attack). Each selected text ends up paraphrased, kept as the original
    (counted in the summary) or dropped, as ``config.on_failure`` says; ``paraphrases.jsonl`` shows which.
    """
    cfg = config or SoftConfig()
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TuneguardError("SOFT needs a non-empty list of texts")
    reference = _reference_texts(cfg.reference)
    out = Path(out_dir)
    base = as_loaded(model)
    primary = _paraphraser(cfg.paraphraser, cfg.paraphraser_options, cfg.seed, progress)
    fallback = _paraphraser(cfg.fallback, cfg.fallback_options, cfg.seed, progress) \
        if cfg.fallback is not None else None
    gate = QualityGate(cfg.gate, cfg.embedder)
    settings = {"schema": SCHEMA, "base": base.ref, "base_fingerprint": base.fingerprint,
                "tokenizer": tokenizer_digest(base.tokenizer), "data_digest": examples_digest(texts), "n": len(texts),
                **_settings(cfg, reference), "paraphraser_id": primary.identity(),
                "fallback_id": fallback.identity() if fallback else None,
                "embedder": getattr(gate.embedder, "name", type(gate.embedder).__name__), "train": train.to_dict()}
    _claim(out, settings)

    warm_cache: list[LoadedModel] = []

    def warm() -> LoadedModel:  # 1. warm-up, run (or loaded) only by the stages that need θ_warm
        if not warm_cache:
            if cfg.warmup_epochs == 0:
                warm_cache.append(base)
            else:
                warm_cfg = TrainConfig(**{**train.to_dict(), "epochs": cfg.warmup_epochs})
                warm_cache.append(finetune(base, texts, out / "warmup", warm_cfg, progress=progress).model)
        return warm_cache[0]

    # 2. influence scores
    losses_path = out / "losses.json"
    if not losses_path.is_file():
        engine = ScoringEngine(warm(), max_length=train.max_length, cache=False, progress=progress)
        atomic_write_json(losses_path, {"model": warm().ref, "losses": _nll(engine, texts),
                                        "reference": _nll(engine, reference) if reference is not None else None})
    scored = read_json(losses_path)
    losses = [math.inf if v is None else v for v in scored["losses"]]  # a text with no token is never selected

    # 3. selection
    selection_path = out / "selection.json"
    if not selection_path.is_file():
        threshold = None
        if cfg.mode == "ratio":
            selected = select_by_ratio(losses, cfg.ratio)
        else:
            selected, threshold = select_by_threshold(losses, scored["reference"], cfg.quantile)
        atomic_write_json(selection_path, {"mode": cfg.mode, "ratio": settings["ratio"],
                                           "quantile": settings["quantile"], "threshold": threshold, "n": len(texts),
                                           "selected": selected})
    selection = read_json(selection_path)
    selected = selection["selected"]

    # 4. obfuscation through the quality gate
    para_path = out / "paraphrases.jsonl"
    if not para_path.is_file():
        start = time.perf_counter()
        rows = _obfuscate(texts, selected, losses, primary, fallback, gate, cfg.on_failure)
        atomic_write_jsonl(para_path, rows)
        atomic_write_json(out / "paraphrase_time.json", {"seconds": round(time.perf_counter() - start, 3),
                                                        "texts": len(selected)})
    records = read_jsonl(para_path)

    # 5. final fine-tuning on D'
    d_prime = training_set(texts, records)
    if not d_prime:
        raise TuneguardError("every text was selected and every paraphrase failed the quality gate: nothing left to "
                             "train on; loosen the gate or use on_failure='original'")
    if cfg.start == "base":
        final = finetune(base, d_prime, out / "final", train, progress=progress).model
    else:
        final = _final_from_warm(warm, base, d_prime, out, train, progress)

    timing = read_json(out / "paraphrase_time.json") if (out / "paraphrase_time.json").is_file() else None
    summary = _summary(cfg, settings, selection, records, len(d_prime), out, para_path, primary, fallback, timing)
    if summary["failed"]:
        log.warning("SOFT: %d of %d selected text(s) failed the quality gate with %s: %d paraphrased by the fallback, "
                    "%d kept as originals (unprotected), %d dropped (see %s)", summary["failed"], len(records),
                    primary.name, summary["fallback_paraphrased"], summary["originals_kept"], summary["dropped"],
                    para_path)
    atomic_write_json(out / "soft.json", {"settings": settings, "summary": summary})
    return SoftResult(final, out, summary, d_prime, records)


def _paraphraser(spec: str | Paraphraser, options: dict, seed: int, progress: bool) -> Paraphraser:
    """The paraphraser ``spec`` names (built with ``options`` and SOFT's seed), or ``spec`` itself."""
    if isinstance(spec, Paraphraser):
        return spec
    return PARAPHRASERS.make(spec, seed=seed, progress=progress, **options)


def _reference_texts(reference: str | list[str] | None) -> list[str] | None:
    """The threshold mode's reference texts, read from a file when given as one."""
    if reference is None or isinstance(reference, list):
        return reference
    from tuneguard.data import load_texts

    return load_texts(reference)


def _settings(cfg: SoftConfig, reference: list[str] | None) -> dict:
    """The options as plain JSON: paraphrasers by name, reference texts by digest; an option of another mode as
    None, so changing it does not refuse the directory."""
    def name(p: str | Paraphraser | None) -> str | None:
        return p.name if isinstance(p, Paraphraser) else p

    def plain(options: dict) -> dict:  # a loaded model given as an option is named by its ref
        return json.loads(json.dumps(options, sort_keys=True, default=lambda v: getattr(v, "ref", type(v).__name__)))

    threshold = cfg.mode == "threshold"
    return {"mode": cfg.mode, "ratio": None if threshold else cfg.ratio,
            "quantile": cfg.quantile if threshold else None,
            "reference_digest": examples_digest(reference) if threshold else None,
            "warmup_epochs": cfg.warmup_epochs, "start": cfg.start, "paraphraser": name(cfg.paraphraser),
            "paraphraser_options": plain(cfg.paraphraser_options), "gate": cfg.gate.to_dict(),
            "on_failure": cfg.on_failure, "fallback_paraphraser": name(cfg.fallback),
            "fallback_options": plain(cfg.fallback_options), "seed": cfg.seed}


def _obfuscate(texts: list[str], selected: list[int], losses: list[float], primary: Paraphraser,
               fallback: Paraphraser | None, gate: QualityGate, on_failure: str) -> list[dict]:
    """One paraphrases.jsonl row per selected text: its outcome, the paraphraser of the candidate shown, and the
    gate's measures; a text the fallback was tried on also keeps its first try."""
    originals = [texts[i] for i in selected]
    first = obfuscate(originals, primary, gate)
    failed = [k for k, o in enumerate(first) if o.status != "ok"]
    second = dict(zip(failed, obfuscate([originals[k] for k in failed], fallback, gate), strict=True)) \
        if fallback is not None and failed else {}
    rows = []
    for k, (i, o) in enumerate(zip(selected, first, strict=True)):
        shown, by = (second[k], fallback.name) if k in second else (o, primary.name)
        outcome = "paraphrased" if shown.status == "ok" else "dropped" if on_failure == "drop" else "original"
        row = {"index": i, "loss": losses[i], "outcome": outcome, "paraphraser": by, **shown.to_dict()}
        if k in second:
            row["first_try"] = {"paraphraser": primary.name,
                                **{key: v for key, v in o.to_dict().items() if key != "original"}}
        rows.append(row)
    return rows


def _summary(cfg: SoftConfig, settings: dict, selection: dict, records: list[dict], train_size: int, out: Path,
             para_path: Path, primary: Paraphraser, fallback: Paraphraser | None, timing: dict | None) -> dict:
    """The run's counts and settings; the paraphrasing stage's wall time and rate when it was timed (answers from
    the paraphrase cache count as done, so a stage redone from the cache is fast)."""
    outcomes = Counter(r["outcome"] for r in records)
    sims = [r["similarity"] for r in records if r["outcome"] == "paraphrased"]
    return {"ratio": settings["ratio"], "mode": cfg.mode, "quantile": settings["quantile"],
            "threshold": selection["threshold"], "n": selection["n"], "selected": len(records),
            "paraphrased": outcomes["paraphrased"], "originals_kept": outcomes["original"],
            "dropped": outcomes["dropped"], "on_failure": cfg.on_failure,
            "failed": sum(r["status"] != "ok" or "first_try" in r for r in records),
            "fallback_paraphrased": sum(r["outcome"] == "paraphrased" and "first_try" in r for r in records),
            "train_size": train_size, "mean_similarity": float(np.mean(sims)) if sims else None,
            "paraphraser": primary.name, "fallback_paraphraser": fallback.name if fallback else None,
            "warmup_epochs": cfg.warmup_epochs, "start": cfg.start, "final": str(out / "final"),
            "paraphrases": str(para_path), "paraphrase_seconds": timing["seconds"] if timing else None,
            "paraphrases_per_second": round(timing["texts"] / timing["seconds"], 4)
            if timing and timing["seconds"] > 0 else None}


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


def _final_from_warm(warm: Callable[[], LoadedModel], base: LoadedModel, d_prime: list[str], out: Path,
                     train: TrainConfig, progress: bool) -> LoadedModel:
    """θ_warm fine-tuned on D', saved in ``final/`` as a full model whose run record names θ0 as its base.

    The base an attack compares with must be the pretrained θ0: θ_warm trained on every member. An adapter trained on
    θ_warm would load onto θ_warm only, so it is merged into it first (the record's ``start_ref`` names θ_warm).
    """
    final_dir = out / "final"
    if not (final_dir / RUN_RECORD).is_file():
        staging = out / "final-from-warm"
        trained = finetune(_warm_start(warm(), out, train), d_prime, staging, train, progress=progress)
        net = trained.model.model
        if hasattr(net, "peft_config"):
            net = net.merge_and_unload()
        with atomic_directory(final_dir) as tmp:
            net.save_pretrained(tmp, safe_serialization=True)
            trained.model.tokenizer.save_pretrained(tmp)
            record = dataclasses.replace(trained.record, base_ref=base.ref, base_fingerprint=base.fingerprint)
            atomic_write_json(tmp / RUN_RECORD, {**record.to_json(), "start_ref": trained.record.base_ref})
        shutil.rmtree(staging, ignore_errors=True)
    return load_model(final_dir)


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
