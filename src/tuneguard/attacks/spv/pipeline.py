"""SPV-MIA end to end (Fu et al., NeurIPS 2024): self-prompt data, reference model, shared neighbours, score.

Every stage is cached and resumable: the generated texts (JSONL), the reference fine-tune (a tuneguard run
directory), the neighbours (``tuneguard.neighbours`` cache) and the log-likelihoods (the scoring engine's cache).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tuneguard.attacks.spv.reference import target_setup, train_reference
from tuneguard.attacks.spv.selfprompt import self_prompt_texts
from tuneguard.attacks.spv.variation import FORMS, LogLikelihood, calibrated_score, neighbour_variation
from tuneguard.cache import cache_dir, key_hash, text_hash
from tuneguard.data import load_texts
from tuneguard.errors import TuneguardError
from tuneguard.models import LoadedModel, load_model
from tuneguard.neighbours import NeighbourSet, check_params, generator_parameters, make_generator

REFERENCES = ("self-prompt", "data", "base", "model", "none")


@dataclass
class SPVConfig:
    """SPV-MIA settings; defaults follow the paper and its official code, except the neighbour generator (below).

    reference: ``self-prompt`` (the paper), ``data`` (fine-tune on ``reference_data``: same-distribution or
    other-domain public text, the paper's ablations), ``base`` (the target's base model, no training), ``model``
    (``reference_model`` as given), ``none`` (no calibration: the target's variation alone).
    """

    prompts: str | list[str] | None = None  # the attacker's public pool (texts, or a file load_texts reads)
    n_texts: int = 10_000               # M, self-prompt texts (10,000 in the paper)
    prompt_tokens: int = 16             # L
    total_tokens: int = 128
    top_k: int = 50
    temperature: float = 1.0
    generation_batch_size: int = 16
    reference: str = "self-prompt"
    reference_data: str | list[str] | None = None
    reference_model: str | None = None
    base: str | None = None             # the target's base model when it does not record it
    epochs: int = 2
    lr: float = 5e-5
    train_batch_size: int = 8
    max_length: int = 128
    # Any tuneguard.neighbours generator. The official code fills spans with T5 (``neighbours="t5"`` with a T5
    # ``neighbour_model``); the default ``lm-fill`` needs no extra model and works offline.
    neighbours: str = "lm-fill"
    neighbour_model: str | LoadedModel | None = None  # t5: required; lm-fill: default the target's base model
    neighbour_options: dict = field(default_factory=dict)  # the generator's other options (pct, span_length, ...)
    n_neighbours: int = 10              # J
    form: str = "prob"                  # "prob" (paper: P = exp(-NLL)) or "logprob" (mean LL(x~) - LL(x))
    seed: int = 0
    out_dir: str | None = None          # where stage outputs go (default: the cache)
    stats: dict = field(default_factory=dict, repr=False)  # filled by run_spv: seconds and counts per stage

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise TuneguardError(f"unknown SPV-MIA reference {self.reference!r}: use one of {', '.join(REFERENCES)}")
        if self.form not in FORMS:
            raise TuneguardError(f"unknown SPV-MIA form {self.form!r}: use one of {', '.join(FORMS)}")
        if self.n_neighbours < 1 or self.n_texts < 1:
            raise TuneguardError("SPV-MIA needs n_neighbours >= 1 and n_texts >= 1")
        if self.neighbours == "t5" and not self.neighbour_model:
            raise TuneguardError("SPV-MIA t5 neighbours need a T5 model: set neighbour_model to its directory or hub "
                                 "id, or use neighbours=lm-fill")
        if "model" in self.neighbour_options:
            raise TuneguardError("give the neighbour model as neighbour_model, not inside neighbour_options")
        takes_model = "model" in generator_parameters(self.neighbours)[0]
        if self.neighbour_model and not takes_model:
            raise TuneguardError(f"the {self.neighbours} neighbour generator uses no model: drop neighbour_model")
        check_params(self.neighbours, [*self.neighbour_options, *(["model"] if takes_model else [])])


def stage_dir(config: SPVConfig, target: LoadedModel, *parts: str) -> Path:
    """A stage's output directory: under ``out_dir`` when given, else in the cache, keyed by target and settings."""
    if config.out_dir:
        path = Path(config.out_dir, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_dir("spv", target.fingerprint[:16], *parts)


def build_reference(target: LoadedModel, config: SPVConfig, *, progress: bool = True) -> LoadedModel | None:
    """The calibration model for ``config.reference`` (None for ``none``), recording stage times in ``stats``."""
    if config.reference == "none":
        return None
    if config.reference == "model":
        if not config.reference_model:
            raise TuneguardError("SPV-MIA reference=model needs --param spv-mia.reference_model=MODEL")
        return load_model(config.reference_model)
    base = config.base or target.base_ref
    if config.reference == "base":
        if not base:
            raise TuneguardError(f"cannot tell the base model of {target.ref}: pass --param spv-mia.base=MODEL")
        return load_model(base)
    if config.reference == "data":
        if not config.reference_data:
            raise TuneguardError("SPV-MIA reference=data needs --param spv-mia.reference_data=FILE")
        texts = _texts(config.reference_data)
    else:
        if not config.prompts:
            raise TuneguardError("SPV-MIA needs the attacker's public prompt pool from the target's domain: "
                                 "--param spv-mia.prompts=FILE (disjoint from the evaluated texts)")
        t0 = time.perf_counter()
        texts = self_prompt_texts(target, _texts(config.prompts), n_texts=config.n_texts,
                                  prompt_tokens=config.prompt_tokens, total_tokens=config.total_tokens,
                                  top_k=config.top_k, temperature=config.temperature,
                                  batch_size=config.generation_batch_size, seed=config.seed,
                                  directory=stage_dir(config, target, "self-prompt"),
                                  progress=progress)
        config.stats["generate_seconds"] = time.perf_counter() - t0
        config.stats["generated_texts"] = len(texts)
    t0 = time.perf_counter()
    run = key_hash(config.reference, sorted(text_hash(t) for t in texts), config.epochs, config.lr,
                   config.max_length, config.seed, target_setup(target))
    reference = train_reference(target, texts, stage_dir(config, target, "reference", run), base=base,
                                epochs=config.epochs, lr=config.lr, max_length=config.max_length,
                                batch_size=config.train_batch_size, seed=config.seed, progress=progress)
    config.stats["reference_train_seconds"] = time.perf_counter() - t0
    return reference


def _texts(source: str | Sequence[str]) -> list[str]:
    """Texts given as a list (Python API) or as a file / dataset name (CLI)."""
    return list(source) if not isinstance(source, (str, Path)) else load_texts(source)


def make_neighbours(target: LoadedModel, texts: Sequence[str], config: SPVConfig, *,
                    progress: bool = True) -> NeighbourSet:
    """``n_neighbours`` neighbours per text from ``config.neighbours`` (cached by tuneguard.neighbours)."""
    params: dict = {**config.neighbour_options, "seed": config.seed, "progress": progress}
    if "model" in generator_parameters(config.neighbours)[0]:
        params["model"] = config.neighbour_model or config.base or target.base_ref or target
    t0 = time.perf_counter()
    result = make_generator(config.neighbours, **params).generate(texts, config.n_neighbours)
    config.stats["neighbour_seconds"] = time.perf_counter() - t0
    return result


def settings_dict(config: SPVConfig) -> dict:
    """The settings as plain JSON (text lists and models by a short description)."""
    out = {}
    for key, value in vars(config).items():
        if key == "stats":
            continue
        if isinstance(value, LoadedModel):
            value = value.ref
        elif isinstance(value, list):
            value = f"{len(value)} texts"
        out[key] = value
    return out


def run_spv(target: LoadedModel, texts: Sequence[str], ll: LogLikelihood, config: SPVConfig, *,
            reference: LoadedModel | None = None, progress: bool = True) -> dict:
    """SPV-MIA scores of ``texts`` (higher = member) with the raw variations, neighbours and stage statistics.

    The same neighbour set is scored by the target and the reference. ``reference`` overrides ``build_reference``.
    """
    if reference is None and config.reference != "none":
        reference = build_reference(target, config, progress=progress)
    neighbours = make_neighbours(target, texts, config, progress=progress)
    t0 = time.perf_counter()
    v_target = neighbour_variation(target, neighbours, ll, config.form)
    v_ref = neighbour_variation(reference, neighbours, ll, config.form) if reference is not None else None
    config.stats["score_seconds"] = time.perf_counter() - t0
    return {
        "scores": calibrated_score(v_target, v_ref),
        "raw": v_target - v_ref if v_ref is not None else v_target,
        "v_target": v_target,
        "v_reference": v_ref,
        "neighbours": neighbours,
        "settings": settings_dict(config),
        "stats": dict(config.stats),
    }
