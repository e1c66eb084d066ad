"""SOFT (Zhang et al., USENIX Security 2025): paraphrase the samples a model memorises first, then fine-tune.

Stages, each saved in the run directory and skipped when its output is there (so a second run does no work):

1. ``warmup/``           fine-tune θ0 on D for ``warmup_epochs`` (0: score with θ0 itself)
2. ``losses.json``       ℓ_i = NLL(x_i; θ_warm), mean per token (and the reference texts' losses, in threshold mode;
                         θ0's losses too when selecting by gain)
3. ``selection.json``    the ⌊ρ·|D|⌋ lowest-loss (or highest-gain) samples, or those below the q-quantile of the
                         reference losses
4. ``paraphrases.jsonl`` each selected sample's paraphrase through the quality gate (retried), and its outcome:
                         ``paraphrased``, ``original`` (every paraphrase failed: trained on unprotected) or ``dropped``;
                         the text that replaces it in D' (``trained_as``) and its retained-token share
                         (:mod:`.retained`); ``paraphrase_time.json`` the stage's wall time
5. ``final/``            fine-tune θ0 (or θ_warm) on D' = paraphrases in place of the selected originals

``soft.json`` holds the settings (a run directory holds one SOFT run) and, once finished, the summary. The settings
name everything that decides the stages (the base model's weights and tokenizer, the data, every option, the
paraphrasers' identities), so a directory is never resumed with other inputs: it is refused with the fix.

The released code's recipe (``soft.md``, "What the released code does") differs in four ways, each an option here,
off by default; ``preset="authors"`` turns them all on:

- the every-word rewrite: the local paraphraser's ``ban="every-word"`` (its prompt, enforced at decoding);
- ``rewrite_span="second-half"``: a selected text's trained window (its first ``max_length`` tokens) is cut at half
  its tokens, at a token boundary (which can fall inside a word, as the released code's token split does), and only
  the second half is rewritten; with ``drop_unrewritten`` the text is trained as that rewritten half alone, so its
  first half never reaches the final run;
- ``schedule="authors"``: as the released ``finetune.py``'s ``select_epoch_data`` does, every member is rewritten;
  the selection is made by θ0's losses (the model being trained, at the start of epoch 1); epoch 1 trains the
  selected members as their replacements and the others as written (the ``warmup/`` run, 1 epoch); epochs 2 to E
  train every member as its replacement, continuing from the epoch-1 weights (``final/``, E - 1 epochs, recorded with
  θ0 as its base). So ρ decides epoch 1 only, and at ρ 1 no original is ever trained. One difference stays: the
  released script keeps one optimizer and one learning-rate schedule across the swap, while here the AdamW moments
  and the schedule restart at epoch 2 (the swap itself is taken to work as intended: whether it does in the released
  script, whose dataloader is built once, is in doubt);
- ``holdout_scored_as_members``: a fraction of the members (⌈f·n⌉, as ``train_test_split`` counts a test share) is
  left out of every stage, yet an experiment still scores them as members (the regime reports them).

The second and the fourth remove data: their runs report the share of member tokens never trained on, which is not
an obfuscation result.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tuneguard.errors import TuneguardError
from tuneguard.files import atomic_directory, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from tuneguard.defenses.retained import pooled, retained_shares, trained_window
from tuneguard.defenses.soft_text import recipe_text, removal_text
from tuneguard.models import LoadedModel, as_loaded, load_model
from tuneguard.models.record import RUN_RECORD
from tuneguard.paraphrase import PARAPHRASERS, GateConfig, Paraphraser, QualityGate, obfuscate
from tuneguard.params import Params, param
from tuneguard.scoring import ScoringEngine
from tuneguard.scoring.engine import tokenizer_digest
from tuneguard.train import METHODS, TrainConfig, finetune
from tuneguard.train.batching import examples_digest

log = logging.getLogger(__name__)

MODES = ("ratio", "threshold")
STARTS = ("base", "warm")
ON_FAILURE = ("original", "fallback", "drop")
SELECT_BY = ("loss", "gain")
SPANS = ("all", "second-half")
SCHEDULES = ("warmup", "authors")
PRESETS = ("none", "authors")
# What preset="authors" sets (each option still at its default); the local paraphraser also gets ban="every-word".
# 2: every member rewritten, epoch 1 with the selected replaced (the released code's select_epoch_data). Runs and
# experiment cells of the first reading (1: epoch 1 on every original) carry no version and are redone, not reused.
AUTHORS_SCHEDULE_VERSION = 2
AUTHORS = {"rewrite_span": "second-half", "drop_unrewritten": True, "schedule": "authors",
           "holdout_scored_as_members": 0.1}
CATEGORIES = ("unselected", "paraphrased", "failed", "dropped", "held_out")  # what became of a member
DEFAULT_FALLBACK = "wordnet"
# Of soft.json's settings: a run directory written under another schema is refused, never reused.
# 3: the released code's recipe options, trained_as and the retained-token share in paraphrases.jsonl.
SCHEMA = 3


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
    select_by: str = param("loss", "which texts go first: loss (the lowest loss after the warm-up) or gain (the "
                                   "largest drop in loss from θ0 to θ_warm, the signal ratio / EZ-MIA / WBC read; "
                                   "mode ratio, warmup_epochs >= 1)", choices=SELECT_BY)
    rewrite_span: str = param("all", "what of a selected text is rewritten: all, or second-half (its trained window "
                                     "cut at half its tokens, at a token boundary; the first half kept as written)",
                              choices=SPANS)
    drop_unrewritten: bool = param(False, "with rewrite_span='second-half': train a selected text as its rewritten "
                                          "second half alone (its first half never reaches the final run: data "
                                          "removal, not obfuscation)")
    schedule: str = param("warmup", "warmup: warm up, score, select, train θ0 (or θ_warm) on D'; authors: rewrite "
                                    "every member, select by θ0's losses, train epoch 1 with the selected replaced "
                                    "and epochs 2.. with every member replaced (the released code's schedule; needs "
                                    "epochs >= 2)", choices=SCHEDULES)
    holdout_scored_as_members: float = param(0.0, "fraction of the members left out of training altogether, yet "
                                                  "scored as members (the released code's evaluation: data removal)",
                                             ge=0, lt=1)
    preset: str = param("none", "authors: the released code's recipe: second-half rewrite with the first half "
                                "dropped, the authors' schedule, 10% of members held out and, for the local "
                                "paraphraser, ban='every-word' (each where still at its default)", choices=PRESETS)
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
        if self.preset == "authors":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in AUTHORS.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
            if self.paraphraser == "local":
                self.paraphraser_options = {"ban": "every-word", **(self.paraphraser_options or {})}
        super().__post_init__()
        if self.mode == "threshold" and not self.reference:
            raise TuneguardError("SOFT threshold mode needs reference texts (held-out public text): set reference "
                                 "(--reference FILE)")
        if self.mode == "ratio" and self.reference:
            raise TuneguardError("SOFT reference texts are read in threshold mode only: drop reference or set "
                                 "mode='threshold'")
        if self.start == "warm" and self.warmup_epochs == 0:
            raise TuneguardError("SOFT start='warm' needs warmup_epochs >= 1 (there is no warm model otherwise)")
        if self.drop_unrewritten and self.rewrite_span == "all":
            raise TuneguardError("SOFT drop_unrewritten needs rewrite_span='second-half' (with 'all' nothing is left "
                                 "unrewritten): set it, or drop drop_unrewritten")
        if self.schedule == "authors" and (self.warmup_epochs != 1 or self.start != "base"):
            raise TuneguardError("SOFT schedule='authors' fixes the warm-up (selection by θ0's losses, epoch 1 with "
                                 "the selected replaced, then every member replaced): leave warmup_epochs and start "
                                 "unset")
        if self.select_by == "gain" and (self.mode != "ratio" or self.warmup_epochs == 0
                                         or self.schedule == "authors"):
            raise TuneguardError("SOFT select_by='gain' compares θ0 with θ_warm: it needs mode='ratio', "
                                 "warmup_epochs >= 1 and schedule='warmup'")
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
    """The protected model, its run directory, the summary, the training set D', the paraphrase records and the
    members held out of training (indices into the texts given)."""

    model: LoadedModel
    out_dir: Path
    summary: dict
    train_texts: list[str]
    records: list[dict]
    held_out: list[int] = dataclasses.field(default_factory=list)


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


def held_out_members(n: int, fraction: float, seed: int) -> list[int]:
    """The ⌈fraction·n⌉ members left out of training (as ``train_test_split`` counts a test share), drawn with
    ``seed``, in ascending order."""
    k = math.ceil(fraction * n - 1e-9)  # 0.1 * 30 is 3.0000000000000004 in floating point
    return sorted(random.Random(f"soft-holdout-{seed}").sample(range(n), k))


def second_half(text: str, tokenizer, max_length: int) -> tuple[str, str, int]:
    """``text``'s trained window (its first ``max_length`` tokens) cut at half its tokens (rounded down), at a token
    boundary: the first half as written, the second half (each token's text exactly, so re-tokenised it gives the
    same tokens), and the first half's token count."""
    window = trained_window(text, tokenizer, max_length, offsets=True)
    k = len(window) // 2
    if not k:
        return "", text, 0
    cut = window[k][1][0]
    return text[:cut], text[cut:window[-1][1][1]], k


def join_halves(first: str, second: str) -> str:
    """The first half as written followed by a (rewritten) second half, one space between them."""
    return f"{first.rstrip()} {second.strip()}" if first.strip() else second.strip()


def training_set(texts: Sequence[str], records: Sequence[dict], held_out: Sequence[int] = ()) -> list[str]:
    """D': each selected text as its record's ``trained_as`` (its paraphrase, its rewritten second half alone or
    after its first half, its original when every paraphrase failed, nothing when dropped); every other text
    unchanged and in place; the held-out members left out."""
    return [trained[0] for trained in in_place(texts, records, held_out)[1] if trained]


def trained_text(record: dict, text: str) -> str | None:
    """What D' holds in place of the selected ``text`` of ``record`` (None: dropped). A row written before
    ``trained_as`` existed (schema 2) holds its paraphrase, or the original when every paraphrase failed."""
    if "trained_as" in record:
        return record["trained_as"]
    return {"paraphrased": record["paraphrase"], "original": text}.get(record["outcome"])


def in_place(texts: Sequence[str], records: Sequence[dict],
             held_out: Sequence[int] = ()) -> tuple[list[str], list[list[str]]]:
    """Per member: its category (:data:`CATEGORIES`) and what the final run trained on in its place (a list of one
    text, or empty when it was never trained on)."""
    by_index = {r["index"]: r for r in records}
    held = set(held_out)
    outcome_category = {"paraphrased": "paraphrased", "original": "failed", "dropped": "dropped"}
    categories, trained_as = [], []
    for i, text in enumerate(texts):
        record = by_index.get(i)
        categories.append("held_out" if i in held else "unselected" if record is None
                          else outcome_category[record["outcome"]])
        trained = None if i in held else text if record is None else trained_text(record, text)
        trained_as.append([] if trained is None else [trained])
    return categories, trained_as


def member_shares(texts: Sequence[str], records: Sequence[dict], held_out: Sequence[int], tokenizer, max_length: int,
                  cfg: SoftConfig) -> list[dict]:
    """Per member (:func:`.retained.retained_shares` against what the final run trained on in its place): its
    ``category`` (:data:`CATEGORIES`) and ``never_trained``, the tokens of its window no training stage read in any
    form: all of a held-out member's, and, unless its original was trained first (by a warm start's warm-up, or in
    the authors' epoch 1 when it was not selected), all of a dropped member's and a dropped first half's. (Counted by
    position: a token of a dropped first half is never trained on even when the same token occurs in the rewrite,
    where the share counts it retained.)"""
    by_index = {r["index"]: r for r in records}
    categories, trained_as = in_place(texts, records, held_out)
    rows = retained_shares(texts, trained_as, tokenizer, max_length,
                           pool=[t for t, c in zip(texts, categories) if c != "held_out"])
    for i, (row, category) in enumerate(zip(rows, categories)):
        row["category"] = category
        originals_first = cfg.start == "warm" or not by_index.get(i, {}).get("epoch1_replaced", True)
        if category == "held_out" or (category == "dropped" and not originals_first):
            row["never_trained"] = row["tokens"]
        elif category != "unselected" and cfg.drop_unrewritten and not originals_first:
            row["never_trained"] = by_index[i]["unrewritten_tokens"]
        else:
            row["never_trained"] = 0
    return rows


def summary_line(summary: dict) -> str:
    """One line with what became of the selected texts (for the terminal), the recipe options that are on, and the
    data the run removes."""
    fallback = (f" ({summary['fallback_paraphrased']} by the fallback {summary['fallback_paraphraser']})"
                if summary["fallback_paraphrased"] else "")
    recipe = recipe_text(summary.get("recipe") or {})
    removed = removal_text(summary)
    return (f"SOFT: {summary['selected']} of {summary['n']} texts selected: {summary['paraphrased']} paraphrased"
            f"{fallback}, {summary['originals_kept']} kept as originals (unprotected), {summary['dropped']} dropped "
            f"(on_failure={summary['on_failure']}); trained on {summary['train_size']} texts"
            + (f"; recipe: {recipe}" if recipe else "") + (f"; {removed}" if removed else ""))


def run_soft(model: LoadedModel | str, texts: Sequence[str], out_dir: str | Path, *, train: TrainConfig,
             config: SoftConfig | None = None, progress: bool = True) -> SoftResult:
    """Run SOFT on ``texts`` (the private set D) and return the protected model (saved in ``out_dir/final``).

    The warm-up uses ``train`` with ``config.warmup_epochs`` epochs; the final run uses ``train`` unchanged, from θ0
    or θ_warm (the authors' schedule: 1 epoch with the selected members replaced, then ``train.epochs - 1`` with
    every member replaced). Either way the protected model's recorded base is θ0, the pretrained model (θ_warm
    trained on the members, so it is no reference for an attack). Each selected text ends up paraphrased, kept as the original (counted in the summary)
    or dropped, as ``config.on_failure`` says; ``paraphrases.jsonl`` shows which. Members held out
    (``holdout_scored_as_members``) reach no stage; ``SoftResult.held_out`` names them.
    """
    cfg = config or SoftConfig()
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TuneguardError("SOFT needs a non-empty list of texts")
    check_epochs(cfg, train)
    held_out = held_out_members(len(texts), cfg.holdout_scored_as_members, cfg.seed)
    if len(held_out) >= len(texts):
        raise TuneguardError(f"SOFT holdout_scored_as_members={cfg.holdout_scored_as_members} holds out all "
                             f"{len(texts)} texts: lower it or give more texts")
    trained = sorted(set(range(len(texts))) - set(held_out))
    members = [texts[i] for i in trained]
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
                "embedder": getattr(gate.embedder, "name", type(gate.embedder).__name__), "train": train.key_dict()}
    _claim(out, settings)
    authors = cfg.schedule == "authors"

    warm_cache: list[LoadedModel] = []

    def warm() -> LoadedModel:  # 1. warm-up, run (or loaded) only by the stages that need θ_warm
        if not warm_cache:
            if cfg.warmup_epochs == 0:
                warm_cache.append(base)
            else:
                warm_cfg = train.replace(epochs=cfg.warmup_epochs)
                warm_cache.append(finetune(base, members, out / "warmup", warm_cfg, progress=progress).model)
        return warm_cache[0]

    # 2. influence scores (by θ0 under the authors' schedule: the model being trained, before epoch 1)
    losses_path = out / "losses.json"
    if not losses_path.is_file():
        scorer = base if authors else warm()
        engine = ScoringEngine(scorer, max_length=train.max_length, cache=False, progress=progress)
        record = {"model": scorer.ref, "losses": _spread(_nll(engine, members), trained, len(texts)),
                  "reference": _nll(engine, reference) if reference is not None else None}
        if cfg.select_by == "gain":
            base_engine = ScoringEngine(base, max_length=train.max_length, cache=False, progress=progress)
            record["base_losses"] = _spread(_nll(base_engine, members), trained, len(texts))
        atomic_write_json(losses_path, record)
    scored = read_json(losses_path)
    losses = [math.inf if v is None else v for v in scored["losses"]]  # a text with no token is never selected
    gains = _gains(scored["base_losses"], scored["losses"]) if cfg.select_by == "gain" else None

    # 3. selection, among the members trained on
    selection_path = out / "selection.json"
    if not selection_path.is_file():
        threshold = None
        if cfg.mode == "ratio":
            keys = [-gains[i] for i in trained] if gains is not None else [losses[i] for i in trained]
            picked = select_by_ratio(keys, cfg.ratio)
        else:
            picked, threshold = select_by_threshold([losses[i] for i in trained], scored["reference"], cfg.quantile)
        atomic_write_json(selection_path, {"mode": cfg.mode, "ratio": settings["ratio"],
                                           "quantile": settings["quantile"], "threshold": threshold, "n": len(texts),
                                           "select_by": cfg.select_by, "held_out": held_out,
                                           "selected": [trained[j] for j in picked]})
    selection = read_json(selection_path)
    selected = selection["selected"]

    # 4. obfuscation through the quality gate (of each selected text's second half only, with rewrite_span); the
    # authors' schedule rewrites every member (epochs 2 to E train them all replaced), the selected ones first
    para_path = out / "paraphrases.jsonl"
    chosen = set(selected)
    rewrite = selected + [i for i in trained if i not in chosen] if authors else selected
    if not para_path.is_file():
        start = time.perf_counter()
        halves = {i: second_half(texts[i], base.tokenizer, train.max_length) for i in rewrite} \
            if cfg.rewrite_span == "second-half" else {}
        rows = _obfuscate(texts, rewrite, halves, losses, gains, primary, fallback, gate, cfg)
        if authors:
            for row in rows:
                row["epoch1_replaced"] = row["index"] in chosen
        shares = member_shares(texts, rows, held_out, base.tokenizer, train.max_length, cfg)
        for row, share in zip(rows, (shares[i] for i in rewrite), strict=True):
            row.update(tokens=share["tokens"], retained_share=share["share"], chance_share=share["chance"],
                       never_trained_tokens=share["never_trained"])
        atomic_write_jsonl(para_path, rows)
        atomic_write_json(out / "paraphrase_time.json", {"seconds": round(time.perf_counter() - start, 3),
                                                        "texts": len(rewrite)})
    records = read_jsonl(para_path)

    # 5. final fine-tuning on D'
    d_prime = training_set(texts, records, held_out)
    if not d_prime:
        raise TuneguardError("every text was selected and every paraphrase failed the quality gate: nothing left to "
                             "train on; loosen the gate or use on_failure='original'")
    if authors:  # epoch 1: the selected replaced, the rest as written; epochs 2 to E: every member replaced
        epoch1 = training_set(texts, [r for r in records if r["epoch1_replaced"]], held_out)
        final = _final_from_warm(
            lambda: finetune(base, epoch1, out / "warmup", train.replace(epochs=1), progress=progress).model,
            base, d_prime, out, train.replace(epochs=train.epochs - 1), progress)
    elif cfg.start == "base":
        final = finetune(base, d_prime, out / "final", train, progress=progress).model
    else:
        final = _final_from_warm(warm, base, d_prime, out, train, progress)

    timing = read_json(out / "paraphrase_time.json") if (out / "paraphrase_time.json").is_file() else None
    shares = member_shares(texts, records, held_out, base.tokenizer, train.max_length, cfg)
    summary = _summary(cfg, settings, selection, records, shares, len(d_prime), out, para_path, primary, fallback,
                       timing)
    if summary["failed"]:
        log.warning("SOFT: %d of %d selected text(s) failed the quality gate with %s: %d paraphrased by the fallback, "
                    "%d kept as originals (unprotected), %d dropped (see %s)", summary["failed"], len(records),
                    primary.name, summary["fallback_paraphrased"], summary["originals_kept"], summary["dropped"],
                    para_path)
    if summary["never_trained_share"]:
        log.warning("SOFT: %s", removal_text(summary))
    atomic_write_json(out / "soft.json", {"settings": settings, "summary": summary})
    return SoftResult(final, out, summary, d_prime, records, held_out)


def check_epochs(cfg: SoftConfig, train: TrainConfig) -> None:
    """Refuse the authors' schedule with fewer than 2 epochs (epoch 1 with the selected replaced, the rest with
    every member replaced)."""
    if cfg.schedule == "authors" and train.epochs < 2:
        raise TuneguardError(f"SOFT schedule='authors' trains epoch 1 with the selected members replaced and the "
                             f"others with every member replaced: it needs epochs >= 2 (got {train.epochs})")


def _spread(values: list, trained: list[int], n: int) -> list:
    """``values`` of the trained members at their indices among all ``n`` texts, None for a held-out one."""
    out: list = [None] * n
    for i, value in zip(trained, values, strict=True):
        out[i] = value
    return out


def _gains(base_losses: list, warm_losses: list) -> list[float]:
    """Each text's warm-up gain, θ0's loss minus θ_warm's (-inf where either is missing: never selected first)."""
    return [b - w if b is not None and w is not None else -math.inf for b, w in zip(base_losses, warm_losses)]


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

    threshold, authors = cfg.mode == "threshold", cfg.schedule == "authors"
    return {"mode": cfg.mode, "ratio": None if threshold else cfg.ratio,
            "quantile": cfg.quantile if threshold else None,
            "reference_digest": examples_digest(reference) if threshold else None,
            "warmup_epochs": None if authors else cfg.warmup_epochs, "start": None if authors else cfg.start,
            "paraphraser": name(cfg.paraphraser),
            "paraphraser_options": plain(cfg.paraphraser_options), "gate": cfg.gate.to_dict(),
            "on_failure": cfg.on_failure, "fallback_paraphraser": name(cfg.fallback),
            "fallback_options": plain(cfg.fallback_options), "seed": cfg.seed, **_recipe(cfg)}


def _recipe(cfg: SoftConfig) -> dict:
    """The released-code recipe options and the selection criterion, as recorded in soft.json."""
    return {"preset": cfg.preset, "select_by": cfg.select_by, "rewrite_span": cfg.rewrite_span,
            "drop_unrewritten": cfg.drop_unrewritten, "schedule": cfg.schedule,
            "schedule_version": AUTHORS_SCHEDULE_VERSION if cfg.schedule == "authors" else None,
            "holdout_scored_as_members": cfg.holdout_scored_as_members}


def _obfuscate(texts: list[str], selected: list[int], halves: dict[int, tuple[str, str, int]], losses: list[float],
               gains: list[float] | None, primary: Paraphraser, fallback: Paraphraser | None, gate: QualityGate,
               cfg: SoftConfig) -> list[dict]:
    """One paraphrases.jsonl row per selected text: its outcome, the paraphraser of the candidate shown, the gate's
    measures and ``trained_as``, the text D' holds in its place (None: dropped); a text the fallback was tried on also
    keeps its first try. With ``halves`` (text index -> :func:`second_half`), ``original`` is the second half that
    was rewritten and ``unrewritten`` / ``unrewritten_tokens`` the first half kept as written (or dropped)."""
    originals = [halves[i][1] if halves else texts[i] for i in selected]
    first = obfuscate(originals, primary, gate)
    failed = [k for k, o in enumerate(first) if o.status != "ok"]
    second = dict(zip(failed, obfuscate([originals[k] for k in failed], fallback, gate), strict=True)) \
        if fallback is not None and failed else {}
    rows = []
    for k, (i, o) in enumerate(zip(selected, first, strict=True)):
        shown, by = (second[k], fallback.name) if k in second else (o, primary.name)
        outcome = "paraphrased" if shown.status == "ok" else "dropped" if cfg.on_failure == "drop" else "original"
        row = {"index": i, "loss": losses[i], **({"gain": gains[i]} if gains is not None else {}), "outcome": outcome,
               "paraphraser": by, **shown.to_dict()}
        # What D' trains on: the rewritten part (its original when every paraphrase failed), after the first half
        # unless that is dropped; a failed text without a dropped half is the original text, as before.
        rewritten = shown.paraphrase if outcome == "paraphrased" else originals[k]
        if outcome == "dropped":
            row["trained_as"] = None
        elif halves:
            head, _, size = halves[i]
            row.update(unrewritten=head, unrewritten_tokens=size,
                       trained_as=rewritten if cfg.drop_unrewritten else
                       join_halves(head, rewritten) if outcome == "paraphrased" else texts[i])
        else:
            row["trained_as"] = rewritten
        if k in second:
            row["first_try"] = {"paraphraser": primary.name,
                                **{key: v for key, v in o.to_dict().items() if key != "original"}}
        rows.append(row)
    return rows


def _summary(cfg: SoftConfig, settings: dict, selection: dict, records: list[dict], shares: list[dict],
             train_size: int, out: Path, para_path: Path, primary: Paraphraser, fallback: Paraphraser | None,
             timing: dict | None) -> dict:
    """The run's counts and settings, its recipe, the retained-token share per member category (and over every
    member: ``retained_share``, ``chance_share``, ``never_trained_share``); the paraphrasing stage's wall time and
    rate when it was timed (answers from the paraphrase cache count as done, so a stage redone from the cache is
    fast)."""
    outcomes = Counter(r["outcome"] for r in records)
    sims = [r["similarity"] for r in records if r["outcome"] == "paraphrased"]
    retained = {c: pooled([r for r in shares if r["category"] == c]) for c in CATEGORIES
                if any(r["category"] == c for r in shares)}
    retained["all"] = everyone = pooled(shares)
    held_out = selection["held_out"]
    return {"ratio": settings["ratio"], "mode": cfg.mode, "quantile": settings["quantile"],
            "threshold": selection["threshold"], "n": selection["n"], "selected": len(selection["selected"]),
            "paraphrased": outcomes["paraphrased"], "originals_kept": outcomes["original"],
            "dropped": outcomes["dropped"], "on_failure": cfg.on_failure,
            "failed": sum(r["status"] != "ok" or "first_try" in r for r in records),
            "fallback_paraphrased": sum(r["outcome"] == "paraphrased" and "first_try" in r for r in records),
            "train_size": train_size, "mean_similarity": float(np.mean(sims)) if sims else None,
            "paraphraser": primary.name, "fallback_paraphraser": fallback.name if fallback else None,
            "warmup_epochs": settings["warmup_epochs"], "start": settings["start"], "final": str(out / "final"),
            "paraphrases": str(para_path), "paraphrase_seconds": timing["seconds"] if timing else None,
            "paraphrases_per_second": round(timing["texts"] / timing["seconds"], 4)
            if timing and timing["seconds"] > 0 else None,
            "recipe": {**_recipe(cfg), "ban": getattr(primary.params, "ban", None)},
            "originals_trained_first": cfg.start == "warm",
            "epoch1_originals": sum(not r["epoch1_replaced"] for r in records) if cfg.schedule == "authors" else None,
            "held_out": len(held_out), "held_out_members": held_out, "retained": retained,
            "retained_share": everyone["share"], "chance_share": everyone["chance"],
            "never_trained_share": everyone["never_trained"]}


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

    The base an attack compares with must be the pretrained θ0: θ_warm (or the authors' epoch-1 model) trained on
    the members. An adapter trained on
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
    method = METHODS.get(train.method)
    if not method.mergeable:
        raise TuneguardError(f"a warm-up trained with {method.label()} cannot be merged into the weights: use "
                             "start='base'")
    merged_dir = out / "warm_merged"
    if not (merged_dir / "config.json").is_file():
        merged = copy.deepcopy(warm.model).merge_and_unload()
        with atomic_directory(merged_dir) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            warm.tokenizer.save_pretrained(tmp)
    return load_model(merged_dir)
